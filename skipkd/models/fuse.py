"""Inference copies with BatchNorm folded into the preceding convolution (eval mode only)."""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` in which every Conv2d directly followed by a BatchNorm2d inside an
    nn.Sequential is replaced by one fused conv (the BN becomes Identity). Outputs match the eval
    model to float rounding; the original model is untouched."""
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    for p in fused.parameters():
        p.requires_grad_(False)
    first = next((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.is_contiguous(memory_format=torch.channels_last) \
            and not first.is_contiguous():
        fused = fused.to(memory_format=torch.channels_last)
    return fused
