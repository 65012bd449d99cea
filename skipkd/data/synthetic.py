"""The built-in procedurally generated dataset (no download)."""
import numpy as np
import torch

from ..errors import UserError
from .common import ImageData


SYNTHETIC_CLASSES = [f"pattern{i}" for i in range(10)]
MAX_SYNTHETIC_SIZE = 1_000_000  # images per split (3 KB each at 32x32): --synthetic-*-size's bound


def make_synthetic(n: int, seed: int = 0, image_size: int = 32, num_classes: int = 10) -> ImageData:
    """Procedurally generated images: class = (grating orientation, spatial frequency, colour).

    Each class is a sinusoidal grating with its own orientation and frequency and a class colour;
    every image gets a random phase, a random colour jitter, a random bright blob and pixel noise,
    so a small CNN must learn orientation/frequency/colour features (well above chance in a couple
    of epochs, far from trivial). Deterministic from `seed`.
    """
    # the last guard before the arrays are allocated (callers check their own inputs first)
    bounds = {"size": (n, 0, MAX_SYNTHETIC_SIZE), "image size": (image_size, 1, 1024),
              "class count": (num_classes, 1, 1000)}
    for name, (value, lo, hi) in bounds.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not lo <= value <= hi:
            raise UserError(f"synthetic dataset: {name} {str(value)[:40]!r} is not an integer "
                            f"in {lo}..{hi:,}")
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


SYNTHETIC_SEED = 1234  # the training scripts' synthetic dataset is fixed; --seed changes training


def load_synthetic(data_dir=None, download=False, train_size=5000, test_size=1000, seed=0,
                   test=True):
    return (make_synthetic(train_size, seed=seed),
            make_synthetic(test_size, seed=seed + 1_000_003) if test else None)
