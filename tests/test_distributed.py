"""DistributedDataParallel through torchrun on CPU (gloo): one set of outputs, metrics over the
whole dataset, and every training sample seen exactly once per epoch across ranks."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, script_env
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from skipkd.data import Augment, ImageData, TensorLoader, make_synthetic
from skipkd.train.engine import evaluate

pytestmark = pytest.mark.slow  # heavy end-to-end checks: `pytest -m "not slow"` skips them

TRAIN, TEST, EPOCHS = 256, 96, 2


def _loaders(world, n=103, batch=8, drop_last=False):
    data = make_synthetic(n, seed=3)
    return [TensorLoader(data, batch, shuffle=True, augment=Augment(), seed=5, rank=r,
                         world_size=world, drop_last=drop_last) for r in range(world)]


@pytest.mark.parametrize("world,n,batch", [(2, 96, 8), (2, 103, 8), (3, 100, 7), (4, 64, 16)])
def test_each_epoch_covers_the_training_set_once_across_ranks(world, n, batch):
    loaders = _loaders(world, n, batch)
    assert len({len(l) for l in loaders}) == 1, "every rank must run the same number of steps"
    for epoch in (0, 1):
        seen = torch.cat([torch.cat([l.batch_indices(epoch, i) for i in range(len(l))])
                          for l in loaders])
        # disjoint across ranks; everything covered unless the last global batch is smaller
        # than the number of ranks (then it is dropped: at most world - 1 samples)
        assert len(seen) == len(set(seen.tolist()))
        assert n - len(seen) == (n % (batch * world) if n % (batch * world) < world else 0)
        assert loaders[0].num_samples == len(seen)
    assert not torch.equal(loaders[0].batch_indices(0, 0), loaders[0].batch_indices(1, 0))


def test_ranks_agree_with_a_single_process_of_the_global_batch():
    """Rank r's batch is rows [r::world] of the single-process batch of batch * world images,
    augmentation included."""
    data = make_synthetic(64, seed=1)
    single = TensorLoader(data, 16, shuffle=True, augment=Augment(), seed=2)
    ranks = [TensorLoader(data, 8, shuffle=True, augment=Augment(), seed=2, rank=r, world_size=2)
             for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(single.iterate(0), ranks[0].iterate(0), ranks[1].iterate(0)):
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_cifar):
    out = tmp_path_factory.mktemp("ddp")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", os.path.join(REPO_ROOT, "model_training_mid.py"),
           "--dataset", "cifar10", "--data-dir", tiny_cifar, "--width", "4", "--epochs", str(EPOCHS),
           "--batch-size", "16", "--eval-batch-size", "32", "--output-dir", str(out),
           "--run-name", "ddp", "--no-progress", "--kd", "skip", "--eca", "parallel",
           "--val-split", "0"]  # the test set as validation: compared with it below
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_torchrun_two_processes_completes_with_one_set_of_outputs(ddp_run):
    out, proc = ddp_run
    ckpts = sorted(os.path.basename(p) for p in glob.glob(str(out / "saved_pth_model" / "*")))
    assert ckpts == ["ddp_student.pth", "ddp_student_last.pth", "ddp_student_state.pth",
                     "ddp_teacher.pth", "ddp_teacher_last.pth", "ddp_teacher_state.pth"]
    summary = json.loads((out / "numpy_outputs" / "summary_ddp.json").read_text())
    assert summary["environment"]["world_size"] == 2
    # the final table is printed once (rank 0 only)
    assert proc.stdout.count("student checkpoint:") == 1
    import numpy as np
    for role in ("teacher", "student"):
        assert len(np.load(out / "numpy_outputs" / f"val_accuracy_{role}_ddp.npy")) == EPOCHS


def test_reported_accuracy_equals_a_single_process_evaluation(ddp_run, tiny_cifar):
    out, _ = ddp_run
    from skipkd.data import load_dataset
    _, test = load_dataset("cifar10", tiny_cifar)
    for role in ("teacher", "student"):
        for suffix in ("", "_last"):
            path = str(out / "saved_pth_model" / f"ddp_{role}{suffix}.pth")
            ckpt = load_checkpoint(path)
            model = model_from_checkpoint(ckpt, path)
            loader = TensorLoader(test, 50, "cpu", ckpt["data"]["mean"], ckpt["data"]["std"])
            res = evaluate(model, loader)
            assert res["acc"] == pytest.approx(ckpt["metrics"]["val"]["acc"], abs=1e-9)
            assert res["loss"] == pytest.approx(ckpt["metrics"]["val"]["loss"], rel=1e-4)
            # the training metrics are over all ranks: the whole training set every epoch
            assert ckpt["metrics"]["train"]["samples"] == len(load_dataset("cifar10", tiny_cifar)[0])
            assert ckpt["metrics"]["val"]["samples"] == len(test)


def test_torchrun_with_a_connector_and_logit_kd(tmp_path, tiny_cifar):
    """resnet50 -> resnet18 (different hint shapes: a learned connector whose gradients are
    averaged across ranks) with skip + logit KD; the student checkpoint has no connector."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", os.path.join(REPO_ROOT, "model_training_mid.py"),
           "--dataset", "cifar10", "--data-dir", tiny_cifar, "--width", "4", "--epochs", "1",
           "--teacher", "resnet50", "--student", "resnet18", "--kd", "skip+logit", "--eca", "last",
           "--batch-size", "16", "--eval-batch-size", "32", "--output-dir", str(tmp_path),
           "--run-name", "conn", "--no-progress", "--no-tensorboard"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "connector" in proc.stdout
    summary = json.loads((tmp_path / "numpy_outputs" / "summary_conn.json").read_text())
    assert summary["student"]["connector_params"] > 0
    ckpt = load_checkpoint(str(tmp_path / "saved_pth_model" / "conn_student.pth"))
    assert not any("connector" in k for k in ckpt["state_dict"])
    model_from_checkpoint(ckpt)  # rebuilds a plain resnet18
