"""The 3-stage CIFAR ResNets of the knowledge-distillation literature's CIFAR-100 benchmark.

Paper: Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016 (section 4.2: the 6n+2-layer CIFAR networks, three stages of n basic
blocks at 32x32, 16x16 and 8x8). The KD benchmark (Tian, Krishnan, Isola, "Contrastive
Representation Distillation", ICLR 2020) uses them as teachers and students, with the "x4"
variants (4x the stage widths, stem 2x).

Reference matched: RepDistiller's models/resnet.py (github.com/HobbitLong/RepDistiller;
mdistiller copies it): depth d -> (d - 2) / 6 basic blocks per stage; widths stem 16 and stages
16/32/64 (x4: stem 32, stages 64/128/256); the first block of stages 2 and 3 has stride 2; a
projection shortcut (1x1 conv without bias + BN) wherever the stride or the width changes
(so the x4 nets also have one in the first block of stage 1, 32 -> 64); a Linear head with bias;
its init (Conv2d kaiming_normal_ fan_out, BN 1/0, Linear left at PyTorch's default).
Here these are configurations of our ResNet (skipkd/models/resnet.py), differences from the reference:
global average pooling instead of AvgPool2d(8) (the same at 32x32 input), the strided 1x1
projection computed as subsample-then-1x1 (PointwiseConv: the same values), and attention
modules (not in the reference) initialised by our orthogonal rule.

base_width is the stem width and scales everything: stages (1, 2, 4) x base_width for the plain
nets (default 16), (2, 4, 8) x base_width for the x4 nets (default 32).

Hint: the projection shortcut's output (after its BN, before the residual add) in the first block
of stage 3. Attention placements: those of our ResNet, whose placement rule
(skipkd/models/placement.py) these nets ask with family "cifar_resnet": "parallel" = additive
attention on the shortcut of every stage-1 block (for x4: after the 32 -> 64 projection in block
1, on the identity in the others); "last" = multiplicative attention on the residual branch of
the hint block (stage 3, block 1) before the add; "all" = the same on the residual branch of
every block; and any placement registered later (every block adds a shortcut, so all forms fit).

| model      | blocks/stage | default width | stages       | params (100 classes) | hint (32x32) |
|------------|--------------|---------------|--------------|----------------------|--------------|
| resnet8    | 1            | 16            | 16, 32, 64   |    83,892            | 64 x 8 x 8   |
| resnet14   | 2            | 16            | 16, 32, 64   |   181,108            | 64 x 8 x 8   |
| resnet20   | 3            | 16            | 16, 32, 64   |   278,324            | 64 x 8 x 8   |
| resnet32   | 5            | 16            | 16, 32, 64   |   472,756            | 64 x 8 x 8   |
| resnet44   | 7            | 16            | 16, 32, 64   |   667,188            | 64 x 8 x 8   |
| resnet56   | 9            | 16            | 16, 32, 64   |   861,620            | 64 x 8 x 8   |
| resnet110  | 18           | 16            | 16, 32, 64   | 1,736,564            | 64 x 8 x 8   |
| resnet8x4  | 1            | 32            | 64, 128, 256 | 1,233,540            | 256 x 8 x 8  |
| resnet32x4 | 5            | 32            | 64, 128, 256 | 7,433,860            | 256 x 8 x 8  |

All define the placements none, parallel, last, all (and any registered later).
"""
from functools import partial

from .registry import register_model
from .resnet import ResNet

__all__ = ["CIFAR_RESNETS", "cifar_resnet"]

# name -> (depth, stage widths as multiples of base_width, default base_width = stem width)
CIFAR_RESNETS = {
    "resnet8": (8, (1, 2, 4), 16),
    "resnet14": (14, (1, 2, 4), 16),
    "resnet20": (20, (1, 2, 4), 16),
    "resnet32": (32, (1, 2, 4), 16),
    "resnet44": (44, (1, 2, 4), 16),
    "resnet56": (56, (1, 2, 4), 16),
    "resnet110": (110, (1, 2, 4), 16),
    "resnet8x4": (8, (2, 4, 8), 32),
    "resnet32x4": (32, (2, 4, 8), 32),
}


def cifar_resnet(depth: int, multipliers=(1, 2, 4), *, num_classes=100, base_width=16,
                 in_channels=3, placement="none", eca_k=None, attn="eca") -> ResNet:
    """A 6n+2-layer CIFAR ResNet: stem of base_width channels, three stages of n = (depth-2)/6
    basic blocks of base_width * multipliers channels, RepDistiller's init."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a basic-block CIFAR ResNet has depth 6n+2 (8, 14, 20, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet("basic", (n,) * len(multipliers), num_classes=num_classes,
                  base_width=base_width, in_channels=in_channels, placement=placement, eca_k=eca_k,
                  attn=attn, stage_widths=tuple(base_width * m for m in multipliers),
                  init="kaiming", family="cifar_resnet")


for _name, (_depth, _mults, _width) in CIFAR_RESNETS.items():
    register_model(_name, partial(cifar_resnet, _depth, _mults), default_width=_width,
                   family="cifar_resnet")
