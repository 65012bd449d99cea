"""Distillation loss: values against hand computations, a frozen teacher, the connector."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skipkd.models import ModelOutput, create_model, hint_shape
from skipkd.kd import (KD_MODES, DistillationLoss, LogitKDLoss, SkipHintLoss, TermContext,
                       build_connector)


def hints(student_shape, teacher_shape, temperature=4.0):
    """A TermContext that knows only the two hint shapes (what the skip term reads)."""
    return TermContext(student_shapes={"hint": student_shape},
                       teacher_shapes={"hint": teacher_shape}, temperature=temperature)

# The loss always computes in float32 (it casts its inputs), the references below in float64,
# so each check allows float32 rounding: EPS32 times the number of rounded terms summed, times
# the sum's conditioning (sum of |terms| over |sum|) where terms cancel.
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
K = 10  # classes
CE_TOL = 2 * K * EPS32  # log of a K-term sum of exponentials minus a logit, then a mean


def _mse_tol(a):
    """A mean of a.numel() positive float32 squares: at most that many roundings."""
    return a.numel() * EPS32


class FixedTeacher(nn.Module):
    """Returns fixed logits and hint whatever the input; counts its calls."""

    def __init__(self, logits, hint):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.register_buffer("logits", logits)
        self.register_buffer("hint", hint)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return ModelOutput(self.logits * self.w, self.hint * self.w)


def _hand_ce(logits, y):
    logits = logits.double()
    lse = torch.log(torch.exp(logits).sum(1))
    return float((lse - logits[torch.arange(len(y)), y]).mean())


def _hand_kl(s_logits, t_logits, T):
    """T^2 * mean over the batch of sum_c p_t (log p_t - log p_s), with softmax at T, by loops."""
    total = 0.0
    for s_row, t_row in zip(s_logits.double().tolist(), t_logits.double().tolist()):
        zs = sum(math.exp(v / T) for v in s_row)
        zt = sum(math.exp(v / T) for v in t_row)
        for sv, tv in zip(s_row, t_row):
            pt, ps = math.exp(tv / T) / zt, math.exp(sv / T) / zs
            total += pt * (math.log(pt) - math.log(ps))
    return T * T * total / len(s_logits)


def _kl_tol(s_logits, t_logits, T):
    """Relative tolerance of the float32 KL: its K-term sums, of log-probabilities each rounded
    to ~EPS32, times the conditioning sum p_t (|log p_t| + |log p_s|) / KL (float64)."""
    ls = torch.log_softmax(s_logits.double() / T, dim=1)
    lt = torch.log_softmax(t_logits.double() / T, dim=1)
    kl = (lt.exp() * (lt - ls)).sum(1).mean()
    cond = (lt.exp() * (lt.abs() + ls.abs())).sum(1).mean() / kl
    return K * EPS32 * float(cond)


def _hand_mse(a, b):
    return float(((a.double() - b.double()) ** 2).mean())


@pytest.fixture
def fixed_case():
    g = torch.Generator().manual_seed(0)
    s_logits = torch.randn(4, 10, generator=g) * 3
    s_hint = torch.randn(4, 6, 2, 2, generator=g)
    t_logits = torch.randn(4, 10, generator=g) * 3
    t_hint = torch.randn(4, 6, 2, 2, generator=g)
    y = torch.tensor([0, 3, 9, 3])
    x = torch.zeros(4, 3, 8, 8)
    return x, ModelOutput(s_logits, s_hint), y, FixedTeacher(t_logits, t_hint)


@pytest.mark.parametrize("mode", ["skip", "logit", "skip+logit"])
def test_loss_values_match_hand_computation(fixed_case, mode):
    x, s_out, y, teacher = fixed_case
    alpha, beta, T = 0.3, 0.7, 4.0
    # fast_teacher=False: the hand-made teacher is called as it is (it has no BN to fold)
    chosen = {"skip": alpha, "logit": beta}
    loss_fn = DistillationLoss(mode, teacher, weights={t: chosen[t] for t in mode.split("+")},
                               context=TermContext(temperature=T), fast_teacher=False)
    total, parts = loss_fn(x, s_out, y)
    ce = _hand_ce(s_out.logits, y)
    mse = _hand_mse(s_out.hint, teacher.hint)
    kl = _hand_kl(s_out.logits, teacher.logits, T)
    expected = ce
    tols = {"ce": CE_TOL, "skip": _mse_tol(teacher.hint),
            "logit": _kl_tol(s_out.logits, teacher.logits, T)}
    assert parts["ce"].item() == pytest.approx(ce, rel=tols["ce"])
    if "skip" in mode:
        assert parts["skip"].item() == pytest.approx(mse, rel=tols["skip"])
        expected += alpha * mse
    else:
        assert "skip" not in parts
    if "logit" in mode:
        assert parts["logit"].item() == pytest.approx(kl, rel=tols["logit"])
        expected += beta * kl
    else:
        assert "logit" not in parts
    # a weighted sum of positive parts: no worse than its worst part, plus its own roundings
    assert total.item() == pytest.approx(expected, rel=max(tols.values()) + 4 * EPS32)
    assert teacher.calls == 1


def test_default_weights(fixed_case):
    x, s_out, y, teacher = fixed_case
    loss_fn = DistillationLoss("skip+logit", teacher)
    assert (loss_fn.weights, loss_fn.logit.temperature) == ({"skip": 0.3, "logit": 1.0}, 4.0)
    total, _ = loss_fn(x, s_out, y)
    expected = (_hand_ce(s_out.logits, y) + 0.3 * _hand_mse(s_out.hint, teacher.hint)
                + 1.0 * _hand_kl(s_out.logits, teacher.logits, 4.0))
    tol = max(CE_TOL, _mse_tol(teacher.hint), _kl_tol(s_out.logits, teacher.logits, 4.0))
    assert total.item() == pytest.approx(expected, rel=tol + 4 * EPS32)


def test_kl_temperature_scaling():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    for T in (1.0, 2.0, 8.0):  # the conditioning grows with T (the KL shrinks): ~5 to ~330
        assert LogitKDLoss(T)(s, t).item() == pytest.approx(_hand_kl(s, t, T),
                                                            rel=_kl_tol(s, t, T))
    # identical logits give bit-identical log-probabilities: exactly 0 on any CPU
    assert LogitKDLoss(4.0)(s, s).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        LogitKDLoss(0.0)


def test_mode_none_ignores_teacher(fixed_case):
    x, s_out, y, teacher = fixed_case
    loss_fn = DistillationLoss("none", teacher)
    assert loss_fn.teacher is None and loss_fn.terms == {}
    total, parts = loss_fn(x, s_out, y)
    assert set(parts) == {"ce"}
    assert total.item() == pytest.approx(_hand_ce(s_out.logits, y), rel=CE_TOL)
    assert teacher.calls == 0
    assert teacher.w.requires_grad  # not even frozen: it is simply not used
    # mode none needs no teacher at all
    total2, _ = DistillationLoss("none")(x, s_out, y)
    assert total2.item() == pytest.approx(total.item())


def test_invalid_arguments_raise(fixed_case):
    teacher = fixed_case[3]
    with pytest.raises(ValueError, match="unknown distillation term 'fitnets'"):
        DistillationLoss("fitnets", teacher)
    with pytest.raises(ValueError, match="repeated"):
        DistillationLoss("skip+skip", teacher)
    with pytest.raises(ValueError):
        DistillationLoss("skip", None)
    with pytest.raises(ValueError):
        DistillationLoss("skip", teacher, weights={"skip": -0.1})
    with pytest.raises(ValueError):
        DistillationLoss("logit", teacher, weights={"logit": -1.0})
    with pytest.raises(ValueError, match="not among the chosen"):
        DistillationLoss("logit", teacher, weights={"skip": 1.0})
    with pytest.raises(ValueError):
        DistillationLoss("logit", teacher, context=TermContext(temperature=0))
    assert KD_MODES == ("none", "skip", "logit", "skip+logit")


def test_mismatched_hints_without_connector_raise():
    teacher = FixedTeacher(torch.zeros(2, 10), torch.zeros(2, 8, 2, 2))
    loss_fn = DistillationLoss("skip", teacher)
    with pytest.raises(ValueError, match="hint shapes"):
        loss_fn(torch.zeros(2, 3, 8, 8), ModelOutput(torch.zeros(2, 10), torch.zeros(2, 4, 2, 2)),
                torch.tensor([0, 1]))


# ------------------------------------------------------------------ frozen teacher
def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["skip", "logit", "skip+logit"])
def test_teacher_frozen_during_distillation(mode):
    torch.manual_seed(0)
    teacher = create_model("resnet34", base_width=4, placement="parallel")
    student = create_model("resnet18", base_width=4, placement="parallel")
    # give the teacher non-trivial BN statistics first, so "unchanged" is meaningful
    teacher.train()
    with torch.no_grad():
        teacher(torch.randn(8, 3, 32, 32))
    before_t = _snapshot(teacher)
    before_s = _snapshot(student)
    teacher.train()  # DistillationLoss must put it back in eval
    loss_fn = DistillationLoss(mode, teacher, context=hints(hint_shape("resnet18", 4),
                                                            hint_shape("resnet34", 4)))
    assert loss_fn.connector is None  # same hint shapes: plain MSE
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    # the teacher is not part of the loss module's parameters or state
    assert not list(loss_fn.parameters())
    assert not any(k.startswith("teacher") for k in loss_fn.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        student.train()
        teacher.train()  # e.g. a caller's model.train() sweep: loss_fn.train() must undo it
        loss_fn.train()
        x = torch.randn(8, 3, 32, 32)
        y = torch.randint(0, 10, (8,))
        loss, parts = loss_fn(x, student(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert all(not m.training for m in teacher.modules())
    assert all(p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    for k, v in before_t.items():
        assert torch.equal(after[k], v), f"teacher {k} changed"
    # while the student did learn
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in before_s.items()
               if k.endswith("weight"))


def test_teacher_output_usable_in_backward():
    """The teacher runs under inference_mode; its outputs must still enter the autograd graph."""
    teacher = create_model("resnet18", base_width=4)
    student = create_model("resnet18", base_width=4)
    loss_fn = DistillationLoss("skip+logit", teacher)
    x = torch.randn(2, 3, 32, 32)
    t_logits, t_hint = loss_fn.teacher_forward(x)[:2]
    assert not t_logits.is_inference() and not t_hint.is_inference()
    assert not t_logits.requires_grad
    loss, _ = loss_fn(x, student(x), torch.tensor([1, 2]))
    loss.backward()
    assert student.stem[0].weight.grad is not None


# ------------------------------------------------------------------ connector
def test_connector_resnet50_to_resnet18():
    torch.manual_seed(0)
    t_shape, s_shape = hint_shape("resnet50", 8), hint_shape("resnet18", 8)
    assert (t_shape, s_shape) == ((128, 8, 8), (64, 4, 4))
    teacher = create_model("resnet50", base_width=8)
    student = create_model("resnet18", base_width=8)
    loss_fn = DistillationLoss("skip", teacher, weights={"skip": 1.0},
                               context=hints(s_shape, t_shape))
    conn = loss_fn.connector
    assert conn is not None
    with torch.no_grad():
        assert conn(torch.randn(2, *s_shape)).shape == (2, *t_shape)
    conn_params = list(conn.parameters())
    assert conn_params and all(p.requires_grad for p in conn_params)
    # the connector is trained with the loss module's parameters, never exported with the student
    assert {id(p) for p in loss_fn.parameters()} == {id(p) for p in conn_params}
    assert not any("connector" in k or k.startswith("skip") for k in student.state_dict())
    assert any("connector" in k for k in loss_fn.state_dict())
    assert not any(k.startswith("teacher") for k in loss_fn.state_dict())
    before = [p.detach().clone() for p in conn_params]
    t_before = _snapshot(teacher)
    opt = torch.optim.SGD(list(student.parameters()) + conn_params, lr=0.1)
    student.train()
    loss_fn.train()
    x = torch.randn(4, 3, 32, 32)
    loss, parts = loss_fn(x, student(x), torch.tensor([0, 1, 2, 3]))
    assert parts["skip"] > 0
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn_params)
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, conn_params))
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in t_before.items())


@pytest.mark.parametrize("s_shape, t_shape, kind", [
    ((64, 4, 4), (128, 8, 8), nn.ConvTranspose2d),  # student coarser: learned upsampling
    ((32, 8, 8), (64, 4, 4), nn.Conv2d),            # student finer: strided conv
    ((32, 4, 4), (64, 4, 4), nn.Conv2d),            # channels only: 1x1 conv
    ((16, 3, 3), (24, 4, 4), nn.Conv2d),            # no integer ratio: interpolate + 1x1
])
def test_connector_shapes(s_shape, t_shape, kind):
    conn = build_connector(s_shape, t_shape)
    assert type(conn.proj[0]) is kind
    assert conn(torch.randn(2, *s_shape)).shape == (2, *t_shape)
    assert build_connector(t_shape, t_shape) is None


def test_skip_loss_with_identity_is_mse():
    a, b = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert SkipHintLoss()(a, b).item() == pytest.approx(_hand_mse(a, b), rel=_mse_tol(a))


@pytest.mark.parametrize("teacher_arch,mode", [("resnet34", "skip"), ("resnet50", "skip"),
                                               ("resnet34", "skip+logit"), ("resnet34", "logit")])
def test_fast_teacher_gives_the_same_loss(teacher_arch, mode):
    """The BN-folded, hint-only teacher path computes the same loss as the plain teacher."""
    torch.manual_seed(0)
    teacher = create_model(teacher_arch, base_width=8, placement="parallel")
    teacher.train()
    with torch.no_grad():  # move BN statistics away from their init so folding matters
        for _ in range(3):
            teacher(torch.randn(16, 3, 32, 32))
    teacher.eval()
    student = create_model("resnet18", base_width=8, placement="parallel")
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    t_shape = tuple(teacher(x[:1]).hint.shape[1:])
    s_shape = tuple(student(x[:1]).hint.shape[1:])
    torch.manual_seed(1)
    slow = DistillationLoss(mode, teacher, context=hints(s_shape, t_shape), fast_teacher=False)
    torch.manual_seed(1)
    fast = DistillationLoss(mode, teacher, context=hints(s_shape, t_shape))
    fast.load_state_dict(slow.state_dict())
    out = student(x)
    a, pa = slow(x, out, y)
    b, pb = fast(x, out, y)
    # float32 both ways: the folded teacher's outputs differ by ~EPS32 per layer (depth <= 50),
    # which the losses pass on times their sensitivity (~K for the K-class KL)
    tol = 50 * K * EPS32
    assert b.item() == pytest.approx(a.item(), rel=tol)
    for k in pa:
        assert pb[k].item() == pytest.approx(pa[k].item(), rel=tol)
