"""ShuffleNet V1 and V2 as the knowledge-distillation literature's CIFAR-100 benchmark uses them.

Papers: Xiangyu Zhang, Xinyu Zhou, Mengxiao Lin, Jian Sun, "ShuffleNet: An Extremely Efficient
Convolutional Neural Network for Mobile Devices", CVPR 2018 (V1); Ningning Ma, Xiangyu Zhang,
Hai-Tao Zheng, Jian Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018 (V2).

Reference matched: RepDistiller's models/ShuffleNetv1.py (`ShuffleV1`) and models/ShuffleNetv2.py
(`ShuffleV2`, net_size 1) (github.com/HobbitLong/RepDistiller; mdistiller copies them under
mdistiller/models/cifar/), the networks its and CRD's (Tian et al., ICLR 2020) tables call
ShuffleNetV1 / ShuffleNetV2. Facts common to both: the stem is a 1x1 conv (3 -> 24, stride 1, no
bias), BN, ReLU, and no max-pool (32x32 stays 32x32); three stages, each starting with a stride-2
unit (16x16, 8x8, 4x4); global average pooling (the reference's avg_pool2d(4) at 32x32); one
Linear with bias; no init of their own (PyTorch's defaults), so our orthogonal rule is used
(conv, linear and the attention's conv weights orthogonal, biases 0, BN 1/0, as skipkd/models/resnet.py).

V1 (groups g = 3, stage widths 240, 480, 960, units 4, 8, 4): each unit is a 1x1 group conv
(g groups; 1 group in the very first unit, whose input has only 24 channels: the reference's
`in_planes == 24` rule, the paper's section 3.3) to a bottleneck of a quarter of the unit's
branch width, BN, ReLU, channel shuffle (g groups), a 3x3 depthwise conv carrying the stride,
BN, ReLU (the reference has this ReLU; the paper does not), a 1x1 group conv (g groups) back to
the branch width, BN. Stride 1: out = ReLU(branch + x). Stride 2: out = ReLU(concat(branch,
AvgPool2d(3, stride 2, padding 1)(x))), the branch giving the stage width minus the input width
(216, 240, 480). The last unit's pre-ReLU sum is RepDistiller's preact feature.

V2 (stage widths 116, 232, 464, 1x: 3, 7, 3 basic units after one down-sampling unit per stage,
then a 1x1 conv 464 -> 1024 + BN + ReLU before pooling): a basic unit splits the input channels
in two halves (ratio 0.5), keeps the first half x1 and passes the second through the branch
1x1 conv (BN, ReLU), 3x3 depthwise (BN, no ReLU), 1x1 conv (BN, ReLU); out = shuffle(concat(x1,
branch), 2 groups). A down-sampling unit has no split: its left branch is a 3x3 depthwise conv
with stride 2 (BN) then a 1x1 conv to half the stage width (BN, ReLU); its right branch is the
basic unit's branch with the stride in its depthwise conv and the full input as input;
out = shuffle(concat(left, right), 2). RepDistiller's preact feature of a stage is the concat
before the last unit's final ReLU, returned unshuffled; here preact_feats is shuffled like the
output, so that relu(preact) equals the feature (the same values, channels in the same order).

Feature lists: RepDistiller returns [f0, f1, f2, f3] = the stem's output and each stage's output
(32x32, 16x16, 8x8, 4x4), and the pooled vector (V2: after the 1024-wide head conv); `feats` is
exactly [f0..f3], the embedding is that pooled vector, and for V2 the head conv is part of
`pool` (the classifier sees GAP(head(feats[-1])), as in the reference). preact_feats: the stem
before its ReLU, then each stage's last unit before its last ReLU.

base_width:
- V1: the stem width (the paper's "ShuffleNet s x" has 24 s); the stages are 10, 20, 40 times it
  and each bottleneck is a quarter of its branch width rounded down to a multiple of 3 (the
  reference's widths already are). It must be a multiple of 3 (the groups). Default 24 (1x);
  12 gives the official 0.5x (12, 120, 240, 480).
- V2: the first stage's width (stages 1, 2, 4 times it; must be even, for the split and the
  2-group shuffle). The stem (24) and the head (1024) are fixed, as in the paper's 0.5x-1.5x
  tables, so base_width 48 is RepDistiller's net_size 0.5 and 176 its 1.5. Default 116 (1x).

Hint: none for either (has_hint False). V1's shortcuts are the identity (added) or an average
pool (concatenated): no learned layer. V2's basic units have no shortcut add at all (the first
half is concatenated unchanged); its down-sampling unit's left branch (depthwise + BN + 1x1 +
BN + ReLU) is sometimes called the shortcut, but it is a second branch of the unit, not a
projection added to a residual: its (post-ReLU) output is concatenated and is literally half of
the unit's output channels, so the "hint" would be a channel subset of an ordinary stage
feature, which feature-based terms (fitnet, at) already cover.

Attention placements (asked of skipkd/models/placement.py unit by unit, families
"shufflenetv1" / "shufflenetv2", no hint block, so "last" means the last unit; `attn` picks the
module, `eca_k` its kernel; the units receive the modules built):
- V1 "parallel": additive attention on the identity shortcut of the stride-1 units of stage 1
  (units 2-4: 240 channels, 16x16 at 1x) before the add; the first unit's pooled shortcut is
  concatenated, not added, and gets none.
- V1 "last" / "all": multiplicative attention on the branch output (after the last group
  conv's BN, before the add or concat) of the last unit of stage 3 (960 channels, 4x4) / of
  every unit.
- V2 "last" / "all": multiplicative attention on the (right) branch after its last BN, before
  its final ReLU and the concat, in the last unit of stage 3 (232 channels, 4x4) / in every
  unit (down-sampling units included; ShuffleNetV2+ also puts SE at the end of this branch).
  V2 has no "parallel", nor any placement with the additive form: no unit adds a shortcut to a
  branch (V2 hosts the MULTIPLICATIVE form only).
- Any placement registered later, where its forms fit (additive: V1's stride-1 units only).

Registered as "shufflev1" (aliases "ShuffleV1", RepDistiller's name, and "shufflenetv1") and
"shufflev2" (aliases "ShuffleV2", "shufflenetv2").

| model     | hint | placements                | default width | params (100 classes) |
|-----------|------|---------------------------|---------------|----------------------|
| shufflev1 | none | none, parallel, last, all | 24            | 949,258              |
| shufflev2 | none | none, last, all           | 116           | 1,355,528            |
(placements: the built-in ones.)
"""
import torch
import torch.nn.functional as F
from torch import nn

from .contract import FeatureModel
from .attention import MULTIPLICATIVE
from .init import orthogonal_init_
from .placement import AttentionPlacer, BlockSite
from .registry import register_model

__all__ = ["ShuffleV1Unit", "ShuffleV2Unit", "ShuffleNetV1", "ShuffleNetV2", "shufflev1",
           "shufflev2"]

STEM_WIDTH = 24         # both references' 1x1 stem (V2 keeps it at every size)
V1_GROUPS = 3           # RepDistiller's ShuffleV1 cfg
V1_UNITS = (4, 8, 4)
V2_UNITS = (3, 7, 3)    # basic units after each stage's down-sampling unit (net_size 1)
V2_HEAD_WIDTH = 1024
V2_FORMS = (MULTIPLICATIVE,)  # no unit adds a shortcut: no additive attention


def _conv_bn(in_ch, out_ch, kernel=1, stride=1, groups=1, relu=True) -> list:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2,
                        groups=groups, bias=False), nn.BatchNorm2d(out_ch)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class ShuffleV1Unit(nn.Module):
    """1x1 group conv -> shuffle -> 3x3 depthwise (stride) -> 1x1 group conv, each with BN;
    stride 1: relu(attn(branch) + shortcut_attn(x)); stride 2: relu(concat(attn(branch),
    avgpool3x3s2(x))), the branch giving out_ch - in_ch channels. attn and shortcut_attn: the
    injected attention modules (or None; shortcut_attn only on a stride-1 unit)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_groups: int,
                 attn: nn.Module | None = None, shortcut_attn: nn.Module | None = None):
        super().__init__()
        self.concat = stride == 2
        if not self.concat and in_ch != out_ch:
            raise ValueError(f"a stride-1 ShuffleNet unit keeps its width, got {in_ch} -> {out_ch}")
        if self.concat and shortcut_attn is not None:
            raise ValueError("shortcut attention on a unit whose shortcut is concatenated")
        branch = self.branch_width(in_ch, out_ch, stride)
        mid = max(groups, branch // 4 // groups * groups)  # a quarter, whole groups
        self.residual = nn.Sequential(
            *_conv_bn(in_ch, mid, groups=first_groups),
            nn.ChannelShuffle(first_groups) if first_groups > 1 else nn.Identity(),
            *_conv_bn(mid, mid, 3, stride, groups=mid),
            *_conv_bn(mid, branch, groups=groups, relu=False),
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if self.concat else None
        self.attn = attn
        self.shortcut_attn = shortcut_attn

    @staticmethod
    def branch_width(in_ch: int, out_ch: int, stride: int) -> int:
        """The branch's output channels: all of them, or those the concat adds (stride 2)."""
        return out_ch - in_ch if stride == 2 else out_ch

    def forward(self, x: torch.Tensor, preact: bool = False):
        """The unit's output; with preact=True (output, the same before its ReLU)."""
        out = self.residual(x)
        if self.attn is not None:
            out = self.attn(out)
        if self.concat:
            pre = torch.cat([out, self.shortcut(x)], dim=1)
        else:
            pre = out + (x if self.shortcut_attn is None else self.shortcut_attn(x))
        return (F.relu(pre), pre) if preact else F.relu(pre)


class ShuffleV2Unit(nn.Module):
    """Stride 1: shuffle(concat(x1, relu(attn(right(x2))))) for the channel halves x1, x2.
    Stride 2: shuffle(concat(left(x), relu(attn(right(x))))); left = dw3x3 s2 + BN + 1x1 + BN +
    ReLU. right = 1x1 + BN + ReLU, dw3x3 (stride) + BN, 1x1 + BN (its ReLU applied in forward).
    attn: the injected attention module on the right branch (out_ch / 2 channels), or None."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, attn: nn.Module | None = None):
        super().__init__()
        if out_ch % 2 or (stride == 1 and in_ch != out_ch):
            raise ValueError(f"a ShuffleNetV2 unit needs an even width, kept by stride-1 units; "
                             f"got {in_ch} -> {out_ch} (stride {stride})")
        self.split = stride == 1
        mid = out_ch // 2
        right_in = in_ch // 2 if self.split else in_ch
        self.right = nn.Sequential(
            *_conv_bn(right_in, mid),
            *_conv_bn(mid, mid, 3, stride, groups=mid, relu=False),
            *_conv_bn(mid, mid, relu=False),
        )
        self.left = None if self.split else nn.Sequential(
            *_conv_bn(in_ch, in_ch, 3, stride, groups=in_ch, relu=False),
            *_conv_bn(in_ch, mid),
        )
        self.attn = attn
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor, preact: bool = False):
        """The unit's output; with preact=True (output, the same before the right branch's
        last ReLU, shuffled alike)."""
        if self.split:
            keep, x = x.chunk(2, dim=1)  # (B, C/2, H, W) each
        else:
            keep = self.left(x)
        pre = self.right(x)
        if self.attn is not None:
            pre = self.attn(pre)
        out = self.shuffle(torch.cat([keep, F.relu(pre)], dim=1))
        if not preact:
            return out
        return out, self.shuffle(torch.cat([keep, pre], dim=1))


class _ShuffleNet(FeatureModel):
    """Shared by V1 and V2: the 1x1 stem, stages of units (each with forward(x, preact)), an
    optional head conv inside `pool`, GAP and the linear classifier."""

    has_hint = False

    def _finish(self, stages: list, in_ch: int, num_classes: int, head_width: int | None):
        self.stages = nn.ModuleList(nn.Sequential(*units) for units in stages)
        self.head = None
        if head_width is not None:
            self.head = nn.Sequential(*_conv_bn(in_ch, head_width))
            in_ch = head_width
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        orthogonal_init_(self)  # ours: the references define no init

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C): GAP of the last stage's output (V1) or of the head conv's (V2)."""
        return super().pool(fmap if self.head is None else self.head(fmap))

    def forward_all(self, x: torch.Tensor) -> tuple[tuple, tuple, None]:
        """feats: the stem (B, 24, H, W) and each stage's output (H/2, H/4, H/8);
        preact_feats: the same before their last ReLU."""
        pre = self.stem[1](self.stem[0](x))
        x = F.relu(pre)
        feats, preacts = [x], [pre]
        for stage in self.stages:
            for unit in stage[:-1]:
                x = unit(x)
            x, pre = stage[-1](x, preact=True)
            feats.append(x)
            preacts.append(pre)
        return tuple(feats), tuple(preacts), None


class ShuffleNetV1(_ShuffleNet):
    """CIFAR ShuffleNet (g = 3), RepDistiller's ShuffleV1; forward -> ModelOutput(logits, None)."""

    def __init__(self, num_classes=100, base_width=24, in_channels=3, placement="none", eca_k=None,
                 attn="eca", units=V1_UNITS, groups=V1_GROUPS):
        super().__init__()
        placer = AttentionPlacer(placement, attn, eca_k, owner="ShuffleNetV1")
        if base_width < 1 or num_classes < 1 or in_channels < 1 or base_width % groups:
            raise ValueError(f"ShuffleNetV1 needs a positive base_width divisible by its "
                             f"{groups} groups (got {base_width}), positive num_classes and "
                             f"in_channels")
        self.placement = placement
        self.attn_layer = attn
        self.stem = nn.Sequential(*_conv_bn(in_channels, base_width))  # 1x1, 24 at 1x
        in_ch, stages = base_width, []
        for stage_idx, n_units in enumerate(units):
            width = 10 * base_width * 2 ** stage_idx  # 240, 480, 960 at 1x
            stage = []
            for i in range(n_units):
                stride = 2 if i == 0 else 1
                site = BlockSite("shufflenetv1", stage_idx, i, has_hint=False,
                                 is_last=stage_idx == len(units) - 1 and i == n_units - 1,
                                 shortcut="none" if stride == 2 else "identity")  # concat / add
                branch_attn, shortcut_attn = placer(
                    site, ShuffleV1Unit.branch_width(in_ch, width, stride))
                stage.append(ShuffleV1Unit(
                    in_ch, width, stride, groups,
                    first_groups=1 if stage_idx == 0 and i == 0 else groups,
                    attn=branch_attn, shortcut_attn=shortcut_attn))
                in_ch = width
            stages.append(stage)
        self._finish(stages, in_ch, num_classes, head_width=None)


class ShuffleNetV2(_ShuffleNet):
    """CIFAR ShuffleNet V2 (1x), RepDistiller's ShuffleV2; forward -> ModelOutput(logits, None)."""

    def __init__(self, num_classes=100, base_width=116, in_channels=3, placement="none", eca_k=None,
                 attn="eca", units=V2_UNITS, head_width=V2_HEAD_WIDTH):
        super().__init__()
        placer = AttentionPlacer(placement, attn, eca_k, owner="ShuffleNetV2", forms=V2_FORMS)
        if base_width < 2 or base_width % 2 or num_classes < 1 or in_channels < 1:
            raise ValueError(f"ShuffleNetV2 needs an even, positive base_width (got "
                             f"{base_width}), positive num_classes and in_channels")
        self.placement = placement
        self.attn_layer = attn
        self.stem = nn.Sequential(*_conv_bn(in_channels, STEM_WIDTH))  # 1x1, fixed
        in_ch, stages = STEM_WIDTH, []
        for stage_idx, n_basic in enumerate(units):
            width = base_width * 2 ** stage_idx  # 116, 232, 464 at 1x
            stage = []
            for i in range(n_basic + 1):  # the down-sampling unit, then the basic units
                site = BlockSite("shufflenetv2", stage_idx, i, has_hint=False,
                                 is_last=stage_idx == len(units) - 1 and i == n_basic)
                branch_attn, _ = placer(site, width // 2)  # no shortcut: never an additive one
                stage.append(ShuffleV2Unit(in_ch, width, 2 if i == 0 else 1, attn=branch_attn))
                in_ch = width
            stages.append(stage)
        self._finish(stages, in_ch, num_classes, head_width=head_width)


def shufflev1(num_classes=100, base_width=24, in_channels=3, placement="none", eca_k=None,
              attn="eca") -> ShuffleNetV1:
    """RepDistiller's ShuffleV1: g = 3, stages 240/480/960 with 4/8/4 units (base_width 24)."""
    return ShuffleNetV1(num_classes=num_classes, base_width=base_width,
                        in_channels=in_channels, placement=placement, eca_k=eca_k, attn=attn)


def shufflev2(num_classes=100, base_width=116, in_channels=3, placement="none", eca_k=None,
              attn="eca") -> ShuffleNetV2:
    """RepDistiller's ShuffleV2 (net_size 1): stages 116/232/464, 3/7/3 basic units, head 1024."""
    return ShuffleNetV2(num_classes=num_classes, base_width=base_width,
                        in_channels=in_channels, placement=placement, eca_k=eca_k, attn=attn)


register_model("ShuffleV1", shufflev1, default_width=24, family="shufflenetv1",
               aliases=("shufflev1", "shufflenetv1"))
register_model("ShuffleV2", shufflev2, default_width=116, family="shufflenetv2",
               forms=V2_FORMS, aliases=("shufflev2", "shufflenetv2"))
