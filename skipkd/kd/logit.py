"""Logit distillation (Hinton, Vinyals & Dean, 2015): T^2 * KL(softmax(t/T) || softmax(s/T)),
and logit standardisation (Sun et al., 2024), an option of every logit-based term."""
import torch
import torch.nn.functional as F
from torch import nn

from .registry import KDTerm, register_term

__all__ = ["LogitKDLoss", "LogitTerm", "standardize", "logit_pair"]


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each sample's logits (Sun et al., Logit Standardization in Knowledge
    Distillation, CVPR 2024): (z - mean(z)) / std(z), so the student matches the teacher's
    logit relations rather than their scale. Then divided by the (base) temperature as usual."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def logit_pair(student_out, teacher_out, term: str, standardized: bool = False):
    """(student logits, teacher logits) in float32 for a logit-based term, z-scored when the
    term's standardize option is on; logits of other shapes are a ValueError."""
    s, t = student_out.logits.float(), teacher_out.logits.float()
    if s.shape != t.shape:
        raise ValueError(f"{term} needs logits of the same shape, got student {tuple(s.shape)} "
                         f"and teacher {tuple(t.shape)}")
    return (standardize(s), standardize(t)) if standardized else (s, t)


class LogitKDLoss(nn.Module):
    """Logits (B, num_classes); the T^2 factor keeps gradient scale independent of T."""

    def __init__(self, temperature: float = 4.0, standardize: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        if self.standardize:
            student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
        log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


@register_term
class LogitTerm(KDTerm):
    """Hinton et al., 2015: the softened teacher distribution as a target (weight beta = 1,
    temperature T = 4 by default). Option standardize: z-score both logits first (Sun et al.,
    2024)."""
    name, needs, default_weight = "logit", frozenset({"logits"}), 1.0
    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015"
    matches = "softened logits"
    options, parts = {"standardize": False}, ()

    def __init__(self, ctx):
        super().__init__(ctx)
        self.kd = LogitKDLoss(ctx.temperature, self.opts["standardize"])

    @property
    def temperature(self) -> float:
        return self.kd.temperature

    def forward(self, student_out, teacher_out, batch=None):
        return self.kd(student_out.logits, teacher_out.logits)
