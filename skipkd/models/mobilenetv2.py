"""MobileNetV2 as the knowledge-distillation literature's CIFAR-100 benchmark uses it.

Paper: Mark Sandler, Andrew Howard, Menglong Zhu, Andrey Zhmoginov, Liang-Chieh Chen,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.

Reference matched: RepDistiller's models/mobilenetv2.py (github.com/HobbitLong/RepDistiller;
mdistiller/models/cifar/mobilenetv2.py is a copy), `mobile_half` = mobilenetv2_T_w(T=6, W=0.5):
the network its tables (and CRD's, Tian et al., ICLR 2020) call "MobileNetV2". Facts taken:
- stem: 3x3 conv with stride 2 (32x32 -> 16x16), int(32 * W) = 16 channels, BN, ReLU;
- the paper's seven (t, c, n, s) rows with c scaled by W (int()) and t = T = 6 except the first
  row's t = 1, but with the second row's stride 1 instead of 2 (the CIFAR change), so the maps
  are 16, 16, 8, 4, 4, 2, 2 pixels wide after the rows;
- every inverted residual has the 1x1 expansion conv, even for t = 1 (in_ch -> in_ch * t, BN,
  ReLU), a 3x3 depthwise conv carrying the stride (BN, ReLU), a linear 1x1 projection (BN, no
  ReLU); the identity shortcut is added only when the stride is 1 and in_ch == out_ch (there
  is never a projection shortcut);
- ReLU, not the paper's ReLU6;
- head: 1x1 conv to 1280 channels (1280 for W <= 1, int(1280 * W) above, the paper's rule),
  BN, ReLU, global average pooling (the reference's AvgPool2d(2, ceil_mode=True) on the 2x2 map),
  one Linear with bias, no dropout;
- feature list: the stem's output, then the outputs after rows 2, 3, 5 and 7 (feat_s[0..4] in
  RepDistiller: 16x16, 16x16, 8x8, 4x4, 2x2 maps); its pooled feat_s[5] is our embedding. Here
  the rows are grouped into those four stages, so `feats` is exactly that list, and the 1x1
  head conv is part of `pool` (the embedding is GAP(head(feats[-1])), 1280-d, as RepDistiller's);
- init: RepDistiller's _initialize_weights: Conv2d weights N(0, sqrt(2 / (k*k*out_channels)))
  (depthwise too), BN weight 1 / bias 0, Linear N(0, 0.01) with bias 0. The attention modules
  (not in the reference) get our orthogonal rule (as skipkd/models/cifar_resnet.py).
`preact_feats`: the stem before its ReLU; the stages end with a linear projection or an add,
without ReLU (as the paper's linear bottleneck), so their preact is the output itself
(RepDistiller ignores preact=True for this model).

base_width is the stem width, 32 * W in the reference's width multiplier W: every row's width is
c * base_width // 32 (the reference's int(c * W)), the head is 1280 (or 1280 * base_width // 32
above 32), so base_width = 32 * W gives mobilenetv2_T_w(6, W) of the reference. Default 16 (W =
0.5, mobile_half); base_width 8 halves every layer but the 1280-wide head, which the paper keeps
for multipliers below 1. Widths that floor to 0 are raised to 1.

Hint: none (has_hint False). MobileNetV2's shortcuts are identities or absent; no block has a 1x1
conv + BN on a shortcut path, so the skip-connection hint is not defined.

Attention placements (asked of skipkd/models/placement.py block by block, family
"mobilenetv2", no hint block, so "last" means the last block; `attn` picks the module, `eca_k`
its kernel; the blocks receive the modules built):
- "parallel": additive attention on the identity shortcut of every stage-1 block that has one
  (with the default width only the second block of the 24-channel row, 12 channels, 16x16);
- "last": multiplicative attention on the residual branch (after the projection's BN) of the
  last block (the 320-row block: 160 channels, 2x2);
- "all": the same on the residual branch of all 17 blocks, before the identity add where there
  is one (where ECA-Net's own eca_mobilenetv2.py puts its ECA layer);
- any placement registered later (additive forms land only on blocks with a shortcut).

Registered as "mobilenetv2" (aliases "MobileNetV2", RepDistiller's name, and "mobile_half").

| model       | hint | placements                | default width | params (100 classes) |
|-------------|------|---------------------------|---------------|----------------------|
| mobilenetv2 | none | none, parallel, last, all | 16            | 812,836              |
(placements: the built-in ones.)
"""

import torch
import torch.nn.functional as F
from torch import nn

from .contract import FeatureModel
from .init import reference_init_
from .placement import AttentionPlacer, BlockSite
from .registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "STAGES", "mobilenetv2"]

# RepDistiller's rows (expanded: t = T, else t = 1; width c at W = 1; blocks n; stride of the
# row's first block s), grouped into the four stages whose outputs its feature list returns.
STAGES = (
    ((False, 16, 1, 1), (True, 24, 2, 1)),   # 16x16 (the stem has already halved 32x32)
    ((True, 32, 3, 2),),                     # 8x8
    ((True, 64, 4, 2), (True, 96, 3, 1)),    # 4x4
    ((True, 160, 3, 2), (True, 320, 1, 1)),  # 2x2
)
HEAD_WIDTH = 1280  # the last 1x1 conv, kept for width multipliers <= 1 (paper, reference)


class InvertedResidual(nn.Module):
    """1x1 expansion (BN, ReLU) -> 3x3 depthwise with the stride (BN, ReLU) -> linear 1x1
    projection (BN); plus the input when the stride is 1 and the widths agree.
    out = attn(branch(x)) + shortcut_attn(x), attn and shortcut_attn the injected attention
    modules (or None; shortcut_attn only where there is a shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int,
                 attn: nn.Module | None = None, shortcut_attn: nn.Module | None = None):
        super().__init__()
        hidden = in_ch * expansion
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.has_shortcut = self.adds_input(in_ch, out_ch, stride)
        if shortcut_attn is not None and not self.has_shortcut:
            raise ValueError("shortcut attention on a block without a shortcut")
        self.attn = attn
        self.shortcut_attn = shortcut_attn

    @staticmethod
    def adds_input(in_ch: int, out_ch: int, stride: int) -> bool:
        """Whether the block adds its input (an identity shortcut): stride 1, equal widths."""
        return stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.attn is not None:
            out = self.attn(out)
        if not self.has_shortcut:
            return out
        return out + (x if self.shortcut_attn is None else self.shortcut_attn(x))


class MobileNetV2(FeatureModel):
    """CIFAR MobileNetV2 (RepDistiller's): stride-2 stem, four stages of inverted residuals,
    1x1 head conv, GAP, linear classifier. forward(x) -> ModelOutput(logits, None)."""

    has_hint = False

    def __init__(self, num_classes=100, base_width=16, in_channels=3, placement="none", eca_k=None,
                 attn="eca", expansion=6):
        super().__init__()
        placer = AttentionPlacer(placement, attn, eca_k, owner="MobileNetV2")
        if base_width < 1 or num_classes < 1 or in_channels < 1 or expansion < 1:
            raise ValueError("base_width, num_classes, in_channels and expansion must be positive")
        self.placement = placement
        self.attn_layer = attn

        def width(c):  # the reference's int(c * W) with W = base_width / 32, at least 1
            return max(1, c * base_width // 32)

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width(32), 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width(32)),
            nn.ReLU(inplace=True),
        )
        in_ch = width(32)
        n_blocks = sum(n for rows in STAGES for _, _, n, _ in rows)
        stages, index = [], 0
        for stage_idx, rows in enumerate(STAGES):
            blocks = []
            for expanded, c, n, s in rows:
                for i in range(n):
                    index += 1
                    stride = s if i == 0 else 1
                    adds = InvertedResidual.adds_input(in_ch, width(c), stride)
                    site = BlockSite("mobilenetv2", stage_idx, len(blocks), has_hint=False,
                                     is_last=index == n_blocks,
                                     shortcut="identity" if adds else "none")
                    branch_attn, shortcut_attn = placer(site, width(c))
                    blocks.append(InvertedResidual(
                        in_ch, width(c), stride, expansion if expanded else 1,
                        attn=branch_attn, shortcut_attn=shortcut_attn))
                    in_ch = width(c)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        head = HEAD_WIDTH if base_width <= 32 else HEAD_WIDTH * base_width // 32
        self.head = nn.Sequential(
            nn.Conv2d(in_ch, head, 1, bias=False),
            nn.BatchNorm2d(head),
            nn.ReLU(inplace=True),
        )
        self.num_features = head
        self.fc = nn.Linear(head, num_classes)
        self._init_weights()

    def _init_weights(self):
        """RepDistiller's init for the layers it has; our orthogonal rule for attention."""
        reference_init_(self, linear="normal")

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """The head: 1x1 conv to 1280 channels (BN, ReLU), then global average pooling ->
        (B, 1280). feats[-1] is the last stage's output, as in RepDistiller's feature list."""
        return super().pool(self.head(fmap))

    def forward_all(self, x: torch.Tensor) -> tuple[tuple, tuple, None]:
        """feats: stem (B, 16, H/2, W/2), stages (12, H/2), (16, H/4), (48, H/8), (160, H/16)
        at the default width; preact_feats: the stem before its ReLU, the stages' outputs
        themselves (they end without ReLU)."""
        pre = self.stem[1](self.stem[0](x))
        x = F.relu(pre)
        feats, preacts = [x], [pre]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
            preacts.append(x)
        return tuple(feats), tuple(preacts), None


def mobilenetv2(num_classes=100, base_width=16, in_channels=3, placement="none", eca_k=None,
                attn="eca") -> MobileNetV2:
    """RepDistiller's mobile_half (T = 6, W = base_width / 32 = 0.5 by default)."""
    return MobileNetV2(num_classes=num_classes, base_width=base_width, in_channels=in_channels,
                       placement=placement, eca_k=eca_k, attn=attn)


register_model("MobileNetV2", mobilenetv2, default_width=16, family="mobilenetv2",
               aliases=("mobilenetv2", "mobile_half"))
