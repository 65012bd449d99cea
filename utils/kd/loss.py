"""DistillationLoss: CE plus the chosen distillation terms, with the frozen teacher run inside.

The training loop calls `loss_fn(x, student_output, y)` and never knows which method is used.
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .connector import build_connector
from .logit import LogitKDLoss
from .skip import SkipHintLoss

__all__ = ["KD_MODES", "DistillationLoss"]

# none: CE only (teacher training, the baseline, and the fair no-teacher student baseline)
KD_MODES = ("none", "skip", "logit", "skip+logit")


class DistillationLoss(nn.Module):
    """loss = CE(s, y) + alpha * MSE(connector(s_hint), t_hint) + beta * T^2 * KL(t/T || s/T).

    `forward` returns (total loss, dict of detached parts: ce, skip, logit).
    """

    def __init__(self, mode: str = "none", teacher: nn.Module | None = None, alpha: float = 0.3,
                 beta: float = 1.0, temperature: float = 4.0, student_hint_shape=None,
                 teacher_hint_shape=None, label_smoothing: float = 0.0):
        super().__init__()
        if mode not in KD_MODES:
            raise ValueError(f"unknown KD mode {mode!r}; choose from {', '.join(KD_MODES)}")
        if mode != "none" and teacher is None:
            raise ValueError(f"KD mode {mode!r} needs a teacher")
        if alpha < 0 or beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        self.mode = mode
        self.alpha, self.beta = float(alpha), float(beta)
        self.label_smoothing = label_smoothing
        # the teacher is a plain attribute: not in state_dict, not in parameters(), never trained
        self.__dict__["teacher"] = teacher if mode != "none" else None
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.skip = None
        if "skip" in mode:
            connector = None
            if student_hint_shape is not None and teacher_hint_shape is not None:
                connector = build_connector(student_hint_shape, teacher_hint_shape)
            self.skip = SkipHintLoss(connector)
        self.logit = LogitKDLoss(temperature) if "logit" in mode else None

    @property
    def connector(self) -> nn.Module | None:
        if self.skip is None or isinstance(self.skip.connector, nn.Identity):
            return None
        return self.skip.connector

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BN statistics must not move
        return self

    def teacher_forward(self, x: torch.Tensor):
        with torch.inference_mode():
            out = self.teacher(x)
        # inference tensors cannot be saved for backward: clone into normal tensors (small)
        return out.logits.clone(), out.hint.clone()

    def forward(self, x, student_out, y):
        ce = F.cross_entropy(student_out.logits.float(), y, label_smoothing=self.label_smoothing)
        parts = {"ce": ce.detach()}
        total = ce
        if self.teacher is not None:
            t_logits, t_hint = self.teacher_forward(x)
            if self.skip is not None:
                skip = self.skip(student_out.hint, t_hint)
                total = total + self.alpha * skip
                parts["skip"] = skip.detach()
            if self.logit is not None:
                logit = self.logit(student_out.logits, t_logits)
                total = total + self.beta * logit
                parts["logit"] = logit.detach()
        return total, parts
