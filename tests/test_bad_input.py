"""Bad input: a non-zero exit, one line on stderr, no traceback and no outputs written."""
import os

import pytest
import torch

from models import create_model
from utils.checkpoint import save_checkpoint

MID, BASE = "model_training_mid.py", "model_training.py"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoint files for the teacher-checkpoint cases."""
    d = tmp_path_factory.mktemp("ckpts")
    data_cfg = {"dataset": "cifar10", "mean": [0.5] * 3, "std": [0.25] * 3, "num_classes": 10,
                "in_channels": 3, "image_size": 32, "classes": [str(i) for i in range(10)]}
    model_cfg = {"num_classes": 10, "base_width": 4, "in_channels": 3, "eca": "parallel",
                 "eca_k": None, "image_size": 32}
    r50 = save_checkpoint(str(d / "r50_teacher.pth"), create_model("resnet50", base_width=4,
                                                                    eca="parallel"),
                          arch="resnet50", role="teacher", model_cfg=model_cfg, data_cfg=data_cfg,
                          metrics={"val": {"acc": 10.0, "loss": 2.3}}, epoch=1)
    # a resnet18's weights labelled as a resnet34
    mislabelled = save_checkpoint(str(d / "mislabelled.pth"),
                                  create_model("resnet18", base_width=4, eca="parallel"),
                                  arch="resnet34", role="teacher", model_cfg=model_cfg,
                                  data_cfg=data_cfg, epoch=1)
    corrupt = d / "corrupt.pth"
    corrupt.write_bytes(os.urandom(4096))
    truncated = d / "truncated.pth"
    truncated.write_bytes(open(r50, "rb").read()[:2000])
    foreign = d / "foreign.pth"
    torch.save({"weights": torch.zeros(3)}, foreign)
    return {"r50": r50, "mislabelled": mislabelled, "corrupt": str(corrupt),
            "truncated": str(truncated), "foreign": str(foreign),
            "missing": str(d / "does_not_exist.pth")}


def _common(tiny_cifar, out):
    return ["--dataset", "cifar10", "--data-dir", tiny_cifar, "--width", "4", "--epochs", "1",
            "--batch-size", "50", "--eval-batch-size", "100", "--output-dir", out,
            "--no-progress", "--no-tensorboard", "--device", "cpu"]


CASES = {
    # id: (script, extra args, substrings the message must contain (any case))
    "unknown-teacher": (MID, ["--teacher", "resnet19"], ["resnet19", "resnet18", "resnet152"]),
    "unknown-student": (MID, ["--student", "vgg16"], ["vgg16", "resnet50"]),
    "unknown-baseline-model": (BASE, ["--model", "resnet19"], ["resnet19", "resnet34"]),
    "bad-eca": (BASE, ["--eca", "first"], ["first", "parallel"]),
    "negative-epochs": (MID, ["--epochs", "-1"], ["-1"]),
    "negative-alpha": (MID, ["--alpha", "-0.5"], ["alpha", "-0.5"]),
    "ECA-maybe": (MID, ["--ECA", "maybe"], ["maybe"]),
    "even-eca-k": (MID, ["--eca-k", "4"], ["eca-k", "4"]),
    "eca-and-ECA": (BASE, ["--eca", "last", "--ECA", "yes"], ["--eca"]),
    "bad-run-name": (MID, ["--run-name", "a/b"], ["run-name"]),
    "unknown-kd": (MID, ["--kd", "fitnet"], ["fitnet"]),
    "device-mps": (BASE, ["--device", "mps"], ["mps"]),
    "device-cuda-without-cuda": (BASE, ["--device", "cuda"], ["cuda"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_flags(case, run, tiny_cifar, tmp_path):
    script, extra, needles = CASES[case]
    out = str(tmp_path / "out")
    proc = run(script, *_common(tiny_cifar, out), *extra)
    _assert_one_line_error(proc, needles)
    _assert_no_outputs(out)


def test_missing_data_dir(run, tmp_path):
    out = str(tmp_path / "out")
    missing = str(tmp_path / "no_such_data")
    proc = run(MID, *_common(missing, out))
    _assert_one_line_error(proc, [missing])
    _assert_no_outputs(out)


def test_data_dir_without_cifar(run, tmp_path):
    out = str(tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run(BASE, *_common(str(empty), out))
    _assert_one_line_error(proc, ["cifar-10-batches-py"])
    _assert_no_outputs(out)


def test_malformed_cifar_batch(run, tmp_path, tiny_data):
    """A readable pickle that is not a CIFAR batch (wrong row length) is a one-line error."""
    import pickle

    import numpy as np
    from utils.data import write_cifar10
    data_dir = tmp_path / "data"
    folder = write_cifar10(str(data_dir), *tiny_data)
    with open(os.path.join(folder, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    out = str(tmp_path / "out")
    proc = run(BASE, *_common(str(data_dir), out))
    _assert_one_line_error(proc, ["data_batch_3"])
    _assert_no_outputs(out)


@pytest.mark.parametrize("which, extra, needles", [
    ("r50", ["--teacher", "resnet34"], ["resnet50", "resnet34"]),
    ("mislabelled", [], ["do not match"]),
    ("corrupt", [], ["corrupt.pth"]),
    ("truncated", [], ["truncated.pth"]),
    ("foreign", [], ["foreign.pth", "not a checkpoint"]),
    ("missing", [], ["does_not_exist.pth", "not found"]),
])
def test_bad_teacher_checkpoint(which, extra, needles, checkpoints, run, tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    proc = run(MID, *_common(tiny_cifar, out), "--teacher-checkpoint", checkpoints[which], *extra)
    _assert_one_line_error(proc, needles)
    _assert_no_outputs(out)


def _assert_one_line_error(proc, needles):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    err = proc.stderr.strip()
    assert err, "empty stderr"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, f"more than one line on stderr:\n{proc.stderr}"
    assert err.startswith("error:") or ": error:" in err, err
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in {err!r}"


def _assert_no_outputs(out):
    written = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files] \
        if os.path.isdir(out) else []
    assert not written, written
