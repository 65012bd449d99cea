"""Contrastive representation distillation (CRD): Tian, Krishnan & Isola, "Contrastive
Representation Distillation", ICLR 2020 (arXiv:1910.10699), after its reference code
RepDistiller (github.com/HobbitLong/RepDistiller: crd/criterion.py, crd/memory.py,
dataset/cifar100.py, train_student.py).

Both networks' pooled embeddings (B, Ds) and (B, Dt) go through a learned head each,
g(x) = normalize(W x + b) (Linear(D, feat_dim), then L2), giving unit vectors s_i, t_i of
feat_dim. Two memory banks of N = num_samples unit vectors (feat_dim each) hold a running
average of every training sample's student embedding (bank M_s) and teacher embedding (M_t).

For a sample i of class c_i (its training-set index, KDBatch.index, is the positive) and K
negatives j_1..j_K drawn uniformly, with replacement, among the samples of OTHER classes:

    student anchor:  P_s(i, j) = exp(<s_i, M_t[j]> / T) / Z_s      j in {i, j_1..j_K}
    teacher anchor:  P_t(i, j) = exp(<t_i, M_s[j]> / T) / Z_t

and, with the noise distribution uniform over the N samples (P_n = 1/N) and eps = 1e-7,
the NCE loss of one direction (the paper's Eq. 18, RepDistiller's ContrastLoss)

    L = -1/B sum_i [ log P(i,i) / (P(i,i) + K/N + eps)
                     + sum_k log (K/N) / (P(i,j_k) + K/N + eps) ].

The term is L_s + L_t, returned as parts {"anchor_s": L_s, "anchor_t": L_t}
(logged as crd_anchor_s, crd_anchor_t). The bank entries are
constants (no gradient), so the student network learns from L_s only and L_t trains the
teacher's head. The normalising constants Z_s, Z_t are set on the first call ever (in
either mode, as in RepDistiller) as mean(exp(score / T)) * N over that batch's B x (K+1)
scores, then kept fixed (buffers: a resumed run keeps them). After the scores, in training
mode only and without gradient, the banks take the batch's new embeddings:
M[i] <- normalize(momentum * M[i] + (1 - momentum) * new_i).
The banks and Z are buffers of the term: saved with the resumable training state (2 x N x
feat_dim floats, about 51 MB for CIFAR's 50k images), never with the exported student. They
are replaced by updated copies rather than written in place, so a graph that still waits for
its backward pass (gradient accumulation) keeps the values it used.

Defaults, as RepDistiller's train_student.py flags and its CRD run in the README
(`--distill crd -r 1 -a 0 -b 0.8`): weight 0.8 (CE weight 1, no KD term); feat_dim 128
(--feat_dim); nce_k 16384 negatives (--nce_k); nce_t 0.07 (--nce_t); momentum 0.5 (--nce_m);
'exact' sampling (--mode: the positive is the sample itself, the negatives are of other
classes, dataset/cifar100.py's CIFAR100InstanceSample); banks initialised uniform in
[-stdv, stdv], stdv = 1 / sqrt(feat_dim / 3), and eps 1e-7 (crd/memory.py, crd/criterion.py).

Differences from RepDistiller, and limits:
- K is min(nce_k, N - largest class count): the most negatives one sample of the largest
  class has. Negatives are drawn with replacement, on the training device from torch's
  global RNG (saved with the training state), where RepDistiller's data loader draws them
  without replacement per sample (with replacement only when k exceeds the pool); the
  expectation of the loss is the same.
- The memory bank is per process: under torchrun (world size > 1) each rank would see only
  its own samples' updates, so that is refused.
- The scores are computed in float32 with autocast off (exp(1 / 0.07) ~ 1.6e6 overflows
  fp16 and is coarse in bf16).

Shapes: student_out.embedding (B, Ds), teacher_out.embedding (B, Dt) (Ds != Dt is fine),
batch.index (B,) training-set indices; ctx.train_labels (N,); banks (N, feat_dim).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import KDTerm, register_term

__all__ = ["CRDTerm", "Embed", "nce_loss"]

EPS = 1e-7  # RepDistiller's crd/criterion.py


class Embed(nn.Module):
    """Linear(dim_in, dim_out) then L2 normalisation (RepDistiller's Embed)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), dim=1)


def nce_loss(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss of normalised scores p (B, 1 + K), the positive first, noise 1/n_data."""
    k = p.shape[1] - 1
    noise = k / float(n_data)  # K * P_n
    log_pos = torch.log(p[:, 0] / (p[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (p[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / p.shape[0]


@register_term
class CRDTerm(KDTerm):
    """CRD (Tian et al., ICLR 2020): NCE between a sample's student and teacher embeddings
    against K negatives of other classes held in two momentum memory banks. See the module
    docstring for the equation, defaults and their sources. Needs the training-set size and
    labels in the TermContext; not supported under torchrun (per-process memory bank)."""
    name, needs, default_weight = "crd", frozenset({"embedding", "index"}), 0.8
    parts = ("anchor_s", "anchor_t")
    paper = ("Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020")
    matches = "embeddings, contrasted against a memory bank of other-class samples"
    options = {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "momentum": 0.5}
    bounds = {"feat_dim": (1, 4096), "nce_k": (1, 1_000_000), "nce_t": (1e-3, 100), "momentum": (0, 1)}  # what --kd-opt accepts (sane, finite ranges)

    def __init__(self, ctx):
        super().__init__(ctx)
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError("crd keeps a per-process memory bank of the whole training set; "
                             "it is not supported under torchrun (world size > 1)")
        if ctx.num_samples is None or ctx.train_labels is None:
            raise ValueError("crd needs the training set's size and labels (TermContext "
                             "num_samples and train_labels) for its memory banks")
        labels = torch.as_tensor(ctx.train_labels).long().reshape(-1)
        n = int(ctx.num_samples)
        if labels.numel() != n:
            raise ValueError(f"crd: train_labels has {labels.numel()} entries but num_samples "
                             f"is {n}")
        if n == 0 or int(labels.min()) < 0:
            raise ValueError("crd needs a non-empty training set with labels >= 0")
        counts = torch.bincount(labels)
        if int((counts > 0).sum()) < 2:
            raise ValueError("crd draws its negatives from other classes: the training set "
                             "must have at least two classes")
        dims = []
        for who, shapes in (("student", ctx.student_shapes), ("teacher", ctx.teacher_shapes)):
            if not shapes or "embedding" not in shapes:
                raise ValueError(f"crd needs the {who}'s embedding shape in the TermContext "
                                 "(skipkd.models.feature_shapes)")
            dims.append(int(math.prod(shapes["embedding"])))
        feat_dim, nce_k = int(self.opts["feat_dim"]), int(self.opts["nce_k"])
        self.nce_t, self.momentum = float(self.opts["nce_t"]), float(self.opts["momentum"])
        if feat_dim < 1 or nce_k < 1 or self.nce_t <= 0 or not 0 <= self.momentum <= 1:
            raise ValueError("crd options: feat_dim >= 1, nce_k >= 1, nce_t > 0 and "
                             "0 <= momentum <= 1")
        self.n_data = n
        self.k = min(nce_k, n - int(counts.max()))  # the largest class's pool of negatives
        self.embed_s = Embed(dims[0], feat_dim)
        self.embed_t = Embed(dims[1], feat_dim)

        dev = labels.device
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, feat_dim, device=dev) * (2 * stdv) - stdv)
        self.register_buffer("memory_t", torch.rand(n, feat_dim, device=dev) * (2 * stdv) - stdv)
        # Z of the student-anchor and teacher-anchor scores; < 0: not yet set
        self.register_buffer("z_s", torch.tensor(-1.0, device=dev))
        self.register_buffer("z_t", torch.tensor(-1.0, device=dev))
        # the sampler's tables, rebuilt from the labels (not part of the saved state): indices
        # sorted by class, each class's first position in that order and its size
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("order", torch.sort(labels, stable=True).indices, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        # scores from the full (B, N) product when that is smaller than gathering B x (K+1)
        # bank rows of feat_dim each (CIFAR: 50k < 16385 * 128); same values either way
        self.full_product = n <= (self.k + 1) * feat_dim

    def extra_repr(self) -> str:
        return (f"n_data={self.n_data}, k={self.k}, nce_t={self.nce_t}, "
                f"momentum={self.momentum}")

    def draw_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K) indices of samples of another class than each of `index`'s, uniform with
        replacement: r in [0, N - n_c), skipping class c's block of the class-sorted order."""
        c = self.labels[index]
        start, count = self.class_start[c].unsqueeze(1), self.class_count[c].unsqueeze(1)
        # 62-bit integers modulo the pool size: exact integers, bias below N / 2^62
        r = torch.randint(0, 2 ** 62, (index.shape[0], self.k), device=index.device)
        r = r % (self.n_data - count)
        return self.order[r + (r >= start) * count]

    def _scores(self, anchor: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """exp(<anchor_b, bank[idx[b, j]]> / T): (B, 1 + K); the bank is a constant."""
        bank = bank.detach()
        if self.full_product:
            dots = (anchor @ bank.t()).gather(1, idx)
        else:
            dots = torch.bmm(bank[idx], anchor.unsqueeze(2)).squeeze(2)
        return torch.exp(dots / self.nce_t)

    def forward(self, student_out, teacher_out, batch):
        if batch.index is None:
            raise ValueError("crd needs the batch's training-set indices (KDBatch.index)")
        index = batch.index.to(self.labels.device, torch.long).reshape(-1)
        with torch.autocast(index.device.type, enabled=False):
            s = self.embed_s(student_out.embedding.float())
            t = self.embed_t(teacher_out.embedding.float())
            idx = torch.cat([index.unsqueeze(1), self.draw_negatives(index)], dim=1)
            out_s = self._scores(s, self.memory_t, idx)  # student anchor, teacher bank
            out_t = self._scores(t, self.memory_s, idx)  # teacher anchor, student bank
            # the first batch fixes Z (branch-free: no device sync). Buffers are replaced, not
            # written in place, so a graph still waiting for backward (two forwards, one
            # backward) keeps the tensors it saved
            with torch.no_grad():
                for name, out in (("z_s", out_s), ("z_t", out_t)):
                    z = getattr(self, name)
                    setattr(self, name, torch.where(z < 0, out.mean() * self.n_data, z))
            loss_s = nce_loss(out_s / self.z_s, self.n_data)
            loss_t = nce_loss(out_t / self.z_t, self.n_data)
            if self.training:
                with torch.no_grad():
                    for name, new in (("memory_s", s), ("memory_t", t)):
                        bank = getattr(self, name)
                        upd = bank[index] * self.momentum + new.detach() * (1 - self.momentum)
                        setattr(self, name, bank.index_copy(0, index, F.normalize(upd, dim=1)))
        return {"anchor_s": loss_s, "anchor_t": loss_t}
