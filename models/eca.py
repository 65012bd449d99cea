"""Efficient Channel Attention (Wang et al., ECA-Net, CVPR 2020) and the additive
"parallel" variant used on the shortcut path by the skip-connection KD work."""
import math

import torch
from torch import nn

__all__ = ["eca_kernel_size", "ECA", "ParallelECA", "create_attn"]


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


def create_attn(kind: str | None, channels: int, k_size: int | None = None) -> nn.Module | None:
    """Tiny factory: 'eca' -> ECA, 'parallel' -> ParallelECA, None -> None."""
    if kind is None:
        return None
    if kind == "eca":
        return ECA(channels, k_size)
    if kind == "parallel":
        return ParallelECA(channels, k_size)
    raise ValueError(f"unknown attention layer {kind!r}")
