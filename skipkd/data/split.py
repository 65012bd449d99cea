"""The stratified, seeded held-out validation split."""
import hashlib

import numpy as np
import torch



def split_indices(labels: torch.Tensor, fraction: float, seed: int = 0):
    """A stratified random split -> (train indices, val indices), sorted LongTensors, disjoint,
    together all of range(N). round(fraction * N) images go to validation, shared among the
    classes in proportion to their size (largest remainder); deterministic from `seed`."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = labels.cpu().numpy()
    n = len(y)
    n_val = int(round(fraction * n))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * fraction
    take = np.floor(exact).astype(np.int64)
    extra = n_val - int(take.sum())
    if extra > 0:  # largest remainders first, ties broken at random
        order = np.lexsort((rng.random(len(classes)), -(exact - take)))
        take[order[:extra]] += 1
    val = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(val.astype(np.int64))


def held_out_split(data, fraction: float, seed: int = 0):
    """data: ImageData or FileImages (anything with labels and subset) -> (train part,
    validation part, digest of the validation indices)."""
    tr, va = split_indices(data.labels, fraction, seed)
    digest = hashlib.sha1(va.numpy().astype("<i8").tobytes()).hexdigest()[:12]
    return data.subset(tr), data.subset(va), digest
