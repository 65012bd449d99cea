"""Similarity-preserving distillation (Tung & Mori, "Similarity-Preserving Knowledge
Distillation", ICCV 2019).

The student is asked to reproduce, not the teacher's features, but how similar the batch's
samples are to each other in the teacher. With F = the last stage's output flattened per
sample (B, C*H*W):

    G = F F^T  (B x B),   G~[i, :] = G[i, :] / ||G[i, :]||_2   (row-wise L2 normalisation)
    L_sp = ||G~_t - G~_s||_F^2 / B^2

Both Gram matrices are B x B, so student and teacher widths and spatial sizes may differ and
nothing is learned. The feature is feats[-1] (B, C, H, W), the last stage's output before
pooling: RepDistiller's helper/loops.py uses feat[-2] of its feature list, whose last entry is
the pooled vector, i.e. the same place. The row normalisation and the 1/B^2 follow the paper's
equations and RepDistiller's distiller_zoo/SP.py (which notes that the paper's author checked
it).

Default weight 3000: RepDistiller scripts/run_cifar_distill.sh, SP line `-a 0 -b 3000`.
"""
import torch
import torch.nn.functional as F

from .registry import KDTerm, register_term

__all__ = ["SPTerm", "normalized_gram"]


def normalized_gram(f):
    """(B, ...) -> (B, B): the Gram matrix of the flattened samples, each row L2-normalised."""
    x = f.float().flatten(1)
    with torch.autocast(x.device.type, enabled=False):  # else autocast runs the product in bf16
        return F.normalize(x @ x.t(), p=2.0, dim=1)


@register_term
class SPTerm(KDTerm):
    """||G~_t - G~_s||_F^2 / B^2 on the last stage's output (Tung & Mori, 2019); weight 3000
    as in RepDistiller."""
    name = "sp"
    needs = frozenset({"feats"})
    default_weight = 3000.0
    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"
    matches = "the batch's similarity (Gram) matrix of the last stage's features"
    options = {}

    def forward(self, student_out, teacher_out, batch=None):
        g_s = normalized_gram(student_out.feats[-1])
        g_t = normalized_gram(teacher_out.feats[-1])
        b = g_s.shape[0]
        return (g_t - g_s).pow(2).sum() / (b * b)
