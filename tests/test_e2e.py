"""End to end: both scripts on a tiny CIFAR-10 directory, then every output read back."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import files_digest

from skipkd.io.history import history_path, read_history
from skipkd.io.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint
from skipkd.data import TensorLoader, held_out_split, load_dataset
from skipkd.train.engine import evaluate

KD_KEY = "resnet34-resnet18_kd-skip_eca-parallel_w4-4_cifar10_s0"
BASE_KEY = "resnet18_eca-all_w4_cifar10_s0"
EPOCHS = 2


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, run, fast_flags):
    out = str(tmp_path_factory.mktemp("kd_run"))
    proc = run("model_training_mid.py", *fast_flags, "--epochs", EPOCHS, "--output-dir", out)
    return _ok(proc), out


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, run, fast_flags):
    out = str(tmp_path_factory.mktemp("baseline_run"))
    proc = run("model_training.py", *fast_flags, "--model", "resnet18", "--eca", "all",
               "--epochs", EPOCHS, "--output-dir", out)
    return _ok(proc), out


def _ckpt(out, name):
    return os.path.join(out, "saved_pth_model", name)


def _npy(out, name):
    return np.load(os.path.join(out, "numpy_outputs", name))


def _series(out, key, role, split, metric):
    """One per-epoch series from the run's history JSON (where every metric is kept by name)."""
    return read_history(history_path(os.path.join(out, "numpy_outputs"), key), key)[role][(split, metric)]


def _summary(out, key):
    with open(os.path.join(out, "numpy_outputs", f"summary_{key}.json")) as f:
        return json.load(f)


def _files_digest(root):
    return files_digest(root)


# ------------------------------------------------------------------ the distillation run
def test_kd_run_writes_named_outputs(kd_run):
    proc, out = kd_run
    assert f"run '{KD_KEY}'" in proc.stdout
    assert proc.stdout.count("[teacher] epoch") == EPOCHS
    assert proc.stdout.count("[student] epoch") == EPOCHS
    for role in ("teacher", "student"):
        for suffix in ("", "_last"):
            assert os.path.isfile(_ckpt(out, f"{KD_KEY}_{role}{suffix}.pth"))
        for split in ("train", "val"):
            for metric in ("accuracy", "loss"):
                arr = _npy(out, f"{split}_{metric}_{role}_{KD_KEY}.npy")
                assert arr.shape == (EPOCHS,) and np.isfinite(arr).all()
        acc = _npy(out, f"val_accuracy_{role}_{KD_KEY}.npy")
        assert ((0 <= acc) & (acc <= 100)).all()
    # the loss parts of the student: CE + alpha * skip
    ce = _series(out, KD_KEY, "student", "train", "loss_ce")
    skip = _series(out, KD_KEY, "student", "train", "loss_skip")
    total = _npy(out, f"train_loss_student_{KD_KEY}.npy")
    np.testing.assert_array_equal(total, _series(out, KD_KEY, "student", "train", "loss"))
    assert ce.shape == skip.shape == (EPOCHS,) and (skip > 0).all()
    np.testing.assert_allclose(total, ce + 0.3 * skip, rtol=1e-4)
    teacher = read_history(os.path.join(out, "numpy_outputs", f"history_{KD_KEY}.json"))["teacher"]
    assert ("train", "loss_skip") not in teacher and ("train", "loss_ce") in teacher


def test_kd_run_summary(kd_run):
    _, out = kd_run
    s = _summary(out, KD_KEY)
    assert s["run_key"] == KD_KEY and s["script"] == "model_training_mid.py"
    assert {"teacher", "student", "dataset", "args"} <= set(s)
    t, st = s["teacher"], s["student"]
    assert (t["arch"], st["arch"]) == ("resnet34", "resnet18")
    assert t["placement"] == st["placement"] == "parallel"
    assert st["kd"] == "skip" and st["alpha"] == 0.3
    assert st["hint_shape"] == st["teacher_hint_shape"] == [32, 4, 4]
    assert st["connector_params"] == 0
    assert s["dataset"]["train_size"] == 180 and s["dataset"]["val_size"] == 20
    assert s["dataset"]["test_size"] == 100 and s["dataset"]["protocol"].startswith("held-out-val")
    for role, r in (("teacher", t), ("student", st)):
        val = _npy(out, f"val_accuracy_{role}_{KD_KEY}.npy")
        assert r["epochs"] == EPOCHS
        assert r["best_val_acc"] == pytest.approx(val.max())
        assert val[r["best_epoch"] - 1] == pytest.approx(val.max())
        assert r["final_val_acc"] == pytest.approx(val[-1])
        assert os.path.samefile(r["checkpoint"], _ckpt(out, f"{KD_KEY}_{role}.pth"))


def _check_checkpoint(path, test_loader_for, role, val_acc_history):
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["role"] == role
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    fresh_keys = set(model.state_dict())
    assert set(ckpt["state_dict"]) == fresh_keys  # nothing extra (no connector, no teacher)
    data = ckpt["data"]
    loader = test_loader_for(data, ckpt["args"]["eval_batch_size"])
    res = evaluate(model, loader, "cpu")
    logged = ckpt["metrics"]["val"]
    assert res["acc"] == pytest.approx(logged["acc"], abs=1e-9)
    assert res["loss"] == pytest.approx(logged["loss"], rel=1e-4)
    assert val_acc_history[ckpt["epoch"] - 1] == pytest.approx(logged["acc"])
    return ckpt


@pytest.fixture(scope="module")
def test_loader_for(tiny_cifar):
    """The run's validation images: its held-out part of the training split (the default
    protocol), else the test split."""
    train, test = load_dataset("cifar10", tiny_cifar)

    def make(data, batch_size):
        images = test
        if data.get("val_split", 0) > 0:
            _, images, digest = held_out_split(train, data["val_split"], data["split_seed"])
            assert digest == data["val_indices_sha1"]
        return TensorLoader(images, batch_size, "cpu", data["mean"], data["std"])
    return make


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_kd_checkpoints_reproduce_logged_accuracy(kd_run, test_loader_for, role):
    _, out = kd_run
    hist = _npy(out, f"val_accuracy_{role}_{KD_KEY}.npy")
    best = _check_checkpoint(_ckpt(out, f"{KD_KEY}_{role}.pth"), test_loader_for, role, hist)
    last = _check_checkpoint(_ckpt(out, f"{KD_KEY}_{role}_last.pth"), test_loader_for, role, hist)
    assert last["epoch"] == EPOCHS
    assert best["metrics"]["val"]["acc"] == pytest.approx(hist.max())
    cfg = best["model"]
    assert cfg["arch"] == ("resnet34" if role == "teacher" else "resnet18")
    assert (cfg["placement"], cfg["base_width"], cfg["num_classes"]) == ("parallel", 4, 10)
    assert best["data"]["dataset"] == "cifar10"


def _scalars(tb_dir):
    """{tag: [(step, value), ...]} from every TensorBoard event file under tb_dir (one writer per
    folder, so each folder is read with its own EventAccumulator)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    found, n_files = {}, 0
    for folder, _, files in sorted(os.walk(tb_dir)):
        if not any(f.startswith("events.out.tfevents") for f in files):
            continue
        n_files += 1
        acc = EventAccumulator(folder, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    assert n_files, f"no TensorBoard event files under {tb_dir}"
    return found


def test_kd_tensorboard_scalars(kd_run):
    _, out = kd_run
    scalars = _scalars(os.path.join(out, "runs", KD_KEY))
    for role in ("teacher", "student"):
        for tag in ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "lr"):
            assert f"{role}/{tag}" in scalars, (role, tag, sorted(scalars))
        events = sorted(scalars[f"{role}/val_accuracy"])
        assert [step for step, _ in events] == list(range(EPOCHS))
        np.testing.assert_allclose([v for _, v in events],
                                   _npy(out, f"val_accuracy_{role}_{KD_KEY}.npy"), rtol=1e-6)
        np.testing.assert_allclose([v for _, v in sorted(scalars[f"{role}/train_loss"])],
                                   _npy(out, f"train_loss_{role}_{KD_KEY}.npy"), rtol=1e-6)
    assert len(scalars["student/train_loss_skip"]) == EPOCHS
    assert "teacher/train_loss_skip" not in scalars


# ------------------------------------------------------------------ the baseline run
def test_baseline_run(baseline_run, test_loader_for):
    proc, out = baseline_run
    assert BASE_KEY in proc.stdout
    assert proc.stdout.count("[baseline] epoch") == EPOCHS
    for split in ("train", "val"):
        for metric in ("accuracy", "loss"):
            assert _npy(out, f"{split}_{metric}_{BASE_KEY}.npy").shape == (EPOCHS,)
    s = _summary(out, BASE_KEY)
    assert s["script"] == "model_training.py"
    assert s["baseline"]["arch"] == "resnet18" and s["baseline"]["placement"] == "all"
    hist = _npy(out, f"val_accuracy_{BASE_KEY}.npy")
    ckpt = _check_checkpoint(_ckpt(out, f"{BASE_KEY}_baseline.pth"), test_loader_for,
                             "baseline", hist)
    assert ckpt["model"]["placement"] == "all"
    assert os.path.isfile(_ckpt(out, f"{BASE_KEY}_baseline_last.pth"))
    events = sorted(_scalars(os.path.join(out, "runs", BASE_KEY))["baseline/val_accuracy"])
    assert [step for step, _ in events] == list(range(EPOCHS))
    np.testing.assert_allclose([v for _, v in events], hist, rtol=1e-6)


# ------------------------------------------------------------------ teacher reuse
def test_reuse_teacher_checkpoint(kd_run, run, fast_flags):
    _, out = kd_run
    teacher_path = _ckpt(out, f"{KD_KEY}_teacher.pth")
    teacher_ckpt = torch.load(teacher_path, weights_only=True)
    before = _files_digest(os.path.join(out, "saved_pth_model"))
    proc = _ok(run("model_training_mid.py", *fast_flags, "--epochs", 1, "--output-dir", out,
                   "--teacher-checkpoint", teacher_path, "--run-name", "reuse",
                   "--no-tensorboard"))
    assert "loaded from" in proc.stdout and teacher_path in proc.stdout
    assert "[teacher] epoch" not in proc.stdout
    assert proc.stdout.count("[student] epoch") == 1
    ckpts = os.listdir(os.path.join(out, "saved_pth_model"))
    assert "reuse_student.pth" in ckpts and "reuse_student_last.pth" in ckpts
    assert not [c for c in ckpts if c.startswith("reuse_teacher")]
    assert not [f for f in os.listdir(os.path.join(out, "numpy_outputs"))
                if "teacher_reuse" in f]
    assert not os.path.exists(os.path.join(out, "runs", "reuse"))
    s = _summary(out, "reuse")
    assert s["teacher"]["loaded"] is True and s["teacher"]["arch"] == "resnet34"
    assert s["teacher"]["best_val_acc"] == pytest.approx(teacher_ckpt["metrics"]["val"]["acc"])
    assert _npy(out, "val_accuracy_student_reuse.npy").shape == (1,)
    # the first run's files are untouched
    after = _files_digest(os.path.join(out, "saved_pth_model"))
    assert {k: v for k, v in after.items() if k in before} == before


# ------------------------------------------------------------------ self-distillation
def test_self_distillation(tmp_path, run, fast_flags):
    out = str(tmp_path)
    proc = _ok(run("model_training_mid.py", *fast_flags, "--epochs", 1, "--output-dir", out,
                   "--teacher", "resnet18", "--student", "resnet18", "--kd", "skip+logit",
                   "--eca", "none", "--no-tensorboard"))
    key = "resnet18-resnet18_kd-skip+logit_eca-none_w4-4_cifar10_s0"
    assert key in proc.stdout
    s = _summary(out, key)
    assert s["teacher"]["arch"] == s["student"]["arch"] == "resnet18"
    assert s["student"]["connector_params"] == 0
    for part in ("ce", "skip", "logit"):
        assert _series(out, key, "student", "train", f"loss_{part}").shape == (1,)
    t = torch.load(_ckpt(out, f"{key}_teacher.pth"), weights_only=True)
    st = torch.load(_ckpt(out, f"{key}_student.pth"), weights_only=True)
    assert set(t["state_dict"]) == set(st["state_dict"])
    # two different networks: the student is not a copy of the teacher
    assert not torch.equal(t["state_dict"]["fc.weight"], st["state_dict"]["fc.weight"])


# ------------------------------------------------------------------ original flags + no overwrite
def test_original_aliases_and_no_overwrite(tmp_path, run, tiny_cifar):
    out = str(tmp_path)
    argv = ["--dataset", "cifar10", "--data-dir", tiny_cifar, "--output-dir", out,
            "--model", "resnet34", "--model_kd", "resnet18", "--pair_keys", "orig_pair",
            "--alpha", "0.5", "--ECA", "yes", "--ECA_block", "last", "--batch", "50",
            "--epoch", "1", "--lr", "0.05", "--momentum", "0.8", "--weight_decay", "1e-4",
            "--width", "4", "--eval-batch-size", "100", "--no-progress", "--no-tensorboard",
            "--device", "cpu"]
    _ok(run("model_training_mid.py", *argv))
    for role in ("teacher", "student"):
        assert os.path.isfile(_ckpt(out, f"orig_pair_{role}.pth"))
        assert _npy(out, f"val_accuracy_{role}_orig_pair.npy").shape == (1,)
        assert _npy(out, f"train_loss_{role}_orig_pair.npy").shape == (1,)
    s = _summary(out, "orig_pair")
    a = s["args"]
    assert (a["teacher"], a["student"], a["placement"]) == ("resnet34", "resnet18", "last")
    assert (a["batch_size"], a["epochs"], a["lr"]) == (50, 1, 0.05)
    assert (a["momentum"], a["weight_decay"], a["alpha"]) == (0.8, 1e-4, 0.5)
    assert s["student"]["alpha"] == 0.5
    ckpt = torch.load(_ckpt(out, "orig_pair_student.pth"), weights_only=True)
    assert ckpt["model"]["placement"] == "last" and ckpt["model"]["arch"] == "resnet18"
    assert any(k.startswith("stages.3.0.attn.conv") for k in ckpt["state_dict"])

    before = _files_digest(out)
    again = run("model_training_mid.py", *argv)
    assert again.returncode != 0
    err = again.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--overwrite" in err and "orig_pair" in err
    assert _files_digest(out) == before
