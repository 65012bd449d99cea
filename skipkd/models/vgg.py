"""VGG with BatchNorm in the CIFAR form of the knowledge-distillation literature (Simonyan &
Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015;
batch normalisation: Ioffe & Szegedy, ICML 2015), with optional channel attention.

Matched to RepDistiller (github.com/HobbitLong/RepDistiller, models/vgg.py, whose model_dict
maps vgg8/11/13/16/19 to the *_bn networks; mdistiller copies them). The facts taken from it:
  * five stages of 3x3 convolutions (padding 1, WITH bias), each followed by BN and ReLU, widths
    64, 128, 256, 512, 512, with 1,1,1,1,1 (vgg8), 1,1,2,2,2 (vgg11), 2,2,2,2,2 (vgg13),
    2,2,3,3,3 (vgg16) or 2,2,4,4,4 (vgg19) convolutions per stage; the ImageNet VGG's three
    fully connected layers are replaced by one Linear(512, classes);
  * 2x2 max-pooling after stages 1, 2 and 3; before stage 5 only when the input is 64 pixels
    high (RepDistiller's `if h == 64`), so a 32x32 input gives 4x4 maps in stages 4 and 5;
  * before the classifier: global average pooling (AdaptiveAvgPool2d(1)) of the last stage's
    ReLU output, so the default FeatureModel.pool is RepDistiller's;
  * every stage ends with its last BN (the stage's final ReLU is applied outside, not in
    place), which is where the pre-activation features come from;
  * init: convolutions N(0, 2 / (9 * out_channels)) with zero bias, BN weight 1 and bias 0,
    Linear N(0, 0.01) with zero bias. Attention modules (not in RepDistiller) get this
    toolkit's init (orthogonal weights, zero biases).

Widths: base_width b (default 64, the reference) gives stage widths b, 2b, 4b, 8b, 8b and a
Linear(8b, classes); b = 64 is exactly RepDistiller's network.

No hint: VGG has no shortcut, so `has_hint` is False, the hint is None and there is no
forward_hint (skip KD refuses these models).

Modules: `stem` is RepDistiller's block0 (the first stage) and `stages` its block1..block4.
Features (request_features): feats = the five stages' outputs after their final ReLU (stem
first; feats[i] is RepDistiller's f_i, so feats[2] is its FitNet hint layer), preact_feats
the same before that ReLU (the last BN's output, or the attention's output where a placement
puts one there). RepDistiller's preact list gives the first stage after its ReLU; here it is
before, as for every stage.

Attention placements (`placement`, asked of skipkd/models/placement.py conv by conv, family "vgg":
each conv-BN is a block site, no hint, no shortcut; `attn` picks the module, `eca_k` its kernel):
  * "none";
  * "last": multiplicative attention on the network's last convolution, after its BN and
    before its ReLU (the contract's "last block" where there is no hint block);
  * "all": multiplicative attention after the BN of every convolution, before its ReLU (every
    conv-BN is the plain network's block, as the residual branch ends with a BN in a ResNet).
  * any multiplicative placement registered later.
  "parallel", or any placement with the additive form, is not defined: there is no shortcut to
  put it on (VGG hosts the MULTIPLICATIVE form only).

| model | convs per stage | hint | placements      | default width | params (100 classes) |
|-------|-----------------|------|-----------------|---------------|----------------------|
| vgg8  | 1, 1, 1, 1, 1   | none | none, last, all | 64            | 3,965,028            |
| vgg11 | 1, 1, 2, 2, 2   | none | none, last, all | 64            | 9,277,284            |
| vgg13 | 2, 2, 2, 2, 2   | none | none, last, all | 64            | 9,462,180            |
| vgg16 | 2, 2, 3, 3, 3   | none | none, last, all | 64            | 14,774,436           |
| vgg19 | 2, 2, 4, 4, 4   | none | none, last, all | 64            | 20,086,692           |
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .contract import FeatureModel
from .attention import MULTIPLICATIVE
from .init import reference_init_
from .placement import AttentionPlacer, BlockSite
from .registry import register_model

__all__ = ["VGG_ARCHS", "VGG_FORMS", "STAGE_WIDTHS", "VGG"]

# name -> convolutions per stage
VGG_ARCHS = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
STAGE_WIDTHS = (1, 2, 4, 8, 8)  # in units of base_width (64 in the reference)
VGG_FORMS = (MULTIPLICATIVE,)   # no shortcut: no additive attention (placements: none, last, all)


class VGG(FeatureModel):
    """CIFAR VGG-BN: five conv stages (max-pooling between them), ReLU, global average pooling,
    one linear layer. forward(x) -> ModelOutput(logits, hint=None, ...)."""

    has_hint = False

    def __init__(self, convs_per_stage, num_classes: int = 10, base_width: int = 64,
                 in_channels: int = 3, placement: str = "none", eca_k=None, attn: str = "eca"):
        super().__init__()
        placer = AttentionPlacer(placement, attn, eca_k, owner="VGG", forms=VGG_FORMS)
        if len(convs_per_stage) != len(STAGE_WIDTHS) or min(convs_per_stage) < 1:
            raise ValueError(f"need {len(STAGE_WIDTHS)} stages of at least one conv each")
        if min(base_width, num_classes, in_channels) < 1:
            raise ValueError("base_width, num_classes and in_channels must be positive")
        self.placement = placement
        self.attn_layer = attn
        in_ch, stages = in_channels, []
        for s, (n_convs, unit) in enumerate(zip(convs_per_stage, STAGE_WIDTHS)):
            width = unit * base_width
            layers = []
            for i in range(n_convs):
                layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width)]
                site = BlockSite("vgg", s, i, has_hint=False,
                                 is_last=s == len(STAGE_WIDTHS) - 1 and i == n_convs - 1)
                branch_attn, _ = placer(site, width)  # no shortcut: never an additive one
                if branch_attn is not None:
                    layers.append(branch_attn)
                if i < n_convs - 1:  # the stage's last ReLU is applied in forward
                    layers.append(nn.ReLU(inplace=True))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stem = stages[0]                    # RepDistiller's block0
        self.stages = nn.ModuleList(stages[1:])  # its block1 ... block4
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self):
        """RepDistiller's init (module docstring); attention modules: the orthogonal rule."""
        reference_init_(self, linear="normal")

    @staticmethod
    def _pools_before(stage_idx: int, height: int) -> bool:
        """2x2 max-pool before stages 2, 3, 4 (stage 1 = the stem); before stage 5 only for
        64-pixel-high inputs."""
        return 1 <= stage_idx <= 3 or (stage_idx == 4 and height == 64)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(last stage's ReLU output (B, 8b, 4, 4) for 32x32 inputs, None)."""
        h = x.shape[2]
        for s, stage in enumerate((self.stem, *self.stages)):
            if self._pools_before(s, h):
                x = F.max_pool2d(x, 2)
            x = F.relu(stage(x), inplace=True)
        return x, None

    def forward_all(self, x: torch.Tensor) -> tuple[tuple, tuple, None]:
        """(feats, preact_feats, None): every stage after and before its final ReLU."""
        h = x.shape[2]
        feats, preacts = [], []
        for s, stage in enumerate((self.stem, *self.stages)):
            if self._pools_before(s, h):
                x = F.max_pool2d(x, 2)
            pre = stage(x)
            x = F.relu(pre)
            preacts.append(pre)
            feats.append(x)
        return tuple(feats), tuple(preacts), None


def _vgg(name: str, **kwargs) -> VGG:
    return VGG(VGG_ARCHS[name], **kwargs)


for _name in VGG_ARCHS:  # base width 64 = RepDistiller's vgg*_bn; its *_bn names as aliases
    register_model(_name, partial(_vgg, _name), default_width=64, family="vgg",
                   forms=VGG_FORMS, aliases=(f"{_name}_bn",))
