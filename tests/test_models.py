"""Models: forward/backward for every net x ECA placement, hint shapes, ECA placement and maths,
initialisation, registry errors and channels_last."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skipkd.models import (ECA, ECA_PLACEMENTS, MODELS, ModelOutput, ParallelECA, create_model,
                    eca_kernel_size, hint_shape)
from skipkd.models.resnet import ARCHS, PointwiseConv

ALL_MODELS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
BASIC = {"resnet18", "resnet34"}
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
F64 = dict(rtol=1e-10, atol=1e-12)  # float64 on both sides: ~1e-16 per rounding, on any CPU


def test_registry_and_placements():
    assert set(ALL_MODELS) <= set(MODELS)  # the 4-stage ResNets, beside the benchmark families
    assert all(MODELS[n].family == "resnet" for n in ALL_MODELS)
    assert tuple(ECA_PLACEMENTS) == ("none", "parallel", "last", "all")


# ------------------------------------------------------------------ forward + backward
@pytest.mark.parametrize("eca", ["none", "parallel", "last", "all"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name, eca):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, base_width=8, placement=eca)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 10)
    assert tuple(out.hint.shape) == (2, *hint_shape(name, 8, 32))
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.hint).all()
    loss = F.cross_entropy(out.logits, y) + 1e-3 * out.hint.pow(2).mean()
    loss.backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # gradients actually flow to the first and the last layers and to every ECA conv
    assert params["stem.0.weight"].grad.abs().sum() > 0
    assert params["fc.weight"].grad.abs().sum() > 0
    eca_grads = [p.grad for n, p in params.items() if "attn.conv" in n]
    if eca != "none":
        assert eca_grads and all(g.abs().sum() > 0 for g in eca_grads)
    else:
        assert not eca_grads


def test_num_classes_and_in_channels():
    model = create_model("resnet18", num_classes=7, base_width=4, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 32, 32))
    assert out.logits.shape == (3, 7)
    assert model.stem[0].in_channels == 1


# ------------------------------------------------------------------ hints
@pytest.mark.parametrize("name", ALL_MODELS)
def test_hint_shape_base8(name):
    expected = (64, 4, 4) if name in BASIC else (128, 8, 8)
    assert hint_shape(name, base_width=8, image_size=32) == expected
    model = create_model(name, base_width=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert tuple(out.hint.shape[1:]) == expected


@pytest.mark.parametrize("name, expected", [("resnet18", (512, 4, 4)), ("resnet50", (1024, 8, 8))])
def test_hint_shape_base64(name, expected):
    assert hint_shape(name) == expected
    assert hint_shape(name, 64, 32) == expected
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert tuple(out.hint.shape[1:]) == expected
    assert out.logits.shape == (1, 10)


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152"])
def test_hint_shape_base64_formula(name):
    assert hint_shape(name) == ((512, 4, 4) if name in BASIC else (1024, 8, 8))


@pytest.mark.parametrize("size", [24, 36, 40])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_hint_shape_other_image_sizes(name, size):
    model = create_model(name, base_width=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert tuple(out.hint.shape[1:]) == hint_shape(name, 4, size)


@pytest.mark.parametrize("eca", ["none", "parallel", "last"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_hint_is_projection_shortcut_output(name, eca):
    """The hint is the hint block's shortcut (conv + BN) output, before the residual add."""
    torch.manual_seed(0)
    model = create_model(name, base_width=8, placement=eca).eval()
    expected_block = model.stages[3 if name in BASIC else 2][0]
    assert model.hint_block is expected_block
    assert isinstance(expected_block.shortcut[0], nn.Conv2d)
    assert isinstance(expected_block.shortcut[1], nn.BatchNorm2d)
    seen = {}
    expected_block.shortcut.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o))
    # the block runs through forward_with_shortcut; its final ReLU gives the block output
    expected_block.relu.register_forward_hook(lambda m, i, o: seen.__setitem__("block", o.clone()))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.hint, seen["s"])
    assert not torch.allclose(out.hint, seen["block"])  # not the block output (after add + ReLU)
    assert (out.hint < 0).any()  # BN output before any ReLU


# ------------------------------------------------------------------ ECA kernel rule
def test_eca_kernel_rule():
    assert [eca_kernel_size(c) for c in (64, 128, 256, 512)] == [3, 5, 5, 5]
    assert eca_kernel_size(1024) == 5 and eca_kernel_size(2048) == 7
    assert all(eca_kernel_size(c) % 2 == 1 and eca_kernel_size(c) >= 3 for c in range(1, 5000, 37))
    with pytest.raises(ValueError):
        eca_kernel_size(0)


def test_eca_kernel_default_and_override():
    model = create_model("resnet18", base_width=64, placement="all")
    for blk in (b for stage in model.stages for b in stage):
        c = blk.residual[-1].num_features
        assert blk.attn.k_size == eca_kernel_size(c)
        assert blk.attn.conv.weight.shape == (1, 1, eca_kernel_size(c))
    model = create_model("resnet18", base_width=8, placement="all", eca_k=7)
    sizes = {m.k_size for m in model.modules() if isinstance(m, (ECA, ParallelECA))}
    assert sizes == {7}
    model = create_model("resnet18", base_width=8, placement="parallel", eca_k=1)
    assert {m.conv.weight.shape[-1] for m in model.modules() if isinstance(m, ParallelECA)} == {1}
    with pytest.raises(ValueError):
        create_model("resnet18", base_width=8, placement="all", eca_k=4)
    with pytest.raises(ValueError):
        ECA(16, k_size=0)


# ------------------------------------------------------------------ ECA placement
def _blocks(model):
    return [(s, i, b) for s, stage in enumerate(model.stages) for i, b in enumerate(stage)]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eca_placement(name):
    layers = ARCHS[name][1]
    hint_stage = 3 if name in BASIC else 2

    m = create_model(name, base_width=4, placement="none")
    assert not [x for x in m.modules() if isinstance(x, (ECA, ParallelECA))]
    assert all(b.attn is None and b.shortcut_attn is None for _, _, b in _blocks(m))

    m = create_model(name, base_width=4, placement="parallel")
    par = [x for x in m.modules() if isinstance(x, ParallelECA)]
    assert len(par) == layers[0]
    assert not [x for x in m.modules() if isinstance(x, ECA)]
    for s, i, b in _blocks(m):
        assert b.attn is None
        if s == 0:
            assert isinstance(b.shortcut_attn, ParallelECA)
            out_ch = b.residual[-1].num_features
            assert b.shortcut_attn.k_size == eca_kernel_size(out_ch)
        else:
            assert b.shortcut_attn is None

    m = create_model(name, base_width=4, placement="last")
    ecas = [x for x in m.modules() if isinstance(x, ECA)]
    assert len(ecas) == 1 and not [x for x in m.modules() if isinstance(x, ParallelECA)]
    assert m.hint_block is m.stages[hint_stage][0]
    assert m.hint_block.attn is ecas[0]
    assert all(b.shortcut_attn is None for _, _, b in _blocks(m))

    m = create_model(name, base_width=4, placement="all")
    ecas = [x for x in m.modules() if isinstance(x, ECA)]
    assert len(ecas) == sum(layers)
    assert all(isinstance(b.attn, ECA) and b.shortcut_attn is None for _, _, b in _blocks(m))
    assert not [x for x in m.modules() if isinstance(x, ParallelECA)]


def test_unknown_placement_raises():
    with pytest.raises(ValueError, match="parallel"):
        create_model("resnet18", base_width=4, placement="first")


# ------------------------------------------------------------------ ECA maths
def _hand_descriptor(s, w):
    """sigmoid of the zero-padded cross-correlation of the channel means with w, by loops."""
    b, c = s.shape[:2]
    g = s.mean(dim=(2, 3))
    k = len(w)
    half = (k - 1) // 2
    y = torch.zeros(b, c, dtype=s.dtype)
    for n in range(b):
        for ch in range(c):
            acc = 0.0
            for j in range(k):
                src = ch + j - half
                if 0 <= src < c:
                    acc += w[j] * float(g[n, src])
            y[n, ch] = acc
    return torch.sigmoid(y).reshape(b, c, 1, 1)


def test_parallel_eca_matches_hand_computation():
    torch.manual_seed(0)
    s = torch.randn(2, 5, 3, 3, dtype=torch.float64)  # the equations: float64 on both sides
    w = [0.5, -1.0, 2.0]
    mod = ParallelECA(5, k_size=3).double()
    with torch.no_grad():
        mod.conv.weight.copy_(torch.tensor(w, dtype=torch.float64).reshape(1, 1, 3))
    expected = s + _hand_descriptor(s, w)
    torch.testing.assert_close(mod(s), expected, **F64)
    # additive, not multiplicative: the difference is in (0, 1) and constant over space
    diff = mod(s) - s
    assert (diff > 0).all() and (diff < 1).all()
    torch.testing.assert_close(diff, diff[:, :, :1, :1].expand_as(diff), **F64)


def test_eca_matches_hand_computation():
    torch.manual_seed(1)
    s = torch.randn(2, 6, 4, 4, dtype=torch.float64)  # the equations: float64 on both sides
    w = [0.3, 0.1, -0.7, 1.2, 0.05]
    mod = ECA(6, k_size=5).double()
    with torch.no_grad():
        mod.conv.weight.copy_(torch.tensor(w, dtype=torch.float64).reshape(1, 1, 5))
    torch.testing.assert_close(mod(s), s * _hand_descriptor(s, w), **F64)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_parallel_eca_block_adds_to_shortcut(name):
    """relu(residual(x) + s + sigmoid(conv1d(GAP(s)))) for every stage-1 block."""
    torch.manual_seed(0)
    # the equations: float64 on both sides (the block adds in another order)
    model = create_model(name, base_width=8, placement="parallel").eval().double()
    with torch.no_grad():
        x = model.stem(torch.randn(2, 3, 32, 32, dtype=torch.float64))
        for blk in model.stages[0]:
            s = x if blk.shortcut is None else blk.shortcut(x)
            w = blk.shortcut_attn.conv.weight.flatten().tolist()
            expected = torch.relu(blk.residual(x) + s + _hand_descriptor(s, w))
            got = blk(x)
            torch.testing.assert_close(got, expected, **F64)
            plain = torch.relu(blk.residual(x) + s)
            assert not torch.allclose(got, plain)
            x = got


# ------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_orthogonal_conv_and_bn_init(name):
    model = create_model(name, base_width=8, placement="all")
    n_checked = 0
    for mod_name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().reshape(m.weight.shape[0], -1).double()
            rows, cols = w.shape
            gram = w @ w.T if rows <= cols else w.T @ w
            # float32 Householder QR is orthogonal to O(n EPS32), n the longer side (seen: up
            # to 0.53 n EPS32 for n = 8); a non-orthogonal init is off by O(1)
            torch.testing.assert_close(gram, torch.eye(min(rows, cols), dtype=torch.float64),
                                       atol=4 * max(rows, cols) * EPS32, rtol=0,
                                       msg=f"{mod_name} not orthogonal")
            if m.bias is not None:
                assert (m.bias == 0).all()
            n_checked += 1
        elif isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all(), mod_name
            assert (m.running_mean == 0).all() and (m.running_var == 1).all()
    assert n_checked > 20


def test_orthogonal_init_is_random_per_model():
    a = create_model("resnet18", base_width=4)
    b = create_model("resnet18", base_width=4)
    assert not torch.equal(a.stem[0].weight, b.stem[0].weight)


# ------------------------------------------------------------------ errors
def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as exc:
        create_model("resnet19")
    msg = str(exc.value)
    assert "resnet19" in msg
    for name in ALL_MODELS:
        assert name in msg
    with pytest.raises(ValueError) as exc:
        hint_shape("vgg17")
    assert all(name in str(exc.value) for name in ALL_MODELS)


@pytest.mark.parametrize("kwargs", [dict(base_width=0), dict(num_classes=0), dict(in_channels=0)])
def test_bad_sizes_raise(kwargs):
    with pytest.raises(ValueError):
        create_model("resnet18", **kwargs)


# ------------------------------------------------------------------ channels_last
def _depth(model):
    """The number of weight layers, a bound on the depth a rounding error travels through."""
    return sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in model.modules())


@pytest.mark.parametrize("name, eca", [("resnet18", "parallel"), ("resnet50", "all")])
def test_channels_last_matches_contiguous(name, eca):
    torch.manual_seed(0)
    model = create_model(name, base_width=8, placement=eca).eval()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert cl.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    # float32 both ways, other conv kernels: a few EPS32 of rounding per layer, times the depth
    tol = 16 * _depth(model) * EPS32
    torch.testing.assert_close(out.logits, ref.logits, rtol=tol, atol=tol)
    torch.testing.assert_close(out.hint, ref.hint, rtol=tol, atol=tol)
    # and it trains: backward through the channels_last model works
    cl.train()
    out = cl(x.contiguous(memory_format=torch.channels_last))
    out.logits.sum().backward()
    assert cl.stem[0].weight.grad is not None


@pytest.mark.parametrize("name, width", [("resnet18", 2), ("resnet18", 4), ("resnet34", 4),
                                         ("resnet18", 8)])
def test_channels_last_gradients_match_contiguous(name, width):
    """Every weight gradient in channels_last equals the contiguous one, narrow nets included
    (a plain strided 1x1 conv gets a wrong or crashing weight gradient for < 8 input channels
    on AVX2 CPUs with torch 2.14; the projection shortcut must not depend on that kernel).
    Basic-block nets only: a freshly initialised bottleneck net is so ill-conditioned at batch 8
    that its fp32 gradients differ from float64 ones by ~10% in either memory format.
    Compared by relative L2 norm per tensor (within 25%) and over all gradients (cosine similarity
    at least 0.995), not entry by entry: a ReLU input within rounding of 0 can take
    the other sign in the other memory format, which moves one gradient entry by its whole value
    and, through BatchNorm, its channel and everything before it by a few percent (seen: up to 6%
    with one thread, where float64 agrees to 1e-14); the kernel bug this guards against gave
    errors of up to 69 times the largest entry."""
    torch.manual_seed(0)
    model = create_model(name, base_width=width, placement="parallel").train()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x).logits, y).backward()
    F.cross_entropy(cl(x.contiguous(memory_format=torch.channels_last)).logits, y).backward()
    for (pname, p_ref), p_cl in zip(model.named_parameters(), cl.parameters()):
        err = (p_cl.grad - p_ref.grad).norm() / p_ref.grad.norm().clamp_min(1e-12)
        assert err <= 0.25, f"{pname}: relative error {err:.3g}"
    flat = [torch.cat([p.grad.reshape(-1) for p in m.parameters()]) for m in (model, cl)]
    assert F.cosine_similarity(flat[0], flat[1], dim=0) >= 0.995


def test_projection_shortcut_is_strided_pointwise_conv():
    """The projection computes exactly nn.Conv2d(kernel 1, stride 2) (values and state_dict)."""
    torch.manual_seed(0)
    proj = PointwiseConv(6, 12, stride=2)
    ref = nn.Conv2d(6, 12, 1, stride=2, bias=False)
    ref.load_state_dict(proj.state_dict())
    for size in (32, 7):  # even and odd sizes
        x = torch.randn(3, 6, size, size)
        # float32, another kernel: a 6-term dot product each, rounded in another order
        torch.testing.assert_close(proj(x), ref(x), rtol=12 * EPS32, atol=12 * EPS32)
