"""The skip term's variants (--kd-opt skip.loss / skip.where / skip.stages / skip.stage_weights):
each loss against a float64 computation from its definition, where=mid against a forward hook on
the hint block, stages=all against hooks on the projection shortcuts, the defaults unchanged,
bad values refused in one line, and skip+dist built and trained one step."""
import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skipkd.cli import kd_options
from skipkd.kd import KD_TERMS, DistillationLoss, TermContext, term_options
from skipkd.models import ModelOutput, create_model, feature_shapes

RTOL = 1e-5


def _np(t):
    return t.detach().double().cpu().numpy()


def _hand(kind, s, t):
    """The skip.loss definitions in float64 numpy, from (B, C, H, W) arrays."""
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    if kind == "mse":
        return np.mean((s - t) ** 2)
    su = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    tu = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    if kind == "nmse":
        return np.mean((su - tu) ** 2)
    return 1.0 - np.mean(np.sum(su * tu, axis=1))


def _term(**options):
    return KD_TERMS["skip"](TermContext(options=term_options("skip", options)))


def _pair(arch_t="resnet34", arch_s="resnet18", wt=4, ws=4):
    torch.manual_seed(0)
    teacher = create_model(arch_t, base_width=wt).eval()
    student = create_model(arch_s, base_width=ws).eval()
    ctx = TermContext(student_shapes=feature_shapes(student), teacher_shapes=feature_shapes(teacher))
    return teacher, student, ctx


def _hooks(modules):
    """Forward hooks recording each module's output, in call order; -> (list, handles)."""
    seen, handles = [], []
    for m in modules:
        handles.append(m.register_forward_hook(lambda mod, i, o: seen.append(o.detach().clone())))
    return seen, handles


def _projections(model):
    return [blk.shortcut for stage in model.stages for blk in stage if blk.shortcut is not None]


# ------------------------------------------------------------------ skip.loss
@pytest.mark.parametrize("kind", ["mse", "nmse", "cosine"])
def test_each_loss_matches_its_definition(kind):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 6, 3, 3, generator=g)
    t = torch.randn(5, 6, 3, 3, generator=g) * 3 + 0.5  # another scale: nmse/cosine ignore it
    got = _term(loss=kind)(ModelOutput(None, s), ModelOutput(None, t))
    assert float(got) == pytest.approx(_hand(kind, _np(s), _np(t)), rel=RTOL)


def test_nmse_and_cosine_differ_by_two_over_d_and_ignore_scale():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    d = 3 * 2 * 2
    assert _hand("nmse", _np(s), _np(t)) == pytest.approx(2 / d * _hand("cosine", _np(s), _np(t)))
    for kind in ("nmse", "cosine"):
        a = _term(loss=kind)(ModelOutput(None, s), ModelOutput(None, t))
        b = _term(loss=kind)(ModelOutput(None, 7 * s), ModelOutput(None, t))
        assert float(a) == pytest.approx(float(b), rel=1e-5)
    mse = _term()(ModelOutput(None, 7 * s), ModelOutput(None, t))
    assert float(mse) != pytest.approx(float(_term()(ModelOutput(None, s), ModelOutput(None, t))))


# ------------------------------------------------------------------ skip.where=mid
def test_where_mid_is_the_hint_block_output():
    teacher, student, ctx = _pair()
    x, y = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 2, 3])
    loss = DistillationLoss("skip", teacher, context=ctx, fast_teacher=False,
                            options={"skip": {"where": "mid"}})
    assert loss.needs == {"hint_out"} and loss.features == {"hint_out"}
    student.request_features(loss.features)

    def block_output(model):  # the stages before it as modules, then the block itself, hooked
        seen, handles = _hooks([model.hint_block])
        with torch.no_grad():
            h = model.stem(x)
            for stage in model.stages[:model.hint_stage]:
                h = stage(h)
            model.hint_block(h)
        for hd in handles:
            hd.remove()
        return seen[0]

    expected_s, expected_t = block_output(student), block_output(teacher)
    out = student(x)
    torch.testing.assert_close(out.hint_out, expected_s, rtol=1e-6, atol=1e-6)
    # the plain path feeds the same tensor to the next block of the stage
    nxt, handles = [], [teacher.stages[teacher.hint_stage][1].register_forward_pre_hook(
        lambda m, i: nxt.append(i[0].detach().clone()))]
    with torch.no_grad():
        teacher.request_features(())(x)
    handles[0].remove()
    torch.testing.assert_close(nxt[0], expected_t, rtol=1e-6, atol=1e-6)
    # the teacher runs only as far as the hint block's output: nothing after it
    later, handles = _hooks([teacher.fc, teacher.stages[teacher.hint_stage][1]])
    t_out = loss.teacher_forward(x)
    for hd in handles:
        hd.remove()
    assert not later and t_out.logits is None
    torch.testing.assert_close(t_out.hint_out, expected_t, rtol=1e-6, atol=1e-6)
    _, parts = loss(x, out, y)
    assert float(parts["skip"]) == pytest.approx(_hand("mse", _np(expected_s), _np(expected_t)),
                                                 rel=RTOL)


# ------------------------------------------------------------------ skip.stages=all
@pytest.mark.parametrize("weights", [None, "0.5,1,2"])
def test_stages_all_sums_the_weighted_shortcut_mses(weights):
    teacher, student, ctx = _pair()
    x, y = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 5])
    opts = {"stages": "all", **({"stage_weights": weights} if weights else {})}
    loss = DistillationLoss("skip", teacher, context=ctx, fast_teacher=False, options={"skip": opts})
    student.request_features(loss.features)
    s_seen, s_handles = _hooks(_projections(student))
    t_seen, t_handles = _hooks(_projections(teacher))
    later, l_handles = _hooks([teacher.fc, teacher.hint_block.residual])
    _, parts = loss(x, student(x), y)
    for hd in s_handles + t_handles + l_handles:
        hd.remove()
    assert len(s_seen) == len(t_seen) == 3  # resnet18 and resnet34: stages 2, 3 and 4
    assert not later  # the teacher stopped at its last projection shortcut (the hint block's)
    w = [1 / 3] * 3 if weights is None else [0.5, 1.0, 2.0]
    expected = sum(wi * _hand("mse", _np(a), _np(b)) for wi, a, b in zip(w, s_seen, t_seen))
    assert float(parts["skip"]) == pytest.approx(expected, rel=RTOL)


def test_stages_all_learns_a_connector_per_mismatched_shortcut():
    teacher, student, ctx = _pair(wt=8, ws=4)
    loss = DistillationLoss("skip", teacher, context=ctx, options={"skip": {"stages": "all"}})
    term = loss.terms["skip"]
    assert len(term.connectors) == 3 and loss.learned_parameters()["skip"] > 0
    student.train().request_features(loss.features)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    total, parts = loss(x, student(x), y)
    total.backward()
    assert torch.isfinite(parts["skip"])
    assert all(p.grad is not None for p in term.connectors.parameters())


# ------------------------------------------------------------------ defaults
def test_defaults_are_the_published_method():
    assert KD_TERMS["skip"].options == {"loss": "mse", "where": "shortcut", "stages": "hint",
                                        "stage_weights": "equal"}
    teacher, student, ctx = _pair()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 4])
    loss = DistillationLoss("skip", teacher, context=ctx, fast_teacher=False)
    assert loss.needs == {"hint"} and loss.features == frozenset()
    assert not any("connector" in k for k in loss.state_dict())  # equal shapes: plain MSE
    calls = []
    teacher.forward_hint = lambda x, _f=teacher.forward_hint: calls.append(1) or _f(x)
    out = student(x)
    _, parts = loss(x, out, y)
    del teacher.forward_hint
    assert calls == [1] and out.hint_out is None and out.shortcuts is None
    with torch.no_grad():
        expected = F.mse_loss(out.hint, teacher(x).hint)
    assert torch.equal(parts["skip"], expected)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("given", [{"loss": "l1"}, {"where": "middle"}, {"stages": "some"},
                                   {"stage_weights": "a,b"}, {"stage_weights": "-1,2"},
                                   {"stage_weights": "0,0"}, {"stage_weights": "inf"}])
def test_bad_option_values_are_refused(given):
    with pytest.raises(ValueError) as info:
        term_options("skip", given)
    assert "\n" not in str(info.value) and "skip." in str(info.value)
    with pytest.raises(argparse.ArgumentTypeError):
        kd_options(",".join(f"skip.{k}={v}" for k, v in given.items()))


def test_the_cli_keeps_a_comma_list_together():
    got = kd_options("skip.stages=all,skip.stage_weights=1,0.5,2,skip.loss=cosine")
    assert got == {"skip": {"stages": "all", "stage_weights": "1,0.5,2", "loss": "cosine"}}


@pytest.mark.parametrize("teacher_arch, student_arch, opts, words", [
    ("resnet34", "resnet18", {"where": "mid", "stages": "all"}, "does not combine"),
    ("resnet34", "resnet18", {"stage_weights": "1,2,3"}, "needs skip.stages=all"),
    ("resnet34", "resnet18", {"stages": "all", "stage_weights": "1,2"}, "2 weights for 3"),
    ("resnet50", "resnet18", {"stages": "all"}, "student has 3 but the teacher 4"),
    ("wrn_16_2", "wrn_16_2", {"where": "mid"}, "only the ResNet families"),
    ("wrn_16_2", "wrn_16_2", {"stages": "all"}, "only the ResNet families"),
    ("vgg8", "vgg8", {}, "has none"),
])
def test_unsupported_combinations_are_refused_in_one_line(teacher_arch, student_arch, opts, words):
    torch.manual_seed(0)
    with torch.device("meta"):
        teacher, student = create_model(teacher_arch, base_width=4), create_model(student_arch, base_width=4)
    ctx = TermContext(student_shapes=feature_shapes(student), teacher_shapes=feature_shapes(teacher))
    with pytest.raises(ValueError) as info:
        DistillationLoss("skip", teacher, context=ctx, options={"skip": opts})
    assert words in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ skip+dist
def test_skip_plus_dist_builds_and_trains_one_step():
    teacher, student, ctx = _pair()
    loss = DistillationLoss("skip+dist", teacher, context=ctx, options={"skip": {"loss": "cosine"}})
    student.train().request_features(loss.features)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    before = [p.detach().clone() for p in student.parameters()]
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    total, parts = loss(x, student(x), y)
    assert set(parts) == {"ce", "skip", "dist", "dist_inter", "dist_intra"}
    assert all(torch.isfinite(v) for v in parts.values())
    expected = parts["ce"] + 0.3 * parts["skip"] + 1.0 * parts["dist"]
    assert float(total.detach()) == pytest.approx(float(expected), rel=1e-6)
    opt.zero_grad()
    total.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
