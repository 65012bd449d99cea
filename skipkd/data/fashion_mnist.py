"""Fashion-MNIST from its IDX files (plain or .gz)."""
import gzip
import math
import os
import struct
import zlib

import numpy as np
import torch

from ..errors import UserError
from .common import ImageData, _check_labels, _try_download


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_FMNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"


def read_idx(path) -> np.ndarray:
    """One IDX file (plain or .gz): magic 0x0000 <dtype byte> <ndim byte>, ndim big-endian
    uint32 sizes, then the row-major data. Anything else is a one-line UserError."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise UserError(f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise UserError(f"{path}: the IDX header says {'x'.join(map(str, dims))} values "
                        f"({count * dtype.itemsize} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)


def write_idx(path, array: np.ndarray):
    """Write an unsigned-byte array as one IDX file (gzip-compressed when path ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header + array.tobytes())


def _find_idx_folder(data_dir, subfolders, splits=("train", "test")):
    """The first of data_dir and its subfolders holding the files of `splits` (plain or .gz,
    also the 'train-images.idx3-ubyte' spelling) -> (folder, {base name: path}); else a
    UserError."""
    bases = [b for split in splits for b in _FMNIST_FILES[split]]
    best = None
    for folder in [data_dir] + [os.path.join(data_dir, s) for s in subfolders]:
        found = {}
        for base in bases:
            for name in (base, base + ".gz", base.replace("-idx", ".idx"),
                         base.replace("-idx", ".idx") + ".gz"):
                if os.path.isfile(os.path.join(folder, name)):
                    found[base] = os.path.join(folder, name)
                    break
        if len(found) == len(bases):
            return folder, found
        if found and (best is None or len(found) > len(best[1])):
            best = (folder, found)
    if best is not None:
        missing = [b for b in bases if b not in best[1]]
        raise UserError(f"Fashion-MNIST in {best[0]} is incomplete: missing {', '.join(missing)} "
                        f"(plain or .gz)")
    return None, None


def _read_idx_pair(images_path, labels_path, num_classes):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{images_path}: expected N x H x W unsigned bytes, got "
                        f"{'x'.join(map(str, images.shape))} {images.dtype}")
    if labels.ndim != 1:
        raise UserError(f"{labels_path}: expected a 1-D label vector, got shape {labels.shape}")
    if len(labels) != len(images):
        raise UserError(f"{images_path} has {len(images)} images but {labels_path} has "
                        f"{len(labels)} labels")
    labels = _check_labels(labels, labels_path, num_classes, "labels", dataset="Fashion-MNIST")
    return images, labels


def _pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, H, W) symmetrically to at least size x size (28 -> 32: 2 px each side)."""
    n, h, w = images.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return images
    return np.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def load_fashion_mnist(data_dir, download=False, pad_to=32, test=True):
    """Fashion-MNIST from the four IDX files in data_dir, data_dir/fashion-mnist/ or
    data_dir/FashionMNIST/raw/ (torchvision's layout; --download puts them there).
    Images come back (N, 1, 32, 32) uint8: the 28x28 digits-style images zero-padded by 2 px
    on each side (the background is 0), so the models see CIFAR's input size."""
    subfolders = ["fashion-mnist", "fashion_mnist", os.path.join("FashionMNIST", "raw")]
    splits = ("train", "test") if test else ("train",)  # test=False: t10k-* never looked for
    folder, files = _find_idx_folder(data_dir, subfolders, splits)
    if folder is None:
        if not download:
            raise UserError(f"Fashion-MNIST not found: expected train-images-idx3-ubyte[.gz], "
                            f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
                            f"t10k-labels-idx1-ubyte[.gz] in {data_dir} (or its fashion-mnist/ or "
                            f"FashionMNIST/raw/ folder); get them from {_FMNIST_URL}, install "
                            f"Debian's dataset-fashion-mnist (--data-dir "
                            f"/usr/share/datasets/fashion-mnist), or pass --download")
        import torchvision
        _try_download(torchvision.datasets.FashionMNIST, data_dir, "Fashion-MNIST",
                      "the four IDX files", _FMNIST_URL)
        folder, files = _find_idx_folder(data_dir, subfolders, splits)
        if folder is None:
            raise UserError(f"the Fashion-MNIST download left no IDX files in {data_dir}")
    out = []
    for split in splits:
        img_base, lab_base = _FMNIST_FILES[split]
        images, labels = _read_idx_pair(files[img_base], files[lab_base], 10)
        h, w = images.shape[1:]
        images = _pad_to(images, pad_to) if pad_to else images
        info = {"source": folder, "channels": "grayscale (1)",
                "preprocessing": (f"{h}x{w} zero-padded to {images.shape[1]}x{images.shape[2]}"
                                  if images.shape[1:] != (h, w) else "none")}
        images = np.ascontiguousarray(images[:, None])
        if not images.flags.writeable:  # unpadded: still a view of the file's read-only bytes
            images = images.copy()
        out.append(ImageData(torch.from_numpy(images),
                             torch.from_numpy(labels), list(FASHION_MNIST_CLASSES), info))
    return out[0], (out[1] if test else None)
