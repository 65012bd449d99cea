"""Shared pieces of the analysis scripts (evaluate, efficiency, ONNX export, feature maps):
the test (or held-out validation) split of a checkpoint's run, batched predictions with
optional flip TTA, confusion matrices, parameter / MAC counts and CPU timing."""
import os
import statistics
import time

import torch
from torch import nn

from .data import ImageData, TensorLoader, held_out_split, load_dataset
from .errors import UserError

__all__ = ["checkpoint_test_data", "checkpoint_loader", "predict_logits", "confusion_matrix",
           "confusion_figure", "count_parameters", "count_macs", "time_latency",
           "time_throughput", "OutputsAsTuple", "file_size_mb"]

SYNTHETIC_SEED = 1234  # utils/pipeline.py prepare_data: the synthetic dataset is fixed


def checkpoint_test_data(ckpt: dict, dataset: str | None = None, data_dir: str | None = None,
                         download: bool = False, limit: int | None = None,
                         split: str = "test") -> tuple[ImageData, str]:
    """A split of the data a checkpoint was trained on, rebuilt like utils/pipeline.prepare_data.

    split 'test': the test split (the run's validation set under the 'test-as-val' protocol);
    'val': the run's validation set itself: the held-out part of the training split under
    --val-split (rebuilt with its fraction and split seed, and checked against the recorded
    digest), else the test split. dataset / data_dir override the checkpoint's own (args.data_dir
    is relative to where the run was started). limit: first N images; default for the test split:
    the run's --limit-test when the dataset is the run's own.
    Returns (ImageData with uint8 images (N, C, H, W), dataset name).
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    args = ckpt.get("args") or {}
    data_cfg = ckpt.get("data") or {}
    own = data_cfg.get("dataset") or args.get("dataset")
    name = dataset or own
    if name in (None, "auto"):
        raise UserError("the checkpoint does not record its dataset: pass --dataset")
    held_out = split == "val" and float(data_cfg.get("val_split") or 0) > 0
    if held_out and name != own:
        raise UserError(f"--split val is the run's held-out part of {own}; it does not exist "
                        f"for --dataset {name}")
    data_dir = data_dir or args.get("data_dir") or "./data"
    same = name == own
    # reader options as in prepare_data (readers drop those they do not take)
    kwargs = {"image_size": int(args.get("image_size") or 32) if same else 32}
    if name == "synthetic":
        kwargs = dict(train_size=int(args.get("synthetic_train_size", 5000)) if same else 5000,
                      test_size=int(args.get("synthetic_test_size", 1000)) if same else 1000,
                      seed=SYNTHETIC_SEED)
    train, data = load_dataset(name, data_dir, download, **kwargs)
    if held_out:
        if args.get("limit_train"):
            train.images, train.labels = (train.images[:args["limit_train"]],
                                          train.labels[:args["limit_train"]])
        _, data, digest = held_out_split(train, float(data_cfg["val_split"]),
                                         int(data_cfg.get("split_seed") or 0))
        if data_cfg.get("val_indices_sha1") not in (None, digest):
            raise UserError(f"cannot rebuild the run's held-out validation split from {data_dir} "
                            f"(the data differ from the run's)")
    elif limit is None and same:
        limit = args.get("limit_test")
    if limit:
        data.images, data.labels = data.images[:limit], data.labels[:limit]
    if len(data) == 0:
        raise UserError(f"the {name} {split} split in {data_dir} has no images")
    cfg = ckpt["model"]
    if data.images.shape[1] != cfg.get("in_channels", 3):
        raise UserError(f"{name} images have {data.images.shape[1]} channels; the model expects "
                        f"{cfg.get('in_channels', 3)}")
    if int(data.labels.max()) >= cfg["num_classes"]:
        raise UserError(f"{name} has labels up to {int(data.labels.max())}; the model has only "
                        f"{cfg['num_classes']} classes")
    return data, name


def checkpoint_loader(ckpt: dict, data: ImageData, batch_size: int | None = None,
                      device="cpu") -> TensorLoader:
    """Evaluation loader normalising with the checkpoint's own mean/std (training statistics)."""
    d = ckpt.get("data") or {}
    args = ckpt.get("args") or {}
    batch_size = batch_size or int(args.get("eval_batch_size") or 256)
    return TensorLoader(data, batch_size, device, d.get("mean"), d.get("std"),
                        channels_last=bool(args.get("channels_last", False)))


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


def count_parameters(model: nn.Module) -> int:
    """Sum of numel over parameters (shared parameters once)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
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


class OutputsAsTuple(nn.Module):
    """Plain outputs for tracing/export: logits (B, K), plus the hint (B, C, H, W) when asked."""

    def __init__(self, model: nn.Module, with_hint: bool = False):
        super().__init__()
        self.model = model
        self.with_hint = with_hint

    def forward(self, x):
        out = self.model(x)
        return (out.logits, out.hint) if self.with_hint else out.logits


def file_size_mb(path: str) -> float:
    return os.path.getsize(path) / 2 ** 20
