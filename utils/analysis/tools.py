"""Shared pieces of the analysis scripts (evaluate, efficiency, ONNX export, feature maps):
the test (or held-out validation) split of a checkpoint's run, batched predictions with
optional flip TTA, confusion matrices, parameter / MAC counts and CPU timing."""
import functools
import os
import statistics
import time

import torch
from torch import nn

from skipkd.models import OutputsAsTuple, count_parameters  # noqa: F401  (re-exported for the tools)

from skipkd.data import (MAX_SYNTHETIC_SIZE, SYNTHETIC_SEED, ImageData, TensorLoader, held_out_split,
                    load_dataset)
from skipkd.data.stream import decode_eval, scan_files
from skipkd.errors import UserError

__all__ = ["checkpoint_test_data", "checkpoint_data_dir", "checkpoint_loader", "predict_logits", "confusion_matrix",
           "confusion_figure", "count_parameters", "count_macs", "time_latency",
           "time_throughput", "OutputsAsTuple", "file_size_mb"]



# the saved args that size what a tool allocates, bounded as the training scripts' flags are
# (skipkd/cli.py): a checkpoint asking for more is damaged or crafted, refused before any work
ARG_BOUNDS = {"synthetic_train_size": (1, MAX_SYNTHETIC_SIZE),
              "synthetic_test_size": (1, MAX_SYNTHETIC_SIZE), "image_size": (8, 1024),
              "limit_train": (1, 10 ** 9), "limit_test": (1, 10 ** 9),
              "eval_batch_size": (1, 65_536), "split_seed": (0, 2 ** 32 - 1)}


def _field(path, where, key):
    return f"{path}: checkpoint field {where}.{key}" if path else f"the checkpoint's {where}.{key}"


def _ckpt_number(section: dict, key: str, default, kind=int, where="args", path=None):
    """A number saved in a checkpoint's metadata, checked before use (a checkpoint is not
    trusted): None/missing -> default; anything but an int/float (or a numeric string), or a
    value outside ARG_BOUNDS -> a one-line UserError naming the file (path) and the field."""
    value = section.get(key)
    if value is None:
        return default
    field = _field(path, where, key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{field} is not a number ({type(value).__name__})")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{field} is not a number: {str(value)[:40]!r}") from None
    if kind is float and number != number:  # NaN
        raise UserError(f"{field} is not a number: NaN")
    lo, hi = ARG_BOUNDS.get(key, (None, None))
    if lo is not None and not lo <= number <= hi:
        raise UserError(f"{field} is {number:,}, outside {lo:,}..{hi:,}")
    return number


def _ckpt_dict(ckpt: dict, key: str) -> dict:
    value = ckpt.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"the checkpoint's '{key}' entry is not a mapping ({type(value).__name__})")
    return value


def checkpoint_data_dir(ckpt: dict, data_dir: str | None = None, name: str | None = None,
                        log=print) -> str:
    """The folder to read the data from: `data_dir` when the user gave one; else the run's
    --data-dir saved in the checkpoint, which must be a string and is announced with one line
    through `log` (a checkpoint could otherwise send a tool to any folder); else ./data."""
    if data_dir is not None:
        return data_dir
    saved = _ckpt_dict(ckpt, "args").get("data_dir")
    if saved is None or saved == "":
        return "./data"
    if not isinstance(saved, str) or "\0" in saved:
        raise UserError(f"the checkpoint's args.data_dir is not a folder name "
                        f"({type(saved).__name__}): pass --data-dir")
    if name != "synthetic" and log is not None:  # the synthetic set is made in memory
        where = "" if os.path.isabs(saved) else f" ({os.path.abspath(saved)})"
        log(f"data folder {saved!r}{where} taken from the checkpoint's saved args; pass "
            f"--data-dir to choose another")
    return saved


# Long on purpose: each field of the (untrusted) checkpoint that says where its data is gets
# its own check and message, in the order a user would fix them.
def checkpoint_test_data(ckpt: dict, dataset: str | None = None, data_dir: str | None = None,
                         download: bool = False, limit: int | None = None,
                         split: str = "test", log=print, info: dict | None = None,
                         path: str | None = None) -> tuple[ImageData, str]:
    """A split of the data a checkpoint was trained on, rebuilt like skipkd/train/setup.prepare_data.

    split 'test': the test split (the run's validation set under the 'test-as-val' protocol);
    'val': the run's validation set itself: the held-out part of the training split under
    --val-split (rebuilt with its fraction and split seed, and checked against the recorded
    digest), else the test split. dataset / data_dir override the checkpoint's own; without
    data_dir the run's saved --data-dir (relative to where the run was started) is used and
    announced through `log` (see checkpoint_data_dir). limit: first N images; default for the
    test split: the run's --limit-test when the dataset is the run's own. Every value read from
    the checkpoint is type-checked first (one-line UserError). info: a dict that receives
    'data_dir' (the folder read; None for the in-memory synthetic set) and
    'data_dir_from_checkpoint'. path: the checkpoint's file, named in the errors.
    Returns (ImageData with uint8 images (N, C, H, W), dataset name).
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    args = _ckpt_dict(ckpt, "args")
    data_cfg = _ckpt_dict(ckpt, "data")
    own = data_cfg.get("dataset") or args.get("dataset")
    if own is not None and not isinstance(own, str):
        raise UserError(f"{_field(path, 'data', 'dataset')} is not a dataset name "
                        f"({type(own).__name__})")
    name = dataset or own
    if name in (None, "auto"):
        raise UserError("the checkpoint does not record its dataset: pass --dataset")
    val_split = _ckpt_number(data_cfg, "val_split", 0.0, float, "data", path)
    held_out = split == "val" and val_split > 0
    if held_out and name != own:
        raise UserError(f"--split val is the run's held-out part of {own}; it does not exist "
                        f"for --dataset {name}")
    given = data_dir
    data_dir = checkpoint_data_dir(ckpt, data_dir, name, log)
    if info is not None:
        synthetic = name == "synthetic"
        info["data_dir"] = None if synthetic else os.path.abspath(data_dir)
        info["data_dir_from_checkpoint"] = (not synthetic and given is None
                                            and bool(_ckpt_dict(ckpt, "args").get("data_dir")))
    same = name == own
    # every saved number is checked (and bounded) before anything is read or allocated;
    # reader options as in prepare_data (readers drop those they do not take)
    number = functools.partial(_ckpt_number, args, path=path)
    kwargs = {"image_size": number("image_size", 32) if same else 32}
    if name == "synthetic":
        kwargs = dict(train_size=number("synthetic_train_size", 5000) if same else 5000,
                      test_size=number("synthetic_test_size", 1000) if same else 1000,
                      seed=SYNTHETIC_SEED)
    limit_train = number("limit_train", None)
    split_seed = _ckpt_number(data_cfg, "split_seed", 0, where="data", path=path)
    if limit is None and same and not held_out:
        limit = number("limit_test", None)
    preprocessing = data_cfg.get("preprocessing")
    if name == "imagenet" or (same and isinstance(preprocessing, str)
                              and preprocessing.startswith("streamed")):
        data = _streamed_split(name, data_dir, kwargs["image_size"], held_out, val_split,
                               split_seed, limit_train, limit, data_cfg, log)
        return _checked(data, name, split, data_dir, ckpt), name
    train, data = load_dataset(name, data_dir, download, **kwargs)
    if held_out:
        if limit_train:
            train.images, train.labels = train.images[:limit_train], train.labels[:limit_train]
        _, data, digest = held_out_split(train, val_split, split_seed)
        if data_cfg.get("val_indices_sha1") not in (None, digest):
            raise UserError(f"cannot rebuild the run's held-out validation split from {data_dir} "
                            f"(the data differ from the run's)")
    if limit:
        data.images, data.labels = data.images[:limit], data.labels[:limit]
    return _checked(data, name, split, data_dir, ckpt), name


def _streamed_split(name, data_dir, size, held_out, val_split, split_seed, limit_train, limit,
                    data_cfg, log) -> ImageData:
    """The evaluation split of a streamed run (skipkd/data/stream.py), decoded into memory
    with the run's evaluation pipeline (resize, centre crop): its test (val/) split, or the
    held-out part of train/."""
    tests = ("val", "test") if name == "imagenet" else ("test", "val")
    train, files = scan_files(data_dir, name, tests, test=not held_out)
    if held_out:
        if limit_train:
            train = train.subset(range(min(limit_train, len(train))))
        _, files, digest = held_out_split(train, val_split, split_seed)
        if data_cfg.get("val_indices_sha1") not in (None, digest):
            raise UserError(f"cannot rebuild the run's held-out validation split from {data_dir} "
                            f"(the data differ from the run's)")
    if limit:
        files = files.subset(range(min(limit, len(files))))
    images, labels, bad = decode_eval(files, size)
    if bad:
        log(f"skipped {len(bad)} image(s) that could not be decoded, e.g. {', '.join(bad[:3])}")
    if not len(labels):
        raise UserError(f"none of the {len(files)} {name} images could be decoded")
    return ImageData(images, labels, list(files.classes))


def _checked(data, name, split, data_dir, ckpt) -> ImageData:
    """The split's last checks against the model that will read it."""
    if len(data) == 0:
        raise UserError(f"the {name} {split} split in {data_dir} has no images")
    cfg = ckpt["model"]
    if data.images.shape[1] != cfg.get("in_channels", 3):
        raise UserError(f"{name} images have {data.images.shape[1]} channels; the model expects "
                        f"{cfg.get('in_channels', 3)}")
    if int(data.labels.max()) >= cfg["num_classes"]:
        raise UserError(f"{name} has labels up to {int(data.labels.max())}; the model has only "
                        f"{cfg['num_classes']} classes")
    return data


def _ckpt_stats(d: dict, key: str, channels: int, path=None):
    """The saved per-channel mean/std: None, or `channels` finite numbers (std > 0)."""
    value = d.get(key)
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                       abs(v) != float("inf") and v == v for v in value)
            or (key == "std" and not all(v > 0 for v in value))):
        raise UserError(f"{_field(path, 'data', key)} is not {channels} per-channel numbers"
                        + (" > 0" if key == "std" else ""))
    return [float(v) for v in value]


def checkpoint_loader(ckpt: dict, data: ImageData, batch_size: int | None = None,
                      device="cpu", path: str | None = None) -> TensorLoader:
    """Evaluation loader normalising with the checkpoint's own mean/std (training statistics);
    the saved values are checked before use (errors name `path`, the checkpoint's file)."""
    d = _ckpt_dict(ckpt, "data")
    args = _ckpt_dict(ckpt, "args")
    if batch_size is None:
        batch_size = _ckpt_number(args, "eval_batch_size", 256, path=path)
    channels = data.images.shape[1]
    channels_last = args.get("channels_last", False)
    if not isinstance(channels_last, bool) and channels_last is not None:
        raise UserError(f"{_field(path, 'args', 'channels_last')} is not true/false")
    return TensorLoader(data, batch_size, device, _ckpt_stats(d, "mean", channels, path),
                        _ckpt_stats(d, "std", channels, path), channels_last=bool(channels_last))


@torch.no_grad()
def predict_logits(model: nn.Module, loader: TensorLoader, tta: bool = False):
    """-> (logits (N, K) float32 on the CPU, labels (N,) int64). tta: average the logits of
    each image and its horizontal flip."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in loader:
        logits = model(x).logits.float()
        if tta:
            logits = 0.5 * (logits + model(x.flip(3)).logits.float())  # flip W of (B, C, H, W)
        all_logits.append(logits.cpu())
        all_labels.append(y.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_figure(cm: torch.Tensor, classes, title="", normalize=True):
    """Matplotlib figure of a confusion matrix; rows normalised to percent when `normalize`.
    Cell values are written for up to 20 classes."""
    import matplotlib.pyplot as plt  # the caller picks the backend (scripts: Agg)

    k = cm.shape[0]
    cmf = cm.double()
    if normalize:
        cmf = 100.0 * cmf / cmf.sum(1, keepdim=True).clamp_min(1)
    names = [str(c) for c in classes][:k] + [str(i) for i in range(len(classes), k)]
    size = min(4 + 0.45 * k, 16)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(cmf.numpy(), cmap="Blues", vmin=0, vmax=100 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="% of the true class" if normalize else "images")
    if k <= 20:
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        thresh = cmf.max().item() / 2
        for i in range(k):
            for j in range(k):
                v = cmf[i, j].item()
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v > thresh else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of one forward pass for an input of `input_shape` (B, C, H, W),
    counted by torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls; BN, ReLU,
    pooling and the sigmoid of ECA are not counted, as usual). MACs = FLOPs / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    p = next(model.parameters())
    x = torch.zeros(*input_shape, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return counter.get_total_flops() // 2


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_latency(model: nn.Module, x: torch.Tensor, repeats: int = 50, warmup: int = 5) -> float:
    """Median wall time of one forward pass in milliseconds (after `warmup` passes)."""
    model.eval()
    for _ in range(warmup):
        model(x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        _sync(x.device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def time_throughput(model: nn.Module, x: torch.Tensor, iters: int = 10, warmup: int = 2) -> float:
    """Images per second for batches like `x` (B, C, H, W), over `iters` timed passes."""
    model.eval()
    for _ in range(warmup):
        model(x)
    _sync(x.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        model(x)
    _sync(x.device)
    return iters * x.shape[0] / max(time.perf_counter() - t0, 1e-9)


def file_size_mb(path: str) -> float:
    return os.path.getsize(path) / 2 ** 20
