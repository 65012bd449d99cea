"""MobileNetV2 (mobile_half), ShuffleV1 and ShuffleV2 as RepDistiller defines them for CIFAR-100:
parameter counts against hand counts from the reference definitions, the feature contract at
reduced width for every placement, no hint, placements refused, base_width semantics, init,
channels_last and bf16 autocast."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import skipkd.models.mobilenetv2  # noqa: F401  (registers mobilenetv2)
import skipkd.models.shufflenet  # noqa: F401  (registers shufflev1, shufflev2)
from skipkd.models import (FEATURES, ModelOutput, count_parameters, create_model, eca_kernel_size,
                    feature_shapes, hint_shape, model_spec)

NAMES = ("mobilenetv2", "shufflev1", "shufflev2")
PLACEMENTS = {"mobilenetv2": ("none", "parallel", "last", "all"),
              "shufflev1": ("none", "parallel", "last", "all"),
              "shufflev2": ("none", "last", "all")}
SMALL = {"mobilenetv2": 8, "shufflev1": 6, "shufflev2": 16}  # reduced widths for the tests
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def _depth(model):
    """The number of weight layers, a bound on the depth a rounding error travels through."""
    return sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in model.modules())


# ------------------------------------------------------------------ hand parameter counts
# Every count below is written from RepDistiller's definitions (models/mobilenetv2.py,
# models/ShuffleNetv1.py, models/ShuffleNetv2.py): convs have no bias, each BN has 2 params
# per channel, the Linear has a bias.
def _bn(c):
    return 2 * c


def mobilenetv2_params(num_classes=100, W=0.5, T=6):
    """mobilenetv2_T_w(T, W): stem 3x3/s2 3 -> int(32 W); per block (in c_in, expansion t,
    hidden h = t c_in, out c_out): 1x1 c_in*h + BN(h), dw 9*h + BN(h), 1x1 h*c_out + BN(c_out);
    head 1x1 c_in*1280 + BN(1280); Linear 1280*K + K."""
    rows = [(1, 16, 1), (T, 24, 2), (T, 32, 3), (T, 64, 4), (T, 96, 3), (T, 160, 3), (T, 320, 1)]
    c_in = int(32 * W)
    total = 3 * 3 * 3 * c_in + _bn(c_in)
    for t, c, n in rows:
        c_out = int(c * W)
        for _ in range(n):
            h = c_in * t
            total += c_in * h + _bn(h) + 9 * h + _bn(h) + h * c_out + _bn(c_out)
            c_in = c_out
    last = int(1280 * W) if W > 1 else 1280
    return total + c_in * last + _bn(last) + last * num_classes + num_classes


def shufflev1_params(num_classes=100, stem=24, widths=(240, 480, 960), units=(4, 8, 4), g=3):
    """ShuffleV1: stem 1x1 3 -> 24 + BN; unit (in c_in, branch out b = width - c_in for the
    first unit of a stage, else width; mid m = b / 4): 1x1 group conv c_in*m/g1 + BN(m), dw
    9*m + BN(m), 1x1 group conv m*b/g + BN(b); Linear 960*K + K. g1 = 1 in the network's first
    unit (the reference's `in_planes == 24` test, which only that unit meets), else g."""
    total, c_in = 3 * stem + _bn(stem), stem
    for stage, (width, n) in enumerate(zip(widths, units)):
        for i in range(n):
            b = width - c_in if i == 0 else width
            m = b // 4
            g1 = 1 if stage == 0 and i == 0 else g
            total += c_in * m // g1 + _bn(m) + 9 * m + _bn(m) + m * b // g + _bn(b)
            c_in = width
    return total + widths[-1] * num_classes + num_classes


def shufflev2_params(num_classes=100, widths=(116, 232, 464), head=1024, units=(3, 7, 3)):
    """ShuffleV2: stem 1x1 3 -> 24 + BN; DownBlock (in c_in, half m = width / 2): left dw
    9*c_in + BN(c_in), 1x1 c_in*m + BN(m); right 1x1 c_in*m + BN(m), dw 9*m + BN(m), 1x1 m*m +
    BN(m); BasicBlock on half m: 1x1 m*m + BN(m), dw 9*m + BN(m), 1x1 m*m + BN(m); head 1x1
    464*1024 + BN(1024); Linear 1024*K + K."""
    total, c_in = 3 * 24 + _bn(24), 24
    for width, n in zip(widths, units):
        m = width // 2
        total += 9 * c_in + _bn(c_in) + c_in * m + _bn(m)                  # left
        total += c_in * m + _bn(m) + 9 * m + _bn(m) + m * m + _bn(m)         # right
        total += n * (m * m + _bn(m) + 9 * m + _bn(m) + m * m + _bn(m))      # basic units
        c_in = width
    return total + c_in * head + _bn(head) + head * num_classes + num_classes


def test_hand_counts_are_the_reference_numbers():
    # mobile_half: stem 464; blocks 785,532 in all; head 160*1280 + 2560 = 207,360; fc 128,100
    assert mobilenetv2_params() == 812_836
    assert shufflev1_params() == 949_258
    assert shufflev2_params() == 1_355_528


@pytest.mark.parametrize("name, expected", [("mobilenetv2", mobilenetv2_params()),
                                            ("shufflev1", shufflev1_params()),
                                            ("shufflev2", shufflev2_params())])
def test_reference_parameter_count(name, expected):
    with torch.device("meta"):  # counting needs no memory
        model = create_model(name, num_classes=100)
    assert count_parameters(model) == expected


def test_base_width_reproduces_the_reference_family():
    """base_width = 32 W is RepDistiller's mobilenetv2_T_w(6, W); ShuffleV1 base_width 12 is
    the 0.5x net (widths 120/240/480, every bottleneck already a multiple of 3); ShuffleV2
    base_width 48 / 176 is RepDistiller's net_size 0.5 / 1.5 (head 1024)."""
    cases = [("mobilenetv2", 8, mobilenetv2_params(W=0.25)),
             ("mobilenetv2", 32, mobilenetv2_params(W=1.0)),
             ("mobilenetv2", 64, mobilenetv2_params(W=2.0)),
             ("shufflev1", 12, shufflev1_params(stem=12, widths=(120, 240, 480))),
             ("shufflev2", 48, shufflev2_params(widths=(48, 96, 192))),
             ("shufflev2", 176, shufflev2_params(widths=(176, 352, 704)))]
    for name, width, expected in cases:
        with torch.device("meta"):
            model = create_model(name, num_classes=100, base_width=width)
        assert count_parameters(model) == expected, (name, width)


def test_registry_aliases_widths_and_placements():
    for name, aliases, width in [("mobilenetv2", ("MobileNetV2", "mobile_half"), 16),
                                 ("shufflev1", ("ShuffleV1", "shufflenetv1"), 24),
                                 ("shufflev2", ("ShuffleV2", "shufflenetv2"), 116)]:
        spec = model_spec(name)
        assert spec.default_width == width
        assert spec.placements == PLACEMENTS[name]
        assert all(model_spec(a) is spec for a in aliases)


def test_undefined_placement_is_refused():
    with pytest.raises(ValueError, match="parallel"):
        create_model("shufflev2", base_width=16, placement="parallel")
    with pytest.raises(ValueError):
        create_model("mobilenetv2", base_width=8, placement="first")


@pytest.mark.parametrize("name, width", [("shufflev1", 8), ("shufflev2", 15), ("shufflev2", 0),
                                         ("mobilenetv2", 0)])
def test_invalid_base_width_is_refused(name, width):
    with pytest.raises(ValueError):
        create_model(name, base_width=width)


# ------------------------------------------------------------------ the feature contract
@pytest.mark.parametrize("name, eca", [(n, p) for n in NAMES for p in PLACEMENTS[n]])
def test_forward_backward_features(name, eca):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, base_width=SMALL[name], placement=eca)
    shapes = feature_shapes(model)
    x = torch.randn(2, 3, 32, 32)
    model.train().request_features(FEATURES)
    out = model(x)
    assert isinstance(out, ModelOutput) and out.hint is None and not model.has_hint
    assert out.logits.shape == (2, 10)
    assert [tuple(f.shape[1:]) for f in out.feats] == shapes["feats"]
    assert [tuple(f.shape[1:]) for f in out.preact_feats] == shapes["preact_feats"]
    assert tuple(out.embedding.shape[1:]) == shapes["embedding"] == (model.num_features,)
    # the classifier pools the last entry; each feature is its preact after the last ReLU, or
    # the preact itself where the stage ends without ReLU (MobileNetV2's linear bottlenecks)
    assert torch.allclose(model.fc(model.pool(out.feats[-1])), out.logits, atol=1e-6)
    assert torch.equal(F.relu(out.preact_feats[0]), out.feats[0])
    for f, pre in zip(out.feats[1:], out.preact_feats[1:]):
        assert (pre is f) if name == "mobilenetv2" else torch.equal(F.relu(pre), f)
    loss = F.cross_entropy(out.logits, torch.tensor([1, 7])) + sum(f.mean() for f in out.feats)
    loss.backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing[:5]}"
    assert params["stem.0.weight"].grad.abs().sum() > 0
    attn = [n for n in params if "attn.conv" in n]
    assert bool(attn) == (eca != "none")
    assert all(params[n].grad.abs().sum() > 0 for n in attn)
    # the plain path gives the same logits (and hint None)
    model.eval()
    with torch.no_grad():
        full = model(x)
        plain = model.request_features(())(x)
    assert plain.feats is None and plain.hint is None
    assert torch.allclose(plain.logits, full.logits, atol=1e-6)


def test_feature_shapes_match_repdistiller_lists():
    """RepDistiller's feat lists at 32x32 (without the pooled last entry = our embedding)."""
    expected = {
        "mobilenetv2": ([(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], 1280),
        "shufflev1": ([(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)], 960),
        "shufflev2": ([(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)], 1024),
    }
    for name, (feats, dim) in expected.items():
        with torch.device("meta"):
            shapes = feature_shapes(create_model(name, num_classes=100))
        assert shapes["feats"] == shapes["preact_feats"] == feats
        assert shapes["embedding"] == (dim,) and shapes["hint"] is None


@pytest.mark.parametrize("name", NAMES)
def test_no_hint(name):
    assert hint_shape(name) is None
    model = create_model(name, base_width=SMALL[name])
    assert model.has_hint is False and not hasattr(model, "forward_hint")


# ------------------------------------------------------------------ placements
def _attention(model):
    """(multiplicative, additive) attention modules per unit, in order."""
    units = [u for stage in model.stages for u in stage]
    return ([u.attn is not None for u in units],
            [getattr(u, "shortcut_attn", None) is not None for u in units], units)


def test_placements_put_attention_where_documented():
    mult, add, units = _attention(create_model("mobilenetv2", placement="all"))
    assert len(units) == 17 and all(mult) and not any(add)
    mult, add, _ = _attention(create_model("mobilenetv2", placement="last"))
    assert mult == [False] * 16 + [True] and not any(add)
    model = create_model("mobilenetv2", placement="parallel")
    mult, add, units = _attention(model)
    assert not any(mult) and add == [False, False, True] + [False] * 14  # the 12 -> 12 block
    assert model.stages[0][2].shortcut_attn.k_size == 3  # ECA's adaptive kernel for 12 channels

    mult, add, units = _attention(create_model("shufflev1", placement="all"))
    assert len(units) == 16 and all(mult) and not any(add)
    # ECA's adaptive kernel of the branch widths: 216 (first unit), then 240
    assert [u.attn.k_size for u in units[:2]] == [eca_kernel_size(216), eca_kernel_size(240)]
    mult, add, _ = _attention(create_model("shufflev1", placement="last"))
    assert mult == [False] * 15 + [True] and not any(add)
    mult, add, _ = _attention(create_model("shufflev1", placement="parallel"))
    assert not any(mult) and add == [False, True, True, True] + [False] * 12

    mult, _, units = _attention(create_model("shufflev2", placement="all", attn="se"))
    assert len(units) == 16 and all(mult)  # 4 + 8 + 4 units (down-sampling ones included)
    assert units[0].attn.fc1.in_channels == 58
    mult, _, _ = _attention(create_model("shufflev2", placement="last", eca_k=5))
    assert mult == [False] * 15 + [True]


def test_parallel_attention_is_additive_on_the_identity():
    model = create_model("shufflev1", base_width=6, placement="parallel").eval()
    unit = model.stages[0][1]
    x = torch.rand(1, 60, 16, 16)
    with torch.no_grad():
        got = unit(x)
        want = F.relu(unit.residual(x) + unit.shortcut_attn(x))
        assert torch.equal(got, want)
        assert torch.all(unit.shortcut_attn(x) > x)  # x + sigmoid(...): strictly above x


# ------------------------------------------------------------------ details of the units
def test_shufflev2_unit_split_shuffle_and_concat():
    """Basic unit: the first half passes unchanged and lands on the even channels after the
    2-group shuffle; down-sampling unit: left branch on even, right branch on odd channels."""
    model = create_model("shufflev2", base_width=16).eval()
    basic, down = model.stages[1][1], model.stages[1][0]
    x = torch.rand(2, 32, 8, 8)
    with torch.no_grad():
        out = basic(x)
        assert torch.equal(out[:, 0::2], x[:, :16])
        assert torch.equal(out[:, 1::2], F.relu(basic.right(x[:, 16:])))
        y = torch.rand(2, 16, 16, 16)
        out = down(y)
        assert out.shape == (2, 32, 8, 8)
        assert torch.equal(out[:, 0::2], down.left(y))
        assert torch.equal(out[:, 1::2], F.relu(down.right(y)))


def test_shufflev1_units():
    model = create_model("shufflev1").eval()
    first = model.stages[0][0]
    assert first.residual[0].groups == 1 and isinstance(first.residual[3], nn.Identity)
    assert [model.stages[0][1].residual[i].groups for i in (0, 4, 7)] == [3, 60, 3]
    assert model.stages[0][1].residual[3].groups == 3  # channel shuffle
    assert [first.residual[i].out_channels for i in (0, 7)] == [54, 216]
    x = torch.rand(1, 24, 32, 32)
    with torch.no_grad():  # the first 216 channels are the branch, then the pooled input
        out = first(x)
        assert torch.allclose(out[:, 216:], F.avg_pool2d(x, 3, 2, 1))


def test_mobilenetv2_blocks():
    model = create_model("mobilenetv2")
    assert model.stem[0].stride == (2, 2) and model.stem[0].out_channels == 16
    widths = [b.residual[-1].num_features for stage in model.stages for b in stage]
    assert widths == [8, 12, 12, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160]
    shortcuts = [b.has_shortcut for stage in model.stages for b in stage]
    assert sum(shortcuts) == 10  # identity shortcuts only: no projections anywhere
    assert model.stages[0][0].residual[0].out_channels == 16  # expansion conv kept for t = 1
    assert model.head[0].out_channels == 1280 and model.fc.in_features == 1280


# ------------------------------------------------------------------ init
def test_init():
    torch.manual_seed(0)
    mb = create_model("mobilenetv2", num_classes=100, placement="all")
    assert torch.all(mb.fc.bias == 0) and abs(mb.fc.weight.std().item() - 0.01) < 1e-3
    conv = mb.head[0]  # N(0, sqrt(2 / (1 * 1 * 1280)))
    assert abs(conv.weight.std().item() - (2 / 1280) ** 0.5) < 2e-3
    ecaw = mb.stages[0][0].attn.conv.weight.flatten()
    # orthogonal: a unit vector, up to float32 normalising and norming k entries (k EPS32 each)
    assert torch.allclose(ecaw.norm(), torch.tensor(1.0), rtol=0, atol=4 * ecaw.numel() * EPS32)
    for name in ("shufflev1", "shufflev2"):
        model = create_model(name, num_classes=100)
        w = model.fc.weight.double()  # (100, C): orthogonal rows
        # float32 Householder QR is orthogonal to O(n EPS32), n = C; a non-orthogonal init: O(1)
        assert torch.allclose(w @ w.T, torch.eye(100, dtype=torch.float64), rtol=0,
                              atol=4 * max(w.shape) * EPS32)
        assert torch.all(model.fc.bias == 0)
        bn = model.stem[1]
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


# ------------------------------------------------------------------ memory format, precision
@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_bf16_autocast(name):
    torch.manual_seed(0)
    eca = "all"
    model = create_model(name, num_classes=10, base_width=SMALL[name], placement=eca).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).logits
        cl = model.to(memory_format=torch.channels_last)
        out = cl.request_features(FEATURES)(x.to(memory_format=torch.channels_last))
    # float32 both ways, other conv kernels: a few EPS32 of rounding per layer, times the depth
    tol = 16 * _depth(model) * EPS32
    assert torch.allclose(out.logits, ref, rtol=tol, atol=tol)
    assert out.feats[-1].is_contiguous(memory_format=torch.channels_last)
    cl.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cl(x.to(memory_format=torch.channels_last))
        loss = F.cross_entropy(out.logits.float(), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cl.parameters())
