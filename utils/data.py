"""Datasets held as one uint8 tensor, and a loader that augments whole batches on the device.

Every dataset loads to an `ImageData`: images (N, C, H, W) uint8, labels (N,) int64, class names.
Readers parse the on-disk formats directly (no per-image PIL decode), so a 50k-image CIFAR split
is one array in memory.
"""
import math
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

__all__ = ["ImageData", "DATASETS", "load_dataset", "make_synthetic", "write_cifar10",
           "channel_stats", "TensorLoader", "Augment"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list = field(default_factory=list)

    def __len__(self):
        return int(self.labels.shape[0])


# ---------------------------------------------------------------- CIFAR on-disk format
def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read CIFAR batch file {path}: {exc}") from None


def _get(d, key):
    return d[key.encode()] if key.encode() in d else d[key]


def _read_cifar_batches(folder, files, label_key):
    images, labels = [], []
    for name in files:
        path = os.path.join(folder, name)
        d = _unpickle(path)
        try:  # a readable pickle that is not a CIFAR batch: one line, not a traceback
            data = np.asarray(_get(d, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(_get(d, label_key), dtype=np.int64).reshape(-1)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path} is not a CIFAR batch file ({type(exc).__name__}: "
                            f"{str(exc)[:120]})") from None
        if len(lab) != len(data):
            raise UserError(f"{path} has {len(data)} images but {len(lab)} labels")
        images.append(data)
        labels.append(lab)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _missing(name, data_dir, folder, url):
    raise UserError(f"{name} not found: expected {os.path.join(data_dir, folder)}/ "
                    f"(extract {url} into {data_dir}, or pass --download)")


def _try_download(tv_cls, data_dir, name, folder, url):
    try:
        tv_cls(root=data_dir, train=True, download=True)
    except Exception as exc:  # network errors come in many types; report them on one line
        raise UserError(f"could not download {name} ({type(exc).__name__}); place {folder}/ "
                        f"from {url} in {data_dir}") from None


def load_cifar10(data_dir, download=False):
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    if not os.path.isdir(folder):
        if not download:
            _missing("CIFAR-10", data_dir, "cifar-10-batches-py", url)
        import torchvision
        _try_download(torchvision.datasets.CIFAR10, data_dir, "CIFAR-10", "cifar-10-batches-py", url)
    train = _read_cifar_batches(folder, [f"data_batch_{i}" for i in range(1, 6)], "labels")
    test = _read_cifar_batches(folder, ["test_batch"], "labels")
    classes = CIFAR10_CLASSES
    meta = os.path.join(folder, "batches.meta")
    if os.path.exists(meta):
        classes = [c.decode() if isinstance(c, bytes) else c for c in _get(_unpickle(meta), "label_names")]
    return ImageData(*train, classes), ImageData(*test, classes)


def load_cifar100(data_dir, download=False):
    folder = os.path.join(data_dir, "cifar-100-python")
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    if not os.path.isdir(folder):
        if not download:
            _missing("CIFAR-100", data_dir, "cifar-100-python", url)
        import torchvision
        _try_download(torchvision.datasets.CIFAR100, data_dir, "CIFAR-100", "cifar-100-python", url)
    train = _read_cifar_batches(folder, ["train"], "fine_labels")
    test = _read_cifar_batches(folder, ["test"], "fine_labels")
    classes = [str(i) for i in range(100)]
    meta = os.path.join(folder, "meta")
    if os.path.exists(meta):
        classes = [c.decode() if isinstance(c, bytes) else c
                   for c in _get(_unpickle(meta), "fine_label_names")]
    return ImageData(*train, classes), ImageData(*test, classes)


def write_cifar10(data_dir, train: ImageData, test: ImageData, n_train_batches=5):
    """Write images in the real CIFAR-10 python on-disk format (used by tests and demos)."""
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def dump(name, imgs, labels):
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
             b"data": imgs.reshape(len(imgs), -1).numpy().astype(np.uint8),
             b"filenames": [f"{name}_{i}.png".encode() for i in range(len(imgs))]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=2)

    for i, idx in enumerate(np.array_split(np.arange(len(train)), n_train_batches), start=1):
        dump(f"data_batch_{i}", train.images[idx], train.labels[idx])
    dump("test_batch", test.images, test.labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in (train.classes or CIFAR10_CLASSES)],
                     b"num_vis": 3072, b"num_cases_per_batch": len(train) // n_train_batches}, f)
    return folder


# ---------------------------------------------------------------- synthetic dataset
SYNTHETIC_CLASSES = [f"pattern{i}" for i in range(10)]


def make_synthetic(n: int, seed: int = 0, image_size: int = 32, num_classes: int = 10) -> ImageData:
    """Procedurally generated images: class = (grating orientation, spatial frequency, colour).

    Each class is a sinusoidal grating with its own orientation and frequency and a class colour;
    every image gets a random phase, a random colour jitter, a random bright blob and pixel noise,
    so a small CNN must learn orientation/frequency/colour features (well above chance in a couple
    of epochs, far from trivial). Deterministic from `seed`.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    angle = np.pi * (np.arange(num_classes) % 5) / 5                      # 5 orientations
    freq = np.where(np.arange(num_classes) < 5, 2.0, 4.0) * 2 * np.pi / image_size  # 2 frequencies
    hue = np.linspace(0, 1, num_classes, endpoint=False)
    base_colour = 0.5 + 0.35 * np.stack([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], 1)

    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    a, f = angle[labels][:, None, None], freq[labels][:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    a = a + rng.normal(0, 0.08, size=(n, 1, 1))                            # orientation jitter
    wave = np.sin(f * (xx * np.cos(a) + yy * np.sin(a)) + phase)           # (N, H, W)
    cy, cx = rng.uniform(0, image_size, size=(2, n, 1, 1))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (image_size / 6) ** 2))
    colour = base_colour[labels] + rng.normal(0, 0.12, size=(n, 3))        # (N, 3)
    img = (0.5 + 0.3 * wave[:, None] * colour[:, :, None, None]
           + 0.25 * blob[:, None] * rng.uniform(-1, 1, size=(n, 3, 1, 1))
           + rng.normal(0, 0.08, size=(n, 3, image_size, image_size)))
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    classes = SYNTHETIC_CLASSES if num_classes == 10 else [f"pattern{i}" for i in range(num_classes)]
    return ImageData(torch.from_numpy(img), torch.from_numpy(labels.astype(np.int64)), classes)


def load_synthetic(data_dir=None, download=False, train_size=5000, test_size=1000, seed=0):
    return make_synthetic(train_size, seed=seed), make_synthetic(test_size, seed=seed + 1_000_003)


DATASETS = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "synthetic": load_synthetic,
}


def load_dataset(name: str, data_dir: str = "./data", download: bool = False, **kwargs):
    """-> (train ImageData, test ImageData). Unknown names list the valid ones."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name != "synthetic" and not os.path.isdir(data_dir) and not download:
        raise UserError(f"data directory {data_dir} does not exist (create it and put the {name} "
                        f"files there, or pass --download)")
    return DATASETS[name](data_dir, download, **kwargs) if name == "synthetic" else \
        DATASETS[name](data_dir, download)


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

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, C, H, W) uint8 on any device; returns an augmented uint8 batch, same shape."""
        b, _, h, w = x.shape
        dev = x.device
        if self.crop_padding > 0:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(dev)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(dev)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B,1,H,1)
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B,1,1,W)
            bi = torch.arange(b, device=dev)[:, None, None, None]
            ci = torch.arange(x.shape[1], device=dev)[None, :, None, None]
            x = padded[bi, ci, rows, cols]
        if self.hflip:
            m = (torch.rand(b, generator=gen) < 0.5).to(dev)[:, None, None, None]
            x = torch.where(m, x.flip(3), x)
        if self.vflip:
            m = (torch.rand(b, generator=gen) < 0.5).to(dev)[:, None, None, None]
            x = torch.where(m, x.flip(2), x)
        return x


class TensorLoader:
    """Iterates (x float normalised (B, C, H, W), y (B,)) from device-resident uint8 images.

    Shuffling and augmentation are per batch with tensor ops. Randomness is stateless: the
    order of epoch e comes from a generator seeded with (seed, e) and the augmentation of batch i
    from (seed, e, i), so a run is reproducible from its seed on any device, can resume at any
    step (`iterate(epoch, start_step)`), and ranks of a distributed run agree on the shuffle
    (`rank`/`world_size` take every world_size-th batch-sized shard of the same order).
    """

    def __init__(self, data: ImageData, batch_size: int, device="cpu", mean=None, std=None,
                 shuffle=False, augment: Augment | None = None, drop_last=False, seed=0,
                 channels_last=False, rank=0, world_size=1):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        c = self.images.shape[1]
        mean = torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float32)
        std = torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float32)
        # fold /255 and normalisation into one multiply-add: x * scale + shift
        self.scale = (1.0 / (255.0 * std)).reshape(1, c, 1, 1).to(self.device)
        self.shift = (-mean / std).reshape(1, c, 1, 1).to(self.device)
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = int(seed)
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # advanced by each plain `for batch in loader`

    def _indices(self, epoch):
        """This rank's sample indices for `epoch` (a CPU LongTensor)."""
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            order = order[self.rank::self.world_size]
        return order

    def __len__(self):
        n = len(self._indices(0)) if self.world_size > 1 else len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self):
        """Samples this rank sees per epoch."""
        n = len(self._indices(0)) if self.world_size > 1 else len(self.labels)
        return len(self) * self.batch_size if self.drop_last else n

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.float() * self.scale + self.shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def iterate(self, epoch: int, start_step: int = 0):
        """Batches of `epoch`, starting at batch `start_step` (for an exact resume)."""
        order = self._indices(epoch)
        n = len(order)
        plain = not self.shuffle and self.world_size == 1
        if not plain:
            order = order.to(self.device)
        for i in range(start_step, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if plain:
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.images[idx], self.labels[idx]
            if self.augment is not None:
                gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + i)
                xb = self.augment(xb, gen)
            yield self.normalise(xb), yb

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iterate(epoch)
