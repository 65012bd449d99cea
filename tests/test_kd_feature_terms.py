"""Feature-based distillation terms (fitnet, at, sp, rkd, pkt): each value against a float64
computation written from the paper's equations with explicit loops over a tiny batch, plus
gradients, mismatched widths, options, registry entries and a run with real tiny models.

Tolerances. The terms compute in float32 whatever their input (they cast), so each is compared
with its float64 hand computation to EPS32 times the number of float32 terms summed on the way
(the worst case of a float32 sum of positive terms, whatever the order or kernel), doubled where
a squared difference is taken. RKD's helpers keep float64, so its equations are checked in
float64 on both sides, and the term against those helpers on the same float32 inputs."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import skipkd.kd.at  # noqa: F401  (importing a term's module registers it)
import skipkd.kd.fitnet  # noqa: F401
import skipkd.kd.pkt  # noqa: F401
import skipkd.kd.rkd  # noqa: F401
import skipkd.kd.sp  # noqa: F401
from skipkd.models import ModelOutput, create_model, feature_shapes
from skipkd.kd import KD_TERMS, DistillationLoss, KDBatch, TermContext, term_options
from skipkd.kd.rkd import pair_distances, triplet_cosines

TERMS = ("fitnet", "at", "sp", "rkd", "pkt")
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
BF16_EPS = 2.0 ** -7


# ------------------------------------------------------------------ helpers
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _feats(shapes, batch, seed, relu=True, requires_grad=False):
    """One random (B, C, H, W) tensor per shape; post-ReLU like real stage outputs."""
    g = _gen(seed)
    out = []
    for c, h, w in shapes:
        f = torch.randn(batch, c, h, w, generator=g)
        f = f.relu() if relu else f
        out.append(f.requires_grad_(requires_grad))
    return tuple(out)


def _out(feats=None, embedding=None):
    return ModelOutput(None, None, feats=feats, embedding=embedding)


def _apply(out, fn):
    """The same output with fn applied to its feats and embedding."""
    return ModelOutput(None, None,
                       feats=None if out.feats is None else tuple(fn(f) for f in out.feats),
                       embedding=None if out.embedding is None else fn(out.embedding))


def _term(name, s_shapes=None, t_shapes=None, **opts):
    ctx = TermContext(student_shapes=s_shapes or {}, teacher_shapes=t_shapes or {},
                      options=term_options(name, opts))
    return KD_TERMS[name](ctx)


def _batch(b):
    return KDBatch(y=torch.zeros(b, dtype=torch.long))


def _total(value):
    return sum(value.values()) if isinstance(value, dict) else value


def _nested(t):
    """A tensor as nested Python lists of float (float64 arithmetic from here on)."""
    return t.detach().double().tolist()


def _huber(d):
    d = abs(d)
    return 0.5 * d * d if d < 1.0 else d - 0.5


def _rkd_lib(s, t):
    """(L_D, L_A) from the library's helpers, in the inputs' dtype (what RKDTerm computes)."""
    return (F.smooth_l1_loss(pair_distances(s), pair_distances(t)).item(),
            F.smooth_l1_loss(triplet_cosines(s), triplet_cosines(t)).item())


# ------------------------------------------------------------------ hand computations
def _hand_conv(x, w, stride, pad):
    """Direct convolution by loops: x [B][C][H][W], w [O][C][K][K] -> [B][O][Ho][Wo]."""
    b_n, c_n, h_n, w_n = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
    o_n, k = len(w), len(w[0][0])
    ho, wo = (h_n + 2 * pad - k) // stride + 1, (w_n + 2 * pad - k) // stride + 1
    out = [[[[0.0] * wo for _ in range(ho)] for _ in range(o_n)] for _ in range(b_n)]
    for b in range(b_n):
        for o in range(o_n):
            for i in range(ho):
                for j in range(wo):
                    acc = 0.0
                    for c in range(c_n):
                        for u in range(k):
                            for v in range(k):
                                r, s = i * stride + u - pad, j * stride + v - pad
                                if 0 <= r < h_n and 0 <= s < w_n:
                                    acc += w[o][c][u][v] * x[b][c][r][s]
                    out[b][o][i][j] = acc
    return out


def _hand_fitnet(x, w, stride, pad, gamma, beta, teacher, bn_eps=1e-5):
    """conv -> BatchNorm with the batch's statistics (training mode) -> ReLU, then the mean
    of the squared differences to the teacher over every element."""
    z = _hand_conv(x, w, stride, pad)
    b_n, o_n, h_n, w_n = len(z), len(z[0]), len(z[0][0]), len(z[0][0][0])
    n = b_n * h_n * w_n
    total, count = 0.0, 0
    for o in range(o_n):
        vals = [z[b][o][i][j] for b in range(b_n) for i in range(h_n) for j in range(w_n)]
        mean = sum(vals) / n
        var = sum((v - mean) ** 2 for v in vals) / n  # biased, as BatchNorm normalises
        for b in range(b_n):
            for i in range(h_n):
                for j in range(w_n):
                    y = gamma[o] * (z[b][o][i][j] - mean) / math.sqrt(var + bn_eps) + beta[o]
                    total += (max(y, 0.0) - teacher[b][o][i][j]) ** 2
                    count += 1
    return total / count


def _block_pool(f, size):
    """Adaptive average pooling to `size` for integer ratios: the mean of each block."""
    h_n, w_n = len(f[0][0]), len(f[0][0][0])
    kh, kw = h_n // size[0], w_n // size[1]
    return [[[[sum(f[b][c][i * kh + u][j * kw + v] for u in range(kh) for v in range(kw))
               / (kh * kw) for j in range(size[1])] for i in range(size[0])]
             for c in range(len(f[0]))] for b in range(len(f))]


def _hand_at(s_feats, t_feats, p):
    """Sum over stages of mean_{b, position} (Q_s - Q_t)^2, Q = channel mean of |f|^p divided
    by its L2 norm over positions; the larger map block-averaged to the smaller first."""
    total = 0.0
    for fs, ft in zip(s_feats[1:], t_feats[1:]):
        fs, ft = _nested(fs), _nested(ft)
        size = (min(len(fs[0][0]), len(ft[0][0])), min(len(fs[0][0][0]), len(ft[0][0][0])))
        fs, ft = _block_pool(fs, size), _block_pool(ft, size)
        acc, n = 0.0, 0
        for b in range(len(fs)):
            maps = []
            for f in (fs, ft):
                q = [sum(abs(f[b][c][i][j]) ** p for c in range(len(f[b]))) / len(f[b])
                     for i in range(size[0]) for j in range(size[1])]
                norm = math.sqrt(sum(v * v for v in q))
                maps.append([v / norm for v in q])
            for a_s, a_t in zip(*maps):
                acc += (a_s - a_t) ** 2
                n += 1
        total += acc / n
    return total


def _hand_sp(fs, ft):
    """||G~_t - G~_s||_F^2 / B^2 with G = F F^T and each row of G divided by its L2 norm."""
    def gram(f):
        x = [[v for c in sample for row in c for v in row] for sample in _nested(f)]
        g = [[sum(a * b for a, b in zip(xi, xj)) for xj in x] for xi in x]
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in g]
    gs, gt = gram(fs), gram(ft)
    b_n = len(gs)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b_n) for j in range(b_n)) / b_n ** 2


def _hand_rkd(s, t):
    """(L_D, L_A): Huber of the mean-normalised pairwise distances over all B^2 ordered pairs,
    and of the triplet angle cosines over all B^3 triplets (the paper's convention: angle at the
    middle point j, cos = <(x_i - x_j)/|.|, (x_k - x_j)/|.|>, 0 for a degenerate triplet)."""
    s, t = _nested(s), _nested(t)
    n = len(s)

    def dist(x, i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j])))

    def psi_d(x):
        mu = sum(dist(x, i, j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[dist(x, i, j) / mu for j in range(n)] for i in range(n)]

    def cos(x, i, j, k):
        a = [p - q for p, q in zip(x[i], x[j])]
        c = [p - q for p, q in zip(x[k], x[j])]
        na, nc = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in c))
        if na == 0.0 or nc == 0.0:
            return 0.0
        return sum(p * q for p, q in zip(a, c)) / (na * nc)

    ds, dt = psi_d(s), psi_d(t)
    loss_d = sum(_huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n ** 2
    loss_a = sum(_huber(cos(s, i, j, k) - cos(t, i, j, k))
                 for i in range(n) for j in range(n) for k in range(n)) / n ** 3
    return loss_d, loss_a


def _hand_pkt(s, t, eps=1e-7):
    """(1/B^2) sum_ij P_t log((P_t + eps)/(P_s + eps)), P_ij = K_ij / sum_k K_ik and
    K_ij = (1 + cos(x_i, x_j)) / 2 with x normalised as x / (|x| + eps)."""
    def probs(x):
        x = _nested(x)
        x = [[v / (math.sqrt(sum(u * u for u in row)) + eps) for v in row] for row in x]
        k = [[(1.0 + sum(a * b for a, b in zip(xi, xj))) / 2.0 for xj in x] for xi in x]
        return [[v / sum(row) for v in row] for row in k]
    ps, pt = probs(s), probs(t)
    n = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
               for i in range(n) for j in range(n)) / n ** 2


# ------------------------------------------------------------------ registry
def test_registry_entries():
    expected = {  # name: (needs, default weight, options)
        "fitnet": ({"feats"}, 100.0, {"stage": 2}),
        "at": ({"feats"}, 1000.0, {"p": 2.0}),
        "sp": ({"feats"}, 3000.0, {}),
        "rkd": ({"embedding"}, 1.0, {"distance_weight": 25.0, "angle_weight": 50.0}),
        "pkt": ({"embedding"}, 30000.0, {}),
    }
    for name, (needs, weight, options) in expected.items():
        cls = KD_TERMS[name]
        assert cls.name == name
        assert cls.needs == frozenset(needs)
        assert cls.default_weight == weight
        assert cls.options == options
        assert term_options(name) == options
        assert cls.paper and cls.__module__ == f"skipkd.kd.{name}"
        assert "RepDistiller" in sys.modules[cls.__module__].__doc__  # defaults are cited
    # option types follow their defaults (values as --kd-opt gives them: strings)
    assert term_options("fitnet", {"stage": "3"}) == {"stage": 3}
    assert term_options("at", {"p": "4"}) == {"p": 4.0}
    with pytest.raises(ValueError, match="no option"):
        term_options("sp", {"p": 2})
    with pytest.raises(ValueError, match="must be an int"):
        term_options("fitnet", {"stage": "two"})


# ------------------------------------------------------------------ fitnet
FIT_S = [(2, 8, 8), (3, 8, 8), (3, 4, 4)]  # stem, stage 1, stage 2 (student)


@pytest.mark.parametrize("case", ["same_size", "student_twice"])
def test_fitnet_matches_hand(case):
    b = 3
    if case == "same_size":  # 1x1 convolution, channels 3 -> 5
        t_shapes, stride, pad = [(4, 8, 8), (4, 8, 8), (5, 4, 4)], 1, 0
    else:                    # student map twice the teacher's: 3x3 stride-2 conv
        t_shapes, stride, pad = [(4, 4, 4), (4, 4, 4), (5, 2, 2)], 2, 1
    term = _term("fitnet", {"feats": FIT_S}, {"feats": t_shapes})
    assert term.stage == 2
    g = _gen(1)
    with torch.no_grad():
        term.regressor.bn.weight.copy_(torch.rand(5, generator=g) + 0.5)
        term.regressor.bn.bias.copy_(torch.randn(5, generator=g) * 0.3)
    s_feats = _feats(FIT_S, b, seed=2, requires_grad=True)
    t_feats = _feats(t_shapes, b, seed=3)
    loss = term(_out(s_feats), _out(t_feats), _batch(b))
    expected = _hand_fitnet(_nested(s_feats[2]), _nested(term.regressor.conv.weight), stride,
                            pad, _nested(term.regressor.bn.weight),
                            _nested(term.regressor.bn.bias), _nested(t_feats[2]))
    assert loss.dtype == torch.float32
    # float32 sums: the conv's taps (3 or 3 * 3 * 3), BN's batch statistics (B * H * W), doubled
    # for the squared difference, then the mean over the output
    k = term.regressor.conv.kernel_size[0]
    out = t_feats[2]
    tol = (2 * (3 * k * k + b * out.shape[2] * out.shape[3]) + out.numel()) * EPS32
    assert loss.item() == pytest.approx(expected, rel=tol)
    loss.backward()
    # the student's guided feature and the regressor learn; the other features play no part
    assert s_feats[2].grad is not None and s_feats[2].grad.abs().sum() > 0
    assert s_feats[1].grad is None
    assert all(p.grad is not None for p in term.regressor.parameters())
    assert all(f.grad is None for f in t_feats)


def test_fitnet_stage_option_and_regressor_shapes():
    b = 2
    s_shapes = [(2, 8, 8), (3, 8, 8), (6, 4, 4), (6, 3, 3)]
    t_shapes = [(4, 8, 8), (4, 16, 16), (5, 2, 2), (7, 5, 5)]
    s_feats, t_feats = _feats(s_shapes, b, 4), _feats(t_shapes, b, 5)
    for stage, kind in ((0, torch.nn.Conv2d), (1, torch.nn.ConvTranspose2d),
                        (2, torch.nn.Conv2d), (3, torch.nn.ConvTranspose2d)):
        term = _term("fitnet", {"feats": s_shapes}, {"feats": t_shapes}, stage=stage)
        assert isinstance(term.regressor.conv, kind)
        out = term.regressor(s_feats[stage])
        assert tuple(out.shape[1:]) == t_shapes[stage]
        assert (out >= 0).all()  # the ReLU
        loss = term(_out(s_feats), _out(t_feats), _batch(b))
        assert torch.isfinite(loss)
    # stage 1: a 2x upsampling 4x4 transposed conv; stage 3: 3x3 -> 5x5 by a 3x3 transposed conv
    assert _term("fitnet", {"feats": s_shapes}, {"feats": t_shapes},
                 stage=1).regressor.conv.kernel_size == (4, 4)
    assert _term("fitnet", {"feats": s_shapes}, {"feats": t_shapes},
                 stage=3).regressor.conv.kernel_size == (3, 3)
    # stage 2 (4x4 -> 2x2): a stride-2 conv; an uneven reduction (4x4 -> 3x3): a valid 2x2 conv
    assert _term("fitnet", {"feats": s_shapes}, {"feats": t_shapes},
                 stage=2).regressor.conv.stride == (2, 2)
    odd = _term("fitnet", {"feats": [(2, 8, 8), (3, 4, 4)]}, {"feats": [(2, 8, 8), (3, 3, 3)]},
                stage=1)
    assert odd.regressor.conv.kernel_size == (2, 2)
    # the stage changes the value: features of another stage are compared
    torch.manual_seed(0)
    a = _term("fitnet", {"feats": s_shapes}, {"feats": t_shapes}, stage=0)
    assert a(_out(s_feats), _out(t_feats), _batch(b)).item() != pytest.approx(
        _term("fitnet", {"feats": s_shapes}, {"feats": t_shapes}, stage=2)(
            _out(s_feats), _out(t_feats), _batch(b)).item())


def test_fitnet_construction_errors():
    five = [(2, 8, 8)] * 5
    three = [(2, 8, 8)] * 3
    with pytest.raises(ValueError, match="out of range for the teacher"):
        _term("fitnet", {"feats": five}, {"feats": three}, stage=3)
    with pytest.raises(ValueError, match="out of range for the student"):
        _term("fitnet", {"feats": three}, {"feats": five}, stage=4)
    with pytest.raises(ValueError, match="out of range|must be in"):
        _term("fitnet", {"feats": five}, {"feats": five}, stage=-1)
    with pytest.raises(ValueError, match="feature shapes"):
        _term("fitnet")
    with pytest.raises(ValueError, match="one side larger"):
        _term("fitnet", {"feats": [(2, 8, 4)]}, {"feats": [(2, 4, 8)]}, stage=0)
    with pytest.raises(ValueError, match="out of range"):
        DistillationLoss("fitnet", create_model("resnet18", base_width=4),
                         context=TermContext(student_shapes={"feats": five},
                                             teacher_shapes={"feats": five}),
                         options={"fitnet": {"stage": 5}})


# ------------------------------------------------------------------ at
AT_S = [(2, 8, 8), (3, 8, 8), (4, 4, 4), (5, 2, 2)]
AT_T = [(3, 8, 8), (6, 8, 8), (2, 4, 4), (7, 2, 2)]


def _at_tol(feats, p, b):
    """A map entry sums C channels of |f|^p and is divided by a norm over H * W positions
    (doubled for the squared difference); then a mean over B * H * W, summed over stages."""
    c, hw = max(f[0] for f in feats), max(f[1] * f[2] for f in feats)
    return (2 * (c + p + hw) + b * hw + len(feats)) * EPS32


@pytest.mark.parametrize("p", [2.0, 4.0, 1.0])
def test_at_matches_hand(p):
    b = 3
    term = _term("at", {"feats": AT_S}, {"feats": AT_T}, p=p)
    # raw (signed) student features: |f|^p as in the paper, not f^p
    s_feats = _feats(AT_S, b, seed=6, relu=False, requires_grad=True)
    t_feats = _feats(AT_T, b, seed=7)
    loss = term(_out(s_feats), _out(t_feats), _batch(b))
    assert loss.item() == pytest.approx(_hand_at(s_feats, t_feats, p),
                                        rel=_at_tol(AT_S + AT_T, p, b))
    loss.backward()
    assert s_feats[0].grad is None  # the stem is not distilled
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s_feats[1:])
    assert all(f.grad is None for f in t_feats)


def test_at_option_p_changes_value():
    s_feats, t_feats = _feats(AT_S, 3, 8), _feats(AT_T, 3, 9)
    v2 = _term("at", p=2.0)(_out(s_feats), _out(t_feats), _batch(3)).item()
    v4 = _term("at", p=4.0)(_out(s_feats), _out(t_feats), _batch(3)).item()
    assert v2 != pytest.approx(v4)


def test_at_pools_the_larger_map():
    """Student 8x8 / 4x4 against a teacher at 4x4 / 8x8: the larger of each pair is
    block-averaged down to the smaller before the attention maps are taken."""
    s_shapes = [(2, 8, 8), (3, 8, 8), (4, 4, 4)]
    t_shapes = [(2, 8, 8), (5, 4, 4), (3, 8, 8)]
    b = 2
    s_feats = _feats(s_shapes, b, 10, requires_grad=True)
    t_feats = _feats(t_shapes, b, 11)
    loss = _term("at", {"feats": s_shapes}, {"feats": t_shapes})(
        _out(s_feats), _out(t_feats), _batch(b))
    assert loss.item() == pytest.approx(_hand_at(s_feats, t_feats, 2.0),
                                        rel=_at_tol(s_shapes + t_shapes, 2.0, b))
    loss.backward()
    assert all(f.grad is not None for f in s_feats[1:])


def test_at_stage_count_must_match():
    with pytest.raises(ValueError, match="student has 3 stages and the teacher 4"):
        _term("at", {"feats": AT_S[:4]}, {"feats": AT_T + [(2, 1, 1)]})
    with pytest.raises(ValueError, match="positive|must be in"):
        _term("at", p=0.0)
    # shapes unknown at construction: checked at the first forward
    term = _term("at")
    with pytest.raises(ValueError, match="stages"):
        term(_out(_feats(AT_S[:3], 2, 0)), _out(_feats(AT_T, 2, 1)), _batch(2))


# ------------------------------------------------------------------ sp
def test_sp_matches_hand():
    b = 4
    s_shapes, t_shapes = [(2, 8, 8), (3, 2, 2)], [(2, 8, 8), (6, 1, 1)]  # different C, H, W
    s_feats = _feats(s_shapes, b, 12, relu=False, requires_grad=True)
    t_feats = _feats(t_shapes, b, 13, relu=False)
    loss = _term("sp")(_out(s_feats), _out(t_feats), _batch(b))
    # Gram entries: D-term dot products (D = 12, 6); row norms: B terms; doubled for the squared
    # difference, then B^2 summed
    tol = (2 * (12 + b) + b * b) * EPS32
    assert loss.item() == pytest.approx(_hand_sp(s_feats[-1], t_feats[-1]), rel=tol)
    loss.backward()
    assert s_feats[0].grad is None  # only the last stage's output is used
    assert s_feats[-1].grad is not None and s_feats[-1].grad.abs().sum() > 0
    assert all(f.grad is None for f in t_feats)


# ------------------------------------------------------------------ rkd
def test_rkd_matches_hand():
    b = 4
    g = _gen(14)
    s = torch.randn(b, 3, generator=g).requires_grad_()
    t = torch.randn(b, 7, generator=g) * 5  # another width and scale
    parts = _term("rkd")(_out(embedding=s), _out(embedding=t), _batch(b))
    assert set(parts) == {"distance", "angle"}
    loss_d, loss_a = _hand_rkd(s, t)
    # the equations in float64 on both sides (~1e-15 on any CPU)
    lib_d, lib_a = _rkd_lib(s.double(), t.double())
    assert lib_d == pytest.approx(loss_d, rel=1e-10)
    assert lib_a == pytest.approx(loss_a, rel=1e-10)
    # the term (float32): the same helpers on the same float32 values, times its weights (one
    # float32 product each)
    d32, a32 = _rkd_lib(s.detach(), t)
    assert parts["distance"].item() == pytest.approx(25.0 * d32, rel=4 * EPS32)
    assert parts["angle"].item() == pytest.approx(50.0 * a32, rel=4 * EPS32)
    _total(parts).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()


def test_rkd_weights_scale_the_parts():
    g = _gen(15)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 6, generator=g)
    loss_d, _ = _rkd_lib(s, t)  # float32, as the term (the equations: test_rkd_matches_hand)
    parts = _term("rkd", distance_weight=2.0, angle_weight=0.0)(
        _out(embedding=s), _out(embedding=t), _batch(3))
    assert parts["distance"].item() == pytest.approx(2.0 * loss_d, rel=4 * EPS32)
    assert parts["angle"].item() == 0.0
    with pytest.raises(ValueError, match=">= 0|must be in"):
        _term("rkd", distance_weight=-1.0)


def test_rkd_degenerate_batches():
    # one sample: no pairs, zero loss, finite (zero) gradient
    s = torch.randn(1, 4).requires_grad_()
    parts = _term("rkd")(_out(embedding=s), _out(embedding=torch.randn(1, 4)), _batch(1))
    assert all(v.item() == 0.0 for v in parts.values())
    _total(parts).backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    # two coincident student embeddings: finite value and gradient
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    total = _total(_term("rkd")(_out(embedding=s), _out(embedding=torch.randn(3, 5)),
                                _batch(3)))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()


# ------------------------------------------------------------------ pkt
def test_pkt_matches_hand():
    b = 4
    g = _gen(16)
    s = torch.randn(b, 3, generator=g).requires_grad_()
    t = torch.randn(b, 9, generator=g)
    loss = _term("pkt")(_out(embedding=s), _out(embedding=t), _batch(b))
    # P's entries carry ~(D + B) EPS32 (a D-term cosine, D = 9, and a B-term row sum), and so do
    # the logs of their ratios; weighted by P_t, whose rows sum to 1, and divided by B^2
    assert loss.item() == pytest.approx(_hand_pkt(s, t), rel=0, abs=(9 + b) * EPS32 / b)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # identical directions: zero divergence, up to the eps in x / (|x| + eps) and the rounding
    # above (abs=(9 + b) * EPS32 / b)
    assert _term("pkt")(_out(embedding=t * 2), _out(embedding=t), _batch(b)).item() \
        == pytest.approx(0.0, abs=(9 + b) * EPS32 / b)
    # an all-zero student embedding (dead ReLUs) keeps a finite gradient
    z = torch.zeros(b, 3, requires_grad=True)
    _term("pkt")(_out(embedding=z), _out(embedding=t), _batch(b)).backward()
    assert torch.isfinite(z.grad).all()


# ------------------------------------------------------------------ shared properties
def _inputs(name, b=3, seed=20):
    """(term, student output, teacher output) with mismatched widths."""
    if name in ("fitnet", "at", "sp"):
        s_shapes, t_shapes = AT_S, AT_T
        return (_term(name, {"feats": s_shapes}, {"feats": t_shapes}),
                _out(_feats(s_shapes, b, seed)), _out(_feats(t_shapes, b, seed + 1)))
    g = _gen(seed)
    return (_term(name), _out(embedding=torch.randn(b, 5, generator=g).relu()),
            _out(embedding=torch.randn(b, 8, generator=g).relu()))


@pytest.mark.parametrize("name", ["at", "sp", "rkd", "pkt"])
def test_scale_invariance(name):
    """These terms compare normalised maps, Gram rows, relations or kernels: scaling the
    student's features by a constant leaves them unchanged."""
    term, s_out, t_out = _inputs(name)
    base = _total(term(s_out, t_out, _batch(3))).item()
    scaled = _apply(s_out, lambda f: 3 * f)
    # float32 on both sides: twice a term's own rounding; the smallest value, PKT's (~7e-3), has
    # ~(D + B) EPS32 / B = 4 EPS32 of it (test_pkt_matches_hand): ~1000 EPS32 relative
    assert _total(term(scaled, t_out, _batch(3))).item() == pytest.approx(base,
                                                                         rel=2**10 * EPS32)


@pytest.mark.parametrize("name", TERMS)
def test_low_precision_student_gives_float32(name):
    """Under autocast the student's tensors may be bf16: the loss is computed in float32, from
    the bf16 values upcast (so it equals the float32 loss of those values), not in bf16."""
    term, s_out, t_out = _inputs(name)
    s_bf = _apply(s_out, lambda f: f.bfloat16())
    s_up = _apply(s_bf, lambda f: f.float())
    ref = _total(term(s_up, t_out, _batch(3)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _total(term(s_bf, t_out, _batch(3)))
    assert low.dtype == torch.float32 and torch.isfinite(low)
    # fitnet's regressor is a learned layer of the student's side and runs in bf16 like it: its
    # output is rounded to bf16 (half a BF16_EPS), doubled by the square, and BN's statistics
    # move with it; the other terms compute in float32 from the same upcast values (same kernels)
    tol = 4 * BF16_EPS if name == "fitnet" else 4 * EPS32
    assert low.item() == pytest.approx(ref.item(), rel=tol)


# ------------------------------------------------------------------ with real models
@pytest.fixture(scope="module")
def tiny_nets():
    torch.manual_seed(0)
    student = create_model("resnet18", base_width=4)
    teacher = create_model("resnet18", base_width=8)  # twice as wide: every width differs
    teacher.train()
    with torch.no_grad():  # non-trivial BN statistics for the (BN-folded) teacher
        teacher(torch.randn(8, 3, 32, 32))
    context = TermContext(student_shapes=feature_shapes(student),
                          teacher_shapes=feature_shapes(teacher))
    return student, teacher, context


@pytest.mark.parametrize("mode", [*TERMS, "+".join(TERMS)])
def test_distillation_loss_with_real_models(tiny_nets, mode):
    student, teacher, context = tiny_nets
    loss_fn = DistillationLoss(mode, teacher, context=context)
    names = mode.split("+")
    assert loss_fn.weights == {n: KD_TERMS[n].default_weight for n in names}
    learned = loss_fn.learned_parameters()
    assert (learned.get("fitnet", 0) > 0) == ("fitnet" in names)
    assert all(v == 0 for n, v in learned.items() if n != "fitnet")
    student.request_features(loss_fn.features)
    student.train()
    loss_fn.train()
    student.zero_grad()
    g = _gen(30)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    total, parts = loss_fn(x, student(x), y)
    assert torch.isfinite(total)
    for n in names:
        assert torch.isfinite(parts[n]) and parts[n].item() >= 0
    # float32 sums and products of non-negative values: one rounding each
    if "rkd" in names:
        assert parts["rkd"].item() == pytest.approx(
            parts["rkd_distance"].item() + parts["rkd_angle"].item(), rel=4 * EPS32)
    expected = parts["ce"].item() + sum(loss_fn.weights[n] * parts[n].item() for n in names)
    assert total.item() == pytest.approx(expected, rel=(2 * len(names) + 2) * EPS32)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    assert student.stages[0][0].residual[0].weight.grad.abs().sum() > 0
    if "fitnet" in names:
        assert all(p.grad is not None for p in loss_fn.fitnet.regressor.parameters())
        assert any(k.startswith("fitnet.regressor.") for k in loss_fn.state_dict())
    assert all(p.grad is None for p in teacher.parameters())
    student.request_features(())


def test_options_reach_the_terms(tiny_nets):
    student, teacher, context = tiny_nets
    loss_fn = DistillationLoss("fitnet+at+rkd", teacher, context=context,
                               options={"fitnet": {"stage": "3"}, "at": {"p": "4"},
                                        "rkd": {"angle_weight": "0"}})
    assert loss_fn.fitnet.stage == 3 and loss_fn.at.p == 4.0 and loss_fn.rkd.angle_weight == 0.0
    t_channels = context.teacher_shapes["feats"][3][0]
    assert tuple(loss_fn.fitnet.regressor.bn.weight.shape) == (t_channels,)
