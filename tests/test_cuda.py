"""CUDA tests: mixed precision, torch.compile, GPU checkpoints, the GPU-resident loader and nccl.

They run on the device named by CUDA_TESTS_DEVICE (default `cuda`) and are skipped, with the
reason printed by `pytest -rs`, when that is `cuda` and no GPU is visible. The CPU dry run of
`tools/gpu_check.sh` sets CUDA_TESTS_DEVICE=cpu to run the same code on the CPU (gloo instead of
nccl, fp16 through the CPU's autocast), so a broken test is found before GPU time is spent.

Tolerances (stated here, asserted below), against fp32 with TF32 off:
- one step, every KD term: loss parts within 3% (bf16) / 1% (fp16) relative, and the gradient of
  the student with a cosine similarity of at least 0.95 (bf16) / 0.99 (fp16) to fp32's (measured
  on the CPU at widths 4 and 16: about 0.975 and 0.996);
- four SGD steps of the distillation step through engine.train_one_epoch (fp16 with the grad
  scaler, which may skip a step whose scaled gradient overflows): the epoch's loss parts within
  the same relative tolerances, and a finite parameter update pointing the same way as fp32's
  (cosine at least 0.5: the rounding differences of one step grow over the next ones; measured
  0.85 (bf16) and 0.89 (fp16) on an H200 at width 16, 0.93 and 0.95 on the CPU at width 4);
- torch.compile against eager, fp32: logits and hint within 1e-3 (relative to their magnitude),
  gradients with a cosine similarity of at least 0.999.
"""
import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

from conftest import REPO_ROOT, script_env
from skipkd.models import create_model
from skipkd.data import Augment, TensorLoader, channel_stats, make_synthetic
from skipkd.train.engine import autocast_context, train_one_epoch
from skipkd.kd import KD_MODES, DistillationLoss, TermContext

DEVICE = torch.device(os.environ.get("CUDA_TESTS_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"
WIDTH = int(os.environ.get("CUDA_TESTS_WIDTH", "16" if ON_GPU else "4"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(),
                       reason="no CUDA GPU visible (tools/gpu_check.sh runs these on a GPU; "
                              "CUDA_TESTS_DEVICE=cpu runs them on the CPU)"),
]

TOL = {"bf16": (3e-2, 0.95), "fp16": (1e-2, 0.99)}  # (loss rel, one-step gradient cosine)
MIN_UPDATE_COS = 0.5


@contextmanager
def true_fp32():
    """fp32 convolutions and matmuls without TF32 (PyTorch lets cuDNN use TF32 by default)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _pair(seed=0, placement="parallel"):
    torch.manual_seed(seed)
    teacher = create_model("resnet34", base_width=WIDTH, placement=placement)
    student = create_model("resnet18", base_width=WIDTH, placement=placement)
    fmt = torch.channels_last
    return teacher.to(DEVICE, memory_format=fmt), student.to(DEVICE, memory_format=fmt)


def _hint_shapes(student, teacher):
    x = torch.zeros(1, 3, 32, 32, device=DEVICE)
    student.eval(), teacher.eval()
    with torch.no_grad():
        return student(x).hint.shape[1:], teacher(x).hint.shape[1:]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(256, seed=5)


def _loader(data, batch=64, device=DEVICE, **kw):
    mean, std = channel_stats(data.images)
    return TensorLoader(data, batch, device, mean, std, shuffle=True, augment=Augment(),
                        seed=3, drop_last=True, channels_last=True, **kw)


def _flat(tensors):
    return torch.cat([t.detach().float().reshape(-1) for t in tensors])


def _cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _distill_epoch(data, precision, mode="skip+logit"):
    """Four SGD steps of the real distillation step (engine.train_one_epoch); returns the epoch's
    averaged loss parts and the parameter update."""
    teacher, student = _pair()
    s_hint, t_hint = _hint_shapes(student, teacher)
    loss_fn = DistillationLoss(mode, teacher, context=TermContext(
        student_shapes={"hint": s_hint}, teacher_shapes={"hint": t_hint})).to(DEVICE)
    params = list(student.parameters()) + list(loss_fn.parameters())
    before = _flat(params)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler(DEVICE.type) if precision == "fp16" else None
    metrics = train_one_epoch(student, loss_fn, _loader(data), opt, None, DEVICE, precision, scaler,
                              show_progress=False, epoch=0)
    return metrics, _flat(params) - before


@pytest.fixture(scope="module")
def fp32_epoch(data):
    with true_fp32():
        return _distill_epoch(data, "fp32")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_distillation_agrees_with_fp32(data, fp32_epoch, precision):
    ref, ref_update = fp32_epoch
    got, update = _distill_epoch(data, precision)
    rel = TOL[precision][0]
    for part in ("loss", "ce", "skip", "logit"):
        assert got[part] == pytest.approx(ref[part], rel=rel), (part, got[part], ref[part])
    assert torch.isfinite(update).all()
    cos = _cosine(update, ref_update)
    assert cos >= MIN_UPDATE_COS, f"{precision} update vs fp32: cosine {cos:.4f} < {MIN_UPDATE_COS}"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mode", [m for m in KD_MODES if m != "none"])
def test_every_kd_term_runs_in_mixed_precision(data, mode, precision):
    """Every registered distillation mode: finite loss and gradients under bf16 (and fp16)
    autocast, within that precision's tolerance of the same batch in fp32."""
    teacher, student = _pair(placement="none")
    s_hint, t_hint = _hint_shapes(student, teacher)
    loss_fn = DistillationLoss(mode, teacher, context=TermContext(
        student_shapes={"hint": s_hint}, teacher_shapes={"hint": t_hint})).to(DEVICE)
    student.train()
    x, y = next(iter(_loader(data)))
    results = {}
    for prec in ("fp32", precision):
        student.zero_grad(set_to_none=True)
        with true_fp32(), autocast_context(DEVICE, prec):
            loss, parts = loss_fn(x, student(x), y)
        loss.backward()
        grads = _flat(p.grad for p in student.parameters())
        assert torch.isfinite(loss) and torch.isfinite(grads).all(), prec
        results[prec] = (float(loss.detach()), {k: float(v) for k, v in parts.items()}, grads)
    (l32, p32, g32), (l16, p16, g16) = results["fp32"], results[precision]
    rel, min_cos = TOL[precision]
    assert l16 == pytest.approx(l32, rel=rel)
    for k in p32:
        assert p16[k] == pytest.approx(p32[k], rel=rel), k
    cos = _cosine(g16, g32)
    assert cos >= min_cos, f"{mode} {precision} gradient vs fp32: cosine {cos:.4f} < {min_cos}"


def test_gpu_resident_loader_yields_the_cpu_batches(data):
    on_dev = _loader(data, 32, DEVICE)
    on_cpu = _loader(data, 32, "cpu")
    for epoch in (0, 1):
        for (x, y), (xc, yc) in zip(on_dev.iterate(epoch), on_cpu.iterate(epoch)):
            assert x.device.type == DEVICE.type
            assert torch.equal(y.cpu(), yc)
            torch.testing.assert_close(x.cpu(), xc, rtol=0, atol=1e-6)


def _script_env():
    env = script_env()
    if ON_GPU:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # script_env hides GPUs from CPU-only tests
    return env


def _run(args, timeout=300):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, env=_script_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(map(str, args))} -> {proc.returncode}\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


RUN_FLAGS = ("--dataset", "synthetic", "--synthetic-train-size", "512", "--synthetic-test-size",
             "256", "--batch-size", "64", "--eval-batch-size", "128", "--no-progress",
             "--no-tensorboard")


def test_checkpoint_written_on_the_device_evaluates_the_same_on_the_cpu(tmp_path):
    _run([os.path.join(REPO_ROOT, "model_training.py"), *RUN_FLAGS, "--model", "resnet18",
          "--width", WIDTH, "--epochs", "2", "--device", DEVICE.type, "--output-dir", tmp_path,
          "--run-name", "dev"])
    summary = json.loads((tmp_path / "numpy_outputs" / "summary_dev.json").read_text())
    result = summary["baseline"]
    ckpt = result["checkpoint"]
    assert summary["environment"]["device"].startswith(DEVICE.type)
    out = tmp_path / "eval.json"
    _run([os.path.join(REPO_ROOT, "evaluate.py"), ckpt, "--device", "cpu", "--json", out,
          "--out-dir", tmp_path, "--no-tensorboard", "--quiet"])
    cpu_acc = json.loads(out.read_text())["accuracy"]
    # the run evaluated its best checkpoint on the device (fp32, where cuDNN may use TF32):
    # at most one of the 256 test images may fall on the other side of a near-tie on the CPU
    assert abs(cpu_acc - result["test_acc_best"]) <= 100 / 256 + 1e-9, (cpu_acc, result)


def test_one_process_torchrun_completes(tmp_path):
    backend = "nccl" if ON_GPU else "gloo"
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
          os.path.join(REPO_ROOT, "model_training_mid.py"), *RUN_FLAGS, "--teacher", "resnet18",
          "--student", "resnet18", "--kd", "skip+logit", "--width", WIDTH, "--epochs", "1",
          "--device", DEVICE.type, "--output-dir", tmp_path, "--run-name", "ddp1"])
    summary = json.loads((tmp_path / "numpy_outputs" / "summary_ddp1.json").read_text())
    assert summary["environment"]["dist_backend"] == backend
    assert summary["environment"]["world_size"] == 1
    assert os.path.isfile(summary["student"]["checkpoint"])


# ------------------------------------------------------------------ torch.compile (slowest: last)
@pytest.mark.compile
def test_compiled_student_matches_eager(data):
    _, student = _pair()
    compiled = torch.compile(student)
    x, y = next(iter(_loader(data)))
    with true_fp32():
        grads = []
        for net in (student, compiled):
            student.train()
            student.zero_grad(set_to_none=True)
            out = net(x)
            (torch.nn.functional.cross_entropy(out.logits, y) + out.hint.square().mean()).backward()
            grads.append(_flat(p.grad for p in student.parameters()))
        assert _cosine(grads[1], grads[0]) >= 0.999
        student.eval()
        with torch.no_grad():
            eager, comp = student(x), compiled(x)
    for a, b in zip(comp, eager):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()))


@pytest.mark.compile
@pytest.mark.parametrize("mode", ["skip", "skip+logit"])  # hint-only and whole teacher
def test_compiled_teacher_matches_eager(data, mode):
    teacher, student = _pair()
    s_hint, t_hint = _hint_shapes(student, teacher)
    x, _ = next(iter(_loader(data)))
    outs = []
    for compile_teacher in (False, True):
        loss_fn = DistillationLoss(mode, teacher, context=TermContext(
            student_shapes={"hint": s_hint}, teacher_shapes={"hint": t_hint}),
            compile_teacher=compile_teacher)
        with true_fp32():
            outs.append(loss_fn.teacher_forward(x))
    for a, b in zip(outs[1], outs[0]):
        assert (a is None) == (b is None)
        if a is None:
            continue
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
