"""Skip-connection hint loss: MSE between the student's and the frozen teacher's shortcut
features (the hint), after an optional learned connector (FitNets-style regressor,
Romero et al., 2015)."""
import torch
import torch.nn.functional as F
from torch import nn

from .connector import build_connector
from .registry import register_term

__all__ = ["SkipHintLoss", "SkipTerm"]


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


@register_term
class SkipTerm(SkipHintLoss):
    """The method of this toolkit: the hint block's projection-shortcut output of the student
    pulled towards the teacher's (weight alpha = 0.3). Needs only the teacher's hint, so the
    teacher runs only up to its hint block's shortcut. A connector is learned when the hint
    shapes differ."""
    name, needs, default_weight = "skip", frozenset({"hint"}), 0.3
    weight_flag = "alpha"
    options, parts = {}, ()
    paper = "skip-connection KD with ECA (this toolkit's method)"
    matches = "the hint block's projection-shortcut (skip-connection) output"

    def __init__(self, ctx):
        for who, shapes in (("student", ctx.student_shapes), ("teacher", ctx.teacher_shapes)):
            if shapes and shapes.get("hint") is None:
                raise ValueError(f"skip needs a skip-connection hint, and the {who} has none (its "
                                 f"family has no projection shortcut: docs/MODELS.md); choose "
                                 f"another term, e.g. fitnet, at or crd")
        connector = None
        if ctx.student_hint_shape is not None and ctx.teacher_hint_shape is not None:
            connector = build_connector(ctx.student_hint_shape, ctx.teacher_hint_shape)
        super().__init__(connector)

    def forward(self, student_out, teacher_out, batch=None):
        return super().forward(student_out.hint, teacher_out.hint)
