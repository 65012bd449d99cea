"""What every reader shares: ImageData, label and pixel checks, one-line messages."""
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)  # how the reader preprocessed it (goes to DataDesc.preprocessing)

    def __len__(self):
        return int(self.labels.shape[0])

    def subset(self, idx) -> "ImageData":
        return ImageData(self.images[idx], self.labels[idx], list(self.classes), dict(self.info))


def _one_line(exc, limit=120):
    """An exception as one short line (messages from a file's contents may hold newlines)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


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


def _missing(name, data_dir, folder, url):
    raise UserError(f"{name} not found: expected {os.path.join(data_dir, folder)}/ "
                    f"(extract {url} into {data_dir}, or pass --download)")


def _try_download(tv_cls, data_dir, name, folder, url):
    try:
        tv_cls(root=data_dir, train=True, download=True)
    except Exception as exc:  # network errors come in many types; report them on one line
        raise UserError(f"could not download {name} ({type(exc).__name__}); place {folder}/ "
                        f"from {url} in {data_dir}") from None


def _warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)
