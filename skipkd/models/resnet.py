"""CIFAR-style ResNets (He et al., 2016) with optional attention, returning the skip-connection
hint.

One BasicBlock, one Bottleneck and one ResNet; the stem width, the stage widths and the number
of stages are arguments (the 3-stage CIFAR ResNets of the KD literature are configurations of
it: skipkd/models/cifar_resnet.py). Attention is injected per block: the ResNet describes each
block as a BlockSite (stage, index, hint block or not, projection or identity shortcut) and its
AttentionPlacer (skipkd/models/placement.py) builds the modules the placement puts there; a
block receives them built (`attn` on its residual branch, `shortcut_attn` on its shortcut).
The hint is the output of the hint block's projection shortcut (after its BN, before the
residual add): the first block of the last stage for basic-block nets (stage 4 of resnet18/34),
of the stage before it for bottleneck nets (stage 3 of resnet50/101/152).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .contract import BLOCK_FEATURES, FEATURES, FeatureModel, ModelOutput
from .init import orthogonal_init_, reference_init_
from .placement import ECA_PLACEMENTS, AttentionPlacer, BlockSite

__all__ = ["FEATURES", "ModelOutput", "OutputsAsTuple", "count_parameters", "PointwiseConv", "BasicBlock", "Bottleneck", "ResNet", "ECA_PLACEMENTS", "ARCHS"]


# name -> (block type, blocks per stage)
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


class OutputsAsTuple(nn.Module):
    """Plain outputs for tracing and export: logits (B, K), plus the hint (B, C, H, W) when
    asked and the model has one (TensorBoard's graph, ONNX)."""

    def __init__(self, model: nn.Module, with_hint: bool = False):
        super().__init__()
        self.model = model
        self.with_hint = with_hint

    def forward(self, x):
        out = self.model(x)
        return (out.logits, out.hint) if self.with_hint and out.hint is not None else out.logits


def count_parameters(model: nn.Module) -> int:
    """Every parameter's element count, summed."""
    return sum(p.numel() for p in model.parameters())


class PointwiseConv(nn.Conv2d):
    """1x1 convolution with stride s, computed as subsample-then-1x1-conv (the same values).

    Why not a plain strided nn.Conv2d: with torch 2.14 on AVX2 CPUs, the oneDNN weight gradient of
    a strided 1x1 conv in channels_last is wrong, or crashes the process, for fewer than 8 input
    channels (narrow nets such as base_width 4). The subsampled input costs one small copy.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if (sh, sw) != (1, 1):
            x = x[:, :, ::sh, ::sw]  # (B, C, ceil(H/sh), ceil(W/sw)): what padding 0 samples
        return F.conv2d(x, self.weight, self.bias)


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(PointwiseConv(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class _Block(nn.Module):
    """Shared residual logic: out = relu(attn(residual(x)) + shortcut_attn(shortcut(x))), attn
    and shortcut_attn the injected attention modules (or None)."""

    expansion = 1

    @staticmethod
    def projects(in_ch: int, out_ch: int, stride: int) -> bool:
        """Whether the block's shortcut is a projection (1x1 conv + BN) rather than the identity."""
        return stride != 1 or in_ch != out_ch

    def _init_tail(self, in_ch, out_ch, stride, attn, shortcut_attn):
        self.shortcut = _projection(in_ch, out_ch, stride) if self.projects(in_ch, out_ch, stride) else None
        self.attn = attn
        self.shortcut_attn = shortcut_attn
        self.relu = nn.ReLU(inplace=True)

    def forward_with_shortcut(self, x: torch.Tensor, preact: bool = False):
        """Returns (block output, shortcut tensor after its BN and before the residual add), and
        with preact=True also the sum before the final ReLU."""
        out = self.residual(x)
        if self.attn is not None:
            out = self.attn(out)
        s = x if self.shortcut is None else self.shortcut(x)
        s_added = s if self.shortcut_attn is None else self.shortcut_attn(s)
        if preact:
            pre = out + s_added
            return F.relu(pre), s, pre
        return self.relu(out + s_added), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_shortcut(x)[0]


class BasicBlock(_Block):
    expansion = 1

    def __init__(self, in_ch, width, stride=1, attn: nn.Module | None = None,
                 shortcut_attn: nn.Module | None = None):
        super().__init__()
        out_ch = width * self.expansion
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self._init_tail(in_ch, out_ch, stride, attn, shortcut_attn)


class Bottleneck(_Block):
    expansion = 4

    def __init__(self, in_ch, width, stride=1, attn: nn.Module | None = None,
                 shortcut_attn: nn.Module | None = None):
        super().__init__()
        out_ch = width * self.expansion
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self._init_tail(in_ch, out_ch, stride, attn, shortcut_attn)


class ResNet(FeatureModel):
    """ResNet: a stem, stages of residual blocks (the first block of every stage after the first
    has stride 2), GAP, linear head. stem="cifar": a 3x3 stride-1 convolution and no max-pool
    (32-pixel images); stem="imagenet": torchvision's 7x7 stride-2 convolution and 3x3 stride-2
    max-pool (224-pixel images), with which the networks are torchvision's own layer for layer
    (skipkd/models/imagenet.py maps torchvision's parameter names to these).

    forward(x) -> ModelOutput(logits, hint); on request (request_features) also the stage
    features, the embedding, the hint block's output and every projection shortcut's output.
    """

    block_features = BLOCK_FEATURES  # hint_out and shortcuts (skip KD's mid / all variants)

    def __init__(self, block: str, layers, num_classes=10, base_width=64, in_channels=3,
                 placement="none", eca_k=None, attn="eca", stage_widths=None, init="orthogonal",
                 family="resnet", stem="cifar"):
        """layers: blocks per stage (any number of stages, at least 2); base_width: the stem's
        output channels; stage_widths: each stage's block width (before the bottleneck's
        expansion), default base_width * 2**stage (64-128-256-512 for the standard nets);
        placement: where attention goes (a placement of skipkd.models.placement: none, parallel =
        additive on the shortcut of every stage-1 block, last = on the residual branch of the
        hint block, all = on that of every block, or any registered one); attn: which attention
        module (skipkd.models.attention.ATTENTION_LAYERS: eca, se, ...), eca_k: ECA's kernel;
        init: "orthogonal" (ours) or "kaiming" (RepDistiller's, see _init_weights); family: the
        name the placement rule sees (BlockSite.family); stem: "cifar" or "imagenet" (above)."""
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        placer = AttentionPlacer(placement, attn, eca_k, owner="ResNet")
        if base_width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError("base_width, num_classes and in_channels must be positive")
        layers = tuple(layers)
        if len(layers) < 2 or min(layers) < 1:
            raise ValueError(f"layers must give at least 2 stages of at least 1 block, got {layers}")
        if stage_widths is None:
            stage_widths = tuple(base_width * 2 ** i for i in range(len(layers)))
        stage_widths = tuple(stage_widths)
        if len(stage_widths) != len(layers) or min(stage_widths) < 1:
            raise ValueError(f"stage_widths {stage_widths} must give a positive width per stage "
                             f"of {layers}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if init not in ("orthogonal", "kaiming"):
            raise ValueError(f"init must be 'orthogonal' or 'kaiming', got {init!r}")
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.block_type = block
        self.placement = placement
        self.attn_layer = attn
        # 0-based stage index of the hint block: the last stage (basic), the one before (bottleneck)
        self.hint_stage = len(layers) - 1 if block == "basic" else len(layers) - 2

        self.stem_type = stem
        kernel, stride, pad = (3, 1, 1) if stem == "cifar" else (7, 2, 3)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, kernel, stride=stride, padding=pad, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
        )
        # the ImageNet stem's max-pool; nothing for the CIFAR stem (no parameters either way)
        self.stem_pool = (nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else
                     nn.Identity())
        in_ch = base_width
        stages = []
        for stage_idx, (n_blocks, width) in enumerate(zip(layers, stage_widths)):
            blocks = []
            for i in range(n_blocks):
                stride = 2 if (stage_idx > 0 and i == 0) else 1
                out_ch = width * block_cls.expansion
                site = BlockSite(family, stage_idx, i,
                                 is_hint=stage_idx == self.hint_stage and i == 0,
                                 is_last=stage_idx == len(layers) - 1 and i == n_blocks - 1,
                                 shortcut="projection" if block_cls.projects(in_ch, out_ch, stride)
                                 else "identity")
                branch_attn, shortcut_attn = placer(site, out_ch)
                blocks.append(block_cls(in_ch, width, stride, attn=branch_attn,
                                        shortcut_attn=shortcut_attn))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self.hint_block = self.stages[self.hint_stage][0]
        if self.hint_block.shortcut is None:
            raise ValueError("the hint block (first block of stage "
                             f"{self.hint_stage + 1}) must have a projection shortcut")
        self._init_weights(init)

    def _init_weights(self, init: str = "orthogonal"):
        """"orthogonal": this toolkit's rule; "kaiming": RepDistiller's CIFAR ResNet init (its
        Linear head keeps PyTorch's default) with the orthogonal rule for attention
        (skipkd/models/init.py)."""
        if init == "orthogonal":
            orthogonal_init_(self)
        else:
            reference_init_(self, linear="default")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(final feature map (B, C, H / 2**(stages-1), W / 2**(stages-1)), hint); the ImageNet
        stem divides by 4 more."""
        x = self.stem_pool(self.stem(x))
        hint = x  # replaced below; every net has a hint block
        for stage_idx, stage in enumerate(self.stages):
            if stage_idx == self.hint_stage:
                x, hint = stage[0].forward_with_shortcut(x)
                for blk in stage[1:]:
                    x = blk(x)
            else:
                x = stage(x)
        return x, hint

    def forward_all(self, x: torch.Tensor, taps: dict | None = None) -> tuple[tuple, tuple, torch.Tensor]:
        """(feats, preact_feats, hint): the stem's and every stage's output, before and after
        their last ReLU (the same values forward_features computes). With `taps` (a dict) also
        fills taps["hint_out"] (the hint block's output) and taps["shortcuts"] (every projection
        shortcut's output after its BN, before the add, in network order). The stem's feature
        is taken before the ImageNet stem's max-pool."""
        pre = self.stem[1](self.stem[0](x))
        x = F.relu(pre)
        feats, preacts, hint = [x], [pre], None
        x = self.stem_pool(x)
        for stage_idx, stage in enumerate(self.stages):
            for i, blk in enumerate(stage):
                x, s, pre = blk.forward_with_shortcut(x, preact=True)
                if stage_idx == self.hint_stage and i == 0:
                    hint = s
                    if taps is not None:
                        taps["hint_out"] = x
                if taps is not None and blk.shortcut is not None:
                    taps.setdefault("shortcuts", []).append(s)
            feats.append(x)
            preacts.append(pre)
        return tuple(feats), tuple(preacts), hint

    def forward_hint(self, x: torch.Tensor) -> torch.Tensor:
        """Only the hint: stops at the hint block's shortcut (skips the rest of the network and
        the hint block's own residual branch). What a frozen teacher computes for skip KD."""
        x = self.stem_pool(self.stem(x))
        for stage in self.stages[:self.hint_stage]:
            x = stage(x)
        return self.hint_block.shortcut(x)

    def forward_prefix(self, x: torch.Tensor, want) -> ModelOutput:
        """ModelOutput(None, hint, hint_out=..., shortcuts=...) computed only as far as `want`
        (of "hint", "hint_out", "shortcuts") needs: up to the hint block's shortcut (hint), its
        output (hint_out), the last projection shortcut (shortcuts); nothing after, no logits.
        What a frozen teacher runs for skip KD's variants."""
        want = frozenset(want)
        blocks = [((si, i), blk) for si, stage in enumerate(self.stages) for i, blk in enumerate(stage)]
        hint_at = (self.hint_stage, 0)
        stops = [hint_at] if want & {"hint", "hint_out"} else []
        if "shortcuts" in want:
            stops.append(max(pos for pos, blk in blocks if blk.shortcut is not None))
        end = max(stops)
        whole_end = end == hint_at and "hint_out" in want  # the last block is needed whole
        x = self.stem_pool(self.stem(x))
        got = {"shortcuts": []}
        for pos, blk in blocks:
            if pos == end and not whole_end:
                s = blk.shortcut(x)  # only this block's projection: nothing after it is needed
            else:
                x, s = blk.forward_with_shortcut(x)
            if blk.shortcut is not None:
                got["shortcuts"].append(s)
            if pos == hint_at:
                got["hint"] = s
                if pos != end or whole_end:  # the hint block ran whole: x is its output
                    got["hint_out"] = x
            if pos == end:
                break
        return ModelOutput(None, got.get("hint") if "hint" in want else None,
                           hint_out=got.get("hint_out") if "hint_out" in want else None,
                           shortcuts=tuple(got["shortcuts"]) if "shortcuts" in want else None)
