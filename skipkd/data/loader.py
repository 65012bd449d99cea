"""Per-channel statistics, batched augmentation and the device-resident loader."""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import ImageData


def channel_stats(images: torch.Tensor) -> tuple[list, list]:
    """Per-channel mean and std in [0, 1] units of a uint8 (N, C, H, W) tensor."""
    x = images.to(torch.float64) / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


# ---------------------------------------------------------------- batched augmentation + loader
@dataclass
class Augment:
    crop_padding: int = 4       # pixels of zero padding for the random crop; 0 = no crop
    hflip: bool = True
    vflip: bool = False

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None, rank: int = 0,
                 world_size: int = 1) -> torch.Tensor:
        """x: (B, C, H, W) uint8 on any device; returns an augmented uint8 batch, same shape.
        With world_size > 1, x is rank's share [rank::world_size] of a global batch and the
        random draws are taken for the whole global batch, so results match a single process."""
        b, _, h, w = x.shape
        dev = x.device

        def draw(fn, size):
            if world_size == 1:
                return fn(size)
            return fn(size * world_size)[rank::world_size][:size]
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = draw(lambda k: torch.randint(0, 2 * p + 1, (k,), generator=gen), b).to(dev)
            dx = draw(lambda k: torch.randint(0, 2 * p + 1, (k,), generator=gen), b).to(dev)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B,1,H,1)
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B,1,1,W)
            bi = torch.arange(b, device=dev)[:, None, None, None]
            ci = torch.arange(x.shape[1], device=dev)[None, :, None, None]
            x = padded[bi, ci, rows, cols]
        if self.hflip:
            m = (draw(lambda k: torch.rand(k, generator=gen), b) < 0.5).to(dev)[:, None, None, None]
            x = torch.where(m, x.flip(3), x)
        if self.vflip:
            m = (draw(lambda k: torch.rand(k, generator=gen), b) < 0.5).to(dev)[:, None, None, None]
            x = torch.where(m, x.flip(2), x)
        return x


class BatchOrder:
    """The sample order and batching every loader shares. Randomness is stateless: the order of
    epoch e comes from a generator seeded with (seed, e), so a run is reproducible from its
    seed, can resume at any step, and the ranks of a distributed run agree on the shuffle
    (`rank`/`world_size` take every world_size-th sample of each global batch)."""

    def __init__(self, n: int, batch_size: int, shuffle=False, seed=0, rank=0, world_size=1,
                 drop_last=False):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.n, self.batch_size = int(n), batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # advanced by each plain `for batch in loader`

    def _order(self, epoch):
        """The sample order of `epoch` (a CPU LongTensor), the same on every rank."""
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def _global_batch(self):
        return self.batch_size * self.world_size

    def __len__(self):
        """Batches per epoch on this rank (equal on every rank, as DDP needs)."""
        n, g = self.n, self._global_batch()
        if self.drop_last:
            return n // g
        if self.world_size == 1:
            return math.ceil(n / g)
        # a last global batch smaller than world_size would leave a rank without samples
        return n // g + (1 if n % g >= self.world_size else 0)

    @property
    def num_samples(self):
        """Samples seen per epoch over all ranks."""
        return min(self.n, len(self) * self._global_batch())

    def batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's sample indices in batch `step` of `epoch`: a global batch of
        batch_size * world_size consecutive samples of the epoch order, split across ranks."""
        g = self._global_batch()
        chunk = self._order(epoch)[step * g:(step + 1) * g]
        return chunk[self.rank::self.world_size]

    def iterate(self, epoch: int, start_step: int = 0, with_index: bool = False):
        raise NotImplementedError

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iterate(epoch)


class TensorLoader(BatchOrder):
    """Iterates (x float normalised (B, C, H, W), y (B,)) from device-resident uint8 images.

    Shuffling and augmentation are per batch with tensor ops; the order is BatchOrder's and the
    augmentation of batch i comes from (seed, e, i), so a run is reproducible from its seed on
    any device and can resume at any step (`iterate(epoch, start_step)`).
    """

    def __init__(self, data: ImageData, batch_size: int, device="cpu", mean=None, std=None,
                 shuffle=False, augment: Augment | None = None, drop_last=False, seed=0,
                 channels_last=False, rank=0, world_size=1):
        super().__init__(len(data.labels), batch_size, shuffle, seed, rank, world_size, drop_last)
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.device = torch.device(device)
        c = self.images.shape[1]
        mean = torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float32)
        std = torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float32)
        # fold /255 and normalisation into one multiply-add: x * scale + shift
        self.scale = (1.0 / (255.0 * std)).reshape(1, c, 1, 1).to(self.device)
        self.shift = (-mean / std).reshape(1, c, 1, 1).to(self.device)
        self.augment = augment
        self.channels_last = channels_last

    def preview(self, n: int):
        """(uint8 images, labels) of the first n images."""
        return self.images[:n], self.labels[:n]

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.float() * self.scale + self.shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def iterate(self, epoch: int, start_step: int = 0, with_index: bool = False):
        """Batches of `epoch`, starting at batch `start_step` (for an exact resume); with
        with_index, (x, y, indices into this loader's images) (for memory banks)."""
        plain = not self.shuffle and self.world_size == 1
        order = None if plain else self._order(epoch).to(self.device)
        g = self._global_batch()
        for i in range(start_step, len(self)):
            if plain:
                lo, hi = i * self.batch_size, (i + 1) * self.batch_size
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
                idx = torch.arange(lo, min(hi, len(self.labels)), device=self.device) \
                    if with_index else None
            else:
                idx = order[i * g:(i + 1) * g][self.rank::self.world_size]
                xb, yb = self.images[idx], self.labels[idx]
            if self.augment is not None:
                # one generator per global batch, then this rank's share of its draws
                gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + i)
                xb = self.augment(xb, gen, rank=self.rank, world_size=self.world_size)
            yield (self.normalise(xb), yb, idx) if with_index else (self.normalise(xb), yb)
