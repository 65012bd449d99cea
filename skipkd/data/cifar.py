"""CIFAR-10 and CIFAR-100 (the python batches), read by a restricted unpickler."""
import os
import pickle

import numpy as np
import torch

from ..errors import UserError
from .common import ImageData, _check_labels, _check_pixels, _missing, _one_line, _try_download


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


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


def _load_cifar(data_dir, download, name, folder_name, url, tv_name, train_files, test_files,
                label_key, meta_file, names_key, default_classes, test=True):
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
    test = _read_cifar_batches(folder, test_files, label_key, num_classes, name) if test else None
    classes = list(default_classes)
    meta = os.path.join(folder, meta_file)
    if os.path.exists(meta):
        classes = _read_class_names(meta, names_key, num_classes, name) or classes
    return ImageData(*train, classes), (ImageData(*test, list(classes)) if test else None)


def load_cifar10(data_dir, download=False, test=True):
    return _load_cifar(data_dir, download, "CIFAR-10", "cifar-10-batches-py",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10",
                       [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                       "batches.meta", "label_names", CIFAR10_CLASSES, test)


def load_cifar100(data_dir, download=False, test=True):
    return _load_cifar(data_dir, download, "CIFAR-100", "cifar-100-python",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "CIFAR100",
                       ["train"], ["test"], "fine_labels", "meta", "fine_label_names",
                       [str(i) for i in range(100)], test)


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
