"""The logit terms dkd (Zhao et al., 2022) and dist (Huang et al., 2022): values against hand
computations from the papers' equations (explicit loops in float64), the warm-up, the
standardize option, DKD's decomposition of KD, gradients, the registry and a run with real
models.

Tolerances. The library's functions are checked in float64 against the loops (dkd_parts /
dist_parts keep their input's dtype), where any CPU agrees to ~1e-14. The terms themselves
always compute in float32 (logit_pair casts), so they are checked against the loops on the same
float32 inputs at F32 (float32 roundings), never against the library's own functions; two
results of the terms themselves are compared at WIRED (a few EPS32)."""
import math

import pytest
import torch

from skipkd.models import ModelOutput, create_model, feature_shapes
from skipkd.kd import KD_TERMS, DistillationLoss, KDBatch, TermContext, term_options
from skipkd.kd.dist import EPS as DIST_EPS
from skipkd.kd.dist import DISTTerm, dist_parts  # importing registers the term
from skipkd.kd.dkd import DKDTerm, dkd_parts
from skipkd.kd.logit import standardize

B, K = 4, 5
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
F64 = 1e-10  # float64 on both sides: ~100 float64 roundings of O(1) values, ~1e-14, on any CPU
WIRED = 4 * EPS32  # a term against its own function in float32: one or two products differ
F32 = 1e-4  # a float32 term against the float64 hand computation (float32 softmax and log
#             roundings; up to 1.2e-5 relative measured on these cases)


# ---------------------------------------------------------------- hand computations (float64)

def _rows(t):
    return t.detach().double().tolist()


def _softmax(row, T, skip=None):
    """softmax(row / T) over the indices other than `skip`; the skipped entry is left out."""
    idx = [j for j in range(len(row)) if j != skip]
    m = max(row[j] / T for j in idx)
    e = {j: math.exp(row[j] / T - m) for j in idx}
    z = sum(e.values())
    return {j: e[j] / z for j in idx}


def _zscore(row, eps=1e-7):
    """(z - mean) / (sample std + eps), the definition of skipkd.kd.logit.standardize."""
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))
    return [(v - mean) / (std + eps) for v in row]


def _hand_dkd(s, t, y, T):
    """(TCKD, NCKD) batch means without weights or T^2, from the paper's definitions."""
    tckd = nckd = 0.0
    for s_row, t_row, c in zip(_rows(s), _rows(t), y.tolist()):
        ps, pt = _softmax(s_row, T), _softmax(t_row, T)
        bs, bt = (ps[c], 1 - ps[c]), (pt[c], 1 - pt[c])
        tckd += sum(q * math.log(q / p) for q, p in zip(bt, bs))
        # non-target distributions: the target class left out, renormalised over the others
        qs, qt = _softmax(s_row, T, skip=c), _softmax(t_row, T, skip=c)
        assert c not in qs and c not in qt and len(qt) == len(t_row) - 1
        nckd += sum(qt[j] * math.log(qt[j] / qs[j]) for j in qt)
    n = len(y)
    return tckd / n, nckd / n


def _hand_kl(s_row, t_row, T):
    ps, pt = _softmax(s_row, T), _softmax(t_row, T)
    return sum(pt[j] * math.log(pt[j] / ps[j]) for j in pt)


def _pearson(u, v):
    """By its definition: covariance over the product of standard deviations, with the official
    code's eps (1e-8) added to that product."""
    n = len(u)
    mu, mv = sum(u) / n, sum(v) / n
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    su = math.sqrt(sum((a - mu) ** 2 for a in u))
    sv = math.sqrt(sum((b - mv) ** 2 for b in v))
    return cov / (su * sv + DIST_EPS)


def _hand_dist(s, t, tau):
    """(inter, intra), each times tau^2, without beta / gamma."""
    ps = [[_softmax(r, tau)[j] for j in range(len(r))] for r in _rows(s)]
    pt = [[_softmax(r, tau)[j] for j in range(len(r))] for r in _rows(t)]
    n, k = len(ps), len(ps[0])
    inter = 1 - sum(_pearson(ps[i], pt[i]) for i in range(n)) / n
    cols = lambda p, c: [p[i][c] for i in range(n)]  # noqa: E731
    intra = 1 - sum(_pearson(cols(ps, c), cols(pt, c)) for c in range(k)) / k
    return tau * tau * inter, tau * tau * intra


# ---------------------------------------------------------------- helpers

def _case(seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, K, generator=g, dtype=torch.float64) * scale
    t = torch.randn(B, K, generator=g, dtype=torch.float64) * scale
    y = torch.tensor([0, 3, 4, 3])
    return s.float(), t.float(), y


def _out(logits):
    return ModelOutput(logits, None)


def _term(cls, **options):
    return cls(TermContext(options=term_options(cls.name, options)))


def _call(term, s, t, y, epoch=100.0):
    return term(_out(s), _out(t), KDBatch(y=y, epoch=epoch))


def _dkd32(s, t, y, T):
    """(TCKD, NCKD) of the hand computation on the term's float32 logits: the reference for the
    term, which computes in float32 (F32 tolerance), never the library's own function."""
    return _hand_dkd(s, t, y, T)


def _dist32(s, t, tau):
    return _hand_dist(s, t, tau)


def _z(x):
    """Each row z-scored by the hand definition (_zscore), as a float64 tensor."""
    return torch.tensor([_zscore(r) for r in _rows(x)], dtype=torch.float64)


# ---------------------------------------------------------------- DKD

@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 6.0, 2.5)])
def test_dkd_matches_hand_computation(alpha, beta, T):
    s, t, y = _case()
    tckd, nckd = _hand_dkd(s, t, y, T)
    # the equations, float64 on both sides
    tckd64, nckd64 = dkd_parts(s.double(), t.double(), y, T)
    assert tckd64.dtype == torch.float64
    assert tckd64.item() == pytest.approx(tckd, rel=F64)
    assert nckd64.item() == pytest.approx(nckd, rel=F64)
    # the term (float32): those parts times alpha T^2 and beta T^2
    parts = _call(_term(DKDTerm, alpha=alpha, beta=beta, temperature=T), s, t, y)
    tckd32, nckd32 = _dkd32(s, t, y, T)
    assert set(parts) == {"tckd", "nckd"}
    assert parts["tckd"].item() == pytest.approx(alpha * T * T * tckd32, rel=F32)
    assert parts["nckd"].item() == pytest.approx(beta * T * T * nckd32, rel=F32)
    assert tckd > 0 and nckd > 0


def test_dkd_defaults_match_hand_computation():
    s, t, y = _case(seed=1)
    parts = _call(DKDTerm(TermContext()), s, t, y, epoch=20.0)  # options left empty: defaults
    tckd, nckd = _dkd32(s, t, y, 4.0)  # the equations: test_dkd_matches_hand_computation
    total = sum(parts.values()).item()
    assert total == pytest.approx(16 * (1.0 * tckd + 8.0 * nckd), rel=F32)


@pytest.mark.parametrize("epoch,factor", [(0.0, 0.0), (2.5, 0.125), (10.0, 0.5), (19.0, 0.95),
                                          (20.0, 1.0), (57.3, 1.0)])
def test_dkd_warmup_factor(epoch, factor):
    s, t, y = _case()
    tckd, nckd = _dkd32(s, t, y, 4.0)
    parts = _call(_term(DKDTerm, warmup=20.0), s, t, y, epoch=epoch)
    assert parts["tckd"].item() == pytest.approx(factor * 16 * tckd, rel=F32, abs=1e-12)
    assert parts["nckd"].item() == pytest.approx(factor * 16 * 8 * nckd, rel=F32, abs=1e-12)


def test_dkd_warmup_zero_means_full_weight_from_the_start():
    s, t, y = _case()
    tckd, nckd = _dkd32(s, t, y, 4.0)
    parts = _call(_term(DKDTerm, warmup=0.0), s, t, y, epoch=0.0)
    assert sum(parts.values()).item() == pytest.approx(16 * (tckd + 8 * nckd), rel=F32)


def _check_zscores(x):
    """standardize (float32 only: it casts) against the float64 definition. Its error is that of
    (z - mean) / std in float32: ~K roundings of values up to max|z| against a spread std, so
    K * EPS32 * max|z| / std in z-score units, with a factor 4 to spare."""
    want = torch.tensor([_zscore(r) for r in _rows(x)], dtype=torch.float64)
    got = standardize(x)
    assert got.dtype == torch.float32
    cond = float((x.double().abs().amax(1) / x.double().std(1)).max())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=4 * K * EPS32 * cond)


def test_dkd_standardize_uses_zscored_logits():
    s, t, y = _case(seed=2, scale=5.0)
    parts = _call(_term(DKDTerm, standardize=True), s, t, y)
    _check_zscores(s)
    _check_zscores(t)
    # the term: DKD of those z-scores (the equations: test_dkd_matches_hand_computation)
    tckd, nckd = _dkd32(_z(s), _z(t), y, 4.0)
    assert parts["tckd"].item() == pytest.approx(16 * tckd, rel=F32)
    assert parts["nckd"].item() == pytest.approx(16 * 8 * nckd, rel=F32)
    plain = _call(_term(DKDTerm), s, t, y)
    assert sum(plain.values()).item() != pytest.approx(sum(parts.values()).item(), rel=1e-3)


def test_dkd_standardize_ignores_logit_scale_and_shift():
    s, t, y = _case(seed=3)
    term = _term(DKDTerm, standardize=True)
    a = sum(_call(term, s, t, y).values()).item()
    b = sum(_call(term, 3 * s + 7, 0.5 * t - 2, y).values()).item()
    # float32 throughout: rounding 3s+7 and standardizing move the z-scores by ~K EPS32 *
    # max|x| / std (~20 EPS32); DKD's relative sensitivity to them (|grad|_1 / value ~ 3) and
    # each side's own rounding (~T^2 * EPS32 * |log p| / value) add up to ~100 EPS32
    assert a == pytest.approx(b, rel=256 * EPS32)


def test_nckd_is_zero_when_the_non_target_distributions_agree():
    # changing only the target logit leaves the non-target distribution as it is: NCKD = 0,
    # while the target/rest split (TCKD) differs
    s, t, y = _case(seed=4)
    student = t.clone()
    student[torch.arange(B), y] += torch.tensor([2.0, -1.5, 3.0, -4.0])
    parts = _call(_term(DKDTerm), student, t, y)
    # identical non-target logits give bit-identical non-target log-probabilities (same rows,
    # same kernel), so NCKD is exactly 0 on any CPU
    assert parts["nckd"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["tckd"].item() > 1e-3


def test_tckd_is_zero_when_the_target_mass_agrees():
    # permuting the non-target logits keeps p_target (and so the binary split) but changes the
    # non-target distribution: TCKD = 0, NCKD > 0
    s, t, y = _case(seed=5)
    student = t.clone()
    for i, c in enumerate(y.tolist()):
        others = [j for j in range(K) if j != c]
        student[i, others] = t[i, others].roll(1)
    parts = _call(_term(DKDTerm), student, t, y)
    # not exactly 0: the permuted sums of K exponentials round differently, leaving each O(1)
    # log-probability off by ~EPS32; times T^2 = 16 and K to spare
    assert parts["tckd"].item() == pytest.approx(0.0, abs=16 * K * EPS32)
    assert parts["nckd"].item() > 1e-3


def test_kd_equals_tckd_plus_weighted_nckd():
    # the paper's Eq. (7): KD = TCKD + (1 - p_t^teacher) * NCKD, sample by sample
    # an identity of the equations: float64 on both sides (the term's scaling by alpha, beta and
    # T^2 is checked in test_dkd_matches_hand_computation)
    s, t, y = _case(seed=6)
    T = 4.0
    for i in range(B):
        tckd, nckd = dkd_parts(s[i:i + 1].double(), t[i:i + 1].double(), y[i:i + 1], T)
        pt = _softmax(_rows(t)[i], T)[y[i].item()]
        kd = _hand_kl(_rows(s)[i], _rows(t)[i], T)
        recon = tckd.item() + (1 - pt) * nckd.item()
        assert recon == pytest.approx(kd, rel=F64)


def test_dkd_is_zero_when_student_equals_teacher():
    s, t, y = _case()
    parts = _call(_term(DKDTerm), t.clone(), t, y)
    # the same logits on both sides give bit-identical log-probabilities: exactly 0 on any CPU
    assert all(abs(v.item()) < 1e-6 for v in parts.values())


def test_dkd_is_finite_for_very_confident_logits():
    # p_target rounds to 1 in float32: the log-space binary split keeps TCKD finite
    s, t, y = _case()
    t = t * 0
    t[torch.arange(B), y] = 500.0
    s = s.clone().requires_grad_(True)
    parts = _call(_term(DKDTerm), s, t, y)
    total = sum(parts.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()


def test_dkd_options_scale_their_parts():
    s, t, y = _case(seed=7)
    base = _call(_term(DKDTerm), s, t, y)
    a = _call(_term(DKDTerm, alpha=3.0), s, t, y)
    b = _call(_term(DKDTerm, beta=2.0), s, t, y)
    # the same float32 parts, only the product by the weight rounds differently
    assert a["tckd"].item() == pytest.approx(3 * base["tckd"].item(), rel=WIRED)
    assert a["nckd"].item() == pytest.approx(base["nckd"].item(), rel=WIRED)
    assert b["nckd"].item() == pytest.approx(0.25 * base["nckd"].item(), rel=WIRED)
    assert b["tckd"].item() == pytest.approx(base["tckd"].item(), rel=WIRED)
    hot = _call(_term(DKDTerm, temperature=1.0), s, t, y)
    assert sum(hot.values()).item() != pytest.approx(sum(base.values()).item(), rel=1e-3)


def test_dkd_temperature_is_its_own_option_not_the_global_flag():
    s, t, y = _case()
    ctx = TermContext(temperature=1.0, options=term_options("dkd"))
    a = _call(DKDTerm(ctx), s, t, y)
    b = _call(_term(DKDTerm), s, t, y)
    assert sum(a.values()).item() == pytest.approx(sum(b.values()).item(), rel=WIRED)


# ---------------------------------------------------------------- DIST

@pytest.mark.parametrize("beta,gamma,tau", [(2.0, 2.0, 4.0), (1.0, 1.0, 1.0), (0.5, 3.0, 2.0)])
def test_dist_matches_hand_computation(beta, gamma, tau):
    s, t, _ = _case(seed=8)
    inter, intra = _hand_dist(s, t, tau)
    # the equations, float64 on both sides
    inter64, intra64 = dist_parts(s.double(), t.double(), tau)
    assert inter64.dtype == torch.float64
    assert inter64.item() == pytest.approx(inter, rel=F64)
    assert intra64.item() == pytest.approx(intra, rel=F64)
    # the term (float32): those parts times beta and gamma
    parts = _call(_term(DISTTerm, beta=beta, gamma=gamma, tau=tau), s, t, None)
    inter32, intra32 = _dist32(s, t, tau)
    assert set(parts) == {"inter", "intra"}
    assert parts["inter"].item() == pytest.approx(beta * inter32, rel=F32)
    assert parts["intra"].item() == pytest.approx(gamma * intra32, rel=F32)


def test_dist_defaults_match_hand_computation():
    s, t, _ = _case(seed=9)
    parts = DISTTerm(TermContext())(_out(s), _out(t), KDBatch(y=torch.zeros(B, dtype=torch.long)))
    inter, intra = _dist32(s, t, 4.0)  # the equations: test_dist_matches_hand_computation
    assert sum(parts.values()).item() == pytest.approx(2 * inter + 2 * intra, rel=F32)


def test_dist_standardize_uses_zscored_logits():
    s, t, _ = _case(seed=10, scale=6.0)
    parts = _call(_term(DISTTerm, standardize=True), s, t, None)
    _check_zscores(s)
    _check_zscores(t)
    inter, intra = _dist32(_z(s), _z(t), 4.0)
    assert parts["inter"].item() == pytest.approx(2 * inter, rel=F32)
    assert parts["intra"].item() == pytest.approx(2 * intra, rel=F32)


def test_dist_is_zero_when_student_equals_teacher():
    s, t, _ = _case()
    parts = _call(_term(DISTTerm), t.clone(), t, None)
    # not exactly 0: the eps in the correlation's denominator (as in the official code) leaves
    # eps / (|u|^2 + eps) per correlation, times tau^2: the float64 equations give that. The
    # float32 rho, near 1, is off by ~2K EPS32 (K-term sums, two norms), times beta tau^2 = 32
    inter, intra = _hand_dist(t, t, 4.0)
    assert 0 < inter < 1e-4 and 0 < intra < 1e-4
    assert parts["inter"].item() == pytest.approx(2 * inter, abs=32 * 2 * K * EPS32)
    assert parts["intra"].item() == pytest.approx(2 * intra, abs=32 * 2 * K * EPS32)


def test_dist_options_scale_their_parts():
    s, t, _ = _case(seed=11)
    base = _call(_term(DISTTerm), s, t, None)
    opt = _call(_term(DISTTerm, beta=1.0, gamma=6.0), s, t, None)
    # the same float32 parts, only the product by the weight rounds differently
    assert opt["inter"].item() == pytest.approx(0.5 * base["inter"].item(), rel=WIRED)
    assert opt["intra"].item() == pytest.approx(3 * base["intra"].item(), rel=WIRED)
    cold = _call(_term(DISTTerm, tau=1.0), s, t, None)
    assert cold["inter"].item() != pytest.approx(base["inter"].item(), rel=1e-3)


def test_dist_single_sample_batch_is_finite():
    # one sample: each class column is constant, correlation 0 (eps), intra = gamma * tau^2
    s, t, _ = _case()
    x = s[:1].clone().requires_grad_(True)
    parts = _call(_term(DISTTerm), x, t[:1], None)
    # the centred columns are exactly 0, so rho = 0 / eps = 0 exactly: intra is exactly 32
    assert parts["intra"].item() == pytest.approx(2 * 16, rel=WIRED)
    sum(parts.values()).backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- both terms

@pytest.mark.parametrize("cls", [DKDTerm, DISTTerm])
def test_gradient_reaches_student_only(cls):
    s, t, y = _case(seed=12)
    # the teacher's logits come without grad (DistillationLoss runs it in inference mode; the
    # real-model test below checks its parameters get none)
    s = s.clone().requires_grad_(True)
    value = sum(_call(_term(cls), s, t, y).values())
    value.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert not t.requires_grad and t.grad is None


@pytest.mark.parametrize("cls", [DKDTerm, DISTTerm])
def test_low_precision_student_logits_give_a_float32_loss(cls):
    s, t, y = _case(seed=13)
    parts = _call(_term(cls), s.bfloat16(), t.bfloat16(), y)
    ref = _call(_term(cls), s.bfloat16().float(), t.bfloat16().float(), y)
    for k, v in parts.items():
        assert v.dtype == torch.float32
        # the same float32 values through the same kernels: equal (WIRED to spare)
        assert v.item() == pytest.approx(ref[k].item(), rel=WIRED)


@pytest.mark.parametrize("cls", [DKDTerm, DISTTerm])
def test_class_count_mismatch_is_an_error(cls):
    s, t, y = _case()
    with pytest.raises(ValueError, match="same shape"):
        _call(_term(cls), s, torch.cat([t, t[:, :1]], dim=1), y)


def test_registry_entries():
    dkd, dist = KD_TERMS["dkd"], KD_TERMS["dist"]
    assert dkd is DKDTerm and dist is DISTTerm
    assert dkd.needs == frozenset({"logits"}) and dist.needs == frozenset({"logits"})
    assert dkd.default_weight == 1.0 and dist.default_weight == 1.0
    assert dkd.options == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0,
                           "standardize": False}
    assert dist.options == {"beta": 2.0, "gamma": 2.0, "tau": 4.0, "standardize": False}
    assert "Decoupled" in dkd.paper and "Stronger Teacher" in dist.paper
    assert term_options("dkd", {"warmup": "5", "standardize": "true"})["warmup"] == 5.0
    assert term_options("dist", {"tau": "1"})["tau"] == 1.0
    with pytest.raises(ValueError):
        term_options("dist", {"temperature": "2"})
    for cls, bad in ((DKDTerm, {"temperature": 0.0}), (DKDTerm, {"beta": -1.0}),
                     (DISTTerm, {"tau": -1.0})):
        with pytest.raises(ValueError):
            _term(cls, **bad)


def test_distillation_loss_with_real_models():
    torch.manual_seed(0)
    teacher = create_model("resnet18", base_width=8)   # wider than the student: logits only
    student = create_model("resnet18", base_width=4)
    ctx = TermContext(student_shapes=feature_shapes(student),
                      teacher_shapes=feature_shapes(teacher), num_classes=10)
    loss_fn = DistillationLoss("dkd+dist", teacher, context=ctx,
                               options={"dkd": {"warmup": 4.0}, "dist": {"standardize": True}})
    assert loss_fn.weights == {"dkd": 1.0, "dist": 1.0}
    assert loss_fn.learned_parameters() == {"dkd": 0, "dist": 0}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 1])
    total, parts = loss_fn(x, student(x), y, epoch=1.0)
    assert torch.isfinite(total)
    for key in ("ce", "dkd", "dkd_tckd", "dkd_nckd", "dist", "dist_inter", "dist_intra"):
        assert key in parts and torch.isfinite(parts[key])
    # float32 sums of two and three positive values: one rounding each
    assert parts["dkd"].item() == pytest.approx(
        parts["dkd_tckd"].item() + parts["dkd_nckd"].item(), rel=WIRED)
    assert total.item() == pytest.approx(
        parts["ce"].item() + parts["dkd"].item() + parts["dist"].item(), rel=WIRED)
    total.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    # the warm-up as seen through DistillationLoss: a quarter of the way at epoch 1 of 4
    _, later = loss_fn(x, student(x), y, epoch=8.0)
    # the same float32 values, scaled by 1 instead of 1/4 (powers of two: exact)
    assert later["dkd"].item() == pytest.approx(4 * parts["dkd"].item(), rel=WIRED)
