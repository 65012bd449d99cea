"""FitNets hint loss (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for
Thin Deep Nets", ICLR 2015).

A learned regressor r maps the student's intermediate feature (the "guided layer") to the
shape of the teacher's feature at the same stage (the "hint"), and the student is pulled
towards it:

    L_fitnet = mean over b, c, h, w of (r(F_s)[b, c, h, w] - F_t[b, c, h, w])^2

F_s = student_out.feats[stage] (B, Cs, Hs, Ws), F_t = teacher_out.feats[stage] (B, Ct, Ht, Wt);
r(F_s) has the teacher's shape. The mean runs over all B*Ct*Ht*Wt elements (nn.MSELoss, as in
RepDistiller's distiller_zoo/FitNet.py HintLoss).

The regressor r is conv -> BatchNorm -> ReLU (RepDistiller's models/util.py ConvReg; the paper
uses a convolutional regressor followed by the guided layer's non-linearity). The convolution
is chosen from the two spatial sizes, as ConvReg does:
  * the same size: 1x1 convolution;
  * student twice as large: 3x3 convolution, stride 2, padding 1;
  * student half as large: 4x4 transposed convolution, stride 2, padding 1;
  * student larger by another amount: a "valid" convolution of kernel (1+Hs-Ht, 1+Ws-Wt);
  * student smaller by another amount: a transposed convolution of kernel (1+Ht-Hs, 1+Wt-Ws)
    (the mirror of the previous case; ConvReg raises there);
  * one side larger and the other smaller: ValueError at construction.
skipkd/kd/connector.py's Connector is not reused: it has no ReLU, it is absent when the shapes
match (FitNets always learns the regressor, even for equal shapes), and it falls back to
bilinear resizing for uneven ratios. The convolution has no bias because BatchNorm follows it
(ConvReg's bias is cancelled by that BatchNorm's mean subtraction anyway).

Defaults and their sources:
  * stage = 2: RepDistiller train_student.py `--hint_layer` default 2, an index into the
    features list whose entry 0 is the stem, so 2 is the second stage's output; here
    feats[0] is also the stem, so feats[2] is the same place (the output of stage 2 of 4).
  * weight 100: RepDistiller scripts/run_cifar_distill.sh, FitNet line `-a 0 -b 100`.
RepDistiller (and this term) train hint and classification jointly in one stage, unlike the
paper's two-stage schedule (hint pre-training of the lower layers first, then KD).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .registry import KDTerm, register_term

__all__ = ["HintRegressor", "FitNetTerm"]


class HintRegressor(nn.Module):
    """conv (chosen from the spatial sizes) -> BN -> ReLU, (B, Cs, Hs, Ws) -> (B, Ct, Ht, Wt)."""

    def __init__(self, student_shape, teacher_shape):
        super().__init__()
        cs, hs, ws = (int(v) for v in student_shape)
        ct, ht, wt = (int(v) for v in teacher_shape)
        self.out_shape = (ct, ht, wt)
        if (hs, ws) == (ht, wt):
            conv = nn.Conv2d(cs, ct, 1, bias=False)
        elif (hs, ws) == (2 * ht, 2 * wt):
            conv = nn.Conv2d(cs, ct, 3, stride=2, padding=1, bias=False)
        elif (2 * hs, 2 * ws) == (ht, wt):
            conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1, bias=False)
        elif hs >= ht and ws >= wt:
            conv = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt), bias=False)
        elif hs <= ht and ws <= wt:
            conv = nn.ConvTranspose2d(cs, ct, (1 + ht - hs, 1 + wt - ws), bias=False)
        else:
            raise ValueError(f"fitnet: cannot regress a student feature of spatial size "
                             f"{hs}x{ws} onto a teacher feature of {ht}x{wt} (one side larger, "
                             f"the other smaller)")
        self.conv = conv
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


@register_term
class FitNetTerm(KDTerm):
    """MSE between a learned regressor of the student's feats[stage] and the teacher's
    feats[stage] (Romero et al., 2015); weight 100 and stage 2 as in RepDistiller."""
    name = "fitnet"
    needs = frozenset({"feats"})
    default_weight = 100.0
    paper = ("Romero, Ballas, Kahou, Chassang, Gatta & Bengio, FitNets: Hints for Thin Deep "
             "Nets, ICLR 2015")
    matches = "one middle stage's features, through a learned regressor"
    options = {"stage": 2}
    bounds = {"stage": (0, 64)}  # what --kd-opt accepts (sane, finite ranges)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.stage = int(self.opts["stage"])
        s_feats = ctx.student_shapes.get("feats")
        t_feats = ctx.teacher_shapes.get("feats")
        if not s_feats or not t_feats:
            raise ValueError("fitnet needs both models' feature shapes (TermContext "
                             "student_shapes['feats'] and teacher_shapes['feats'], from "
                             "skipkd.models.feature_shapes) to build its regressor")
        for who, feats in (("student", s_feats), ("teacher", t_feats)):
            if not 0 <= self.stage < len(feats):
                raise ValueError(f"fitnet.stage={self.stage} is out of range for the {who}, "
                                 f"which has {len(feats)} features (0 = stem, 1..{len(feats) - 1}"
                                 f" = stage outputs)")
        self.student_shape = tuple(s_feats[self.stage])
        self.teacher_shape = tuple(t_feats[self.stage])
        self.regressor = HintRegressor(self.student_shape, self.teacher_shape)

    def forward(self, student_out, teacher_out, batch=None):
        s = self.regressor(student_out.feats[self.stage])
        t = teacher_out.feats[self.stage]
        if s.shape != t.shape:
            raise ValueError(f"fitnet: regressed student feature {tuple(s.shape)} does not match "
                             f"the teacher's {tuple(t.shape)} (the context's shapes were "
                             f"{self.student_shape} -> {self.teacher_shape})")
        return F.mse_loss(s.float(), t.float())
