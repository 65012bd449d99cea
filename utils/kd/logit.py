"""Logit distillation (Hinton, Vinyals & Dean, 2015): T^2 * KL(softmax(t/T) || softmax(s/T))."""
import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_term

__all__ = ["LogitKDLoss", "LogitTerm"]


class LogitKDLoss(nn.Module):
    """Logits (B, num_classes); the T^2 factor keeps gradient scale independent of T."""

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


@register_term
class LogitTerm(LogitKDLoss):
    """Hinton et al., 2015: the softened teacher distribution as a target (weight beta = 1,
    temperature T = 4 by default)."""
    name, needs, default_weight = "logit", frozenset({"logits"}), 1.0
    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015"

    def __init__(self, ctx):
        super().__init__(ctx.temperature)

    def forward(self, student_out, teacher_out):
        return super().forward(student_out.logits, teacher_out.logits)
