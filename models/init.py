"""Weight initialisation, one place for every family.

- orthogonal_init_: this toolkit's rule (orthogonal conv and linear weights, the attention
  modules' 1-D convolutions included, zero biases, BatchNorm weight 1 and bias 0); used where
  a family's reference defines no init of its own.
- reference_init_: the rule of the KD literature's CIFAR models (RepDistiller): Conv2d weights
  N(0, 2 / (k * k * out_channels)) (= kaiming_normal_, fan_out, ReLU gain), zero conv biases,
  BatchNorm 1 and 0, the Linear head as each family's reference sets it; the attention modules,
  which the references do not have, get the orthogonal rule.
Both walk the modules once, in order, so a seed gives the same weights every time.
"""
import math

from torch import nn

from .eca import ATTENTION_LAYERS

__all__ = ["orthogonal_init_", "reference_init_", "attention_modules"]


def attention_modules(model: nn.Module) -> set:
    """Every module inside a registered attention module (ECA, SE, ...) of `model`."""
    kinds = tuple(cls for pair in ATTENTION_LAYERS.values() for cls in pair)
    found = set()
    for m in model.modules():
        if isinstance(m, kinds):
            found.update(m.modules())
    return found


def _orthogonal(m: nn.Module):
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        nn.init.orthogonal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def orthogonal_init_(model: nn.Module) -> nn.Module:
    for m in model.modules():
        _orthogonal(m)
    return model


def reference_init_(model: nn.Module, linear: str = "normal") -> nn.Module:
    """linear: 'normal' (weight N(0, 0.01), bias 0: RepDistiller's VGG and MobileNetV2),
    'zero-bias' (PyTorch's default weight, bias 0: its WRN) or 'default' (PyTorch's default:
    its CIFAR ResNets)."""
    attention = attention_modules(model)
    for m in model.modules():
        if m in attention:
            _orthogonal(m)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model
