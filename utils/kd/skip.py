"""Skip-connection hint loss: MSE between the student's and the frozen teacher's shortcut
features (the hint), after an optional learned connector (FitNets-style regressor,
Romero et al., 2015)."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SkipHintLoss"]


class SkipHintLoss(nn.Module):
    """mse(connector(student_hint), teacher_hint); hints (B, C, H, W)."""

    def __init__(self, connector: nn.Module | None = None):
        super().__init__()
        self.connector = connector if connector is not None else nn.Identity()

    def forward(self, student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
        s = self.connector(student_hint)
        if s.shape != teacher_hint.shape:
            raise ValueError(f"hint shapes differ after the connector: student {tuple(s.shape)} "
                             f"vs teacher {tuple(teacher_hint.shape)}")
        return F.mse_loss(s.float(), teacher_hint.float())
