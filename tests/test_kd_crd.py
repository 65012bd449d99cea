"""CRD (Tian, Krishnan & Isola, ICLR 2020): the NCE loss, Z, the memory update and the
negative sampler against explicit float64 computations from the paper's / RepDistiller's
equations; the saved state; DistillationLoss with real tiny models."""
import math

import pytest
import torch

import skipkd.kd.crd  # noqa: F401  (registers the term)
from skipkd.models import ModelOutput, create_model, feature_shapes
from skipkd.kd import DistillationLoss, KDBatch, TermContext, term_options
from skipkd.kd.crd import CRDTerm
from skipkd.kd.registry import KD_TERMS

# 12 samples of 3 classes (sizes 5, 4, 3): a sample of class 0 has 7 possible negatives
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
N, DS, DT = 12, 5, 7  # student and teacher embedding widths differ on purpose
INDEX = torch.tensor([3, 7, 2, 11])
# negatives of another class than each sample (classes 0, 1, 2, 1)
NEG = torch.tensor([[1, 2, 8], [0, 5, 9], [0, 4, 10], [6, 8, 2]])

# The term computes in float32 (it casts the embeddings), the reference in float64. A head's
# unit vector carries ~(D + 2 feat_dim) EPS32 of rounding (a D-term product, a feat_dim-term
# norm); a score exp(<a, b> / T) turns that into a relative error 1 / T times as large.
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
FEAT, K_NEG = 4, 3  # make_term's feat_dim and nce_k
UNIT_TOL = (max(DS, DT) + 2 * FEAT) * EPS32


def _score_tol(nce_t):
    """Relative error of a float32 score: the dot product's absolute error over T."""
    return 2 * UNIT_TOL / nce_t


def make_term(labels=LABELS, **opts):
    opts = {"feat_dim": FEAT, "nce_k": K_NEG, **opts}
    ctx = TermContext(student_shapes={"embedding": (DS,)}, teacher_shapes={"embedding": (DT,)},
                      num_samples=len(labels), train_labels=labels,
                      options=term_options("crd", opts))
    return CRDTerm(ctx)


def outputs(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(4, DS, generator=g).requires_grad_()
    t = torch.randn(4, DT, generator=g)
    return ModelOutput(None, None, embedding=s), ModelOutput(None, None, embedding=t)


# ------------------------------------------------------------- the independent reference
def _head(linear, x):
    """normalize(W x + b) of each row, in float64 loops."""
    w, b = linear.weight.double().tolist(), linear.bias.double().tolist()
    out = []
    for row in x.double().tolist():
        v = [sum(wi * xi for wi, xi in zip(w_row, row)) + bj for w_row, bj in zip(w, b)]
        n = math.sqrt(sum(a * a for a in v))
        out.append([a / n for a in v])
    return out


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _nce(p, n_data):
    """Eq. 18 with P_n = 1/N, eps 1e-7: -1/B sum_i [log D(pos) + sum_k log(1 - D(neg_k))]."""
    total = 0.0
    for row in p:
        m = (len(row) - 1) / n_data
        total -= math.log(row[0] / (row[0] + m + 1e-7))
        total -= sum(math.log(m / (q + m + 1e-7)) for q in row[1:])
    return total / len(p)


def reference(term, s_out, t_out, index, neg, mem_s, mem_t, temp, z=(None, None)):
    """(L_s, L_t, Z_s, Z_t, s, t): student anchor against the teacher bank, teacher anchor
    against the student bank; Z = mean(exp score) * N when not given."""
    s, t = _head(term.embed_s.linear, s_out.embedding), _head(term.embed_t.linear, t_out.embedding)
    ms, mt = mem_s.double().tolist(), mem_t.double().tolist()
    rows = [[i] + js for i, js in zip(index.tolist(), neg.tolist())]
    ps = [[math.exp(_dot(s[b], mt[j]) / temp) for j in row] for b, row in enumerate(rows)]
    pt = [[math.exp(_dot(t[b], ms[j]) / temp) for j in row] for b, row in enumerate(rows)]
    zs, zt = z
    if zs is None:
        zs = sum(map(sum, ps)) / sum(map(len, ps)) * len(ms)
        zt = sum(map(sum, pt)) / sum(map(len, pt)) * len(ms)
    ls = _nce([[q / zs for q in row] for row in ps], len(ms))
    lt = _nce([[q / zt for q in row] for row in pt], len(ms))
    return ls, lt, zs, zt, s, t


def _normalized(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


# ------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("full_product", [True, False])
@pytest.mark.parametrize("nce_t,momentum", [(0.07, 0.5), (0.5, 0.9)])
def test_loss_z_and_memory_update_match_the_equations(full_product, nce_t, momentum):
    torch.manual_seed(0)
    term = make_term(nce_t=nce_t, momentum=momentum).train()
    term.full_product = full_product  # both score paths give the same values
    term.draw_negatives = lambda index: NEG
    s_out, t_out = outputs(1)
    mem_s, mem_t = term.memory_s.clone(), term.memory_t.clone()
    assert term.z_s.item() < 0 and term.z_t.item() < 0  # unset before the first batch

    parts = term(s_out, t_out, KDBatch(y=LABELS[INDEX], index=INDEX))
    ls, lt, zs, zt, s, t = reference(term, s_out, t_out, INDEX, NEG, mem_s, mem_t, nce_t)
    # Z: a mean of such scores; the loss: 1 + K logs of them, each as sensitive as its score
    z_tol, loss_tol = _score_tol(nce_t) + 16 * EPS32, (1 + K_NEG) * _score_tol(nce_t)
    assert set(parts) == {"anchor_s", "anchor_t"}
    assert parts["anchor_s"].item() == pytest.approx(ls, rel=loss_tol)
    assert parts["anchor_t"].item() == pytest.approx(lt, rel=loss_tol)
    assert term.z_s.item() == pytest.approx(zs, rel=z_tol)
    assert term.z_t.item() == pytest.approx(zt, rel=z_tol)

    # the banks: the batch's rows moved by the momentum formula, the others untouched
    for bank, old, new in ((term.memory_s, mem_s, s), (term.memory_t, mem_t, t)):
        for r in range(N):
            if r in INDEX.tolist():
                b = INDEX.tolist().index(r)
                want = _normalized([momentum * o + (1 - momentum) * v
                                    for o, v in zip(old[r].double().tolist(), new[b])])
            else:
                want = old[r].double().tolist()
            # entries of unit vectors: absolute rounding of the head's output and a renormalisation
            assert bank[r].double().tolist() == pytest.approx(want, rel=0, abs=2 * UNIT_TOL)

    # a second batch: Z is kept from the first, the scores use the updated banks
    mem_s2, mem_t2 = term.memory_s.clone(), term.memory_t.clone()
    s_out2, t_out2 = outputs(2)
    parts2 = term(s_out2, t_out2, KDBatch(y=LABELS[INDEX], index=INDEX))
    ls2, lt2, *_ = reference(term, s_out2, t_out2, INDEX, NEG, mem_s2, mem_t2, nce_t, (zs, zt))
    assert parts2["anchor_s"].item() == pytest.approx(ls2, rel=loss_tol + z_tol)
    assert parts2["anchor_t"].item() == pytest.approx(lt2, rel=loss_tol + z_tol)
    assert term.z_s.item() == pytest.approx(zs, rel=z_tol)


def test_gradients_reach_the_student_and_both_heads_not_through_the_banks():
    torch.manual_seed(0)
    term = make_term()
    s_out, t_out = outputs(1)
    parts = term(s_out, t_out, KDBatch(y=LABELS[INDEX], index=INDEX))
    # the student part: student embedding and head only (the teacher bank is a constant)
    grads = torch.autograd.grad(parts["anchor_s"], [s_out.embedding, *term.embed_s.parameters(),
                                                   *term.embed_t.parameters()], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:3])
    assert all(g is None for g in grads[3:])
    # the teacher part trains the teacher's head only; the teacher output carries no grad
    parts["anchor_t"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.embed_t.parameters())
    assert s_out.embedding.grad is None and t_out.embedding.grad is None
    assert not term.memory_s.requires_grad and not term.memory_t.requires_grad


@pytest.mark.parametrize("full_product", [True, False])
def test_two_forwards_then_one_backward(full_product):
    """Gradient accumulation: the bank and Z updates must not break a graph still waiting."""
    torch.manual_seed(0)
    term = make_term().train()
    term.full_product = full_product
    batch = KDBatch(y=LABELS[INDEX], index=INDEX)
    a, b = term(*outputs(1), batch), term(*outputs(2), batch)
    (sum(a.values()) + sum(b.values())).backward()
    assert all(p.grad is not None for p in term.parameters())


def test_eval_mode_does_not_update_the_banks():
    torch.manual_seed(0)
    term = make_term().eval()
    mem_s, mem_t = term.memory_s.clone(), term.memory_t.clone()
    s_out, t_out = outputs(1)
    value = term(s_out, t_out, KDBatch(y=LABELS[INDEX], index=INDEX))
    assert torch.isfinite(value["anchor_s"]) and torch.isfinite(value["anchor_t"])
    assert torch.equal(term.memory_s, mem_s) and torch.equal(term.memory_t, mem_t)


def test_banks_initialised_as_in_repdistiller():
    torch.manual_seed(0)
    term = make_term(feat_dim=12, labels=torch.arange(600) % 3)
    stdv = 1 / math.sqrt(12 / 3)
    for bank in (term.memory_s, term.memory_t):
        assert bank.shape == (600, 12)
        assert bank.min() >= -stdv and bank.max() <= stdv
        assert bank.min() < -0.95 * stdv and bank.max() > 0.95 * stdv  # the whole range
    assert not torch.equal(term.memory_s, term.memory_t)
    assert term.embed_s.linear.out_features == term.embed_t.linear.out_features == 12


# ---------------------------------------------------------------------------- the sampler
def test_negatives_are_of_other_classes_and_every_one_is_reachable():
    torch.manual_seed(0)
    term = make_term(nce_k=1000)
    assert term.k == 7  # capped: N - the largest class (5)
    index = torch.arange(N)
    seen = {i: torch.zeros(N, dtype=torch.long) for i in range(N)}
    for _ in range(200):
        neg = term.draw_negatives(index)
        assert neg.shape == (N, 7) and neg.dtype == torch.long
        for i in range(N):
            assert (LABELS[neg[i]] != LABELS[i]).all()
            seen[i] += torch.bincount(neg[i], minlength=N)
    for i in range(N):
        others = (LABELS != LABELS[i]).nonzero().flatten()
        hits = seen[i][others].double()
        assert (hits > 0).all()  # every sample of every other class
        expected = 200 * 7 / len(others)  # uniform over them (1400 draws per sample)
        assert ((hits - expected).abs() < 0.35 * expected).all()


def test_the_draw_follows_torchs_global_rng():
    term = make_term(nce_k=5)
    torch.manual_seed(3)
    a = term.draw_negatives(INDEX)
    torch.manual_seed(3)
    b = term.draw_negatives(INDEX)
    c = term.draw_negatives(INDEX)
    assert torch.equal(a, b) and not torch.equal(b, c) and a.shape == (4, 5)


def test_options_set_k_and_feat_dim():
    assert make_term(nce_k=2).k == 2
    assert make_term(nce_k=16384).k == 7
    term = make_term(feat_dim=6)
    assert term.memory_s.shape == term.memory_t.shape == (N, 6)


# ------------------------------------------------------------------------ the saved state
def test_banks_and_z_survive_save_and_load_into_a_fresh_term():
    torch.manual_seed(0)
    term = make_term().train()
    s_out, t_out = outputs(1)
    term(s_out, t_out, KDBatch(y=LABELS[INDEX], index=INDEX))
    state = term.state_dict()
    assert set(state) == {"embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight",
                          "embed_t.linear.bias", "memory_s", "memory_t", "z_s", "z_t"}
    torch.manual_seed(1)
    fresh = make_term()
    assert not torch.equal(fresh.memory_s, term.memory_s) and fresh.z_s.item() < 0
    fresh.load_state_dict(state)
    for key in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(getattr(fresh, key), getattr(term, key))
    # the same next step in both: same draw, same Z, same value
    s_out2, t_out2 = outputs(2)
    torch.manual_seed(5)
    a = term(s_out2, t_out2, KDBatch(y=LABELS[INDEX], index=INDEX))
    torch.manual_seed(5)
    b = fresh(s_out2, t_out2, KDBatch(y=LABELS[INDEX], index=INDEX))
    # the same computation on the same values: equal (a few EPS32 to spare)
    assert a["anchor_s"].item() == pytest.approx(b["anchor_s"].item(), rel=4 * EPS32)
    assert a["anchor_t"].item() == pytest.approx(b["anchor_t"].item(), rel=4 * EPS32)


# ------------------------------------------------------------------- registry and errors
def test_registry_entry():
    cls = KD_TERMS["crd"]
    assert cls is CRDTerm and cls.name == "crd"
    assert cls.needs == frozenset({"embedding", "index"})
    assert cls.default_weight == 0.8
    assert cls.options == {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "momentum": 0.5}
    assert "Tian" in cls.paper and "ICLR 2020" in cls.paper


def test_clear_errors(monkeypatch):
    shapes = {"embedding": (DS,)}
    opts = term_options("crd")
    with pytest.raises(ValueError, match="num_samples and train_labels"):
        CRDTerm(TermContext(student_shapes=shapes, teacher_shapes=shapes, options=opts))
    with pytest.raises(ValueError, match="num_samples and train_labels"):
        CRDTerm(TermContext(student_shapes=shapes, teacher_shapes=shapes, num_samples=N,
                            options=opts))
    with pytest.raises(ValueError, match="at least two classes"):
        make_term(labels=torch.zeros(N, dtype=torch.long))
    with pytest.raises(ValueError, match="index"):
        make_term()(*outputs(1), KDBatch(y=LABELS[INDEX]))
    import torch.distributed as dist
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="torchrun"):
        make_term()


# ------------------------------------------------------------------ with real tiny models
def test_distillation_loss_with_real_tiny_models():
    torch.manual_seed(0)
    student = create_model("resnet18", base_width=4)
    teacher = create_model("resnet18", base_width=8)  # wider: embeddings 32 vs 64
    labels = torch.arange(20) % 10
    ctx = TermContext(student_shapes=feature_shapes(student),
                      teacher_shapes=feature_shapes(teacher), num_classes=10, num_samples=20, train_labels=labels)
    loss_fn = DistillationLoss("crd", teacher, context=ctx).train()
    assert loss_fn.needs_index and loss_fn.weights == {"crd": 0.8}
    term = loss_fn.crd
    assert term.k == 18  # 16384 capped to N - 2
    assert loss_fn.learned_parameters()["crd"] == (32 + 1) * 128 + (64 + 1) * 128
    student.request_features(loss_fn.features)
    index = torch.tensor([4, 17, 0, 9, 12, 5])
    x, y = torch.randn(6, 3, 32, 32), labels[index]
    mem_s = term.memory_s.clone()
    total, parts = loss_fn(x, student(x), y, index=index)
    assert torch.isfinite(total) and set(parts) == {"ce", "crd", "crd_anchor_s", "crd_anchor_t"}
    # float32 sums and products of positive values: one rounding each
    assert parts["crd"].item() == pytest.approx(
        parts["crd_anchor_s"].item() + parts["crd_anchor_t"].item(), rel=4 * EPS32)
    assert total.item() == pytest.approx(parts["ce"].item() + 0.8 * parts["crd"].item(),
                                         rel=4 * EPS32)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for head in (term.embed_s, term.embed_t):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    changed = (term.memory_s != mem_s).any(dim=1)
    assert changed[index].all() and changed.sum() == len(index)
    assert not any(k.startswith("crd") for k in student.state_dict())
