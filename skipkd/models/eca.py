"""Channel attention as a registry, separate from where it is placed (as timm injects an
`attn_layer` per block): Efficient Channel Attention (Wang et al., ECA-Net, CVPR 2020) and
Squeeze-and-Excitation (Hu et al., CVPR 2018, the comparator ECA-Net was measured against).

Each attention is registered as a pair of classes: the standard, multiplicative form
(x * sigmoid(descriptor)) used on a block's residual branch, and the additive "parallel" form
(s + sigmoid(descriptor)) that the skip-connection KD work puts on the shortcut path. A new
attention module is one register_attention(name, multiplicative, additive) call."""
import math

import torch
from torch import nn

__all__ = ["eca_kernel_size", "ECA", "ParallelECA", "SE", "ParallelSE", "ATTENTION_LAYERS",
           "register_attention", "create_attn"]


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
    k_size is accepted and ignored (ECA's kernel has no SE counterpart)."""

    def __init__(self, channels: int, k_size: int | None = None, reduction: int = 16):
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


# name -> (multiplicative class for the residual branch, additive class for the shortcut)
ATTENTION_LAYERS: dict[str, tuple] = {}


def register_attention(name: str, multiplicative: type, additive: type):
    """Register an attention module: both classes take (channels, k_size) and return a tensor
    of the input's shape."""
    if not name.isidentifier():
        raise ValueError(f"bad attention name {name!r}")
    ATTENTION_LAYERS[name] = (multiplicative, additive)


register_attention("eca", ECA, ParallelECA)
register_attention("se", SE, ParallelSE)


def create_attn(kind: str | None, channels: int, k_size: int | None = None,
                layer: str = "eca") -> nn.Module | None:
    """kind: None (no module), 'eca' (the multiplicative form, on a residual branch; the name
    is kept from when ECA was the only layer) or 'parallel' (the additive form, on a shortcut);
    layer: a registered attention (ATTENTION_LAYERS)."""
    if kind is None:
        return None
    if layer not in ATTENTION_LAYERS:
        raise ValueError(f"unknown attention layer {layer!r}; choose from "
                         f"{', '.join(ATTENTION_LAYERS)}")
    if kind == "eca":
        return ATTENTION_LAYERS[layer][0](channels, k_size)
    if kind == "parallel":
        return ATTENTION_LAYERS[layer][1](channels, k_size)
    raise ValueError(f"unknown attention form {kind!r}")
