"""Decoupled Knowledge Distillation (DKD): Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge
Distillation", CVPR 2022.

Classical KD is split into a target-class part and a non-target part, which are then weighted
independently. With p = softmax(z / T) over the K classes (logits z: (B, K)) and t the label:

    b    = [p_t, 1 - p_t]                                  binary target / rest mass
    p^   = softmax over the K - 1 non-target logits only   (the target masked out)
    TCKD = KL(b_teacher || b_student)
    NCKD = KL(p^_teacher || p^_student)
    DKD  = w(epoch) * T^2 * (alpha * TCKD + beta * NCKD),  averaged over the batch
    w(epoch) = min(epoch / warmup, 1)

KD itself equals TCKD + (1 - p_t^teacher) * NCKD; DKD removes the (1 - p_t^teacher) factor,
which otherwise mutes NCKD exactly on the samples the teacher is sure about.

The forward returns {"tckd": ..., "nckd": ...}: each already holds its weight (alpha or beta),
T^2 and the warm-up factor, so the two sum to the term.

Defaults (megvii-research/mdistiller, mdistiller/engine/cfg.py, the DKD section, which the
CIFAR-100 configs configs/cifar100/dkd/*.yaml inherit unless they override BETA):
  alpha = 1.0 (DKD.ALPHA); beta = 8.0 (DKD.BETA; the config for resnet32x4 -> resnet8x4 and the
  other configs without a DKD section; the WRN and VGG pairs set 6.0, resnet56 -> resnet20 and
  resnet110 -> resnet32 set 2.0); T = 4.0 (DKD.T); warmup = 20 epochs (DKD.WARMUP);
  term weight 1.0: mdistiller adds the DKD loss unscaled to CE, whose weight DKD.CE_WEIGHT is 1.0.
mdistiller's DKD (mdistiller/distillers/DKD.py) scales by min(epoch / WARMUP, 1) with an integer
epoch counter that is 1 during the first epoch (engine/trainer.py). Here `epoch` is the
fractional number of epochs done (KDBatch.epoch: 0 at the first step), so the factor ramps
linearly per step and equals mdistiller's value for epoch e at the end of that epoch: it is never
above mdistiller's, lags it by less than 1 / warmup, and reaches 1 after `warmup` epochs, as
there. A smooth ramp has no jumps at epoch boundaries and gives a resumed run the same value
mid-epoch.

Options (--kd-opt dkd.KEY=VALUE): alpha, beta, temperature (DKD's own T, default 4.0; it does not
follow --temperature, which belongs to the Hinton term, because beta was tuned together with this
T), warmup (epochs; 0 switches the warm-up off), standardize (z-score both logits first, Sun et
al., Logit Standardization in Knowledge Distillation, CVPR 2024; then divided by T as usual).
"""
import torch
import torch.nn.functional as F

from .logit import logit_pair
from .registry import KDTerm, register_term

__all__ = ["DKDTerm", "dkd_parts", "warmup_factor"]


def warmup_factor(epoch: float, warmup: float) -> float:
    """min(epoch / warmup, 1), 1 when there is no warm-up, 0 before training starts."""
    if warmup <= 0:
        return 1.0
    return min(max(float(epoch), 0.0) / warmup, 1.0)


def _kl_rows(log_p_t: torch.Tensor, log_p_s: torch.Tensor) -> torch.Tensor:
    """sum_j p_t (log p_t - log p_s) per row; finite log-probabilities expected."""
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def dkd_parts(s_logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a batch mean, without weights or T^2. Logits (B, K) float, y (B,)."""
    zs, zt = s_logits / temperature, t_logits / temperature
    target = F.one_hot(y.long(), zs.shape[1]).bool()

    # The binary distribution in log space: log p_t from log_softmax, log(1 - p_t) as the
    # log-sum-exp over the non-target logits minus that over all of them. Taking log of
    # (1 - p_t) directly (as mdistiller does) gives -inf once p_t rounds to 1.
    def binary(z):
        lse = torch.logsumexp(z, dim=1)
        log_tgt = z.gather(1, y.long().view(-1, 1)).squeeze(1) - lse
        log_rest = torch.logsumexp(z.masked_fill(target, float("-inf")), dim=1) - lse
        return torch.stack([log_tgt, log_rest], dim=1)

    tckd = _kl_rows(binary(zt), binary(zs)).mean()

    # Non-target distribution: the target logit removed exactly (-inf, the limit of
    # mdistiller's "minus 1000"); its entry is then set to 0 in both log-probabilities so that
    # it contributes 0 * (0 - 0) and no inf or nan reaches the gradient.
    def non_target(z):
        return F.log_softmax(z.masked_fill(target, float("-inf")), dim=1).masked_fill(target, 0.0)

    log_t, log_s = non_target(zt), non_target(zs)
    nckd = (log_t.exp().masked_fill(target, 0.0) * (log_t - log_s)).sum(dim=1).mean()
    return tckd, nckd


@register_term
class DKDTerm(KDTerm):
    """DKD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD at temperature T, times T^2 and a
    linear warm-up over the first `warmup` epochs. Parts: tckd, nckd."""
    name, needs, default_weight = "dkd", frozenset({"logits"}), 1.0
    parts = ("tckd", "nckd")
    paper = ("Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022")
    matches = "logits, split into target-class and non-target-class parts"
    options = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0,
               "standardize": False}
    bounds = {"alpha": (0, 1e6), "beta": (0, 1e6), "temperature": (0.01, 1000), "warmup": (0, 100_000)}  # what --kd-opt accepts (sane, finite ranges)

    def __init__(self, ctx):
        super().__init__(ctx)
        o = {**self.options, **self.opts}
        self.alpha, self.beta = float(o["alpha"]), float(o["beta"])
        self.temperature, self.warmup = float(o["temperature"]), float(o["warmup"])
        self.standardize = bool(o["standardize"])
        if self.temperature <= 0:
            raise ValueError(f"dkd.temperature must be positive, got {self.temperature}")
        if self.alpha < 0 or self.beta < 0 or self.warmup < 0:
            raise ValueError("dkd.alpha, dkd.beta and dkd.warmup must be >= 0")

    def forward(self, student_out, teacher_out, batch):
        s, t = logit_pair(student_out, teacher_out, "dkd", self.standardize)
        tckd, nckd = dkd_parts(s, t, batch.y, self.temperature)
        scale = warmup_factor(batch.epoch, self.warmup) * self.temperature ** 2
        return {"tckd": scale * self.alpha * tckd, "nckd": scale * self.beta * nckd}
