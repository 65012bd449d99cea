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

One module per reader (cifar, fashion_mnist, svhn, folder, synthetic), the split (split) and
the device-resident loader with batched augmentation (loader); common holds what they share.
"""

import inspect
import os

from ..errors import UserError
from .cifar import CIFAR10_CLASSES, CifarUnpickler, load_cifar10, load_cifar100, write_cifar10
from .common import ImageData
from .desc import TEST_AS_VAL, DataDesc
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx, write_idx
from .folder import IMAGE_EXTENSIONS, load_folder
from .loader import Augment, TensorLoader, channel_stats
from .split import held_out_split, split_indices
from .svhn import SVHN_CLASSES, load_svhn
from .synthetic import (MAX_SYNTHETIC_SIZE, SYNTHETIC_CLASSES, SYNTHETIC_SEED, load_synthetic,
                        make_synthetic)

__all__ = ["ImageData", "DataDesc", "TEST_AS_VAL", "DATASETS", "SYNTHETIC_SEED", "MAX_SYNTHETIC_SIZE", "load_dataset",
           "make_synthetic", "write_cifar10", "channel_stats", "TensorLoader", "Augment",
           "read_idx", "write_idx",
           "split_indices", "held_out_split", "IMAGE_EXTENSIONS", "CIFAR10_CLASSES",
           "FASHION_MNIST_CLASSES", "SVHN_CLASSES", "SYNTHETIC_CLASSES", "CifarUnpickler",
           "load_cifar10", "load_cifar100", "load_fashion_mnist", "load_svhn", "load_folder",
           "load_synthetic"]

DATASETS = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "fashion-mnist": load_fashion_mnist,
    "svhn": load_svhn,
    "folder": load_folder,
    "synthetic": load_synthetic,
}


def load_dataset(name: str, data_dir: str = "./data", download: bool = False, test: bool = True,
                 **kwargs):
    """-> (train ImageData, test ImageData). Unknown names list the valid ones. kwargs: reader
    options (synthetic: train_size, test_size, seed; folder: image_size; fashion-mnist: pad_to);
    those the chosen reader does not take are ignored. test=False: the test split is neither
    read nor looked for (every reader takes it), and None comes back in its place."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name != "synthetic" and not os.path.isdir(data_dir) and not download:
        raise UserError(f"data directory {data_dir} does not exist (create it and put the {name} "
                        f"files there, or pass --download)")
    reader = DATASETS[name]
    # options a reader does not take are dropped, so callers can pass e.g. image_size to any
    accepted = inspect.signature(reader).parameters
    return reader(data_dir, download, test=test,
                  **{k: v for k, v in kwargs.items() if k in accepted})
