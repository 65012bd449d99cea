"""Feature maps of a trained model: real intermediate outputs.

Our ResNets (resnet18..152 and the CIFAR ResNets) are read block by block with forward hooks;
every other family through the feature contract (skipkd/models/contract.py): 'stem', then
'stages.i' (each stage's output), and 'hint' where the family has one.

ResNets, captured with forward hooks:
Captured for one input batch (B, C, H, W), detached on the CPU:
    'stem'           output of the stem (conv-BN-ReLU)                 (B, w, H, W)
    'stages.i.j'     output of block j of stage i (after its final ReLU) (B, C_i, H_i, W_i)
    'hint'           the skip-connection hint: the hint block's projection shortcut after its BN,
                     before the residual add (the tensor the distillation loss matches)
The hint block is run through `forward_with_shortcut`, which bypasses the block's own forward
hooks, so block outputs are taken from each block's final ReLU module (used once per block) and
the hint from the hint block's `shortcut` module.

Plots (matplotlib figures; the caller saves and closes them): mean activation map per block,
the channels of one layer, the first-layer kernels and the hint. `notebook.train_tiny_checkpoint`
makes a small real checkpoint in seconds for demos (the notebook uses it when no checkpoint is given).
"""
import math
import os
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from skipkd.errors import UserError
from skipkd.io.outputs import atomic_write
from skipkd.models import feature_shapes
from utils.analysis.toolargs import check_output_path
from utils.analysis.tools import checkpoint_test_data

__all__ = ["FeatureCapture", "capture_features", "layer_names", "mean_activation_maps",
           "normalise_image", "load_image", "test_image", "plot_mean_activations",
           "plot_channel_grid", "plot_first_layer_kernels", "plot_hint", "save_figure",
           "save_feature_figures"]


def _per_block(model: nn.Module) -> bool:
    """Our ResNets: blocks with their own output ReLU and a hint block (hooks read them)."""
    return hasattr(model, "hint_block") and all(
        hasattr(b, "relu") for stage in model.stages for b in stage)


def layer_names(model: nn.Module) -> list[str]:
    """'stem', 'stages.0.0', ..., 'hint' in forward order (ResNets); 'stem', 'stages.0', ...,
    and 'hint' where there is one (every other family)."""
    names = ["stem"]
    if not _per_block(model):
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        n_stages = len(feature_shapes(model, first.in_channels)["feats"]) - 1
        return names + [f"stages.{i}" for i in range(n_stages)] + \
            (["hint"] if getattr(model, "has_hint", True) else [])
    for i, stage in enumerate(model.stages):
        names += [f"stages.{i}.{j}" for j in range(len(stage))]
    return names + ["hint"]


class FeatureCapture:
    """Context manager registering forward hooks; `.features` maps layer name -> tensor.

        with FeatureCapture(model) as cap:
            out = model(x)
        cap.features['stages.1.0']   # (B, C, H, W)
    """

    def __init__(self, model: nn.Module, layers=None):
        self.model = model
        self.layers = set(layers) if layers is not None else None
        self.features = OrderedDict()
        self._handles = []

    def _hook(self, name):
        def hook(module, inputs, output):
            # clone: later in-place ReLUs must not change what was captured
            self.features[name] = output.detach().float().cpu().clone()
        return hook

    def _targets(self):
        m = self.model
        yield "stem", m.stem
        for i, stage in enumerate(m.stages):
            for j, block in enumerate(stage):
                yield f"stages.{i}.{j}", block.relu   # the block's output ReLU (called once)
        yield "hint", m.hint_block.shortcut           # projection conv + BN = the hint

    def __enter__(self):
        for name, module in self._targets():
            if self.layers is None or name in self.layers:
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


@torch.no_grad()
def capture_features(model: nn.Module, x: torch.Tensor, layers=None):
    """-> (OrderedDict name -> feature tensor in forward order, model output). x: (B, C, H, W)
    normalised like the training data."""
    model.eval()
    if not _per_block(model):  # the feature contract: stem, each stage, the hint if any
        request = model.feature_request
        try:
            out = model.request_features({"feats"})(x)
        finally:
            model.request_features(request)
        named = [("stem", out.feats[0])] + [(f"stages.{i}", f)
                                            for i, f in enumerate(out.feats[1:])]
        if out.hint is not None:
            named.append(("hint", out.hint))
        feats = OrderedDict((n, f.detach().float().cpu().clone()) for n, f in named
                            if layers is None or n in layers)
        return feats, out
    with FeatureCapture(model, layers) as cap:
        out = model(x)
    order = {n: i for i, n in enumerate(layer_names(model))}
    feats = OrderedDict(sorted(cap.features.items(), key=lambda kv: order[kv[0]]))
    return feats, out


def mean_activation_maps(features, index: int = 0):
    """-> OrderedDict name -> (H, W) channel-mean of sample `index`."""
    return OrderedDict((n, f[index].mean(0)) for n, f in features.items())


# ---------------------------------------------------------------- inputs
def normalise_image(image_u8: torch.Tensor, ckpt: dict) -> torch.Tensor:
    """uint8 (C, H, W) -> float (1, C, H, W) normalised with the checkpoint's mean/std."""
    d = ckpt.get("data") or {}
    c = image_u8.shape[0]
    mean = torch.tensor(d.get("mean") or [0.0] * c, dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(d.get("std") or [1.0] * c, dtype=torch.float32).view(1, c, 1, 1)
    return (image_u8[None].float() / 255.0 - mean) / std


def load_image(path: str, size: int = 32, channels: int = 3) -> torch.Tensor:
    """An image file -> uint8 (C, size, size) (RGB or grayscale to match the model)."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.exists(path):
        raise UserError(f"image not found: {path}")
    try:
        img = Image.open(path).convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)  # (H, W[, C])
    arr = arr.reshape(size, size, channels)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def test_image(ckpt: dict, index: int = 0, data_dir: str | None = None, log=print):
    """-> (uint8 (C, H, W), label, class name) from the checkpoint's own test split.

    data_dir: the folder holding the dataset; when None, the run's --data-dir saved in the
    checkpoint is used and announced with one line through `log` (utils.analysis)."""
    test, _ = checkpoint_test_data(ckpt, data_dir=data_dir, log=log)
    if not 0 <= index < len(test):
        raise UserError(f"image index {index} out of range: the test split has {len(test)} images")
    label = int(test.labels[index])
    classes = test.classes or (ckpt.get("data") or {}).get("classes") or []
    if not isinstance(classes, (list, tuple)):  # checkpoint metadata: not trusted
        classes = []
    return test.images[index], label, str(classes[label]) if label < len(classes) else str(label)


# ---------------------------------------------------------------- plots
def _plt():
    import matplotlib.pyplot as plt  # the backend is the caller's (Agg headless, inline in Jupyter)
    return plt


def _grid(n, cols):
    cols = min(cols, n)
    return (n + cols - 1) // cols, cols


def _show_image(ax, image_u8):
    img = image_u8.permute(1, 2, 0).numpy()          # (H, W, C) uint8
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)


def plot_mean_activations(features, image_u8=None, title="mean activation per block", cols=6):
    """One panel per captured layer: the channel mean of sample 0, with its shape; the input
    image first when given."""
    plt = _plt()
    maps = mean_activation_maps(features)
    n = len(maps) + (image_u8 is not None)
    rows, cols = _grid(n, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.45 * rows), squeeze=False)
    panels = list(maps.items())
    k = 0
    for ax in axes.flat:
        ax.axis("off")
    if image_u8 is not None:
        _show_image(axes.flat[0], image_u8)
        axes.flat[0].set_title("input", fontsize=8)
        k = 1
    for (name, m), ax in zip(panels, list(axes.flat)[k:]):
        ax.imshow(m.numpy(), cmap="viridis")
        c, h, w = features[name].shape[1:]
        ax.set_title(f"{name}\n{c}x{h}x{w}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_channel_grid(fmap: torch.Tensor, title="", max_channels=64, cols=None):
    """Each channel of one feature map (C, H, W) as a grayscale panel (own colour scale)."""
    plt = _plt()
    c = min(fmap.shape[0], max_channels)
    cols = cols or math.ceil(math.sqrt(c))
    rows, cols = _grid(c, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < c:
            ax.imshow(fmap[i].numpy(), cmap="gray")
            ax.set_title(str(i), fontsize=6, pad=1)
    more = f" (first {c} of {fmap.shape[0]})" if fmap.shape[0] > c else ""
    fig.suptitle(f"{title}{more}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_first_layer_kernels(model: nn.Module, cols=8):
    """The stem convolution's kernels (out, in, k, k); RGB when there are 3 input channels,
    each kernel min-max scaled to [0, 1]."""
    plt = _plt()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # the stem's conv
    w = first.weight.detach().float().cpu()  # (C_out, C_in, k, k)
    n = w.shape[0]
    rows, cols = _grid(n, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.0 * cols, 1.0 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        k = w[i]
        k = (k - k.min()) / (k.max() - k.min()).clamp_min(1e-12)
        if k.shape[0] == 3:
            ax.imshow(k.permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            ax.imshow(k[0].numpy(), cmap="gray", interpolation="nearest")
    fig.suptitle(f"first-layer kernels {tuple(w.shape)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_hint(hint: torch.Tensor, max_channels=32):
    """The hint of one sample (C, H, W): channel mean and the first channels."""
    plt = _plt()
    c = min(hint.shape[0], max_channels)
    cols = 8
    rows = 1 + (c + cols - 1) // cols
    fig = plt.figure(figsize=(1.3 * cols, 1.3 * rows + 0.5))
    gs = fig.add_gridspec(rows, cols)
    ax = fig.add_subplot(gs[0, :2])
    im = ax.imshow(hint.mean(0).numpy(), cmap="viridis")
    ax.set_title("channel mean", fontsize=7)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = fig.add_subplot(gs[0, 3:])
    ax.bar(range(hint.shape[0]), hint.abs().mean((1, 2)).numpy(), width=1.0)
    ax.set_title("mean |activation| per channel", fontsize=7)
    ax.tick_params(labelsize=6)
    for i in range(c):
        ax = fig.add_subplot(gs[1 + i // cols, i % cols])
        ax.imshow(hint[i].numpy(), cmap="gray")
        ax.set_title(str(i), fontsize=6, pad=1)
        ax.axis("off")
    fig.suptitle(f"skip-connection hint {tuple(hint.shape)} (first {c} channels)", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str, dpi: int = 100, close: bool = False) -> str:
    """Save atomically (a temporary file beside `path`, then os.replace); a path that is a
    folder or cannot be written is a one-line UserError. The extension picks the format."""
    try:
        check_output_path(path, what="figure path", create=True)
        fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"),
                     "wb", suffix="." + fmt)
    finally:
        if close:
            _plt().close(fig)
    return path


def save_feature_figures(model, ckpt, image_u8, out_dir, layer="stages.0.0", prefix="", dpi=100):
    """The figures for one image (C, H, W) uint8, saved as PNGs (the hint's only where the
    model has one); -> {name: path}. layer: a name of layer_names (ResNets 'stages.0.0', other
    families 'stages.0'; the default falls back to the first stage)."""
    feats, out = capture_features(model, normalise_image(image_u8, ckpt))
    if layer == "stages.0.0" and layer not in feats and "stages.0" in feats:
        layer = "stages.0"
    if layer not in feats:
        raise UserError(f"unknown layer {layer!r}; choose from {', '.join(feats)}")
    figs = {
        "mean_activations": plot_mean_activations(feats, image_u8),
        "channels": plot_channel_grid(feats[layer][0], f"channels of {layer}"),
        "first_layer_kernels": plot_first_layer_kernels(model),
    }
    if "hint" in feats:
        figs["hint"] = plot_hint(feats["hint"][0])
    return {name: save_figure(fig, os.path.join(out_dir, f"{prefix}{name}.png"), dpi, close=True)
            for name, fig in figs.items()}
