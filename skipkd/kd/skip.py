"""Skip-connection hint loss: MSE between the student's and the frozen teacher's shortcut
features (the hint), after an optional learned connector (FitNets-style regressor,
Romero et al., 2015).

The hint is the output of the hint block's projection shortcut, after its BN and before the
residual add (the first block of the last stage for basic-block ResNets, of the stage before it
for bottleneck ResNets; docs/MODELS.md). With s = connector(student hint) and t = the teacher's
hint, both (B, C, H, W), and the defaults:

    L_skip = mean over b, c, h, w of (s - t)^2

Options (--kd-opt skip.KEY=VALUE); the defaults are the method as published here:

  * loss: how s and t are compared.
      - mse (default): the mean squared difference above.
      - nmse: the same mean after each sample's hint is flattened and scaled to unit L2 norm,
        mean over b, k of (s^_b[k] - t^_b[k])^2 with x^_b = x_b / max(||x_b||_2, 1e-12). Only
        the direction of each sample's hint counts, not its scale: a student whose features are
        uniformly larger or smaller than the teacher's is not penalised for it. Since
        ||s^ - t^||^2 = 2 - 2 cos(s, t), nmse = (2 / D) * cosine with D = C*H*W elements per
        sample: the two differ only by that constant, which the term weight absorbs.
      - cosine: 1 - mean over b of cos(s_b, t_b) = 1 - mean over b of <s^_b, t^_b>, the same
        comparison on a scale that does not shrink with the hint's size (in [0, 2]).
  * where: which tensor of the hint block is matched.
      - shortcut (default): the projection shortcut's output, as above.
      - mid: the hint block's output, after the residual add and its ReLU (the original work's
        "mid" output). It carries the residual branch's features as well as the shortcut's,
        and it is what the rest of the network reads, where the shortcut is one linear
        projection of the block's input.
  * stages: how many hints.
      - hint (default): the one hint block.
      - all: a hint at every projection shortcut of the network (ResNet-18/34: stages 2, 3, 4;
        bottleneck ResNets and the x4 CIFAR ResNets also stage 1), each pair of shortcuts
        through its own connector where their shapes differ:
            L_skip = sum over i of w_i * mean((s_i - t_i)^2)     (with loss=mse)
        where skip.loss applies to each pair. Student and teacher must have the same number of
        projection shortcuts (resnet18 and resnet34: 3 each; resnet50: 4). It matches earlier,
        lower-level features too, at the cost of more constraints on the student.
  * stage_weights: with stages=all, the weights w_i as a comma list, one per shortcut
    (`--kd-opt skip.stages=all,skip.stage_weights=0.25,0.25,0.5`); `equal` (default) gives
    each 1/N, so the term keeps the scale of one hint and its weight (alpha) its meaning.

where=mid and stages=all need features that only the ResNet families return (our resnet18..152
and the CIFAR ResNets, models.ResNet's block_features); other families with a hint (WRN)
refuse them with a ValueError, and families without a hint refuse the term as before.
stages=all matches the shortcuts themselves and does not combine with where=mid.
The frozen teacher runs only as far as needed: up to the hint block's shortcut (default), the
hint block's output (mid) or the last projection shortcut (all).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .connector import build_connector
from .registry import KDTerm, register_term

__all__ = ["SkipHintLoss", "SkipTerm", "HINT_LOSSES", "hint_loss"]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Each sample flattened and scaled to unit L2 norm (norms below 1e-12 taken as 1e-12)."""
    return F.normalize(x.flatten(1), dim=1)


HINT_LOSSES = {
    "mse": F.mse_loss,
    "nmse": lambda s, t: F.mse_loss(_unit(s), _unit(t)),
    "cosine": lambda s, t: 1 - (_unit(s) * _unit(t)).sum(dim=1).mean(),
}


def hint_loss(kind: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """skip.loss `kind` between two hints of the same shape (B, C, H, W), in float32."""
    if s.shape != t.shape:
        raise ValueError(f"hint shapes differ after the connector: student {tuple(s.shape)} "
                         f"vs teacher {tuple(t.shape)}")
    return HINT_LOSSES[kind](s.float(), t.float())


class SkipHintLoss(nn.Module):
    """loss(connector(student_hint), teacher_hint); hints (B, C, H, W); loss as skip.loss
    (mse by default)."""

    def __init__(self, connector: nn.Module | None = None, loss: str = "mse"):
        super().__init__()
        self.connector = connector if connector is not None else nn.Identity()
        self.loss = loss

    def forward(self, student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
        return hint_loss(self.loss, self.connector(student_hint), teacher_hint)


def _stage_weights(spec: str) -> list[float] | None:
    """'equal' -> None; '0.5,1' -> [0.5, 1.0] (finite, >= 0, not all 0); else ValueError."""
    if spec.strip() == "equal":
        return None
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise ValueError(f"expected 'equal' or comma-separated weights, got {spec!r}") from None
    if not all(math.isfinite(w) and 0 <= w <= 1e6 for w in weights) or not any(weights):
        raise ValueError(f"weights must be in [0, 1e6] and not all 0, got {spec!r}")
    return weights


@register_term
class SkipTerm(KDTerm):
    """The method of this toolkit: the hint block's projection-shortcut output of the student
    pulled towards the teacher's (weight alpha = 0.3). Needs only the teacher's hint, so the
    teacher runs only up to its hint block's shortcut. A connector is learned when the hint
    shapes differ."""
    name, needs, default_weight = "skip", frozenset({"hint"}), 0.3
    options = {"loss": "mse", "where": "shortcut", "stages": "hint", "stage_weights": "equal"}
    choices = {"loss": tuple(HINT_LOSSES), "where": ("shortcut", "mid"), "stages": ("hint", "all")}
    parts = ()
    paper = "skip-connection KD with ECA (this toolkit's method)"
    matches = "the hint block's projection-shortcut (skip-connection) output"

    @classmethod
    def check_option(cls, key, value):
        if key == "stage_weights":
            _stage_weights(value)
            return value.strip()
        return value

    @classmethod
    def check_combination(cls, opts):
        if opts["stages"] == "all" and opts["where"] != "shortcut":
            raise ValueError("skip.stages=all matches every projection shortcut itself; it does "
                             "not combine with skip.where=mid")
        if _stage_weights(opts["stage_weights"]) is not None and opts["stages"] != "all":
            raise ValueError("skip.stage_weights needs skip.stages=all")

    def __init__(self, ctx):
        super().__init__(ctx)
        o = self.opts
        self.check_combination(o)
        feature = ("shortcuts" if o["stages"] == "all" else
                   "hint_out" if o["where"] == "mid" else "hint")
        setting = "stages=all" if feature == "shortcuts" else "where=mid"
        for who, shapes in (("student", ctx.student_shapes), ("teacher", ctx.teacher_shapes)):
            if shapes and shapes.get("hint") is None:
                raise ValueError(f"skip needs a skip-connection hint, and the {who} has none (its "
                                 f"family has no projection shortcut: docs/MODELS.md); choose "
                                 f"another term, e.g. fitnet, at or crd")
            if shapes and shapes.get(feature) is None:
                raise ValueError(f"skip.{setting} needs the {who}'s {feature}, which only the "
                                 f"ResNet families return (resnet18..152, the CIFAR ResNets)")
        s_shape, t_shape = ctx.student_shapes.get(feature), ctx.teacher_shapes.get(feature)
        connector, connectors = None, None
        weights = _stage_weights(o["stage_weights"])
        if feature != "shortcuts" and s_shape is not None and t_shape is not None:
            connector = build_connector(s_shape, t_shape)
        elif s_shape is not None and t_shape is not None:
            if len(s_shape) != len(t_shape):
                raise ValueError(f"skip.stages=all pairs the projection shortcuts in order, and "
                                 f"the student has {len(s_shape)} but the teacher {len(t_shape)}")
            if weights is not None and len(weights) != len(s_shape):
                raise ValueError(f"skip.stage_weights gives {len(weights)} weights for "
                                 f"{len(s_shape)} projection shortcuts")
            connectors = [build_connector(a, b) or nn.Identity() for a, b in zip(s_shape, t_shape)]
        self.connector = connector if connector is not None else nn.Identity()
        self.loss = o["loss"]
        self.where, self.stages, self.feature = o["where"], o["stages"], feature
        self.needs = frozenset({feature})  # what this instance reads (the class says: hint)
        self.stage_weights = weights
        self.connectors = nn.ModuleList(connectors) if connectors is not None else None

    def forward(self, student_out, teacher_out, batch=None):
        s, t = getattr(student_out, self.feature), getattr(teacher_out, self.feature)
        if s is None or t is None:
            raise ValueError(f"skip: the {'student' if s is None else 'teacher'} returned no "
                             f"{self.feature} (its family does not provide it)")
        if self.feature != "shortcuts":
            return hint_loss(self.loss, self.connector(s), t)
        if len(s) != len(t):
            raise ValueError(f"skip.stages=all: the student has {len(s)} projection shortcuts "
                             f"and the teacher {len(t)}")
        weights = self.stage_weights or [1.0 / len(s)] * len(s)
        if len(weights) != len(s):
            raise ValueError(f"skip.stage_weights gives {len(weights)} weights for {len(s)} "
                             f"projection shortcuts")
        conns = self.connectors if self.connectors is not None else [nn.Identity()] * len(s)
        return sum(w * hint_loss(self.loss, c(a), b) for w, c, a, b in zip(weights, conns, s, t))
