"""Relational knowledge distillation (Park, Kim, Lu & Cho, "Relational Knowledge
Distillation", CVPR 2019).

The student matches the geometry of the teacher's batch of embeddings (the pooled features,
(B, Ds) and (B, Dt); the widths may differ and nothing is learned), not the embeddings:

  distance-wise: psi_D(x_i, x_j) = ||x_i - x_j||_2 / mu, where mu is the mean distance over the
    batch's distinct pairs (i != j) of the same network;
      L_D = mean over all B^2 ordered pairs (i, j) of huber(psi_D(s_i, s_j), psi_D(t_i, t_j))
  angle-wise: psi_A(x_i, x_j, x_k) = <e_ji, e_ki>, e_ji = (x_j - x_i) / ||x_j - x_i||, the cosine
    of the angle at x_i (taken as 0 when j = i or k = i, for both networks);
      L_A = mean over all B^3 triplets (i, j, k) of huber(psi_A(s), psi_A(t))

huber is the smooth L1 loss with delta = 1: 0.5 d^2 for |d| < 1, |d| - 0.5 otherwise. The term
is {"distance": w_d * L_D, "angle": w_a * L_A} (their sum is the term, weight 1).

The paper writes sums over the pairs and triplets; the means over all B^2 pairs (diagonal
included, where both sides are 0) and all B^3 triplets (degenerate ones included, both 0) are
those of the authors' code (lenscloth/RKD metric/loss.py, F.smooth_l1_loss with the mean) and
of RepDistiller's distiller_zoo/RKD.py, for which the weights below are tuned. Distances are
sqrt(max(squared distance, 1e-12)) as there, so that the gradient stays finite for
coincident embeddings. A batch of one sample has no pairs: the distance part is then 0.

Defaults and their sources:
  * distance_weight 25, angle_weight 50: RepDistiller distiller_zoo/RKD.py RKDLoss(w_d=25,
    w_a=50), its CIFAR-100 setting (the authors' metric-learning examples in lenscloth/RKD use
    --dist_ratio 1 --angle_ratio 2: the same 1:2 ratio at another scale).
  * term weight 1: RepDistiller scripts/run_cifar_distill.sh, RKD line `-a 0 -b 1`.
"""
import torch
import torch.nn.functional as F

from .registry import KDTerm, register_term

__all__ = ["RKDTerm", "pair_distances", "triplet_cosines"]

_EPS = 1e-12


def pair_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, diagonal 0, divided by their mean over i != j."""
    b = x.shape[0]
    d = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1).clamp_min(_EPS).sqrt()
    off = ~torch.eye(b, dtype=torch.bool, device=x.device)
    d = d * off  # the clamp made the diagonal 1e-6; a sample is at distance 0 from itself
    return d / d[off].mean()


def triplet_cosines(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B, B): [i, j, k] = cos of the angle at x_i between x_j and x_k."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2.0, dim=2)  # e[i, j] = unit(x_j - x_i)
    with torch.autocast(x.device.type, enabled=False):  # else autocast runs bmm in bf16
        return torch.bmm(e, e.transpose(1, 2))


@register_term
class RKDTerm(KDTerm):
    """Distance-wise (x25) plus angle-wise (x50) relational losses on the embeddings
    (Park et al., 2019); weights as in RepDistiller."""
    name = "rkd"
    parts = ("distance", "angle")
    needs = frozenset({"embedding"})
    default_weight = 1.0
    paper = "Park, Kim, Lu & Cho, Relational Knowledge Distillation, CVPR 2019"
    matches = "pairwise distances and triplet angles of the embeddings"
    options = {"distance_weight": 25.0, "angle_weight": 50.0}
    bounds = {"distance_weight": (0, 1e6), "angle_weight": (0, 1e6)}  # what --kd-opt accepts (sane, finite ranges)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.distance_weight = float(self.opts["distance_weight"])
        self.angle_weight = float(self.opts["angle_weight"])
        if self.distance_weight < 0 or self.angle_weight < 0:
            raise ValueError("rkd.distance_weight and rkd.angle_weight must be >= 0")

    def forward(self, student_out, teacher_out, batch=None):
        s = student_out.embedding.float().flatten(1)
        t = teacher_out.embedding.float().flatten(1)
        if s.shape[0] < 2:  # no pair: keep the graph, contribute nothing
            zero = s.sum() * 0.0
            return {"distance": zero, "angle": zero}
        loss_d = F.smooth_l1_loss(pair_distances(s), pair_distances(t))
        loss_a = F.smooth_l1_loss(triplet_cosines(s), triplet_cosines(t))
        return {"distance": self.distance_weight * loss_d, "angle": self.angle_weight * loss_a}
