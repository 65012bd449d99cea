"""The logit terms dkd (Zhao et al., 2022) and dist (Huang et al., 2022): values against hand
computations from the papers' equations (explicit loops in float64), the warm-up, the
standardize option, DKD's decomposition of KD, gradients, the registry and a run with real
models."""
import math

import pytest
import torch

from models import ModelOutput, create_model, feature_shapes
from utils.kd import KD_TERMS, DistillationLoss, KDBatch, TermContext, term_options
from utils.kd.dist import DISTTerm  # importing registers the term
from utils.kd.dkd import DKDTerm

B, K = 4, 5


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
    """(z - mean) / (sample std + eps), the definition of utils.kd.logit.standardize."""
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
    """By its definition: covariance over the product of standard deviations."""
    n = len(u)
    mu, mv = sum(u) / n, sum(v) / n
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    su = math.sqrt(sum((a - mu) ** 2 for a in u))
    sv = math.sqrt(sum((b - mv) ** 2 for b in v))
    return cov / (su * sv)


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


# ---------------------------------------------------------------- DKD

@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 6.0, 2.5)])
def test_dkd_matches_hand_computation(alpha, beta, T):
    s, t, y = _case()
    parts = _call(_term(DKDTerm, alpha=alpha, beta=beta, temperature=T), s, t, y)
    tckd, nckd = _hand_dkd(s, t, y, T)
    assert set(parts) == {"tckd", "nckd"}
    assert parts["tckd"].item() == pytest.approx(alpha * T * T * tckd, rel=1e-5)
    assert parts["nckd"].item() == pytest.approx(beta * T * T * nckd, rel=1e-5)
    assert tckd > 0 and nckd > 0


def test_dkd_defaults_match_hand_computation():
    s, t, y = _case(seed=1)
    parts = _call(DKDTerm(TermContext()), s, t, y, epoch=20.0)  # options left empty: defaults
    tckd, nckd = _hand_dkd(s, t, y, 4.0)
    total = sum(parts.values()).item()
    assert total == pytest.approx(16 * (1.0 * tckd + 8.0 * nckd), rel=1e-5)


@pytest.mark.parametrize("epoch,factor", [(0.0, 0.0), (2.5, 0.125), (10.0, 0.5), (19.0, 0.95),
                                          (20.0, 1.0), (57.3, 1.0)])
def test_dkd_warmup_factor(epoch, factor):
    s, t, y = _case()
    tckd, nckd = _hand_dkd(s, t, y, 4.0)
    parts = _call(_term(DKDTerm, warmup=20.0), s, t, y, epoch=epoch)
    assert parts["tckd"].item() == pytest.approx(factor * 16 * tckd, rel=1e-5, abs=1e-12)
    assert parts["nckd"].item() == pytest.approx(factor * 16 * 8 * nckd, rel=1e-5, abs=1e-12)


def test_dkd_warmup_zero_means_full_weight_from_the_start():
    s, t, y = _case()
    tckd, nckd = _hand_dkd(s, t, y, 4.0)
    parts = _call(_term(DKDTerm, warmup=0.0), s, t, y, epoch=0.0)
    assert sum(parts.values()).item() == pytest.approx(16 * (tckd + 8 * nckd), rel=1e-5)


def test_dkd_standardize_uses_zscored_logits():
    s, t, y = _case(seed=2, scale=5.0)
    parts = _call(_term(DKDTerm, standardize=True), s, t, y)
    zs = torch.tensor([_zscore(r) for r in _rows(s)], dtype=torch.float64)
    zt = torch.tensor([_zscore(r) for r in _rows(t)], dtype=torch.float64)
    tckd, nckd = _hand_dkd(zs, zt, y, 4.0)
    assert parts["tckd"].item() == pytest.approx(16 * tckd, rel=1e-5)
    assert parts["nckd"].item() == pytest.approx(16 * 8 * nckd, rel=1e-5)
    plain = _call(_term(DKDTerm), s, t, y)
    assert sum(plain.values()).item() != pytest.approx(sum(parts.values()).item(), rel=1e-3)


def test_dkd_standardize_ignores_logit_scale_and_shift():
    s, t, y = _case(seed=3)
    term = _term(DKDTerm, standardize=True)
    a = sum(_call(term, s, t, y).values()).item()
    b = sum(_call(term, 3 * s + 7, 0.5 * t - 2, y).values()).item()
    assert a == pytest.approx(b, rel=1e-4)


def test_nckd_is_zero_when_the_non_target_distributions_agree():
    # changing only the target logit leaves the non-target distribution as it is: NCKD = 0,
    # while the target/rest split (TCKD) differs
    s, t, y = _case(seed=4)
    student = t.clone()
    student[torch.arange(B), y] += torch.tensor([2.0, -1.5, 3.0, -4.0])
    parts = _call(_term(DKDTerm), student, t, y)
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
    assert parts["tckd"].item() == pytest.approx(0.0, abs=1e-5)  # float32 rounding, times T^2
    assert parts["nckd"].item() > 1e-3


def test_kd_equals_tckd_plus_weighted_nckd():
    # the paper's Eq. (7): KD = TCKD + (1 - p_t^teacher) * NCKD, sample by sample
    s, t, y = _case(seed=6)
    T = 4.0
    term = _term(DKDTerm, alpha=1.0, beta=1.0, temperature=T)
    for i in range(B):
        parts = _call(term, s[i:i + 1], t[i:i + 1], y[i:i + 1])
        pt = _softmax(_rows(t)[i], T)[y[i].item()]
        kd = _hand_kl(_rows(s)[i], _rows(t)[i], T)
        recon = (parts["tckd"].item() + (1 - pt) * parts["nckd"].item()) / (T * T)
        assert recon == pytest.approx(kd, rel=1e-5)


def test_dkd_is_zero_when_student_equals_teacher():
    s, t, y = _case()
    parts = _call(_term(DKDTerm), t.clone(), t, y)
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
    assert a["tckd"].item() == pytest.approx(3 * base["tckd"].item(), rel=1e-6)
    assert a["nckd"].item() == pytest.approx(base["nckd"].item(), rel=1e-6)
    assert b["nckd"].item() == pytest.approx(0.25 * base["nckd"].item(), rel=1e-6)
    assert b["tckd"].item() == pytest.approx(base["tckd"].item(), rel=1e-6)
    hot = _call(_term(DKDTerm, temperature=1.0), s, t, y)
    assert sum(hot.values()).item() != pytest.approx(sum(base.values()).item(), rel=1e-3)


def test_dkd_temperature_is_its_own_option_not_the_global_flag():
    s, t, y = _case()
    ctx = TermContext(temperature=1.0, options=term_options("dkd"))
    a = _call(DKDTerm(ctx), s, t, y)
    b = _call(_term(DKDTerm), s, t, y)
    assert sum(a.values()).item() == pytest.approx(sum(b.values()).item(), rel=1e-6)


# ---------------------------------------------------------------- DIST

@pytest.mark.parametrize("beta,gamma,tau", [(2.0, 2.0, 4.0), (1.0, 1.0, 1.0), (0.5, 3.0, 2.0)])
def test_dist_matches_hand_computation(beta, gamma, tau):
    s, t, _ = _case(seed=8)
    parts = _call(_term(DISTTerm, beta=beta, gamma=gamma, tau=tau), s, t, None)
    inter, intra = _hand_dist(s, t, tau)
    assert set(parts) == {"inter", "intra"}
    assert parts["inter"].item() == pytest.approx(beta * inter, rel=1e-5)
    assert parts["intra"].item() == pytest.approx(gamma * intra, rel=1e-5)


def test_dist_defaults_match_hand_computation():
    s, t, _ = _case(seed=9)
    parts = DISTTerm(TermContext())(_out(s), _out(t), KDBatch(y=torch.zeros(B, dtype=torch.long)))
    inter, intra = _hand_dist(s, t, 4.0)
    assert sum(parts.values()).item() == pytest.approx(2 * inter + 2 * intra, rel=1e-5)


def test_dist_standardize_uses_zscored_logits():
    s, t, _ = _case(seed=10, scale=6.0)
    parts = _call(_term(DISTTerm, standardize=True), s, t, None)
    zs = torch.tensor([_zscore(r) for r in _rows(s)], dtype=torch.float64)
    zt = torch.tensor([_zscore(r) for r in _rows(t)], dtype=torch.float64)
    inter, intra = _hand_dist(zs, zt, 4.0)
    assert parts["inter"].item() == pytest.approx(2 * inter, rel=1e-5)
    assert parts["intra"].item() == pytest.approx(2 * intra, rel=1e-5)


def test_dist_is_zero_when_student_equals_teacher():
    s, t, _ = _case()
    parts = _call(_term(DISTTerm), t.clone(), t, None)
    # not exactly 0: the eps in the correlation's denominator (as in the official code) leaves
    # about eps / (|u| |v|) per correlation, times tau^2
    assert all(abs(v.item()) < 1e-4 for v in parts.values())


def test_dist_options_scale_their_parts():
    s, t, _ = _case(seed=11)
    base = _call(_term(DISTTerm), s, t, None)
    opt = _call(_term(DISTTerm, beta=1.0, gamma=6.0), s, t, None)
    assert opt["inter"].item() == pytest.approx(0.5 * base["inter"].item(), rel=1e-6)
    assert opt["intra"].item() == pytest.approx(3 * base["intra"].item(), rel=1e-6)
    cold = _call(_term(DISTTerm, tau=1.0), s, t, None)
    assert cold["inter"].item() != pytest.approx(base["inter"].item(), rel=1e-3)


def test_dist_single_sample_batch_is_finite():
    # one sample: each class column is constant, correlation 0 (eps), intra = gamma * tau^2
    s, t, _ = _case()
    x = s[:1].clone().requires_grad_(True)
    parts = _call(_term(DISTTerm), x, t[:1], None)
    assert parts["intra"].item() == pytest.approx(2 * 16, rel=1e-6)
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
        assert v.item() == pytest.approx(ref[k].item(), rel=1e-6)


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
    assert parts["dkd"].item() == pytest.approx(
        parts["dkd_tckd"].item() + parts["dkd_nckd"].item(), rel=1e-6)
    assert total.item() == pytest.approx(
        parts["ce"].item() + parts["dkd"].item() + parts["dist"].item(), rel=1e-5)
    total.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    # the warm-up as seen through DistillationLoss: a quarter of the way at epoch 1 of 4
    _, later = loss_fn(x, student(x), y, epoch=8.0)
    assert later["dkd"].item() == pytest.approx(4 * parts["dkd"].item(), rel=1e-4)
