"""Weight initialisation, one place for every family.

- orthogonal_init_: this toolkit's rule (orthogonal conv and linear weights, the attention
  modules' 1-D convolutions included, zero biases, BatchNorm weight 1 and bias 0); used where
  a family's reference defines no init of its own.
- reference_init_: the rule of the KD literature's CIFAR models (RepDistiller): Conv2d weights
  N(0, 2 / (k * k * out_channels)) (= kaiming_normal_, fan_out, ReLU gain), zero conv biases,
  BatchNorm 1 and 0, the Linear head as each family's reference sets it; the attention modules,
  which the references do not have, get the orthogonal rule.
- zero_init_residual_: the last BatchNorm of every residual branch starts at weight 0, so each
  residual block starts as its shortcut (Goyal et al. 2017, section 5.1; torchvision's and timm's
  ResNets do the same): a deep net then starts as shallow as its projection path, and depth no
  longer costs accuracy at short schedules (docs/RESULTS.md, "A teacher that teaches").
Both walk the modules once, in order, so a seed gives the same weights every time.
"""
import math

from torch import nn

from .attention import attention_classes

__all__ = ["orthogonal_init_", "reference_init_", "attention_modules", "zero_init_residual_",
           "residual_tail_norms", "INIT_SCHEMES", "apply_init_"]

INIT_SCHEMES = ("model", "orthogonal", "kaiming")


def attention_modules(model: nn.Module) -> set:
    """Every module inside a registered attention module (ECA, SE, ...) of `model`."""
    kinds = attention_classes()
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


def residual_tail_norms(model: nn.Module) -> list:
    """The last BatchNorm of each residual branch: the final module of every block's `residual`
    Sequential (the blocks of skipkd/models/resnet.py, and the CIFAR ResNets built from them)."""
    norms = []
    for m in model.modules():
        branch = getattr(m, "residual", None)
        if isinstance(branch, nn.Sequential) and len(branch) and isinstance(branch[-1], nn.BatchNorm2d):
            norms.append(branch[-1])
    return norms


def zero_init_residual_(model: nn.Module) -> nn.Module:
    for bn in residual_tail_norms(model):
        nn.init.zeros_(bn.weight)
    return model


def apply_init_(model: nn.Module, scheme: str = "model", zero_residual: bool = False) -> nn.Module:
    """After construction: scheme 'model' keeps the family's own init, 'orthogonal' and 'kaiming'
    redo it with that rule (kaiming: reference_init_ with PyTorch's default head); zero_residual
    then zeroes the residual branches' last BatchNorm weights. No random numbers are drawn for
    'model', so the default keeps a seed's weights as before (bar the zeroed weights)."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    if scheme == "orthogonal":
        orthogonal_init_(model)
    elif scheme == "kaiming":
        reference_init_(model, linear="default")
    if zero_residual:
        if not residual_tail_norms(model):
            raise ValueError("--zero-init-residual: this network has no residual branch ending "
                             "in a BatchNorm, so there is nothing to start at zero")
        zero_init_residual_(model)
    return model
