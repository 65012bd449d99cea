"""Wide ResNets (skipkd/models/wrn.py) and CIFAR VGG-BN (skipkd/models/vgg.py): parameter counts against a
hand computation from RepDistiller's definitions, forward/backward for every model x placement
at reduced width, the feature contract, hints, placements, init, BN folding, channels_last and
bf16 autocast."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skipkd.models import (ECA, FEATURES, MODELS, SE, ParallelECA, count_parameters, create_model,
                    eca_kernel_size, feature_shapes, fold_batchnorm, hint_shape)
from skipkd.models.vgg import VGG, VGG_ARCHS  # importing the modules registers their skipkd.models
from skipkd.models.wrn import WRN_ARCHS

WRNS = list(WRN_ARCHS)
VGGS = list(VGG_ARCHS)
WRN_PLACEMENTS = ("none", "parallel", "last", "all")
VGG_PLACEMENTS = ("none", "last", "all")
CASES = ([(n, p) for n in WRNS for p in WRN_PLACEMENTS]
         + [(n, p) for n in VGGS for p in VGG_PLACEMENTS])
SMALL = {"wrn": 4, "vgg": 4}  # reduced base widths: WRN widths 4, 4k, 8k, 16k; VGG 4 ... 32
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7


def _depth(model):
    """The number of weight layers, a bound on the depth a rounding error travels through."""
    return sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in model.modules())


# ------------------------------------------------------------------ parameter counts by hand
def bn(c):                      # BatchNorm2d: weight + bias
    return 2 * c


def conv(cin, cout, k, bias):   # Conv2d k x k
    return cin * cout * k * k + (cout if bias else 0)


def wrn_reference_params(depth, k, classes=100):
    """RepDistiller models/wrn.py, layer by layer: conv1 3->16 (3x3, no bias); per block
    bn1(in), conv1 3x3 in->out, bn2(out), conv2 3x3 out->out (no biases) and, when in != out,
    convShortcut 1x1 in->out (no bias, no BN); final bn1(64k); fc 64k->classes with bias."""
    n = (depth - 4) // 6
    total, cin = conv(3, 16, 3, False), 16
    for cout in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += bn(cin) + conv(cin, cout, 3, False) + bn(cout) + conv(cout, cout, 3, False)
            total += conv(cin, cout, 1, False) if cin != cout else 0
            cin = cout
    return total + bn(cin) + cin * classes + classes


def vgg_reference_params(cfg, classes=100):
    """RepDistiller models/vgg.py with batch_norm=True: every cfg entry v is Conv2d(in, v, 3,
    padding=1) with bias, then BatchNorm2d(v); classifier Linear(512, classes) with bias."""
    total, cin = 0, 3
    for stage in cfg:
        for v in stage:
            total += conv(cin, v, 3, True) + bn(v)
            cin = v
    return total + 512 * classes + classes


# RepDistiller's cfg lists ('S', 'A', 'B', 'D', 'E')
VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}

# Worked out once by hand (100 classes):
# wrn_16_1 (n = 2, widths 16, 16, 32, 64): stem 3*16*9 = 432;
#   group 1: 2 x (32 + 2304 + 32 + 2304) = 9,344;
#   group 2: (32 + 4608 + 64 + 9216 + 512) + (64 + 9216 + 64 + 9216) = 14,432 + 18,560 = 32,992;
#   group 3: (64 + 18432 + 128 + 36864 + 2048) + (128 + 36864 + 128 + 36864) = 131,520;
#   head: 128 + 6400 + 100 = 6,628; total 180,916.
# vgg8: (1728+64+128) + (73728+128+256) + (294912+256+512) + (1179648+512+1024)
#   + (2359296+512+1024) + (51200+100) = 1,920 + 74,112 + 295,680 + 1,181,184 + 2,360,832
#   + 51,300 = 3,965,028.
# CRD-era tables round these to 0.18M, 0.70M, 0.57M, 2.26M (WRN-16-1/16-2/40-1/40-2) and
# 3.96M-3.97M, 9.28M, 9.46M, 14.77M, 20.09M (VGG8/11/13/16/19).
EXPECTED_PARAMS = {
    "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436,
    "vgg19": 20_086_692,
}


def test_hand_computation_agrees_with_table():
    for name, (depth, k) in WRN_ARCHS.items():
        assert wrn_reference_params(depth, k) == EXPECTED_PARAMS[name]
    for name, cfg in VGG_CFG.items():
        assert vgg_reference_params(cfg) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", WRNS + VGGS)
def test_parameter_count_matches_reference(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=100)
    assert count_parameters(model) == EXPECTED_PARAMS[name]


def test_registry_entries():
    for name in WRNS:
        spec = MODELS[name]
        assert (spec.family, spec.default_width, spec.placements) == ("wrn", 16, WRN_PLACEMENTS)
    for name in VGGS:
        spec = MODELS[name]
        assert (spec.family, spec.default_width, spec.placements) == ("vgg", 64, VGG_PLACEMENTS)
        assert MODELS[f"{name}_bn"] is spec  # RepDistiller's function names as aliases


# ------------------------------------------------------------------ forward + backward, contract
def _family(name):
    return MODELS[name].family


@pytest.mark.parametrize("name, eca", CASES)
def test_forward_backward_and_contract(name, eca):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, base_width=SMALL[_family(name)], placement=eca)
    shapes = feature_shapes(model)
    model.train().request_features(FEATURES)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    out = model(x)
    assert out.logits.shape == (2, 10)
    assert [tuple(f.shape[1:]) for f in out.feats] == shapes["feats"]
    assert [tuple(f.shape[1:]) for f in out.preact_feats] == shapes["preact_feats"]
    assert tuple(out.embedding.shape[1:]) == shapes["embedding"] == (model.num_features,)
    torch.testing.assert_close(out.embedding, out.feats[-1].mean(dim=(2, 3)))
    if model.has_hint:
        assert tuple(out.hint.shape[1:]) == shapes["hint"]
    else:
        assert out.hint is None and shapes["hint"] is None
    loss = F.cross_entropy(out.logits, y) + sum(f.pow(2).mean() for f in out.feats) * 1e-3
    if out.hint is not None:
        loss = loss + 1e-3 * out.hint.pow(2).mean()
    loss.backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    attn_grads = [p.grad for m in _attn(model, (ECA, ParallelECA)) for p in m.parameters()]
    assert bool(attn_grads) == (eca != "none")
    assert all(g.abs().sum() > 0 for g in attn_grads)

    # the plain path gives the feature path's logits and hint
    model.eval()
    with torch.no_grad():
        full = model(x)
        plain = model.request_features(())(x)
    assert plain.feats is None and plain.embedding is None
    torch.testing.assert_close(plain.logits, full.logits)
    if model.has_hint:
        torch.testing.assert_close(plain.hint, full.hint)
        torch.testing.assert_close(model.forward_hint(x), full.hint)
    else:
        assert plain.hint is None


@pytest.mark.parametrize("name", ["wrn_16_2", "wrn_40_1"])
def test_wrn_features_and_preacts(name):
    model = create_model(name, base_width=4).eval().request_features(FEATURES)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert len(out.feats) == 4  # stem, group 1, group 2, BN-ReLU(group 3)
    for f, p in zip(out.feats[:-1], out.preact_feats[:-1]):
        assert f is p  # groups end with the residual add, no ReLU
    torch.testing.assert_close(out.feats[-1], torch.relu(out.preact_feats[-1]))
    assert (out.preact_feats[-1] < 0).any()
    k = WRN_ARCHS[name][1]
    assert [f.shape[1] for f in out.feats] == [4, 4 * k, 8 * k, 16 * k]


@pytest.mark.parametrize("name", ["vgg8", "vgg13"])
def test_vgg_features_and_pooling(name):
    model = create_model(name, base_width=4).eval().request_features(FEATURES)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
        big = model(torch.randn(1, 3, 64, 64))
    for f, p in zip(out.feats, out.preact_feats):
        torch.testing.assert_close(f, torch.relu(p))
        assert (p < 0).any()
    sizes = [tuple(f.shape[1:]) for f in out.feats]
    assert sizes == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4), (32, 4, 4)]
    # RepDistiller max-pools before the last stage only for 64-pixel inputs
    assert [f.shape[-1] for f in big.feats] == [64, 32, 16, 8, 4]


# ------------------------------------------------------------------ hints
@pytest.mark.parametrize("name", WRNS)
def test_wrn_hint_default_width(name):
    k = WRN_ARCHS[name][1]
    assert hint_shape(name) == (64 * k, 8, 8)
    assert hint_shape(name, 4) == (16 * k, 8, 8)
    assert hint_shape(name, 4, 40) == (16 * k, 10, 10)


@pytest.mark.parametrize("eca", WRN_PLACEMENTS)
def test_wrn_hint_is_projection_output(eca):
    torch.manual_seed(0)
    model = create_model("wrn_16_2", base_width=4, placement=eca).eval()
    block = model.stages[2][0]
    assert model.hint_block is block
    assert isinstance(block.shortcut, nn.Conv2d) and block.shortcut.kernel_size == (1, 1)
    assert block.shortcut.bias is None and block.shortcut.stride == (2, 2)
    seen, branch_calls = {}, []
    block.shortcut.register_forward_hook(lambda m, i, o: seen.__setitem__("s", o))
    block.register_forward_hook(lambda m, i, o: seen.__setitem__("block", o))
    block.branch.register_forward_hook(lambda m, i, o: branch_calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.hint, seen["s"])
        assert (out.hint < 0).any()  # a raw convolution output: no BN, no ReLU after it
        n_calls = len(branch_calls)
        hint = model.forward_hint(x)
    assert len(branch_calls) == n_calls  # forward_hint skips the hint block's residual branch
    torch.testing.assert_close(hint, out.hint)


def test_vgg_has_no_hint():
    model = create_model("vgg8", base_width=4)
    assert VGG.has_hint is False and not hasattr(model, "forward_hint")
    assert hint_shape("vgg8") is None


# ------------------------------------------------------------------ placements
def _attn(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


@pytest.mark.parametrize("name", ["wrn_16_1", "wrn_40_2"])
def test_wrn_placements(name):
    depth, _ = WRN_ARCHS[name]
    n = (depth - 4) // 6
    m = create_model(name, base_width=4)
    assert not _attn(m, (ECA, ParallelECA))
    m = create_model(name, base_width=4, placement="parallel")
    assert not _attn(m, ECA) and len(_attn(m, ParallelECA)) == n
    assert all(isinstance(b.shortcut_attn, ParallelECA) for b in m.stages[0])
    m = create_model(name, base_width=4, placement="last")
    assert _attn(m, ECA) == [m.hint_block.attn] and not _attn(m, ParallelECA)
    m = create_model(name, base_width=4, placement="all")
    assert len(_attn(m, ECA)) == 3 * n and not _attn(m, ParallelECA)
    for b in (b for stage in m.stages for b in stage):
        assert b.attn.k_size == eca_kernel_size(b.branch[-1].out_channels)


def test_wrn_parallel_block_adds_attention_to_shortcut():
    torch.manual_seed(0)
    for name in ("wrn_16_1", "wrn_16_2"):  # identity, then projection, first shortcuts
        # the equations: float64 on both sides (the block adds in another order)
        model = create_model(name, base_width=4, placement="parallel").eval().double()
        with torch.no_grad():
            x = model.stem(torch.randn(2, 3, 32, 32, dtype=torch.float64))
            blk = model.stages[0][0]
            a = torch.relu(blk.bn1(x))
            s = x if blk.shortcut is None else blk.shortcut(a)
            expected = blk.branch(a) + s + blk.shortcut_attn.descriptor(s)
            torch.testing.assert_close(blk(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["vgg8", "vgg16"])
def test_vgg_placements(name):
    n_convs = sum(VGG_ARCHS[name])
    m = create_model(name, base_width=4)
    assert not _attn(m, (ECA, ParallelECA))
    m = create_model(name, base_width=4, placement="last")
    ecas = _attn(m, ECA)
    assert len(ecas) == 1 and m.stages[-1][-1] is ecas[0]
    assert isinstance(m.stages[-1][-2], nn.BatchNorm2d)
    m = create_model(name, base_width=4, placement="all", eca_k=5)
    assert len(_attn(m, ECA)) == n_convs and not _attn(m, ParallelECA)
    for stage in (m.stem, *m.stages):
        layers = list(stage)
        for i, layer in enumerate(layers):
            if isinstance(layer, ECA):
                assert isinstance(layers[i - 1], nn.BatchNorm2d) and layer.k_size == 5


def test_refused_placements():
    with pytest.raises(ValueError, match="none, last, all"):
        create_model("vgg13", base_width=4, placement="parallel")
    with pytest.raises(ValueError):
        VGG(VGG_ARCHS["vgg8"], base_width=4, placement="parallel")
    with pytest.raises(ValueError, match="parallel"):
        create_model("wrn_16_1", base_width=4, placement="first")


@pytest.mark.parametrize("name", ["wrn_16_1", "vgg8"])
def test_se_attention_and_in_channels(name):
    model = create_model(name, num_classes=7, base_width=4, in_channels=1, placement="all", attn="se")
    assert _attn(model, SE)
    assert model.stem[0].in_channels == 1  # stem[0]: the first convolution in every family
    out = model(torch.randn(2, 1, 32, 32))
    assert out.logits.shape == (2, 7)


# ------------------------------------------------------------------ init
def test_wrn_reference_init():
    torch.manual_seed(0)
    model = create_model("wrn_40_2", num_classes=100, placement="last")
    w = model.stages[2][1].branch[0].weight  # 3x3, 128 -> 128
    assert abs(w.std().item() / (2 / (9 * 128)) ** 0.5 - 1) < 0.03
    w = model.hint_block.shortcut.weight     # 1x1, 64 -> 128
    assert abs(w.std().item() / (2 / 128) ** 0.5 - 1) < 0.05
    assert torch.all(model.fc.bias == 0) and torch.all(model.head_bn.weight == 1)
    eca_w = model.hint_block.attn.conv.weight
    # orthogonal 1 x k: a unit vector, up to float32 rounding of its k entries
    torch.testing.assert_close(eca_w.norm(), torch.tensor(1.0), rtol=0,
                               atol=4 * eca_w.numel() * EPS32)


def test_vgg_reference_init():
    torch.manual_seed(0)
    model = create_model("vgg8", num_classes=100)
    assert abs(model.fc.weight.std().item() / 0.01 - 1) < 0.03
    conv4 = model.stages[2][0]                # stage 4 of 5: 3x3, 256 -> 512
    assert abs(conv4.weight.std().item() / (2 / (9 * 512)) ** 0.5 - 1) < 0.03
    assert torch.all(conv4.bias == 0) and torch.all(model.fc.bias == 0)


# ------------------------------------------------------------------ BN folding, memory format, bf16
@pytest.mark.parametrize("name, eca", [("wrn_16_2", "all"), ("vgg11", "all"), ("vgg8", "none")])
def test_fold_batchnorm_keeps_outputs(name, eca):
    torch.manual_seed(0)
    model = create_model(name, base_width=4, placement=eca)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    model.eval()
    fused = fold_batchnorm(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), fused(x)
    # float32 both ways, BN folded into the convs: a few EPS32 per layer, times the depth
    tol = 16 * _depth(model) * EPS32
    torch.testing.assert_close(b.logits, a.logits, rtol=tol, atol=tol)
    if model.has_hint:
        torch.testing.assert_close(fused.forward_hint(x), a.hint, rtol=tol, atol=tol)


@pytest.mark.parametrize("name, eca", [("wrn_16_2", "parallel"), ("wrn_40_1", "all"),
                                       ("vgg8", "all"), ("vgg13", "last")])
def test_channels_last_and_bf16_autocast(name, eca):
    torch.manual_seed(0)
    model = create_model(name, base_width=4, placement=eca).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    model = model.to(memory_format=torch.channels_last).train()
    xc = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        got = model(xc)
    # float32 both ways, other conv kernels: a few EPS32 of rounding per layer, times the depth
    tol = 16 * _depth(model) * EPS32
    torch.testing.assert_close(got.logits, ref.logits, rtol=tol, atol=tol)
    model.train().request_features(FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xc)
        loss = F.cross_entropy(out.logits, torch.tensor([0, 3])) + out.feats[2].float().mean()
        if out.hint is not None:
            loss = loss + out.hint.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(out.logits.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
