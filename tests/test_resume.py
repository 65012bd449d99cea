"""Interrupted runs: kill -9, SIGINT and SIGTERM in the middle of an epoch, then --resume, must
end with the same weights, metric arrays and TensorBoard curves as a run that was never
interrupted; a non-finite loss stops with one line and keeps the last good state; checkpoints
and arrays are written atomically."""
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, script_env

pytestmark = pytest.mark.slow  # heavy end-to-end checks: `pytest -m "not slow"` skips them

MID, BASE = "model_training_mid.py", "model_training.py"
EPOCHS = 2
STEPS = 8  # 200 images / batch 25; the plain progress lines come every 2 steps
ARGS = ["--dataset", "synthetic", "--synthetic-train-size", 200, "--synthetic-test-size", 50,
        "--width", 4, "--batch-size", 25, "--eval-batch-size", 100, "--epochs", EPOCHS,
        "--device", "cpu"]
QUIET = ["--no-progress", "--no-tensorboard"]


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def _ckpt(out, name):
    return os.path.join(out, "saved_pth_model", name)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------ helpers
class Interruptible:
    """A training script started with progress lines on (stderr is a file, so they are the
    plain 'student 2/2: 4/8' lines), to be signalled once a given line shows up."""

    def __init__(self, start, tmp_path, script, *args):
        self.err_path, self.out_path = tmp_path / "run.err", tmp_path / "run.out"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self.proc = start(script, *args, stdout=self._out, stderr=self._err)

    def stderr(self):
        return self.err_path.read_text()

    def wait_until(self, done, what, timeout=120):
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None:
                pytest.fail(f"exited ({self.proc.returncode}) before {what}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} after {timeout}s:\n{self.stderr()}")
            time.sleep(0.01)

    def wait_for(self, needle, timeout=120):
        """Poll stderr until the line `needle` appears."""
        self.wait_until(lambda: needle in self.stderr(), repr(needle), timeout)

    def signal(self, sig, timeout=120):
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._out.close()
            self._err.close()
        return code


def _assert_same_run(out, key, ref_out, ref_key, roles, array_roles=None, epochs=EPOCHS):
    """Weights (best and last checkpoints) bit-identical, and every metric array of the
    reference present with `epochs` entries and the same values."""
    for role in roles:
        for suffix in ("", "_last"):
            got = _load(_ckpt(out, f"{key}_{role}{suffix}.pth"))
            want = _load(_ckpt(ref_out, f"{ref_key}_{role}{suffix}.pth"))
            assert got["epoch"] == want["epoch"], (role, suffix)
            assert set(got["state_dict"]) == set(want["state_dict"])
            for name, w in want["state_dict"].items():
                g = got["state_dict"][name]
                assert torch.equal(g, w), (f"{role}{suffix} {name}: max |diff| "
                                           f"{(g.double() - w.double()).abs().max().item():.3g}")
        state = _load(_ckpt(out, f"{key}_{role}_state.pth"))
        assert state["stage_complete"] and state["epoch"] == epochs
    ref_arrays = sorted(glob.glob(os.path.join(ref_out, "numpy_outputs", f"*_{ref_key}.npy")))
    assert ref_arrays
    names = {os.path.basename(p)[:-len(f"_{ref_key}.npy")] for p in ref_arrays}
    got_names = {os.path.basename(p)[:-len(f"_{key}.npy")]
                 for p in glob.glob(os.path.join(out, "numpy_outputs", f"*_{key}.npy"))}
    assert got_names == names
    for name in names:
        want = np.load(os.path.join(ref_out, "numpy_outputs", f"{name}_{ref_key}.npy"))
        got = np.load(os.path.join(out, "numpy_outputs", f"{name}_{key}.npy"))
        assert got.shape == (epochs,), (name, got)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=name)


def _tb_scalars(folder):
    """{tag: [(step, value), ...]} as TensorBoard shows one writer folder (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_tb_one_event_per_epoch(out, key, role, array_role=None, epochs=EPOCHS):
    array_role = role if array_role is None else array_role
    scalars = _tb_scalars(os.path.join(out, "runs", key, role))
    for tag in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        assert f"{role}/{tag}" in scalars, (tag, sorted(scalars))
    for tag, events in scalars.items():
        steps = [s for s, _ in events]  # in file order: a duplicate would show up here
        assert sorted(steps) == list(range(epochs)), (tag, steps)
    mid = f"_{array_role}" if array_role else ""
    for tag, arr in (("val_accuracy", "val_accuracy"), ("train_loss", "train_loss"),
                     ("val_loss", "val_loss")):
        values = [v for _, v in sorted(scalars[f"{role}/{tag}"])]
        np.testing.assert_allclose(values, np.load(os.path.join(
            out, "numpy_outputs", f"{arr}{mid}_{key}.npy")), rtol=1e-6, err_msg=tag)


# ------------------------------------------------------------------ uninterrupted references
@pytest.fixture(scope="module")
def references(tmp_path_factory, start):
    """{'mid': out, 'base': out}: both scripts run uninterrupted (side by side) as key 'full'."""
    runs = {}
    for name, script in (("mid", MID), ("base", BASE)):
        out = tmp_path_factory.mktemp(f"{name}_ref")
        log = open(out / "log.txt", "w")
        runs[name] = (str(out), log, start(script, *ARGS, *QUIET, "--output-dir", str(out),
                                           "--run-name", "full", stdout=log,
                                           stderr=subprocess.STDOUT))
    for name, (out, log, proc) in runs.items():
        code = proc.wait(300)
        log.close()
        assert code == 0, f"{name} reference exited {code}:\n{open(log.name).read()}"
    return {name: out for name, (out, _, _) in runs.items()}


@pytest.fixture(scope="module")
def mid_reference(references):
    return references["mid"]


@pytest.fixture(scope="module")
def base_reference(references):
    return references["base"]


# ------------------------------------------------------------------ kill -9
def test_sigkill_mid_student_epoch_then_resume(tmp_path, start, run, mid_reference):
    """kill -9 half-way through the student's 2nd epoch: the last state is the epoch boundary;
    --resume finishes with the reference's weights, arrays and one TensorBoard event per epoch."""
    out = str(tmp_path / "out")
    r = Interruptible(start, tmp_path, MID, *ARGS, "--output-dir", out, "--run-name", "kill")
    r.wait_for(f"student 2/{EPOCHS}: 2/{STEPS}")
    assert r.signal(signal.SIGKILL) == -signal.SIGKILL
    state = _load(_ckpt(out, "kill_student_state.pth"))
    assert (state["epoch"], state["step"], state["stage_complete"]) == (1, 0, False), \
        "the kill did not land in the student's 2nd epoch"
    assert not os.path.exists(_ckpt(out, "kill_student_last.pth"))
    acc = np.load(os.path.join(out, "numpy_outputs", "val_accuracy_student_kill.npy"))
    assert acc.shape == (1,)
    assert not glob.glob(os.path.join(out, "saved_pth_model", ".tmp-*"))

    proc = _ok(run(MID, *ARGS, "--output-dir", out, "--run-name", "kill", "--resume",
                   "--no-progress"))
    assert "[teacher] epoch" not in proc.stdout  # the finished teacher is not trained again
    assert "[student] resuming at epoch 2, step 0" in proc.stdout
    assert proc.stdout.count("[student] epoch") == 1
    _assert_same_run(out, "kill", mid_reference, "full", ("teacher", "student"))
    for role in ("teacher", "student"):
        _assert_tb_one_event_per_epoch(out, "kill", role)


def test_crd_sigkill_mid_student_epoch_then_resume(tmp_path, start, run):
    """crd keeps per-sample memory banks and its normalising constants in the resumable state:
    kill -9 in the student's 2nd epoch, --resume, and the weights, the arrays and the banks
    end bit-identical to an uninterrupted run of the same command."""
    crd = ["--kd", "crd+logit", "--kd-opt", "crd.nce_k=16", "--no-tensorboard"]
    out, ref = str(tmp_path / "out"), str(tmp_path / "ref")
    log = open(tmp_path / "ref.log", "w")
    ref_proc = start(MID, *ARGS, *crd, "--no-progress", "--output-dir", ref, "--run-name", "full",
                     stdout=log, stderr=subprocess.STDOUT)
    r = Interruptible(start, tmp_path, MID, *ARGS, *crd, "--output-dir", out, "--run-name", "crd")
    r.wait_for(f"student 2/{EPOCHS}: 2/{STEPS}")
    assert r.signal(signal.SIGKILL) == -signal.SIGKILL
    state = _load(_ckpt(out, "crd_student_state.pth"))
    assert (state["epoch"], state["step"]) == (1, 0)
    assert float(state["loss_state"]["crd.z_s"]) > 0  # the constants were fixed in epoch 1
    _ok(run(MID, *ARGS, *crd, "--output-dir", out, "--run-name", "crd", "--resume",
            "--no-progress"))
    assert ref_proc.wait(300) == 0, open(tmp_path / "ref.log").read()
    log.close()
    _assert_same_run(out, "crd", ref, "full", ("teacher", "student"))
    got = _load(_ckpt(out, "crd_student_state.pth"))["loss_state"]
    want = _load(_ckpt(ref, "full_student_state.pth"))["loss_state"]
    assert set(got) == set(want) and any("memory" in k for k in got)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_sigkill_between_epoch_log_and_state_then_resume(tmp_path, start, run, mid_reference):
    """The teacher stage: kill -9 in the student's 1st epoch with the teacher's state rolled back
    to its 1st epoch, as if the kill had landed after the teacher's 2nd epoch was logged (arrays,
    TensorBoard, best checkpoint) but before its state was saved. --resume must redo that epoch
    and purge its earlier TensorBoard events: one event per epoch, no duplicate."""
    out = str(tmp_path / "out")
    state_path = _ckpt(out, "roll_teacher_state.pth")
    saved = str(tmp_path / "teacher_epoch1_state.pth")

    r = Interruptible(start, tmp_path, MID, *ARGS, "--output-dir", out, "--run-name", "roll")
    r.wait_until(lambda: os.path.exists(state_path), "teacher state")
    shutil.copyfile(state_path, saved)  # replaced atomically: always a whole file
    r.wait_for(f"student 1/{EPOCHS}: 2/{STEPS}")
    assert r.signal(signal.SIGKILL) == -signal.SIGKILL
    assert _load(saved)["epoch"] == 1, "the teacher state was copied too late"
    assert _load(state_path)["stage_complete"]
    os.replace(saved, state_path)
    assert not os.path.exists(_ckpt(out, "roll_student_state.pth"))
    # the events of the teacher's 2nd epoch are on disk and must not show twice
    before = _tb_scalars(os.path.join(out, "runs", "roll", "teacher"))
    assert sorted(s for s, _ in before["teacher/val_accuracy"]) == [0, 1]

    proc = _ok(run(MID, *ARGS, "--output-dir", out, "--run-name", "roll", "--resume",
                   "--no-progress"))
    assert "[teacher] resuming at epoch 2, step 0" in proc.stdout
    assert proc.stdout.count("[teacher] epoch") == 1
    assert proc.stdout.count("[student] epoch") == EPOCHS
    _assert_same_run(out, "roll", mid_reference, "full", ("teacher", "student"))
    for role in ("teacher", "student"):
        _assert_tb_one_event_per_epoch(out, "roll", role)


# ------------------------------------------------------------------ SIGINT / SIGTERM
def test_sigint_saves_mid_epoch_state_and_resumes(tmp_path, start, run, mid_reference):
    out = str(tmp_path / "out")
    r = Interruptible(start, tmp_path, MID, *ARGS, "--no-tensorboard", "--output-dir", out,
                      "--run-name", "int")
    r.wait_for(f"student 2/{EPOCHS}: 2/{STEPS}")
    assert r.signal(signal.SIGINT) == 130
    err = r.stderr()
    assert "Traceback" not in err
    assert "SIGINT received" in err
    last = err.strip().splitlines()[-1]
    assert "interrupted in student epoch 2" in last and "Resume with:" in last, last
    state = _load(_ckpt(out, "int_student_state.pth"))
    assert state["kind"] == "state" and not state["stage_complete"]
    assert state["epoch"] == 1 and 2 <= state["step"] < STEPS  # mid-epoch, not a boundary
    assert state["carry"]["seen"] == 25 * state["step"]
    assert f"at step {state['step']}/{STEPS}" in last
    assert len(state["history"]["val_acc"]) == 1

    # the printed command, run as printed (with this interpreter), resumes the run
    cmd = shlex.split(last.split("Resume with:", 1)[1])
    assert cmd[-1] == "--resume" and "--output-dir" in cmd
    cmd[0] = sys.executable
    proc = _ok(subprocess.run(cmd, cwd=REPO_ROOT, env=script_env(), capture_output=True,
                              text=True, timeout=300))
    assert f"[student] resuming at epoch 2, step {state['step']}" in proc.stdout
    assert "[teacher] epoch" not in proc.stdout
    _assert_same_run(out, "int", mid_reference, "full", ("teacher", "student"))


def test_baseline_sigterm_mid_epoch_then_resume(tmp_path, start, run, base_reference):
    """model_training.py: SIGTERM in the 2nd epoch exits 143 with a mid-epoch state; --resume
    ends with the uninterrupted run's weights and arrays (role '' in the array names)."""
    out = str(tmp_path / "out")
    r = Interruptible(start, tmp_path, BASE, *ARGS, "--no-tensorboard", "--output-dir", out,
                      "--run-name", "term")
    r.wait_for(f"baseline 2/{EPOCHS}: 2/{STEPS}")
    assert r.signal(signal.SIGTERM) == 143
    err = r.stderr()
    assert "Traceback" not in err and "Resume with:" in err.strip().splitlines()[-1]
    state = _load(_ckpt(out, "term_baseline_state.pth"))
    assert state["epoch"] == 1 and 0 < state["step"] < STEPS

    proc = _ok(run(BASE, *ARGS, "--output-dir", out, "--run-name", "term", "--resume",
                   "--no-progress"))
    assert f"[baseline] resuming at epoch 2, step {state['step']}" in proc.stdout
    _assert_same_run(out, "term", base_reference, "full", ("baseline",))


# ------------------------------------------------------------------ --resume without a state
def _one_line_error(proc, *needles):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("error:") or ": error:" in err, err
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)
    return err


def test_resume_without_state_is_one_line_error(tmp_path, run):
    out = str(tmp_path / "out")
    proc = run(BASE, *ARGS, *QUIET, "--output-dir", out, "--run-name", "nothing", "--resume")
    _one_line_error(proc, "--resume", "nothing", "no saved baseline state")
    assert not glob.glob(os.path.join(out, "**", "*.pth"), recursive=True)


# ------------------------------------------------------------------ non-finite loss
def test_nonfinite_loss_in_first_epoch(tmp_path, run):
    """A huge learning rate: one line naming the loss, exit 2, no state claimed, no checkpoint;
    the run's TensorBoard folder is no state either, so --resume refuses (no silent restart)."""
    out = str(tmp_path / "out")
    flags = [*ARGS, "--no-progress", "--output-dir", out, "--run-name", "nan", "--lr", "1e8",
             "--warmup-epochs", "0"]
    err = _one_line_error(run(BASE, *flags), "non-finite training loss", "--lr")
    assert "nan" in err.lower() or "inf" in err.lower()
    assert "no state kept" in err and "kept in" not in err, err
    assert not glob.glob(os.path.join(out, "saved_pth_model", "*.pth"))
    assert not glob.glob(os.path.join(out, "numpy_outputs", "*.npy"))
    _one_line_error(run(BASE, *flags, "--resume"), "no saved baseline state")


def test_nonfinite_loss_keeps_last_good_state(tmp_path):
    """In process: a loss that turns NaN in epoch 2 of 3 stops train_stage with a one-line
    UserError; the epoch-1 state, best checkpoint and arrays stay as they were, and resuming
    from that state with a sound loss ends bit-identical to a run that never failed."""
    import model_training
    from skipkd.errors import UserError
    from skipkd.kd import DistillationLoss
    from skipkd.io.outputs import RunOutputs
    from skipkd.train.resume import load_state
    from skipkd.train.setup import build_model, make_loaders, prepare_data, seed_everything
    from skipkd.models.config import ModelConfig
    from skipkd.train.optim import OptimRecipe
    from skipkd.train.stage import RunContext, Stage, train_stage

    def setup(key, poison_from=None, resume=False):
        args = model_training.parse_args([str(a) for a in (
            *ARGS, *QUIET, "--epochs", 3, "--output-dir", str(tmp_path), "--run-name", key)])
        seed_everything(args.seed)
        train, test, data_cfg = prepare_data(args)
        outputs = RunOutputs(args.output_dir, key)
        outputs.prepare(False, resume)
        loaders = make_loaders(train, test, data_cfg, args, "cpu")
        config = ModelConfig("resnet18", num_classes=data_cfg.num_classes, base_width=4)
        model = build_model(config, "cpu")

        class Poisoned(DistillationLoss):
            calls = 0

            def forward(self, x, out, y, **kw):
                loss, parts = super().forward(x, out, y, **kw)
                Poisoned.calls += 1
                if poison_from is not None and Poisoned.calls > poison_from:
                    loss = loss * float("nan")
                return loss, parts

        stage = Stage("baseline", config, model, Poisoned("none"), args.epochs)
        return (stage, RunContext(args, torch.device("cpu"), loaders, data_cfg, outputs,
                                   OptimRecipe.from_args(args))), outputs

    kw, outputs = setup("bad", poison_from=STEPS)  # every step of epoch 2 onwards
    with pytest.raises(UserError) as info:
        train_stage(*kw)
    msg = str(info.value)
    state_path = outputs.checkpoint("baseline", state=True)
    assert len(msg.splitlines()) == 1 and "non-finite training loss" in msg
    assert f"the last good state is kept in {state_path}" in msg
    state = load_state(state_path)
    assert (state["epoch"], state["step"], state["stage_complete"]) == (1, 0, False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values()
               if v.is_floating_point())
    assert len(state["history"]["train_loss"]) == 1
    assert np.load(outputs.array("val", "accuracy", "baseline")).shape == (1,)
    assert _load(outputs.checkpoint("baseline"))["epoch"] == 1
    assert not os.path.exists(outputs.checkpoint("baseline", last=True))

    kw, _ = setup("bad", resume=True)
    train_stage(*kw, saved=state)
    kw, _ = setup("good")
    train_stage(*kw)
    _assert_same_run(str(tmp_path), "bad", str(tmp_path), "good", ("baseline",), epochs=3)


# ------------------------------------------------------------------ atomic writes
def _boom_after_partial_write(obj, f, *args, **kwargs):
    f.write(b"partial bytes")
    raise OSError(28, "No space left on device")


def test_atomic_save_keeps_old_file_when_save_fails(tmp_path, monkeypatch):
    from skipkd.io import checkpoint
    path = tmp_path / "model.pth"
    checkpoint.atomic_save({"w": torch.arange(3)}, str(path))
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint.torch, "save", _boom_after_partial_write)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"w": torch.zeros(1000)}, str(path))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]  # no temporary file left behind
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))

    def interrupted(obj, f, *args, **kwargs):  # Ctrl-C in the middle of a write
        f.write(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"w": torch.zeros(1)}, str(path))
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["model.pth"]


def test_atomic_save_new_file_and_replace(tmp_path):
    from skipkd.io.checkpoint import atomic_save
    path = tmp_path / "sub" / "x.pth"
    atomic_save({"a": 1}, str(path))
    atomic_save({"a": 2}, str(path))
    assert torch.load(path, weights_only=True) == {"a": 2}
    assert os.listdir(tmp_path / "sub") == ["x.pth"]


def test_atomic_npy_and_text_keep_old_file_when_write_fails(tmp_path, monkeypatch):
    from skipkd.io import files as outputs  # where the atomic writes live
    npy, txt = tmp_path / "a.npy", tmp_path / "s.json"
    outputs.atomic_save_npy(str(npy), [1.0, 2.0])
    outputs.atomic_write_text(str(txt), "old\n")
    before = {p: p.read_bytes() for p in (npy, txt)}
    monkeypatch.setattr(outputs.np, "save",
                        lambda f, arr, *a, **k: _boom_after_partial_write(arr, f))
    with pytest.raises(OSError):
        outputs.atomic_save_npy(str(npy), [3.0])

    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        write = f.write

        def failing_write(s):
            write(s[:2])
            raise OSError(28, "No space left on device")
        f.write = failing_write
        return f

    monkeypatch.setattr(outputs.os, "fdopen", fdopen)
    with pytest.raises(OSError):
        outputs.atomic_write_text(str(txt), "new text\n")
    assert {p: p.read_bytes() for p in (npy, txt)} == before
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "s.json"]


# ------------------------------------------------------------------ kill -9 before a stage's first state
def test_sigkill_before_the_students_first_state_then_resume(tmp_path, start, run, mid_reference):
    """kill -9 after the student's 1st epoch was logged but (state file removed) as if before
    its first state save: --resume trains the student afresh, and its TensorBoard curves have one
    event per epoch (the earlier attempt's events are purged, not shown twice)."""
    out = str(tmp_path / "out")
    student_state = _ckpt(out, "early_student_state.pth")
    r = Interruptible(start, tmp_path, MID, *ARGS, "--output-dir", out, "--run-name", "early")
    r.wait_for(f"student 2/{EPOCHS}: 2/{STEPS}")
    assert r.signal(signal.SIGKILL) == -signal.SIGKILL
    os.unlink(student_state)
    before = _tb_scalars(os.path.join(out, "runs", "early", "student"))
    assert sorted(s for s, _ in before["student/val_accuracy"]) == [0]
    proc = _ok(run(MID, *ARGS, "--output-dir", out, "--run-name", "early", "--resume",
                   "--no-progress"))
    assert proc.stdout.count("[student] epoch") == EPOCHS
    for role in ("teacher", "student"):
        _assert_tb_one_event_per_epoch(out, "early", role)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, run, digest):
    out = str(tmp_path / "out")
    _ok(run(BASE, *ARGS, *QUIET, "--output-dir", out, "--run-name", "done"))
    before = digest(out)
    proc = _ok(run(BASE, *ARGS, *QUIET, "--output-dir", out, "--run-name", "done", "--resume"))
    assert "nothing to resume" in proc.stdout
    assert digest(out) == before
