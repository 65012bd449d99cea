"""DistillationLoss: CE plus the chosen distillation terms, with the frozen teacher run inside.

The training loop calls `loss_fn(x, student_output, y)` and never knows which method is used.
"""
import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from models.fuse import fold_batchnorm

from .connector import build_connector
from .logit import LogitKDLoss
from .skip import SkipHintLoss

__all__ = ["KD_MODES", "DistillationLoss"]

# none: CE only (teacher training, the baseline, and the fair no-teacher student baseline)
KD_MODES = ("none", "skip", "logit", "skip+logit")


class DistillationLoss(nn.Module):
    """loss = CE(s, y) + alpha * MSE(connector(s_hint), t_hint) + beta * T^2 * KL(t/T || s/T).

    `forward` returns (total loss, dict of detached parts: ce, skip, logit).
    fast_teacher: run the frozen teacher as a BatchNorm-folded copy, and for skip KD alone only up
    to its hint (the rest of the teacher does not enter the loss). Same values, less work.
    compile_teacher: torch.compile that inference function (worth it on CPU and GPU alike).
    """

    def __init__(self, mode: str = "none", teacher: nn.Module | None = None, alpha: float = 0.3,
                 beta: float = 1.0, temperature: float = 4.0, student_hint_shape=None,
                 teacher_hint_shape=None, label_smoothing: float = 0.0, fast_teacher: bool = True,
                 compile_teacher: bool = False):
        super().__init__()
        if mode not in KD_MODES:
            raise ValueError(f"unknown KD mode {mode!r}; choose from {', '.join(KD_MODES)}")
        if mode != "none" and teacher is None:
            raise ValueError(f"KD mode {mode!r} needs a teacher")
        if alpha < 0 or beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        self.mode = mode
        self.compile_teacher = compile_teacher
        self.alpha, self.beta = float(alpha), float(beta)
        self.label_smoothing = label_smoothing
        # the teacher is a plain attribute: not in state_dict, not in parameters(), never trained
        self.__dict__["teacher"] = teacher if mode != "none" else None
        self.__dict__["teacher_infer"] = None
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            if fast_teacher:
                self.__dict__["teacher_infer"] = fold_batchnorm(self.teacher)
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

    def _teacher_for(self, x: torch.Tensor):
        """The network to run and the input dtype. Under autocast the folded teacher is kept as a
        copy in the autocast dtype, so its weights are not cast again at every step."""
        if self.teacher_infer is None:
            return self.teacher, None
        if next(self.teacher_infer.parameters()).device != x.device:  # moved after __init__
            self.__dict__["teacher_infer"] = self.teacher_infer.to(x.device)
            self.__dict__.pop("_teacher_cast", None)
        dev = x.device.type
        if not torch.is_autocast_enabled(dev):
            return self.teacher_infer, None
        dtype = torch.get_autocast_dtype(dev)
        cache = self.__dict__.setdefault("_teacher_cast", {})
        if dtype not in cache:
            cache[dtype] = copy.deepcopy(self.teacher_infer).to(dtype)
        return cache[dtype], dtype

    def teacher_forward(self, x: torch.Tensor):
        """(teacher logits or None when not needed, teacher hint), without autograd."""
        net, dtype = self._teacher_for(x)
        ctx = nullcontext() if dtype is None else torch.autocast(x.device.type, enabled=False)
        if dtype is not None:
            x = x.to(dtype)
        hint_only = self.logit is None and hasattr(net, "forward_hint")
        fn = net.forward_hint if hint_only else net
        if self.compile_teacher:
            compiled = self.__dict__.setdefault("_compiled", {})
            key = (id(net), hint_only)
            if key not in compiled:
                compiled[key] = torch.compile(fn)
            fn = compiled[key]
        with torch.inference_mode(), ctx:
            if hint_only:
                logits, hint = None, fn(x)
            else:
                logits, hint = fn(x)
        # inference tensors cannot be saved for backward: clone into normal tensors (small)
        return (logits.clone() if logits is not None else None), hint.clone()

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
