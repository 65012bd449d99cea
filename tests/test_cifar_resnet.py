"""The 3-stage CIFAR ResNets (models/cifar_resnet.py): parameter counts against RepDistiller's
definition worked out by hand, the feature contract for every model x ECA placement at reduced
width, hints, placements, init, channels_last and bf16 autocast."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skipkd.models.cifar_resnet  # noqa: F401  (registers the skipkd.models)
from skipkd.models import (ECA, FEATURES, ECA_PLACEMENTS, ParallelECA, count_parameters, create_model,
                    feature_shapes, hint_shape)
from skipkd.models.cifar_resnet import CIFAR_RESNETS

PLAIN = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
X4 = ["resnet8x4", "resnet32x4"]
NAMES = PLAIN + X4
SMALL = 4  # reduced base width for the forward/backward tests: stages 4/8/16 (x4: 8/16/32)
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def _depth(model):
    """The number of weight layers, a bound on the depth a rounding error travels through."""
    return sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in model.modules())


# ------------------------------------------------------------------ parameter counts
def reference_param_count(depth: int, stem: int, widths: tuple, num_classes: int = 100) -> int:
    """Parameters of RepDistiller's models/resnet.py ResNet(depth, [stem, *widths], 'basicblock'),
    layer by layer: conv3x3 stem (no bias) + BN; per stage n = (depth-2)/6 BasicBlocks, each
    conv3x3 + BN + conv3x3 + BN (no conv bias) plus, where the stride or the width changes, a
    downsample 1x1 conv (no bias) + BN; a Linear head with bias. A BN has 2 parameters a channel."""
    n = (depth - 2) // 6
    total = 3 * 9 * stem + 2 * stem                      # stem conv 3x3 + BN
    c_in = stem
    for stage, c in enumerate(widths):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
            if stride != 1 or c_in != c:                 # RepDistiller's _make_layer rule
                total += c_in * c + 2 * c
            c_in = c
    return total + c_in * num_classes + num_classes     # fc weight + bias


# By hand for resnet20 (n = 3, 100 classes):
#   stem      3*9*16 + 2*16                                          =     464
#   stage 1   3 x (9*16*16 + 9*16*16 + 4*16)        = 3 x 4,672      =  14,016
#   stage 2   (9*16*32 + 9*32*32 + 4*32) + (16*32 + 2*32)  = 14,528
#             + 2 x (9*32*32*2 + 4*32) = 2 x 18,560                  =  51,648
#   stage 3   (9*32*64 + 9*64*64 + 4*64) + (32*64 + 2*64)  = 57,728
#             + 2 x (9*64*64*2 + 4*64) = 2 x 73,984                  = 205,696
#   fc        64*100 + 100                                           =   6,500
#   total                                                            = 278,324
# resnet8x4 (n = 1; stem 32; the first stage-1 block projects 32 -> 64 at stride 1):
#   stem 3*9*32 + 64 = 928; stage 1 9*32*64 + 9*64*64 + 4*64 + 32*64 + 2*64 = 57,984;
#   stage 2 9*64*128 + 9*128*128 + 4*128 + 64*128 + 2*128 = 230,144;
#   stage 3 9*128*256 + 9*256*256 + 4*256 + 128*256 + 2*256 = 918,784; fc 256*100 + 100 = 25,700
#   total 1,233,540
# Published (CRD, ICLR 2020, and the KD papers after it): resnet8x4 1.23M, resnet32x4 7.43M,
# resnet20 0.28M, resnet56 0.86M, resnet110 1.74M: consistent.
EXPECTED = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756,
    "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564,
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
}


def test_hand_count_matches_table():
    plain = {n: reference_param_count(CIFAR_RESNETS[n][0], 16, (16, 32, 64)) for n in PLAIN}
    x4 = {n: reference_param_count(CIFAR_RESNETS[n][0], 32, (64, 128, 256)) for n in X4}
    assert {**plain, **x4} == EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_100_classes(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=100)
    assert count_parameters(model) == EXPECTED[name]


@pytest.mark.parametrize("name", NAMES)
def test_structure_matches_reference(name):
    """Convolutions as RepDistiller builds them: a stem, two 3x3 per block, and projections
    only where the stride or the width changes (x4 nets: also stage 1's first block)."""
    depth = CIFAR_RESNETS[name][0]
    n = (depth - 2) // 6
    with torch.device("meta"):
        model = create_model(name, num_classes=100)
    assert [len(s) for s in model.stages] == [n, n, n]
    projected = [(s, i) for s, stage in enumerate(model.stages) for i, b in enumerate(stage)
                 if b.shortcut is not None]
    assert projected == ([(0, 0)] if name in X4 else []) + [(1, 0), (2, 0)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 6 * n + len(projected)
    assert all(c.bias is None for c in convs)
    assert model.fc.bias is not None and model.num_features == (256 if name in X4 else 64)


# ------------------------------------------------------------------ forward + backward
@pytest.mark.parametrize("eca", ECA_PLACEMENTS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_features(name, eca):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, base_width=SMALL, placement=eca).train()
    shapes = feature_shapes(model)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    out = model.request_features(FEATURES)(x)
    assert out.logits.shape == (2, 10) and torch.isfinite(out.logits).all()
    assert tuple(out.hint.shape[1:]) == shapes["hint"] == hint_shape(name, SMALL)
    assert [tuple(f.shape[1:]) for f in out.feats] == shapes["feats"]
    assert [tuple(f.shape[1:]) for f in out.preact_feats] == shapes["preact_feats"]
    assert len(out.feats) == 4  # stem + 3 stages
    assert tuple(out.embedding.shape[1:]) == shapes["embedding"] == (model.num_features,)
    assert shapes["feats"][-1] == (model.num_features, 8, 8)
    for f, p in zip(out.feats, out.preact_feats):
        torch.testing.assert_close(f, F.relu(p))
    loss = F.cross_entropy(out.logits, y) + 1e-3 * out.hint.pow(2).mean() \
        + sum(p.pow(2).mean() for p in out.preact_feats[1:])
    loss.backward()
    params = dict(model.named_parameters())
    assert not [n for n, p in params.items() if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    assert params["stem.0.weight"].grad.abs().sum() > 0
    attn_grads = [p.grad for n, p in params.items() if "attn.conv" in n]
    assert bool(attn_grads) == (eca != "none")
    assert all(g.abs().sum() > 0 for g in attn_grads)
    # the plain path gives the feature path's logits and hint
    model.eval()
    with torch.no_grad():
        full = model(x)
        plain = model.request_features(())(x)
    assert plain.feats is None and plain.embedding is None
    torch.testing.assert_close(plain.logits, full.logits)
    torch.testing.assert_close(plain.hint, full.hint)


# ------------------------------------------------------------------ hints
@pytest.mark.parametrize("name", NAMES)
def test_hint_shape_default_width(name):
    assert hint_shape(name) == ((256, 8, 8) if name in X4 else (64, 8, 8))
    assert hint_shape(name, SMALL) == ((8 * SMALL, 8, 8) if name in X4 else (4 * SMALL, 8, 8))


@pytest.mark.parametrize("eca", ["none", "parallel", "last"])
@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet8x4"])
def test_hint_is_stage3_projection_and_forward_hint(name, eca):
    torch.manual_seed(0)
    model = create_model(name, base_width=SMALL, placement=eca).eval()
    assert model.hint_block is model.stages[2][0]
    seen = {}
    model.hint_block.shortcut.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.hint, seen["s"])
        torch.testing.assert_close(model.forward_hint(x), out.hint)
    assert (out.hint < 0).any()  # BN output, before any ReLU


# ------------------------------------------------------------------ placements
def _blocks(model):
    return [(s, i, b) for s, stage in enumerate(model.stages) for i, b in enumerate(stage)]


@pytest.mark.parametrize("name", ["resnet14", "resnet8x4"])
def test_eca_placements(name):
    n = (CIFAR_RESNETS[name][0] - 2) // 6
    m = create_model(name, base_width=SMALL, placement="parallel")
    assert [s for s, _, b in _blocks(m) if isinstance(b.shortcut_attn, ParallelECA)] == [0] * n
    assert not [x for x in m.modules() if isinstance(x, ECA)]
    m = create_model(name, base_width=SMALL, placement="last")
    ecas = [x for x in m.modules() if isinstance(x, ECA)]
    assert len(ecas) == 1 and m.hint_block.attn is ecas[0]
    m = create_model(name, base_width=SMALL, placement="all", attn="se")
    assert all(b.attn is not None and b.shortcut_attn is None for _, _, b in _blocks(m))
    assert sum(b.attn is not None for _, _, b in _blocks(m)) == 3 * n


def test_unknown_placement_and_depth_refused():
    with pytest.raises(ValueError, match="parallel"):
        create_model("resnet20", base_width=SMALL, placement="first")
    with pytest.raises(ValueError, match="6n\\+2"):
        skipkd.models.cifar_resnet.cifar_resnet(21, base_width=SMALL)


# ------------------------------------------------------------------ init
def test_reference_init():
    """RepDistiller's: Conv2d kaiming_normal_ (fan_out, ReLU gain), BN 1/0, the Linear head at
    PyTorch's default (bias non-zero); attention modules orthogonal (ECA kernel a unit vector)."""
    torch.manual_seed(0)
    model = create_model("resnet32x4", placement="parallel")
    conv = model.stages[2][1].residual[3]                     # 3x3, 256 -> 256
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.02)
    assert all((m.weight == 1).all() and (m.bias == 0).all()
               for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.fc.bias.abs().sum() > 0 and model.fc.weight.abs().max() <= 256 ** -0.5
    for m in model.modules():
        if isinstance(m, nn.Conv1d):  # a unit vector, up to float32 rounding of k entries
            assert m.weight.norm().item() == pytest.approx(1.0, abs=4 * m.weight.numel() * EPS32)


# ------------------------------------------------------------------ channels_last, bf16
@pytest.mark.parametrize("name, eca", [("resnet20", "parallel"), ("resnet8x4", "all")])
def test_channels_last_and_bf16_autocast(name, eca):
    torch.manual_seed(0)
    model = create_model(name, base_width=SMALL, placement=eca).eval()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, out = model(x), cl(xc)
    # float32 both ways, other conv kernels: a few EPS32 of rounding per layer, times the depth
    tol = 16 * _depth(model) * EPS32
    torch.testing.assert_close(out.logits, ref.logits, rtol=tol, atol=tol)
    torch.testing.assert_close(out.hint, ref.hint, rtol=tol, atol=tol)
    cl.train().request_features(FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cl(xc)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    (out.logits.float().sum() + out.hint.float().mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in cl.parameters())
