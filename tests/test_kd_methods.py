"""Every registered distillation term on the real models: forward and backward for every model
family and ECA placement (gradients reach the student and the term's own learned parts, never
the teacher), its minimum where the student's outputs equal the teacher's, and one end-to-end
run of model_training_mid.py with every term at once, read back from the files it wrote."""
import json

import numpy as np
import pytest
import torch

import model_training_mid
from skipkd.models import FEATURES, MODELS, ModelOutput, create_model, feature_shapes
from skipkd.kd import KD_TERMS, DistillationLoss, KDBatch, TermContext

ALL = "+".join(KD_TERMS)
N, B = 24, 6  # training-set size (crd's memory bank) and batch size


def _context(student, teacher, labels):
    return TermContext(student_shapes=feature_shapes(student), teacher_shapes=feature_shapes(teacher),
                       num_classes=10, num_samples=N, train_labels=labels, epochs=2)


# (student, width, teacher, width): every model family as a student, with a teacher of its own
# family or the one the KD benchmark pairs it with
PAIRS = [("resnet18", 4, "resnet34", 8), ("resnet50", 4, "resnet50", 8),
         ("resnet8x4", 8, "resnet32x4", 8), ("wrn_16_2", 4, "wrn_40_2", 8),
         ("vgg8", 8, "vgg13", 8), ("MobileNetV2", 8, "vgg13", 8),
         ("ShuffleV1", 6, "resnet32x4", 8), ("ShuffleV2", 16, "resnet32x4", 8)]
CASES = [(*pair, placement) for pair in PAIRS for placement in MODELS[pair[0]].placements]


def _terms_for(student, teacher):
    """Every registered term these two networks can take: skip needs a hint on both sides, at
    pairs stage outputs one to one."""
    s, t = feature_shapes(student), feature_shapes(teacher)
    names = [n for n in KD_TERMS
             if not (n == "skip" and (s["hint"] is None or t["hint"] is None))
             and not (n == "at" and len(s["feats"]) != len(t["feats"]))]
    return "+".join(names)


@pytest.mark.parametrize("student_arch,s_width,teacher_arch,t_width,placement", CASES)
def test_every_term_trains_the_student_and_its_own_parts_only(student_arch, s_width, teacher_arch,
                                                              t_width, placement):
    torch.manual_seed(0)
    student = create_model(student_arch, base_width=s_width, placement=placement)
    t_placement = placement if placement in MODELS[teacher_arch].placements else "none"
    teacher = create_model(teacher_arch, base_width=t_width, placement=t_placement).eval()
    labels = torch.arange(N) % 10
    loss_fn = DistillationLoss(_terms_for(student, teacher), teacher,
                               context=_context(student, teacher, labels), fast_teacher=False)
    student.request_features(loss_fn.features)
    index = torch.tensor([0, 5, 9, 13, 17, 22])
    x, y = torch.randn(B, 3, 32, 32), labels[index]
    s_out = student(x)
    t_out = loss_fn.teacher_forward(x)
    batch = KDBatch(y=y, index=index, epoch=30.0)  # past dkd's warm-up
    for name, term in loss_fn.terms.items():
        student.zero_grad(set_to_none=True)
        term.zero_grad(set_to_none=True)
        value = term(s_out, t_out, batch)
        value = sum(value.values()) if isinstance(value, dict) else value
        assert value.dim() == 0 and torch.isfinite(value), name
        value.backward(retain_graph=True)
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"{name}: no gradient reaches the student"
        for pname, p in term.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}"
        assert all(p.grad is None for p in teacher.parameters()), name


def _same_outputs(student, x):
    """The student's outputs twice: as a student (with autograd) and as its own 'teacher'."""
    out = student(x)
    teacher_like = ModelOutput(*(tuple(f.detach() for f in v) if isinstance(v, tuple)
                                 else (v.detach() if v is not None else None) for v in out))
    return out, teacher_like


# the papers' minimum when the student's outputs equal the teacher's (fitnet learns a regressor
# and crd contrasts against a memory bank: neither has a zero there)
MINIMUM_ZERO = {"skip": 0.0, "logit": 0.0, "at": 0.0, "sp": 0.0, "rkd": 0.0, "pkt": 0.0,
                "dkd": 0.0, "dist": 1e-2}  # dist: 1 - Pearson with the official eps 1e-8


@pytest.mark.parametrize("name", sorted(MINIMUM_ZERO))
def test_a_student_equal_to_its_teacher_is_at_the_minimum(name):
    torch.manual_seed(1)
    student = create_model("resnet18", base_width=4).eval()
    with torch.no_grad():  # logits of a typical spread (std ~2): near-uniform or near-one-hot
        student.fc.weight.mul_(10)  # ones leave dist's correlations at about 0 / eps
    loss_fn = DistillationLoss(name, student, context=_context(student, student, torch.arange(N) % 10))
    student.request_features(loss_fn.features)
    s_out, t_out = _same_outputs(student, torch.randn(B, 3, 32, 32))
    value = loss_fn.terms[name](s_out, t_out, KDBatch(y=torch.arange(B) % 10, epoch=30.0))
    value = sum(value.values()) if isinstance(value, dict) else value
    assert abs(float(value)) <= MINIMUM_ZERO[name] + 1e-6, (name, float(value))
    assert set(FEATURES) >= loss_fn.features


def test_every_term_at_once_end_to_end(tmp_path, capsys):
    """One tiny run of the real script with all ten terms: each term's array, its JSON weight
    and options, what each learns (counted, trained, never in the student's checkpoint), and
    crd's memory bank in the resumable state."""
    weights = ",".join(f"{n}=0.01" for n in KD_TERMS)  # the paper weights together would swamp CE
    args = model_training_mid.parse_args([
        "--dataset", "synthetic", "--synthetic-train-size", "120", "--synthetic-test-size", "40",
        "--width", "4", "--epochs", "1", "--batch-size", "30", "--eval-batch-size", "60",
        "--device", "cpu", "--no-progress", "--no-tensorboard", "--teacher", "resnet18",
        "--kd", ALL, "--kd-weights", weights, "--kd-opt", "dkd.warmup=0,crd.nce_k=8",
        "--output-dir", str(tmp_path), "--run-name", "all"])
    summary = model_training_mid.main(args)
    out = capsys.readouterr().out
    st = summary["student"]
    assert st["kd"] == ALL and set(st["kd_weights"]) == set(KD_TERMS)
    assert st["kd_options"]["crd"]["nce_k"] == 8 and st["kd_options"]["dkd"]["warmup"] == 0.0
    assert st["kd_learned_params"]["fitnet"] > 0 and st["kd_learned_params"]["crd"] > 0
    assert st["kd_learned_params"]["at"] == 0
    assert "learned for distillation, not exported" in out
    numpy_dir = tmp_path / "numpy_outputs"
    from skipkd.io.history import read_history
    train = {m: v for (split, m), v in
             read_history(str(numpy_dir / "history_all.json"), "all")["student"].items()
             if split == "train"}
    for name in KD_TERMS:
        arr = train[f"loss_{name}"]
        assert arr.shape == (1,) and np.isfinite(arr).all(), name
    for part in ("rkd_distance", "rkd_angle", "dkd_tckd", "dkd_nckd", "dist_inter", "dist_intra",
                 "crd_anchor_s", "crd_anchor_t"):
        assert f"loss_{part}" in train, part
    # the parts are in the history only: no flat array that another key could own (issue of
    # phantom keys such as dkd_student_all)
    assert not list(numpy_dir.glob("train_loss_dkd*"))
    on_disk = json.loads((numpy_dir / "summary_all.json").read_text())
    assert on_disk["student"]["kd_weights"]["crd"] == 0.01
    ckpt_dir = tmp_path / "saved_pth_model"
    student = torch.load(ckpt_dir / "all_student.pth", weights_only=True)
    assert not any(k.split(".")[0] in KD_TERMS for k in student["state_dict"])
    state = torch.load(ckpt_dir / "all_student_state.pth", weights_only=True)
    bank = [k for k in state["loss_state"] if k.startswith("crd.") and "memory" in k]
    assert bank and all(state["loss_state"][k].shape[0] == summary["dataset"]["train_size"]
                        for k in bank)


def test_the_methods_docs_are_written_from_the_registry():
    """docs/METHODS.md and docs/GUIDE.md's table are what experiments/methods.py writes now."""
    from conftest import run_script
    proc = run_script("experiments/methods.py", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_teacher_does_not_depend_on_the_chosen_terms(tmp_path):
    """Same seed, same teacher, whatever --kd: the terms are built once before the teacher is
    (to refuse a bad option early) and must not move the random generators."""
    def teacher_weights(kd, key):
        args = model_training_mid.parse_args([
            "--dataset", "synthetic", "--synthetic-train-size", "40", "--synthetic-test-size", "20",
            "--width", "4", "--epochs", "1", "--batch-size", "20", "--device", "cpu",
            "--no-progress", "--no-tensorboard", "--teacher", "resnet18", "--kd", kd,
            "--output-dir", str(tmp_path), "--run-name", key])
        model_training_mid.main(args)
        return torch.load(tmp_path / "saved_pth_model" / f"{key}_teacher_last.pth",
                          weights_only=True)["state_dict"]
    a, b = teacher_weights("skip", "a"), teacher_weights("crd+fitnet", "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_leaves_the_callers_arguments_as_they_were(tmp_path):
    """distill() resolves the teacher (here the default resnet34) in its own copy of the
    arguments; the caller's namespace is not changed."""
    args = model_training_mid.parse_args([
        "--dataset", "synthetic", "--synthetic-train-size", "40", "--synthetic-test-size", "20",
        "--width", "4", "--epochs", "1", "--batch-size", "20", "--device", "cpu", "--kd", "none",
        "--no-progress", "--no-tensorboard", "--output-dir", str(tmp_path), "--run-name", "alone"])
    before = dict(vars(args))
    summary = model_training_mid.main(args)
    assert vars(args) == before and args.teacher is None
    assert summary["args"]["teacher"] == "resnet34"  # what the run resolved is recorded
