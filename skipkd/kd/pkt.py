"""Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV 2018).

Each network's batch of embeddings (the pooled features; the widths may differ and nothing is
learned) is turned into conditional probabilities with a cosine-similarity kernel, and the
student's are pulled towards the teacher's with the KL divergence:

    x^_i = x_i / (||x_i||_2 + eps)
    K_ij = (1 + <x^_i, x^_j>) / 2                       (cosine similarity mapped to [0, 1])
    P_ij = K_ij / sum_k K_ik                           (row i: a distribution over j)
    L_pkt = (1 / B^2) * sum_i sum_j P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps))

i.e. the KL(teacher || student) of each row, summed over the rows and divided by B^2.
The paper writes the KL divergence as a plain double sum; the 1/B^2 mean, with the j = i
entries included, is that of the authors' code
(passalis/probabilistic_kt nn/pkt.py cosine_similarity_loss) and of RepDistiller's
distiller_zoo/PKT.py, for which the weight below is tuned.

Defaults and their sources:
  * eps = 1e-7: the authors' code and RepDistiller (cosine_similarity_loss(eps=0.0000001)).
  * weight 30000: RepDistiller scripts/run_cifar_distill.sh, PKT line `-a 0 -b 30000`.
"""
import torch

from .registry import KDTerm, register_term

__all__ = ["PKTTerm", "cosine_probabilities"]

EPS = 1e-7


def cosine_probabilities(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(B, D) -> (B, B): each row the conditional probabilities P_ij of the cosine kernel."""
    x = x.float()
    x = x / (x.norm(p=2, dim=1, keepdim=True) + eps)
    with torch.autocast(x.device.type, enabled=False):  # else autocast runs the product in bf16
        k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


@register_term
class PKTTerm(KDTerm):
    """Mean over the B^2 entries of P_t * log(P_t / P_s) for the cosine-kernel conditional
    probabilities of the embeddings (Passalis & Tefas, 2018); weight 30000 as in RepDistiller."""
    name = "pkt"
    needs = frozenset({"embedding"})
    default_weight = 30000.0
    paper = ("Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge "
             "Transfer, ECCV 2018")
    matches = "the batch's cosine-similarity distribution of the embeddings"
    options = {}

    def forward(self, student_out, teacher_out, batch=None):
        p_s = cosine_probabilities(student_out.embedding.float().flatten(1))
        p_t = cosine_probabilities(teacher_out.embedding.float().flatten(1))
        return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()
