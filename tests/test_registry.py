"""Distillation terms are a registry: a term registered from inside a test (no edit elsewhere)
trains a tiny student through the real script's main(), and its part shows up in the console,
the arrays, the JSON summary and TensorBoard."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model_training_mid
from skipkd.kd import KD_TERMS, DistillationLoss, parse_kd, register_term


@pytest.fixture
def toy_term():
    @register_term
    class ToyLogitMSE(torch.nn.Module):
        """MSE between the logits (a toy: Ba & Caruana, 2014, in spirit)."""
        name, needs, default_weight, paper = "toy", frozenset({"logits"}), 0.5, "a test"

        def __init__(self, ctx):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))  # something it learns

        def forward(self, student_out, teacher_out, batch):
            return F.mse_loss(self.scale * student_out.logits.float(), teacher_out.logits.float())

    yield ToyLogitMSE
    KD_TERMS.pop("toy")


def test_parse_kd_names_registered_terms(toy_term):
    assert parse_kd("none") == [] and parse_kd("skip+toy") == ["skip", "toy"]
    with pytest.raises(ValueError, match="unknown distillation term 'nope'"):
        parse_kd("skip+nope")


def test_a_term_registered_in_a_test_trains_a_student(toy_term, tmp_path, tiny_cifar, capsys):
    args = model_training_mid.parse_args([
        "--dataset", "cifar10", "--data-dir", tiny_cifar, "--width", "4", "--epochs", "2",
        "--batch-size", "50", "--eval-batch-size", "100", "--device", "cpu", "--no-progress",
        "--teacher", "resnet18", "--kd", "skip+toy", "--kd-weights", "toy=0.25",
        "--output-dir", str(tmp_path), "--run-name", "toyrun"])
    summary = model_training_mid.main(args)
    out = capsys.readouterr().out
    assert "toy " in out and "skip " in out
    st = summary["student"]
    assert st["kd_weights"] == {"skip": 0.3, "toy": 0.25}
    from skipkd.io.history import read_history
    arr = read_history(str(tmp_path / "numpy_outputs" / "history_toyrun.json"),
                       "toyrun")["student"][("train", "loss_toy")]
    assert arr.shape == (2,) and np.isfinite(arr).all() and (arr > 0).all()
    on_disk = json.loads((tmp_path / "numpy_outputs" / "summary_toyrun.json").read_text())
    assert on_disk["student"]["kd"] == "skip+toy"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "runs" / "toyrun" / "student"),
                           size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("student/train_loss_toy")
    np.testing.assert_allclose([e.value for e in events], arr, rtol=1e-6)
    # the teacher ran whole (the toy term needs its logits); the learned scale trained and
    # stays out of the exported student
    ckpt = torch.load(tmp_path / "saved_pth_model" / "toyrun_student.pth", weights_only=True)
    assert not any("scale" in k or k.startswith("toy") for k in ckpt["state_dict"])


def test_the_teacher_runs_only_as_far_as_the_terms_need(toy_term):
    from skipkd.models import create_model
    torch.manual_seed(0)
    teacher = create_model("resnet18", base_width=4).eval()
    calls = []
    teacher.forward_hint = lambda x, _f=teacher.forward_hint: calls.append("hint") or _f(x)
    x = torch.randn(2, 3, 32, 32)
    hint_only = DistillationLoss("skip", teacher, fast_teacher=False)
    out = hint_only.teacher_forward(x)
    assert out.logits is None and out.hint is not None and calls == ["hint"]
    whole = DistillationLoss("skip+toy", teacher, fast_teacher=False)
    out = whole.teacher_forward(x)
    assert out.logits is not None and out.hint is not None and calls == ["hint"]
    assert out.feats is None and out.embedding is None  # nothing asked for them


# ------------------------------------------------------------------ attention modules
def test_se_is_placed_where_eca_would_be():
    from skipkd.models import SE, ParallelSE, create_model
    from skipkd.models.attention import ECA, ParallelECA
    for placement, kinds in (("parallel", {ParallelSE}), ("all", {SE}), ("last", {SE})):
        model = create_model("resnet18", base_width=8, placement=placement, attn="se")
        found = {type(m) for m in model.modules() if isinstance(m, (SE, ParallelSE, ECA, ParallelECA))}
        assert found == kinds, (placement, found)
        out = model(torch.randn(2, 3, 32, 32))
        assert out.logits.shape == (2, 10) and torch.isfinite(out.logits).all()


@pytest.fixture
def toy_attention():
    from skipkd.models import ATTENTION_LAYERS, register_attention

    class Gate(torch.nn.Module):  # one learned scalar gate per channel
        def __init__(self, channels, k_size=None):
            super().__init__()
            self.gate = torch.nn.Parameter(torch.zeros(1, channels, 1, 1))

    class ToyMul(Gate):
        def forward(self, x):
            return x * torch.sigmoid(self.gate)

    class ToyAdd(Gate):
        def forward(self, s):
            return s + torch.sigmoid(self.gate)

    register_attention("toygate", ToyMul, ToyAdd)
    yield ToyMul, ToyAdd
    ATTENTION_LAYERS.pop("toygate")


def test_an_attention_registered_in_a_test_trains_and_reloads(toy_attention, tmp_path, tiny_cifar):
    import model_training
    from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
    args = model_training.parse_args([
        "--dataset", "cifar10", "--data-dir", tiny_cifar, "--width", "4", "--epochs", "1",
        "--batch-size", "50", "--eval-batch-size", "100", "--device", "cpu", "--no-progress",
        "--attn", "toygate", "--eca-placement", "all", "--output-dir", str(tmp_path),
        "--run-name", "gate"])
    model_training.main(args)
    path = str(tmp_path / "saved_pth_model" / "gate_baseline.pth")
    ckpt = load_checkpoint(path)
    assert (ckpt["model"]["attn"], ckpt["model"]["placement"]) == ("toygate", "all")
    model = model_from_checkpoint(ckpt, path)
    gates = [m for m in model.modules() if isinstance(m, toy_attention[0])]
    assert len(gates) == 8  # every block of a resnet18
    assert any(g.gate.abs().sum() > 0 for g in gates)  # trained away from their zero init


def test_checkpoints_from_before_the_attention_choice_load_as_eca(tmp_path):
    from skipkd.models import create_model
    from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    model = create_model("resnet18", base_width=4, placement="parallel")
    cfg = {"num_classes": 10, "base_width": 4, "in_channels": 3, "eca": "parallel",
           "eca_k": None, "image_size": 32}  # no 'attn': as written before the registry
    data = {"dataset": "synthetic", "mean": [0.5] * 3, "std": [0.25] * 3, "num_classes": 10,
            "in_channels": 3, "image_size": 32, "classes": [str(i) for i in range(10)]}
    path = save_checkpoint(str(tmp_path / "old.pth"), model, arch="resnet18", role="baseline",
                           model_cfg=cfg, data_cfg=data)
    again = model_from_checkpoint(load_checkpoint(path), path)
    assert again.attn_layer == "eca"
    x = torch.randn(2, 3, 32, 32)
    model.eval(), again.eval()
    torch.testing.assert_close(again(x).logits, model(x).logits)
