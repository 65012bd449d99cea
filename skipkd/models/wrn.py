"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016),
with optional channel attention, returning the skip-connection hint.

Matched to the CIFAR-100 WRNs of the knowledge-distillation literature: RepDistiller
(github.com/HobbitLong/RepDistiller, models/wrn.py; mdistiller's mdistiller/models/cifar/wrn.py
is the same network). The facts taken from it:
  * stem: one 3x3 convolution 3 -> 16, no bias, with no BN or ReLU of its own;
  * three groups of (depth - 4) / 6 pre-activation basic blocks, widths 16k, 32k, 64k
    (k = widen factor), strides 1, 2, 2;
  * a block: a = ReLU(BN(x)); out = conv3x3(ReLU(BN(conv3x3(a, stride)))) (convolutions
    without bias); shortcut = x when in and out widths are equal, else a 1x1 convolution
    (stride of the block, no bias, NO BatchNorm) of the pre-activated a; output out + shortcut,
    with no ReLU after the add. No dropout (RepDistiller's factories leave dropRate at 0);
  * head: BN -> ReLU -> global average pooling -> Linear(64k, classes) with bias;
  * init: every convolution N(0, 2 / (k_h * k_w * out_channels)), BN weight 1 and bias 0, the
    Linear bias 0 (its weight keeps PyTorch's default). Attention modules, which RepDistiller
    has not, get this toolkit's init (orthogonal weights, zero biases), as models/resnet.py.

Widths: base_width b (default 16, the reference) gives widths b, b*k, 2b*k, 4b*k, so every
width scales with b and b = 16 is exactly RepDistiller's network.

Hint: the output of the 1x1 projection shortcut of the first block of the last group (the hint
block), i.e. conv1x1_stride2(ReLU(BN(x))) where x is the second group's output; there is no BN
after the projection (pre-activation), so the hint is that convolution's raw output, taken
before the residual add (and before any "parallel" attention, which is never on that block).
Shape (64k, H/4, W/4): (64k, 8, 8) for 32x32 inputs.

Features (request_features): feats = (stem conv output, group 1 output, group 2 output,
ReLU(BN(group 3 output))), the last being the map the classifier pools. Groups end with the
residual add and no ReLU, so preact_feats equals feats except the last entry, which is
BN(group 3 output) (before the head's ReLU). feats[0:3] are RepDistiller's f0, f1, f2; its f3
is the group-3 sum before the head's BN, here the map the classifier pools (the contract's
last entry). RepDistiller's preact list applies the *next* group's first BN to groups 1 and 2;
here a stage's feature is its own output.

Attention placements (the `placement` argument, asked of skipkd/models/placement.py block by block,
family "wrn"; `attn` picks the module, `eca_k` its kernel; blocks receive the modules built):
  * "none";
  * "parallel": additive attention s + sigmoid(...) on the shortcut of every block of the first
    group (the identity x, or the projection's output where the first block widens);
  * "last": multiplicative attention on the residual branch (conv2's output, before the add)
    of the hint block;
  * "all": multiplicative attention on the residual branch of every block;
  * any placement registered later (every block adds a shortcut, so all forms fit).

| model    | depth, k | hint (32x32 input) | placements             | width | params (100 classes) |
|----------|----------|--------------------|------------------------|-------|----------------------|
| wrn_16_1 | 16, 1    | (64, 8, 8)         | none/parallel/last/all | 16    | 180,916              |
| wrn_16_2 | 16, 2    | (128, 8, 8)        | none/parallel/last/all | 16    | 703,284              |
| wrn_40_1 | 40, 1    | (64, 8, 8)         | none/parallel/last/all | 16    | 569,780              |
| wrn_40_2 | 40, 2    | (128, 8, 8)        | none/parallel/last/all | 16    | 2,255,156            |
(width: the default base_width.)
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .contract import FeatureModel
from .init import reference_init_
from .placement import AttentionPlacer, BlockSite
from .registry import register_model
from .resnet import PointwiseConv

__all__ = ["WRN_ARCHS", "PreActBlock", "WideResNet"]

# name -> (depth, widen factor)
WRN_ARCHS = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


class PreActBlock(nn.Module):
    """Pre-activation basic block: out = branch(a) + shortcut, a = ReLU(BN(x)),
    branch = conv3x3(stride) -> BN -> ReLU -> conv3x3, shortcut = x or conv1x1(a); attn (on the
    branch) and shortcut_attn (on the shortcut) are the injected attention modules, or None."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, attn: nn.Module | None = None,
                 shortcut_attn: nn.Module | None = None, drop_rate: float = 0.0):
        super().__init__()
        if in_ch == out_ch and stride != 1:
            raise ValueError("an identity shortcut cannot change the resolution")
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = nn.ReLU(inplace=True)
        layers = [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                  nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        if drop_rate > 0:
            layers.append(nn.Dropout(drop_rate))
        layers.append(nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False))
        self.branch = nn.Sequential(*layers)
        # the reference projects exactly when the widths differ (1x1, no bias, no BN);
        # PointwiseConv: the same values, avoiding a oneDNN channels_last bug (skipkd/models/resnet.py)
        self.shortcut = PointwiseConv(in_ch, out_ch, stride) if self.projects(in_ch, out_ch) else None
        self.attn = attn
        self.shortcut_attn = shortcut_attn

    @staticmethod
    def projects(in_ch: int, out_ch: int) -> bool:
        """Whether the shortcut is the 1x1 projection (exactly when the widths differ)."""
        return in_ch != out_ch

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Only the projection shortcut's output (B, out_ch, H/s, W/s): the hint of a hint block."""
        return self.shortcut(self.act1(self.bn1(x)))

    def forward_with_shortcut(self, x: torch.Tensor):
        """(block output, shortcut tensor before the add and before any parallel attention)."""
        a = self.act1(self.bn1(x))                     # shared by the branch and the projection
        s = x if self.shortcut is None else self.shortcut(a)
        out = self.branch(a)
        if self.attn is not None:
            out = self.attn(out)
        return out + (s if self.shortcut_attn is None else self.shortcut_attn(s)), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_shortcut(x)[0]


class WideResNet(FeatureModel):
    """WRN-depth-k for 32x32 inputs: stem conv, three groups of pre-activation blocks, BN-ReLU,
    global average pooling, linear head. forward(x) -> ModelOutput(logits, hint, ...)."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, base_width: int = 16,
                 in_channels: int = 3, placement: str = "none", eca_k=None, attn: str = "eca",
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        placer = AttentionPlacer(placement, attn, eca_k, owner="WideResNet")
        if min(widen_factor, base_width, num_classes, in_channels) < 1:
            raise ValueError("widen_factor, base_width, num_classes and in_channels must be "
                             "positive")
        n = (depth - 4) // 6
        widths = (base_width, base_width * widen_factor, 2 * base_width * widen_factor,
                  4 * base_width * widen_factor)
        self.placement = placement
        self.attn_layer = attn
        self.hint_stage = 2  # 0-based group of the hint block (its first block)

        # a Sequential of one conv: model.stem[0] is the first conv in every family
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False))
        in_ch, stages = widths[0], []
        for g, width in enumerate(widths[1:]):
            blocks = []
            for i in range(n):
                site = BlockSite("wrn", g, i, is_hint=g == self.hint_stage and i == 0,
                                 is_last=g == len(widths) - 2 and i == n - 1,
                                 shortcut="projection" if PreActBlock.projects(in_ch, width)
                                 else "identity")
                branch_attn, shortcut_attn = placer(site, width)
                blocks.append(PreActBlock(in_ch, width, stride=2 if (g > 0 and i == 0) else 1,
                                          attn=branch_attn, shortcut_attn=shortcut_attn,
                                          drop_rate=drop_rate))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head_bn = nn.BatchNorm2d(in_ch)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self.hint_block = self.stages[self.hint_stage][0]
        assert self.hint_block.shortcut is not None, "the hint block must project"
        self._init_weights()

    def _init_weights(self):
        """RepDistiller's init (module docstring); attention modules: the orthogonal rule."""
        reference_init_(self, linear="zero-bias")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ReLU(BN(group 3 output)) (B, 64k, H/4, W/4), hint (B, 64k, H/4, W/4))."""
        x = self.stem(x)
        for stage in self.stages[:self.hint_stage]:
            x = stage(x)
        x, hint = self.hint_block.forward_with_shortcut(x)
        for blk in self.stages[self.hint_stage][1:]:
            x = blk(x)
        for stage in self.stages[self.hint_stage + 1:]:
            x = stage(x)
        return F.relu(self.head_bn(x), inplace=True), hint

    def forward_all(self, x: torch.Tensor) -> tuple[tuple, tuple, torch.Tensor]:
        """(feats, preact_feats, hint); see the module docstring for what each entry is."""
        x = self.stem(x)
        feats, hint = [x], None
        for g, stage in enumerate(self.stages):
            for i, blk in enumerate(stage):
                x, s = blk.forward_with_shortcut(x)
                if g == self.hint_stage and i == 0:
                    hint = s
            feats.append(x)
        pre = self.head_bn(x)
        preacts = feats[:-1] + [pre]
        feats[-1] = F.relu(pre)
        return tuple(feats), tuple(preacts), hint

    def forward_hint(self, x: torch.Tensor) -> torch.Tensor:
        """Only the hint: runs the stem and the groups before the hint block, then its
        pre-activation and projection (not its residual branch, nor anything after)."""
        x = self.stem(x)
        for stage in self.stages[:self.hint_stage]:
            x = stage(x)
        return self.hint_block.project(x)


def _wrn(name: str, **kwargs) -> WideResNet:
    depth, widen_factor = WRN_ARCHS[name]
    return WideResNet(depth, widen_factor, **kwargs)


for _name in WRN_ARCHS:  # base width 16 = RepDistiller's networks
    register_model(_name, partial(_wrn, _name), default_width=16, family="wrn")
