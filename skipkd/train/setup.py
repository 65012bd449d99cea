"""Setting up a run: the device, the seeds, the data and its loaders, a model and the
environment record."""
import os
import platform
import random
from typing import NamedTuple

import numpy as np
import torch

from ..models.config import ModelConfig

from ..data import (SYNTHETIC_SEED, TEST_AS_VAL, Augment, DataDesc, TensorLoader, channel_stats,
                    held_out_split, load_dataset)
from ..data.stream import (IMAGENET_MEAN, IMAGENET_STD, FileImages, StreamLoader, eval_resize,
                           scan_files)

STREAM_FROM = 128  # --pipeline auto streams a folder dataset from this image size up
from ..errors import UserError
from .distributed import dist_info

__all__ = ["resolve_device", "seed_everything", "prepare_data", "Loaders", "make_loaders", "model_config",
           "build_model", "environment",
           "cpu_model", "describe_machine"]


def resolve_device(name: str) -> torch.device:
    """The torch.device for --device (auto: this rank's GPU if there is one, else the CPU); on
    CUDA it also turns on cuDNN's autotuner (the input size is fixed, so each convolution's
    fastest algorithm is picked once)."""
    dev = _resolve_device(name)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return dev

def _resolve_device(name: str) -> torch.device:
    info = dist_info()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank) if info.enabled else torch.device("cuda")
        return torch.device("cpu")
    if info.enabled and name == "cuda":
        return torch.device("cuda", info.local_rank)
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {name} requested but only {torch.cuda.device_count()} CUDA "
                        f"device(s) are visible")
    if dev.type not in ("cpu", "cuda"):  # e.g. 'mps', 'xla': a RuntimeError traceback later
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return dev

def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

def prepare_data(args):
    """-> (train, test, DataDesc). Normalisation statistics come from the training images.

    With --val-split F > 0 a stratified, seeded (--split-seed) fraction F of the training set is
    held out for validation (checkpoint selection) and the test set is only reported:
    its protocol says which ('test-as-val' or 'held-out-val (...)'), its train_size counts the
    images trained on and its val_size the held-out ones. `train` is still
    the whole (--limit-train'ed) training split: make_loaders carves the same held-out part out
    of it (split_indices is deterministic), so the statistics here are of the train part only.
    """
    name = args.dataset
    if name == "auto":
        if os.path.isdir(os.path.join(args.data_dir, "cifar-10-batches-py")) or args.download:
            name = "cifar10"
        else:
            print(f"notice: CIFAR-10 not found in {args.data_dir}/cifar-10-batches-py; using the "
                  f"built-in synthetic dataset instead (put CIFAR-10 there or pass --download)")
            name = "synthetic"
    kwargs = {"image_size": args.image_size}  # readers that do not take it ignore it
    if name == "synthetic":
        kwargs = dict(train_size=args.synthetic_train_size, test_size=args.synthetic_test_size,
                      seed=SYNTHETIC_SEED)  # the dataset is fixed; --seed only changes training
    fraction = float(args.val_split or 0)
    report_test = args.report_test
    if not report_test and fraction <= 0:
        raise UserError("--no-report-test needs a held-out validation split (--val-split > 0): "
                        "without one the test set is the validation set")
    if streams(args, name):
        return prepare_files(args, name, fraction, report_test)
    train, test = load_dataset(name, args.data_dir, args.download, test=report_test, **kwargs)
    if args.limit_train:
        train.images, train.labels = train.images[:args.limit_train], train.labels[:args.limit_train]
    if args.limit_test and test is not None:
        test.images, test.labels = test.images[:args.limit_test], test.labels[:args.limit_test]
    if len(train) == 0 or (test is not None and len(test) == 0):
        raise UserError(f"dataset {name} in {args.data_dir} has no images")
    if name == "svhn" and args.hflip:
        print("notice: --hflip mirrors SVHN's digits at random; --no-hflip usually suits digits")
    fit, split = validation_split(train, test, fraction, int(args.split_seed or 0))
    c = fit.images.shape[1]
    if args.normalize:
        mean, std = channel_stats(fit.images)
    else:
        mean, std = [0.0] * c, [1.0] * c
    num_classes = max(len(train.classes), int(train.labels.max()) + 1)
    data = DataDesc(dataset=name, mean=tuple(mean), std=tuple(std), classes=tuple(train.classes),
                    num_classes=num_classes, in_channels=c, image_size=int(train.images.shape[-1]),
                    train_size=len(fit), test_size=len(test) if test is not None else 0,
                    test_read=report_test, preprocessing=train.info.get("preprocessing"), **split)
    return train, test, data


def validation_split(train, test, fraction: float, split_seed: int):
    """(the part of `train` trained on, DataDesc's split fields): test-as-val for fraction 0,
    else a stratified, seeded held-out part of train (ImageData or FileImages)."""
    if fraction <= 0:
        return train, {"protocol": TEST_AS_VAL, "val_split": 0.0, "val_size": len(test)}
    fit, val, digest = held_out_split(train, fraction, split_seed)
    if len(val) == 0 or len(fit) == 0:
        raise UserError(f"--val-split {fraction:g} of {len(train)} training images leaves "
                        f"{len(fit)} to train on and {len(val)} to validate on; use a "
                        f"fraction that leaves both non-empty")
    return fit, {"protocol": f"held-out-val ({100 * fraction:g}% of train, stratified, "
                             f"split seed {split_seed})",
                 "val_split": fraction, "split_seed": split_seed, "val_size": len(val),
                 "val_indices_sha1": digest}


def streams(args, name: str) -> bool:
    """Whether the data are decoded batch by batch from their files (--pipeline)."""
    if args.pipeline != "auto":
        return args.pipeline == "stream"
    return name == "imagenet" or (name == "folder" and args.image_size >= STREAM_FROM)


def prepare_files(args, name, fraction, report_test):
    """prepare_data for a streamed dataset: the files, the held-out split of their labels, and
    ImageNet's normalisation (the pretrained networks' own)."""
    if args.download:
        raise UserError(f"--download is not available for --dataset {name}")
    if not os.path.isdir(args.data_dir):
        raise UserError(f"data directory {args.data_dir} does not exist")
    tests = ("val", "test") if name == "imagenet" else ("test", "val")
    train, test = scan_files(args.data_dir, name, tests, test=report_test)
    if args.limit_train:
        train = train.subset(range(min(args.limit_train, len(train))))
    if args.limit_test and test is not None:
        test = test.subset(range(min(args.limit_test, len(test))))
    fit, split = validation_split(train, test, fraction, int(args.split_seed or 0))
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if args.normalize else ((0.0,) * 3, (1.0,) * 3)
    size = args.image_size
    print(f"{name}: {len(train)} train / {len(test) if test is not None else 'no'} test images "
          f"in {len(train.classes)} classes, streamed from {args.data_dir}", flush=True)
    data = DataDesc(dataset=name, mean=tuple(mean), std=tuple(std), classes=tuple(train.classes),
                    num_classes=len(train.classes), in_channels=3, image_size=size,
                    train_size=len(fit), test_size=len(test) if test is not None else 0,
                    test_read=report_test, **split,
                    preprocessing=f"streamed: train RandomResizedCrop({size}) + horizontal flip; "
                                  f"eval resize {eval_resize(size)} + centre crop {size}; RGB; "
                                  + ("ImageNet mean/std" if args.normalize else "not normalised"))
    return train, test, data


class Loaders(NamedTuple):
    train: TensorLoader
    val: TensorLoader             # checkpoint selection: held-out images, or the test set
    report: TensorLoader | None   # the test set under a held-out split (reported once per stage)


def make_loaders(train, test, data: DataDesc, args, device) -> Loaders:
    """-> Loaders(train, val, report). Under 'test-as-val' the validation loader
    is the test set's and report_loader is None; under a held-out split the validation loader
    holds the held-out training images and report_loader the test set (evaluated once per
    stage by train_stage for the report)."""
    report_loader = None
    info = dist_info()
    shard = {"rank": info.rank, "world_size": info.world_size}  # each rank its share of a batch
    if data.held_out:
        train, val, digest = held_out_split(train, data.val_split, data.split_seed)
        if digest != data.val_indices_sha1 or len(val) != data.val_size:
            raise RuntimeError("make_loaders: the held-out split differs from prepare_data's")
        if test is not None and not isinstance(test, FileImages):  # None: --no-report-test
            report_loader = TensorLoader(test, args.eval_batch_size, device, data.mean,
                                         data.std, channels_last=args.channels_last,
                                         **shard)
    else:
        val = test
    if isinstance(train, FileImages):
        report = test if data.held_out else None  # None too when the test split was not read
        return Loaders(*stream_loaders(train, val, report, data, args, device, shard))
    aug = Augment(crop_padding=args.crop_padding, hflip=args.hflip, vflip=args.vflip)
    train_loader = TensorLoader(train, args.batch_size, device, data.mean, data.std,
                                shuffle=args.shuffle, augment=aug, seed=args.seed,
                                channels_last=args.channels_last, **shard)
    val_loader = TensorLoader(val, args.eval_batch_size, device, data.mean, data.std,
                              channels_last=args.channels_last, **shard)
    return Loaders(train_loader, val_loader, report_loader)


def stream_loaders(train, val, report, data: DataDesc, args, device, shard):
    """(train, val, report) StreamLoaders: the ImageNet pipeline, decoded by --workers."""
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    common = dict(device=device, mean=data.mean, std=data.std, image_size=data.image_size,
                  workers=workers, channels_last=args.channels_last, **shard)
    train_loader = StreamLoader(train, args.batch_size, train=True, shuffle=args.shuffle,
                                seed=args.seed, **common)
    val_loader = StreamLoader(val, args.eval_batch_size, **common)
    report_loader = (StreamLoader(report, args.eval_batch_size, **common)
                     if report is not None else None)
    return train_loader, val_loader, report_loader


def model_config(args, arch: str, width: int, data: DataDesc, weights=None) -> ModelConfig:
    """The network `arch` at base width `width` for this data, with the run's attention flags
    (--placement, --attn, --eca-k) and initialisation recipe (--init, --zero-init-residual);
    weights: pretrained weights to start from (--init-weights and its kin)."""
    return ModelConfig(arch, num_classes=data.num_classes, base_width=width,
                       in_channels=data.in_channels, image_size=data.image_size,
                       placement=args.placement, eca_k=args.eca_k, attn=args.attn,
                       init=args.init or "model", zero_residual=bool(args.zero_init_residual),
                       weights=weights)


def build_model(config: ModelConfig, device, channels_last=False, replace_head=True):
    """config.build() on `device` (its weights' line printed); a width or placement the family
    does not define, or weights that do not fit, is a UserError."""
    try:
        model, note = config.build(replace_head)
        model = model.to(device)
    except ValueError as exc:
        raise UserError(f"{config.arch}: {exc}") from None
    if note is not None and torch.device(device).type != "meta":
        print(note)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model

def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_machine(device, precision: str) -> str:
    """One line: the device (GPU name, or CPU model with the kernel family PyTorch uses, which
    ATEN_CPU_CAPABILITY can change), the precision and the thread count."""
    if device.type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        where = (f"CPU {cpu_model()}, kernels {torch.backends.cpu.get_cpu_capability()}, "
                 f"{torch.get_num_threads()} threads")
    return f"{where}, precision {precision}"


def environment(device):
    return {"torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads(),
            "world_size": dist_info().world_size, "dist_backend": dist_info().backend,
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
