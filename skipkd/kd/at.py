"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving
the Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017).

For a feature map f (B, C, H, W), the activation-based spatial attention map is the channel
mean of |f|^p, flattened over positions and L2-normalised per sample:

    Q(f)[b, :] = q_b / ||q_b||_2,   q_b[h*W + w] = (1/C) * sum_c |f[b, c, h, w]|^p

and for every stage j (the outputs of stages 1..S: feats[1:], the stem excluded)

    L_at = sum_j  mean over b and positions of (Q(f_s^j)[b, k] - Q(f_t^j)[b, k])^2

i.e. per stage the squared difference averaged over the B*H*W entries (RepDistiller's
distiller_zoo/AT.py at_loss: the mean of the squared difference of the two maps, each the
channel mean of f^p flattened and L2-normalised per sample; the authors' cifar.py at_loss is
the same), then summed over the stages (RepDistiller helper/loops.py sums its per-stage list).
The paper writes the per-stage term as the p-norm (p = 2) of the difference of normalised
maps; RepDistiller's squared mean is what its weight is tuned for, so that is what is used.
|f| is used as in the paper (RepDistiller raises f itself to p; the same for p = 2 and for
post-ReLU features).

Channel counts may differ (the map is a channel mean). Spatial sizes may differ: before the
map is taken, the larger feature map is reduced to the smaller size with adaptive average
pooling (as RepDistiller does; it pools to a square of the smaller height, this pools height
and width separately to the smaller of each). Student and teacher must have the same number
of stages (ValueError at construction when the context gives both shapes, else at the first
forward).

Defaults and their sources:
  * p = 2.0: the paper's choice for activation-based AT and RepDistiller's Attention(p=2).
  * weight 1000: RepDistiller scripts/run_cifar_distill.sh, AT line `-a 0 -b 1000` (the
    authors' code, szagoruyko/attention-transfer cifar.py, multiplies the same summed
    per-stage means by its --beta; its README's runs use 1e+3).
"""
import torch
import torch.nn.functional as F

from .registry import KDTerm, register_term

__all__ = ["ATTerm", "attention_map"]


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): channel mean of |f|^p, L2-normalised over positions."""
    q = f.float().abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


@register_term
class ATTerm(KDTerm):
    """Sum over stages of the mean squared difference of normalised attention maps
    (Zagoruyko & Komodakis, 2017); p = 2, weight 1000 as in RepDistiller."""
    name = "at"
    needs = frozenset({"feats"})
    default_weight = 1000.0
    paper = ("Zagoruyko & Komodakis, Paying More Attention to Attention: Improving the "
             "Performance of Convolutional Neural Networks via Attention Transfer, ICLR 2017")
    matches = "spatial attention maps of every stage"
    options = {"p": 2.0}
    bounds = {"p": (0.25, 16)}  # what --kd-opt accepts (sane, finite ranges)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.p = float(self.opts["p"])
        if not self.p > 0:
            raise ValueError(f"at.p must be positive, got {self.p}")
        s_feats = ctx.student_shapes.get("feats")
        t_feats = ctx.teacher_shapes.get("feats")
        if s_feats is not None and t_feats is not None:
            self._check_stages(len(s_feats), len(t_feats))

    @staticmethod
    def _check_stages(n_student: int, n_teacher: int):
        if n_student != n_teacher:
            raise ValueError(f"at pairs the stage outputs one to one, but the student has "
                             f"{n_student - 1} stages and the teacher {n_teacher - 1}")
        if n_student < 2:
            raise ValueError("at needs at least one stage output besides the stem")

    def forward(self, student_out, teacher_out, batch=None):
        s_feats, t_feats = student_out.feats, teacher_out.feats
        self._check_stages(len(s_feats), len(t_feats))
        total = None
        for f_s, f_t in zip(s_feats[1:], t_feats[1:]):
            size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
            if tuple(f_s.shape[2:]) != size:
                f_s = F.adaptive_avg_pool2d(f_s.float(), size)
            if tuple(f_t.shape[2:]) != size:
                f_t = F.adaptive_avg_pool2d(f_t.float(), size)
            loss = (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
            total = loss if total is None else total + loss
        return total
