"""Datasets held as one uint8 tensor, and a loader that augments whole batches on the device.

Every dataset loads to an `ImageData`: images (N, C, H, W) uint8, labels (N,) int64, class names.
Readers parse the on-disk formats directly (no per-image PIL decode), so a 50k-image CIFAR split
is one array in memory:

    cifar10, cifar100   the python pickle batches (cifar-10-batches-py/, cifar-100-python/)
    fashion-mnist       the four IDX files (plain or .gz), 28x28 grayscale zero-padded by 2 px to
                        (N, 1, 32, 32) so the nets' stride/hint sizes are those of CIFAR; 1 input
                        channel (the models take in_channels)
    svhn                train_32x32.mat / test_32x32.mat (scipy), label 10 -> digit 0
    folder              an ImageFolder tree train/<class>/*, test/<class>/* decoded once with PIL
                        into one uint8 tensor (RGB, shorter side resized + centre crop to
                        image_size)
    synthetic           procedurally generated, no files
"""
import gzip
import hashlib
import inspect
import math
import os
import pickle
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

__all__ = ["ImageData", "DATASETS", "SYNTHETIC_SEED", "load_dataset", "make_synthetic", "write_cifar10",
           "channel_stats", "TensorLoader", "Augment", "read_idx", "write_idx", "split_indices",
           "held_out_split", "IMAGE_EXTENSIONS"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)  # how the reader preprocessed it (goes to data_cfg)

    def __len__(self):
        return int(self.labels.shape[0])


# ---------------------------------------------------------------- CIFAR on-disk format
def _one_line(exc, limit=120):
    """An exception as one short line (messages from a file's contents may hold newlines)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def _latin1_encode(text, encoding="latin1"):
    """What pickles of bytes written by Python 3 at protocol < 3 call as _codecs.encode(str,
    'latin1'); any other codec or argument type is refused."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") \
            not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError("_codecs.encode is only admitted as (str, 'latin1')")
    return text.encode("latin1")


def _small_bytes(*args):
    """bytes()/bytearray() as old pickles call them: from a str or bytes, never bytes(10**12)."""
    if any(isinstance(a, int) for a in args):
        raise pickle.UnpicklingError("bytes/bytearray of an integer size is not admitted")
    return args


def _bytes(*args):
    return bytes(*_small_bytes(*args))


def _bytearray(*args):
    return bytearray(*_small_bytes(*args))


def _cifar_globals():
    """(module, name) -> object: everything a CIFAR-10/100 python batch may reference, whoever
    pickled it. The published batches (Python 2, numpy 1.x, protocol 2) need
    numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype; Python 3 pickles of them
    (write_cifar10 writes protocol 2) add _codecs.encode(str, 'latin1') for bytes and, from
    numpy 2, spell the module numpy._core.multiarray; protocol 5 uses numeric._frombuffer.
    The functions are taken from this numpy's own reduce output, so both spellings resolve to
    the installed implementation without importing the deprecated numpy.core alias."""
    probe = np.zeros(1, np.uint8)
    reconstruct = probe.__reduce__()[0]
    frombuffer = probe.__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar  # numpy integer labels
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for builtins in ("builtins", "__builtin__"):  # Python 3 / Python 2 spelling
        allowed.update({(builtins, "bytes"): _bytes, (builtins, "bytearray"): _bytearray,
                        (builtins, "set"): set, (builtins, "frozenset"): frozenset})
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class CifarUnpickler(pickle.Unpickler):
    """A pickle reader that builds only plain data: dicts, lists, tuples, str, bytes, numbers and
    numpy arrays/dtypes. Any other class or function a file names (os.system, eval, a class
    whose __reduce__ runs code, ...) is refused before it is looked up, so a crafted batch file
    cannot execute anything."""

    _allowed = None

    def find_class(self, module, name):
        if CifarUnpickler._allowed is None:
            CifarUnpickler._allowed = _cifar_globals()
        try:
            return CifarUnpickler._allowed[(module, name)]
        except (KeyError, TypeError):
            if isinstance(module, str) and isinstance(name, str):
                shown = f"{'builtins' if module == '__builtin__' else module}.{name}"
            else:
                shown = repr((module, name))
            raise _RefusedGlobal(" ".join(shown.split())[:100]) from None


def _unpickle(path):
    """Read one CIFAR python pickle with CifarUnpickler; every problem is a one-line UserError
    naming the file."""
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise UserError(f"refusing to load {path}: it asks to run or build {exc}, which a CIFAR "
                        f"batch never contains (only lists, bytes, numbers and numpy arrays)") from None
    except OSError as exc:
        raise UserError(f"cannot read CIFAR batch file {path}: {_one_line(exc)}") from None
    except Exception as exc:  # truncated, garbage, a refused argument: all one line
        raise UserError(f"cannot read CIFAR batch file {path}: not a readable pickle "
                        f"({_one_line(exc)})") from None


def _get(d, key):
    return d[key.encode()] if key.encode() in d else d[key]


def _as_array(raw, path, what):
    try:
        arr = np.asarray(raw)
    except Exception as exc:  # ragged lists, odd objects
        raise UserError(f"{path}: {what} is not an array ({_one_line(exc)})") from None
    return arr


def _check_labels(raw, path, num_classes, what="labels", first=0, dataset=None):
    """Labels from a file -> int64 (N,): whole numbers in first..first+num_classes-1, else a
    one-line UserError naming the file, the range and the first label outside it."""
    arr = _as_array(raw, path, what).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            raise UserError(f"{path}: {what} must be whole numbers, found {arr.dtype} values "
                            f"that are not")
    elif arr.dtype.kind not in "iu":
        raise UserError(f"{path}: {what} must be integers, found {arr.dtype}")
    last = first + num_classes - 1
    bad = np.flatnonzero((arr < first) | (arr > last))
    if len(bad):
        i = int(bad[0])
        value = arr[i].item()
        of = f" ({dataset} has {num_classes} classes)" if dataset else ""
        raise UserError(f"{path}: {what} must be {first}..{last}{of}, found {value} at index {i} "
                        f"({len(bad)} label(s) out of range)")
    return arr.astype(np.int64)


def _check_pixels(raw, path):
    """Image data -> uint8 (N, 3, 32, 32): unsigned bytes (or integers 0..255), 3072 per image."""
    arr = _as_array(raw, path, "'data'")
    if arr.size == 0:
        return np.zeros((0, 3, 32, 32), np.uint8)
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu":
            raise UserError(f"{path} is not a CIFAR batch file ('data' holds {arr.dtype}, not "
                            f"unsigned bytes)")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise UserError(f"{path}: pixel values must be 0..255, found "
                            f"{arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    if arr.size % 3072:
        raise UserError(f"{path} is not a CIFAR batch file ('data' has {arr.size} values, not a "
                        f"multiple of 3072 = 3 x 32 x 32; shape {tuple(arr.shape)})")
    return arr.reshape(-1, 3, 32, 32)


def _read_cifar_batches(folder, files, label_key, num_classes, dataset):
    images, labels = [], []
    for name in files:
        path = os.path.join(folder, name)
        d = _unpickle(path)
        if not isinstance(d, dict):
            raise UserError(f"{path} is not a CIFAR batch file (it holds a {type(d).__name__}, "
                            f"not a dict)")
        try:  # a readable pickle that is not a CIFAR batch: one line, not a traceback
            raw_data, raw_labels = _get(d, "data"), _get(d, label_key)
        except (KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a CIFAR batch file (no {exc} entry)") from None
        data = _check_pixels(raw_data, path)
        lab = _check_labels(raw_labels, path, num_classes, f"'{label_key}'", dataset=dataset)
        if len(lab) != len(data):
            raise UserError(f"{path} has {len(data)} images but {len(lab)} labels")
        images.append(data)
        labels.append(lab)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _read_class_names(path, names_key, num_classes, dataset):
    """The label names of a CIFAR meta file, or None when it has none; names of another count
    than the format's classes, or that are not text, are a one-line UserError."""
    d = _unpickle(path)
    if not isinstance(d, dict) or not (names_key in d or names_key.encode() in d):
        return None
    names = _get(d, names_key)
    if not isinstance(names, (list, tuple)) or \
            not all(isinstance(c, (bytes, str)) for c in names):
        raise UserError(f"{path}: '{names_key}' must be a list of names")
    if len(names) != num_classes:
        raise UserError(f"{path}: '{names_key}' lists {len(names)} names but {dataset} has "
                        f"{num_classes} classes")
    return [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in names]


def _missing(name, data_dir, folder, url):
    raise UserError(f"{name} not found: expected {os.path.join(data_dir, folder)}/ "
                    f"(extract {url} into {data_dir}, or pass --download)")


def _try_download(tv_cls, data_dir, name, folder, url):
    try:
        tv_cls(root=data_dir, train=True, download=True)
    except Exception as exc:  # network errors come in many types; report them on one line
        raise UserError(f"could not download {name} ({type(exc).__name__}); place {folder}/ "
                        f"from {url} in {data_dir}") from None


def _load_cifar(data_dir, download, name, folder_name, url, tv_name, train_files, test_files,
                label_key, meta_file, names_key, default_classes):
    """The class count is the format's (len(default_classes)): a label outside it, or a meta
    file naming another number of classes, is an error, never a silently wider model."""
    folder = os.path.join(data_dir, folder_name)
    if not os.path.isdir(folder):
        if not download:
            _missing(name, data_dir, folder_name, url)
        import torchvision
        _try_download(getattr(torchvision.datasets, tv_name), data_dir, name, folder_name, url)
    num_classes = len(default_classes)
    train = _read_cifar_batches(folder, train_files, label_key, num_classes, name)
    test = _read_cifar_batches(folder, test_files, label_key, num_classes, name)
    classes = list(default_classes)
    meta = os.path.join(folder, meta_file)
    if os.path.exists(meta):
        classes = _read_class_names(meta, names_key, num_classes, name) or classes
    return ImageData(*train, classes), ImageData(*test, list(classes))


def load_cifar10(data_dir, download=False):
    return _load_cifar(data_dir, download, "CIFAR-10", "cifar-10-batches-py",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10",
                       [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                       "batches.meta", "label_names", CIFAR10_CLASSES)


def load_cifar100(data_dir, download=False):
    return _load_cifar(data_dir, download, "CIFAR-100", "cifar-100-python",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "CIFAR100",
                       ["train"], ["test"], "fine_labels", "meta", "fine_label_names",
                       [str(i) for i in range(100)])


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


SYNTHETIC_SEED = 1234  # the training scripts' synthetic dataset is fixed; --seed changes training


def load_synthetic(data_dir=None, download=False, train_size=5000, test_size=1000, seed=0):
    return make_synthetic(train_size, seed=seed), make_synthetic(test_size, seed=seed + 1_000_003)


def _warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)
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


def _find_idx_folder(data_dir, subfolders):
    """The first of data_dir and its subfolders holding all four files (plain or .gz, also the
    'train-images.idx3-ubyte' spelling) -> (folder, {base name: path}); else a UserError."""
    bases = [b for pair in _FMNIST_FILES.values() for b in pair]
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


def load_fashion_mnist(data_dir, download=False, pad_to=32):
    """Fashion-MNIST from the four IDX files in data_dir, data_dir/fashion-mnist/ or
    data_dir/FashionMNIST/raw/ (torchvision's layout; --download puts them there).
    Images come back (N, 1, 32, 32) uint8: the 28x28 digits-style images zero-padded by 2 px
    on each side (the background is 0), so the models see CIFAR's input size."""
    subfolders = ["fashion-mnist", "fashion_mnist", os.path.join("FashionMNIST", "raw")]
    folder, files = _find_idx_folder(data_dir, subfolders)
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
        folder, files = _find_idx_folder(data_dir, subfolders)
        if folder is None:
            raise UserError(f"the Fashion-MNIST download left no IDX files in {data_dir}")
    out = []
    for split in ("train", "test"):
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
    return tuple(out)


# ---------------------------------------------------------------- SVHN (.mat files)
SVHN_CLASSES = [str(i) for i in range(10)]
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def _read_svhn_mat(path):
    try:
        import scipy.io
    except ImportError:
        raise UserError("reading SVHN's .mat files needs scipy (pip install scipy)") from None
    try:
        d = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # OSError, MatReadError, ValueError, zlib/struct errors, ...
        raise UserError(f"cannot read SVHN file {path}: {_one_line(exc)}") from None
    if "X" not in d or "y" not in d:
        raise UserError(f"{path} is not an SVHN file (no 'X' and 'y' arrays)")
    x, y = d["X"], np.asarray(d["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3:
        raise UserError(f"{path}: 'X' should be H x W x 3 x N, got {'x'.join(map(str, x.shape))}")
    if len(y) != x.shape[3]:
        raise UserError(f"{path} has {x.shape[3]} images but {len(y)} labels")
    # the format's labels are 1..10 (10 = the digit 0): 0, 11 or -1 is an error, not a class
    y = _check_labels(y, path, 10, "SVHN labels (10 stands for the digit 0)", first=1)
    y[y == 10] = 0
    if x.dtype != np.uint8:
        if x.dtype.kind not in "iu" or (x.size and (x.min() < 0 or x.max() > 255)):
            raise UserError(f"{path}: 'X' must hold pixel values 0..255, found {x.dtype}"
                            + (f" {x.min()}..{x.max()}" if x.dtype.kind in "iuf" and x.size else ""))
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False)
    return torch.from_numpy(images), torch.from_numpy(y)


def load_svhn(data_dir, download=False):
    """SVHN cropped digits: train_32x32.mat and test_32x32.mat in data_dir (or data_dir/svhn/).
    'X' is (32, 32, 3, N) uint8 -> (N, 3, 32, 32); labels 1..10 with 10 meaning the digit 0."""
    names = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

    def locate(name):
        for folder in (data_dir, os.path.join(data_dir, "svhn"), os.path.join(data_dir, "SVHN")):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        return None

    paths = {split: locate(name) for split, name in names.items()}
    missing = [names[s] for s, p in paths.items() if p is None]
    if missing:
        if not download:
            raise UserError(f"SVHN not found: expected {' and '.join(missing)} in {data_dir} (or its "
                            f"svhn/ folder); get them from {_SVHN_URL} or pass --download")
        import torchvision
        for split, p in paths.items():
            if p is None:
                try:
                    torchvision.datasets.SVHN(root=data_dir, split=split, download=True)
                except Exception as exc:  # network errors come in many types
                    raise UserError(f"could not download SVHN {names[split]} "
                                    f"({type(exc).__name__}); place it from {_SVHN_URL} in "
                                    f"{data_dir}") from None
                paths[split] = os.path.join(data_dir, names[split])
    info = {"source": os.path.dirname(paths["train"]), "preprocessing": "none"}
    return (ImageData(*_read_svhn_mat(paths["train"]), list(SVHN_CLASSES), dict(info)),
            ImageData(*_read_svhn_mat(paths["test"]), list(SVHN_CLASSES), dict(info)))


# ---------------------------------------------------------------- ImageFolder trees
# torchvision's IMG_EXTENSIONS plus .gif (PIL decodes the first frame); compared lower-case
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img):
    """Any PIL mode -> 'RGB'. 16/32-bit grayscale is scaled to 8 bits (PIL's own convert would
    clip it to white); transparency is composited onto black; P, L, 1, CMYK, YCbCr... via PIL."""
    from PIL import Image
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            a = a * 255 if a.size and a.max() <= 1.0 else a
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _decode_image(path, size):
    """-> (3, size, size) uint8: decoded, EXIF-rotated, converted to RGB, the shorter side
    resized to `size` and the centre cropped (bilinear, antialiased)."""
    from PIL import Image, ImageOps
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size (fast)
        img = ImageOps.exif_transpose(img) or img
        img = _to_rgb(img)
        if img.size != (size, size):
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _scan_split(split_dir):
    """-> ({class folder name: [image paths]} for every class folder, non-image file count,
    stray top-level file count). Hidden files and folders are ignored; files are found
    recursively inside each class folder (like torchvision's ImageFolder), in sorted order."""
    classes, skipped, stray = {}, 0, 0
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            stray += 1
            continue
        paths = []
        for root, dirs, files in os.walk(entry.path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, name))
                else:
                    skipped += 1
        classes[entry.name] = paths
    return classes, skipped, stray


def _decode_all(paths, size, what):
    """Decode `paths` into one (N, 3, size, size) uint8 array (threads: PIL releases the GIL);
    -> (array of the readable ones, boolean mask of readable)."""
    from concurrent.futures import ThreadPoolExecutor
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    failed = []

    def work(i):
        try:
            out[i] = _decode_image(paths[i], size)
            ok[i] = True
        except Exception as exc:  # corrupt, truncated, unsupported: skip and count
            failed.append(f"{os.path.basename(paths[i])} ({type(exc).__name__})")

    workers = max(1, min(8, os.cpu_count() or 1))
    if len(paths) < 64 or workers == 1:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(len(paths))))
    if failed:
        _warn(f"{what}: skipped {len(failed)} file(s) that PIL could not decode, e.g. "
              f"{', '.join(sorted(failed)[:3])}")
    return out[ok] if not ok.all() else out, ok


def load_folder(data_dir, download=False, image_size=32):
    """An ImageFolder tree: data_dir/train/<class>/<images> and data_dir/test/<class>/<images>
    (val/ is accepted when there is no test/). The class list and indices come from train/
    (sorted folder names, as torchvision's ImageFolder); a class folder without images is
    skipped with a warning; a test/ class that train/ lacks is an error. Files whose extension
    is not an image's are skipped and counted. Every image becomes RGB (see _to_rgb) of
    image_size x image_size (shorter side resized, centre crop)."""
    if download:
        raise UserError("--download is not available for --dataset folder (point --data-dir at "
                        "a folder with train/ and test/ class folders)")
    train_dir = os.path.join(data_dir, "train")
    test_dir = next((os.path.join(data_dir, s) for s in ("test", "val")
                     if os.path.isdir(os.path.join(data_dir, s))), os.path.join(data_dir, "test"))
    for d in (train_dir, test_dir):
        if not os.path.isdir(d):
            raise UserError(f"folder dataset: {d} not found (expected {data_dir}/train/<class>/"
                            f"<image> and {data_dir}/test/<class>/<image>)")
    t0 = time.perf_counter()
    splits = {}
    for split, split_dir in (("train", train_dir), ("test", test_dir)):
        found, skipped, stray = _scan_split(split_dir)
        if skipped:
            _warn(f"{split_dir}: skipped {skipped} non-image file(s) (images are "
                  f"{', '.join(IMAGE_EXTENSIONS)})")
        if stray:
            _warn(f"{split_dir}: ignored {stray} file(s) outside the class folders")
        splits[split] = found
    train_found, test_found = splits["train"], splits["test"]
    if not any(train_found.values()):
        raise UserError(f"folder dataset: no images in {train_dir} (expected "
                        f"train/<class>/<image> with one of {', '.join(IMAGE_EXTENSIONS)})")

    def decode(found, split_dir):
        paths = [p for c in found for p in found[c]]
        names = [c for c in found for _ in found[c]]
        images, ok = _decode_all(paths, image_size, split_dir)
        return images, [n for n, k in zip(names, ok) if k]

    train_images, train_names = decode(train_found, train_dir)
    present = set(train_names)
    classes = [c for c in train_found if c in present]
    empty = [c for c in train_found if c not in present]
    if empty:
        _warn(f"{train_dir}: class folder(s) without readable images skipped: {', '.join(empty)} "
              f"(the classes are the other {len(classes)})")
    if not classes:
        raise UserError(f"folder dataset: none of the images in {train_dir} could be decoded")
    unknown = [c for c, paths in test_found.items() if paths and c not in classes]
    if unknown:
        raise UserError(f"folder dataset: {test_dir} has class folder(s) {', '.join(unknown)} with "
                        f"images but {train_dir} has no images of them (the classes come from "
                        f"train/: {', '.join(classes)})")
    empty_test = [c for c, paths in test_found.items() if not paths]
    if empty_test:
        _warn(f"{test_dir}: empty class folder(s) skipped: {', '.join(empty_test)}")
    test_images, test_names = decode({c: p for c, p in test_found.items() if p}, test_dir)
    if len(test_names) == 0:
        raise UserError(f"folder dataset: no readable images in {test_dir}")
    index = {c: i for i, c in enumerate(classes)}
    info = {"source": os.path.abspath(data_dir),
            "preprocessing": f"RGB, shorter side resized to {image_size} + centre crop, "
                             f"transparency on black"}
    print(f"folder dataset: {len(train_names)} train / {len(test_names)} test images, "
          f"{len(classes)} classes, decoded in {time.perf_counter() - t0:.1f}s", flush=True)
    return (ImageData(torch.from_numpy(train_images),
                      torch.tensor([index[n] for n in train_names], dtype=torch.int64),
                      list(classes), dict(info)),
            ImageData(torch.from_numpy(test_images),
                      torch.tensor([index[n] for n in test_names], dtype=torch.int64),
                      list(classes), dict(info)))


# ---------------------------------------------------------------- held-out validation split
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


def held_out_split(data: ImageData, fraction: float, seed: int = 0):
    """-> (train part, validation part, digest of the validation indices)."""
    tr, va = split_indices(data.labels, fraction, seed)
    digest = hashlib.sha1(va.numpy().astype("<i8").tobytes()).hexdigest()[:12]
    part = lambda idx: ImageData(data.images[idx], data.labels[idx], list(data.classes),
                                 dict(data.info))
    return part(tr), part(va), digest


DATASETS = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "fashion-mnist": load_fashion_mnist,
    "svhn": load_svhn,
    "folder": load_folder,
    "synthetic": load_synthetic,
}


def load_dataset(name: str, data_dir: str = "./data", download: bool = False, **kwargs):
    """-> (train ImageData, test ImageData). Unknown names list the valid ones. kwargs: reader
    options (synthetic: train_size, test_size, seed; folder: image_size; fashion-mnist: pad_to);
    those the chosen reader does not take are ignored."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name != "synthetic" and not os.path.isdir(data_dir) and not download:
        raise UserError(f"data directory {data_dir} does not exist (create it and put the {name} "
                        f"files there, or pass --download)")
    reader = DATASETS[name]
    # options a reader does not take are dropped, so callers can pass e.g. image_size to any
    accepted = inspect.signature(reader).parameters
    return reader(data_dir, download, **{k: v for k, v in kwargs.items() if k in accepted})


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

    def _order(self, epoch):
        """The sample order of `epoch` (a CPU LongTensor), the same on every rank."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=gen)

    def _global_batch(self):
        return self.batch_size * self.world_size

    def __len__(self):
        """Batches per epoch on this rank (equal on every rank, as DDP needs)."""
        n, g = len(self.labels), self._global_batch()
        if self.drop_last:
            return n // g
        if self.world_size == 1:
            return math.ceil(n / g)
        # a last global batch smaller than world_size would leave a rank without samples
        return n // g + (1 if n % g >= self.world_size else 0)

    @property
    def num_samples(self):
        """Samples seen per epoch over all ranks."""
        n, g = len(self.labels), self._global_batch()
        return min(n, len(self) * g)

    def batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        """This rank's sample indices in batch `step` of `epoch`: a global batch of
        batch_size * world_size consecutive samples of the epoch order, split across ranks."""
        g = self._global_batch()
        chunk = self._order(epoch)[step * g:(step + 1) * g]
        return chunk[self.rank::self.world_size]

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.float() * self.scale + self.shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def iterate(self, epoch: int, start_step: int = 0):
        """Batches of `epoch`, starting at batch `start_step` (for an exact resume)."""
        plain = not self.shuffle and self.world_size == 1
        order = None if plain else self._order(epoch).to(self.device)
        g = self._global_batch()
        for i in range(start_step, len(self)):
            if plain:
                lo, hi = i * self.batch_size, (i + 1) * self.batch_size
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[i * g:(i + 1) * g][self.rank::self.world_size]
                xb, yb = self.images[idx], self.labels[idx]
            if self.augment is not None:
                # one generator per global batch, then this rank's share of its draws
                gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + i)
                xb = self.augment(xb, gen, rank=self.rank, world_size=self.world_size)
            yield self.normalise(xb), yb

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iterate(epoch)
