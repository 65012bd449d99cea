"""DIST: Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
NeurIPS 2022.

Instead of matching the teacher's probabilities exactly (KL), DIST asks only that the student's
probabilities be linearly related to the teacher's, which tolerates the large prediction gap to a
much stronger teacher. With Y = softmax(z / tau) row-wise (logits z: (B, K), so Y is (B, K)) and
rho the Pearson correlation of two vectors,

    rho(u, v) = sum_i (u_i - mean u)(v_i - mean v)
                / sqrt(sum_i (u_i - mean u)^2 * sum_i (v_i - mean v)^2)
    inter = tau^2 * (1 - mean over samples b of rho(Y_s[b, :], Y_t[b, :]))   (across classes)
    intra = tau^2 * (1 - mean over classes c of rho(Y_s[:, c], Y_t[:, c]))  (across the batch)
    DIST  = beta * inter + gamma * intra

The forward returns {"inter": beta * inter, "intra": gamma * intra}, which sum to the term. As
in the official code, a small eps (1e-8) is added to the product of norms, so a constant vector
(e.g. a batch of one sample for the intra relation) has correlation 0 instead of 0 / 0: with
B = 1 the intra part is the constant gamma * tau^2 and carries no gradient.

Defaults (CIFAR-100): beta = 2.0, gamma = 2.0, tau = 4.0, term weight 1.0 (CE weight 1.0). The
loss, its eps and the tau^2 scaling follow the official implementation (hunto/DIST_KD ->
hunto/image_classification_sota, lib/models/losses/dist_kd.py and kd_loss.py, where `dist` is
beta = gamma = tau = 1, the ImageNet setting, and `dist_t<tau>` sets tau). The CIFAR-100
values 2 / 2 / 4 are those of the mdistiller-based reproduction in ZaberKo/GDKD
(mdistiller/engine/cfg.py: DIST.BETA 2.0, DIST.GAMMA 2.0, DIST.T 4.0, DIST.CE_WEIGHT 1.0, used
by its configs/cifar100/dist/*.yaml) and of Klayand/PCKA's DISTLoss (beta 2, gamma 2, tem 4). The
authors' own CIFAR config (configs/strategies/distill/dist_cifar.yaml of their classification
toolbox, read in the copy in hunto/LocalMamba) gives the same loss written differently: kd
dist_t4 (beta = gamma = 1, tau = 4) at kd_loss_weight 2 with CE weight 1; `--kd-recipe
dist-cifar` sets those published numbers.

Options (--kd-opt dist.KEY=VALUE): beta, gamma, tau (DIST's own temperature, default 4.0; it does
not follow --temperature, which belongs to the Hinton term), standardize (z-score both logits
first, Sun et al., Logit Standardization in Knowledge Distillation, CVPR 2024; then divided by
tau as usual).
"""
import torch

from .logit import logit_pair
from .registry import KDTerm, register_term

__all__ = ["DISTTerm", "dist_parts", "pearson_rows"]

EPS = 1e-8  # as the official code: keeps a constant vector's correlation at 0, not nan


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b: (N, D), (N, D) -> (N,)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(s_logits: torch.Tensor, t_logits: torch.Tensor,
               tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) relation losses, each times tau^2, without beta / gamma. Logits (B, K)."""
    ys, yt = (s_logits / tau).softmax(dim=1), (t_logits / tau).softmax(dim=1)
    inter = 1 - pearson_rows(ys, yt).mean()
    intra = 1 - pearson_rows(ys.t(), yt.t()).mean()
    return tau * tau * inter, tau * tau * intra


@register_term
class DISTTerm(KDTerm):
    """DIST (Huang et al., NeurIPS 2022): 1 - Pearson correlation of the softened probabilities,
    per sample across classes (inter) and per class across the batch (intra), times tau^2.
    Parts: inter, intra."""
    name, needs, default_weight = "dist", frozenset({"logits"}), 1.0
    parts = ("inter", "intra")
    paper = ("Huang, You, Wang, Qian & Xu, Knowledge Distillation from A Stronger Teacher, "
             "NeurIPS 2022")
    matches = "relations of the softened predictions: per sample across classes and per class across the batch"
    options = {"beta": 2.0, "gamma": 2.0, "tau": 4.0, "standardize": False}
    bounds = {"beta": (0, 1e6), "gamma": (0, 1e6), "tau": (0.01, 1000)}  # what --kd-opt accepts (sane, finite ranges)

    def __init__(self, ctx):
        super().__init__(ctx)
        o = {**self.options, **self.opts}
        self.beta, self.gamma, self.tau = float(o["beta"]), float(o["gamma"]), float(o["tau"])
        self.standardize = bool(o["standardize"])
        if self.tau <= 0:
            raise ValueError(f"dist.tau must be positive, got {self.tau}")
        if self.beta < 0 or self.gamma < 0:
            raise ValueError("dist.beta and dist.gamma must be >= 0")

    def forward(self, student_out, teacher_out, batch=None):
        s, t = logit_pair(student_out, teacher_out, "dist", self.standardize)
        inter, intra = dist_parts(s, t, self.tau)
        return {"inter": self.beta * inter, "intra": self.gamma * intra}
