"""The attention types: a registry of channel-attention modules, separate from where they are
placed (skipkd/models/placement.py decides that, as timm injects an `attn_layer` per block):
Efficient Channel Attention (Wang et al., ECA-Net, CVPR 2020) and Squeeze-and-Excitation (Hu et
al., CVPR 2018, the comparator ECA-Net was measured against).

Each attention type is registered as a pair of classes, one per form (FORMS):
- MULTIPLICATIVE, x * sigmoid(descriptor(x)): the standard form, on a block's residual branch;
- ADDITIVE, s + sigmoid(descriptor(s)): the "parallel" form that the skip-connection KD work puts
  on the shortcut path.
A type also declares the constructor options it takes (ECA: its kernel size "k_size"; SE: none):
create_attn passes a type only the options it declares. A new attention module is one
register_attention(name, multiplicative, additive, options=(...)) call."""
import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["MULTIPLICATIVE", "ADDITIVE", "FORMS", "eca_kernel_size", "ECA", "ParallelECA", "SE",
           "ParallelSE", "AttentionType", "ATTENTION_LAYERS", "register_attention",
           "attention_classes", "create_attn"]

MULTIPLICATIVE = "multiplicative"  # x * sigmoid(descriptor(x)), on a residual branch
ADDITIVE = "additive"              # s + sigmoid(descriptor(s)), on a shortcut ("parallel")
FORMS = (MULTIPLICATIVE, ADDITIVE)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size: t = int(|log2(C) + b| / gamma), made odd, at least 3."""
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    t = int(abs(math.log2(channels) + b) / gamma)
    k = t if t % 2 else t + 1
    return max(k, 3)


class _ChannelDescriptor(nn.Module):
    """sigmoid(conv1d_k(GAP(x))): one weight per channel, shape (B, C, 1, 1)."""

    def __init__(self, channels: int, k_size: int | None = None):
        super().__init__()
        k = eca_kernel_size(channels) if k_size is None else int(k_size)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"ECA kernel size must be a positive odd number, got {k}")
        self.k_size = k
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = x.mean(dim=(2, 3)).reshape(b, 1, c)           # (B, 1, C): GAP over space
        y = self.conv(y)                                   # 1-D conv across channels
        return torch.sigmoid(y).reshape(b, c, 1, 1)        # (B, C, 1, 1)


class ECA(_ChannelDescriptor):
    """Standard ECA: x * sigmoid(conv1d_k(GAP(x)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.descriptor(x)


class ParallelECA(_ChannelDescriptor):
    """Additive ECA on the shortcut: s + sigmoid(conv1d_k(GAP(s)))."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s + self.descriptor(s)


class _SqueezeExcitation(nn.Module):
    """sigmoid(fc2(relu(fc1(GAP(x))))), reduction 16 (at least 1 hidden unit), shape (B, C, 1, 1).
    No kernel size: ECA's k_size has no SE counterpart, and SE declares no options."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(y))))


class SE(_SqueezeExcitation):
    """Standard Squeeze-and-Excitation: x * descriptor(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.descriptor(x)


class ParallelSE(_SqueezeExcitation):
    """Additive SE on the shortcut, the counterpart of ParallelECA: s + descriptor(s)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return s + self.descriptor(s)


class AttentionType(NamedTuple):
    """A registered attention: its class per form and the constructor options it takes."""
    multiplicative: type
    additive: type
    options: tuple = ()   # keyword options of both constructors, e.g. ("k_size",) for ECA

    def cls(self, form: str) -> type:
        if form == MULTIPLICATIVE:
            return self.multiplicative
        if form == ADDITIVE:
            return self.additive
        raise ValueError(f"unknown attention form {form!r}; choose from {', '.join(FORMS)}")


ATTENTION_LAYERS: dict[str, AttentionType] = {}


def register_attention(name: str, multiplicative: type, additive: type, options: tuple = ()):
    """Register an attention module: both classes take (channels, **options) and return a tensor
    of the input's shape; options names the keyword options they take (create_attn passes only
    these)."""
    if not name.isidentifier():
        raise ValueError(f"bad attention name {name!r}")
    if isinstance(options, str) or not all(isinstance(o, str) and o.isidentifier() for o in options):
        raise ValueError(f"attention {name!r}: options must be a tuple of names, got {options!r}")
    ATTENTION_LAYERS[name] = AttentionType(multiplicative, additive, tuple(options))


register_attention("eca", ECA, ParallelECA, options=("k_size",))
register_attention("se", SE, ParallelSE)


def attention_classes() -> tuple:
    """Every registered attention class, both forms (to find attention modules in a model)."""
    return tuple(cls for kind in ATTENTION_LAYERS.values()
                 for cls in (kind.multiplicative, kind.additive))


def create_attn(form: str | None, channels: int, layer: str = "eca", **options) -> nn.Module | None:
    """The attention module of type `layer` (ATTENTION_LAYERS) in `form` (MULTIPLICATIVE or
    ADDITIVE) over `channels` channels, given those of `options` its type declares (k_size
    reaches ECA, not SE); None for form None."""
    if form is None:
        return None
    if layer not in ATTENTION_LAYERS:
        raise ValueError(f"unknown attention layer {layer!r}; choose from "
                         f"{', '.join(ATTENTION_LAYERS)}")
    kind = ATTENTION_LAYERS[layer]
    return kind.cls(form)(channels, **{k: v for k, v in options.items() if k in kind.options})
