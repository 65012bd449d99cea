"""SVHN from train_32x32.mat / test_32x32.mat."""
import os

import numpy as np
import torch

from ..errors import UserError
from .common import ImageData, _check_labels, _one_line


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


def load_svhn(data_dir, download=False, test=True):
    """SVHN cropped digits: train_32x32.mat and test_32x32.mat in data_dir (or data_dir/svhn/).
    'X' is (32, 32, 3, N) uint8 -> (N, 3, 32, 32); labels 1..10 with 10 meaning the digit 0."""
    names = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
    if not test:  # the test file is neither looked for nor read
        del names["test"]

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
            ImageData(*_read_svhn_mat(paths["test"]), list(SVHN_CLASSES), dict(info))
            if test else None)


# ---------------------------------------------------------------- ImageFolder trees
# torchvision's IMG_EXTENSIONS plus .gif (PIL decodes the first frame); compared lower-case
