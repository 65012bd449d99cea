"""The ImageNet-layout ResNets: torchvision's resnet18, 34, 50, 101 and 152, layer for layer.

Registered as resnet18_imagenet ... resnet152_imagenet (family "resnet_imagenet"): the toolkit's
ResNet (skipkd/models/resnet.py) with the ImageNet stem, a 7x7 stride-2 convolution and a 3x3
stride-2 max-pool, so a 224-pixel image costs what it costs in torchvision (resnet18: 1.8 GMACs)
and every ImageNet paper's teacher loads into it. Attention placements, the skip hint (the
first block of stage 4 for basic blocks, 512 x 7 x 7 at 224 pixels; of stage 3 for
bottlenecks) and every distillation term work as on the CIFAR-stem nets. Weights start as
torchvision's do (Kaiming normal, fan-out); pretrained ones come from skipkd/models/pretrained.py.

Parameter names differ from torchvision's only in where the layers sit (ours group each block's
residual branch in one Sequential):

    torchvision                       this toolkit
    conv1.*, bn1.*                    stem.0.*, stem.1.*
    layerL.B.conv1/bn1.*              stages.(L-1).B.residual.0/1.*
    layerL.B.conv2/bn2.*              stages.(L-1).B.residual.3/4.*
    layerL.B.conv3/bn3.* (bottleneck) stages.(L-1).B.residual.6/7.*
    layerL.B.downsample.0/1.*         stages.(L-1).B.shortcut.0/1.*
    fc.*                              fc.*

`from_torchvision(state_dict)` applies it; `to_torchvision` goes back.
"""
import re
from functools import partial

from .registry import register_model
from .resnet import ARCHS, ResNet

__all__ = ["IMAGENET_RESNETS", "IMAGENET_SUFFIX", "from_torchvision", "to_torchvision",
           "looks_like_torchvision"]

IMAGENET_SUFFIX = "_imagenet"
# our name -> torchvision's model name
IMAGENET_RESNETS = {f"{name}{IMAGENET_SUFFIX}": name for name in ARCHS}

_CONV = {"1": "0", "2": "3", "3": "6"}  # convN -> its index in the block's residual branch
_BN = {"1": "1", "2": "4", "3": "7"}    # bnN -> its index
_FROM_TV = [
    (re.compile(r"^conv1\.(.+)$"), lambda m: f"stem.0.{m[1]}"),
    (re.compile(r"^bn1\.(.+)$"), lambda m: f"stem.1.{m[1]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv([123])\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.residual.{_CONV[m[3]]}.{m[4]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.bn([123])\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.residual.{_BN[m[3]]}.{m[4]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(.+)$"),
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"),
    (re.compile(r"^fc\.(.+)$"), lambda m: f"fc.{m[1]}"),
]
_TO_TV = [
    (re.compile(r"^stem\.0\.(.+)$"), lambda m: f"conv1.{m[1]}"),
    (re.compile(r"^stem\.1\.(.+)$"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"^stages\.(\d)\.(\d+)\.residual\.([0-9])\.(.+)$"),
     lambda m: (f"layer{int(m[1]) + 1}.{m[2]}."
                f"{ {'0': 'conv1', '3': 'conv2', '6': 'conv3', '1': 'bn1', '4': 'bn2', '7': 'bn3'}[m[3]] }"
                f".{m[4]}")),
    (re.compile(r"^stages\.(\d)\.(\d+)\.shortcut\.([01])\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{m[3]}.{m[4]}"),
    (re.compile(r"^fc\.(.+)$"), lambda m: f"fc.{m[1]}"),
]


def _rename(state_dict: dict, rules) -> dict:
    out = {}
    for key, value in state_dict.items():
        for pattern, new in rules:
            m = pattern.match(key)
            if m:
                out[new(m)] = value
                break
        else:
            raise ValueError(f"parameter {key!r} has no counterpart (see the name mapping in "
                             f"skipkd/models/imagenet.py)")
    return out


def looks_like_torchvision(state_dict: dict) -> bool:
    """Whether a ResNet state_dict uses torchvision's names (conv1, layer1, ...)."""
    return "conv1.weight" in state_dict or any(k.startswith("layer1.") for k in state_dict)


def from_torchvision(state_dict: dict) -> dict:
    """A torchvision ResNet's state_dict under this toolkit's names (ValueError for a key that
    no rule maps). Our state_dict also holds the hint block under its second name, hint_block
    (the first block of stage 4 for basic blocks, of stage 3 for bottlenecks): filled in too."""
    out = _rename(state_dict, _FROM_TV)
    stage = 2 if any(k.startswith("layer1.0.conv3.") for k in state_dict) else 3
    prefix = f"stages.{stage}.0."
    out.update({"hint_block." + k[len(prefix):]: v for k, v in list(out.items())
                if k.startswith(prefix)})
    return out


def to_torchvision(state_dict: dict) -> dict:
    """The inverse of from_torchvision (attention modules have no torchvision counterpart: a
    ValueError names the first)."""
    return _rename({k: v for k, v in state_dict.items() if not k.startswith("hint_block.")},
                   _TO_TV)


def _imagenet_resnet(name, **kwargs) -> ResNet:
    block, layers = ARCHS[name]
    return ResNet(block, layers, stem="imagenet", init="kaiming", family="resnet_imagenet",
                  **kwargs)


for _ours, _tv in IMAGENET_RESNETS.items():  # base width 64 = torchvision's networks
    register_model(_ours, partial(_imagenet_resnet, _tv), default_width=64,
                   family="resnet_imagenet")
