"""Run keys and --overwrite never lose another run's files: every case runs the real script in a
copy of an output folder holding earlier runs and compares every file's hash before and after.

Each case is a failure found in the toolkit before run records and locks existed: `..` as a key
deleted the output root, `--overwrite` globbed other keys' files, a file with the key's name
from another run was replaced, an unwritable runs/ was found only after deleting, two starts
with one key both ran, and killed atomic writes left their temporaries forever."""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

from conftest import assert_ok, assert_refused, files_digest, run_script, start_script

BASE = "model_training.py"
ARGS = ["--dataset", "synthetic", "--synthetic-train-size", "200", "--synthetic-test-size", "50",
        "--width", "4", "--batch-size", "50", "--eval-batch-size", "50", "--epochs", "1",
        "--device", "cpu", "--no-progress"]


_ok, _refused = assert_ok, assert_refused


def _names_of(key):
    """The file names a run with this key may write, listed independently of the code."""
    names = {os.path.join("numpy_outputs", f"summary_{key}.json"),
             os.path.join("numpy_outputs", f"history_{key}.json"),
             os.path.join("numpy_outputs", f"manifest_{key}.json")}
    for role in ("baseline", "teacher", "student"):
        for suffix in ("", "_last", "_state"):
            names.add(os.path.join("saved_pth_model", f"{key}_{role}{suffix}.pth"))
    for split in ("train", "val"):
        for metric in ("accuracy", "loss"):  # the other metrics live in the history only
            for infix in ("", "_teacher", "_student"):
                names.add(os.path.join("numpy_outputs", f"{split}_{metric}{infix}_{key}.npy"))
    return names


def _only_changed(before, after, key):
    """Every difference between two digests is a file of run `key` (exact names)."""
    names = _names_of(key)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    strays = sorted(p for p in changed
                    if p not in names and not p.startswith(os.path.join("runs", key, "")))
    assert not strays, f"files outside run {key!r} changed: {strays}"


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """An output root with runs 'good' and 'good_v2' (TensorBoard on) and 'v2' (off), plus a
    file standing for the user's repository."""
    root = tmp_path_factory.mktemp("earlier") / "root"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    procs = [start_script(BASE, *ARGS, "--output-dir", root, "--run-name", key,
                          *([] if tb else ["--no-tensorboard"]),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for key, tb in (("good", True), ("good_v2", True), ("v2", False))]
    for p in procs:  # three keys at once: each holds its own lock
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    return root


@pytest.fixture
def copy(earlier, tmp_path):
    dst = tmp_path / "root"
    shutil.copytree(earlier, dst)
    return dst


@pytest.mark.parametrize("key", ["..", ".", "../root", "good/../..", ""])
def test_path_like_keys_are_refused_before_any_work(copy, key):
    before = files_digest(copy)
    out = copy / "sub" if key != "" else copy
    _refused(run_script(BASE, *ARGS, "--output-dir", out, "--run-name", key, "--overwrite"),
             "run-name")
    assert files_digest(copy) == before and not (copy / "sub").exists()


def test_a_key_too_long_for_its_file_names_is_refused_before_training(copy):
    before = files_digest(copy)
    _refused(run_script(BASE, *ARGS, "--output-dir", copy, "--run-name", "k" * 300), "300")
    assert files_digest(copy) == before


@pytest.mark.parametrize("key", ["v2", "good"])
def test_overwrite_removes_exactly_the_runs_own_files(copy, key):
    before = files_digest(copy)
    _ok(run_script(BASE, *ARGS, "--output-dir", copy, "--run-name", key, "--overwrite"))
    after = files_digest(copy)
    _only_changed(before, after, key)
    assert _names_of(key) & set(after), "the run wrote nothing"
    for other in {"good", "good_v2", "v2"} - {key}:
        theirs = {p: h for p, h in before.items()
                  if p in _names_of(other) or p.startswith(os.path.join("runs", other, ""))}
        assert theirs and all(after.get(p) == h for p, h in theirs.items()), other


def test_glob_characters_in_keys_are_refused(copy):
    before = files_digest(copy)
    _refused(run_script(BASE, *ARGS, "--output-dir", copy, "--run-name", "go[o]d", "--overwrite"),
             "[")
    assert files_digest(copy) == before


def test_an_output_folder_with_brackets_still_sees_its_runs(tmp_path):
    root = tmp_path / "out[1]"
    _ok(run_script(BASE, *ARGS, "--no-tensorboard", "--output-dir", root, "--run-name", "k"))
    before = files_digest(root)
    _refused(run_script(BASE, *ARGS, "--no-tensorboard", "--output-dir", root, "--run-name", "k"),
             "already has outputs", "--overwrite")
    assert files_digest(root) == before


def test_a_file_with_the_keys_name_but_not_its_record_is_not_removed(copy):
    """Run 'w' never ran here; a file that bears one of its names (another tool's, or a run
    from before run records) is neither reused nor removed."""
    planted = copy / "numpy_outputs" / "train_accuracy_w.npy"
    planted.write_bytes(b"someone else's")
    before = files_digest(copy)
    _refused(run_script(BASE, *ARGS, "--output-dir", copy, "--run-name", "w"), "already has outputs")
    _refused(run_script(BASE, *ARGS, "--output-dir", copy, "--run-name", "w", "--overwrite"),
             "train_accuracy_w.npy", "no record")
    assert files_digest(copy) == before


@pytest.mark.parametrize("form", ["hashes", "names"])
def test_a_tampered_run_record_cannot_widen_overwrite(copy, form, tmp_path):
    """A record edited to list other runs' files (with their true hashes, or as the names-only
    record of earlier versions) and paths outside the folder removes none of them."""
    record = copy / "numpy_outputs" / "manifest_v2.json"
    data = json.loads(record.read_text())
    assert "numpy_outputs/summary_v2.json" in data["files"]
    (copy / "outside.txt").write_text("keep me")
    owned = tmp_path / "elsewhere" / "absolute.txt"  # an absolute path: a file this test owns
    owned.parent.mkdir()
    owned.write_text("keep me too")
    extra = ["numpy_outputs/summary_good.json", "saved_pth_model/good_baseline.pth",
             "../outside.txt", "outside.txt", str(owned), "runs/good"]
    if form == "hashes":
        for name in extra:
            path = os.path.join(copy, name)
            data["files"][name] = ([hashlib.sha256(open(path, "rb").read()).hexdigest()]
                                   if os.path.isfile(path) else "dir")
    else:
        data = {"key": "v2", "files": sorted(data["files"]) + extra}
    record.write_text(json.dumps(data))
    before = files_digest(copy)
    _ok(run_script(BASE, *ARGS, "--no-tensorboard", "--output-dir", copy, "--run-name", "v2",
                   "--overwrite"))
    _only_changed(before, files_digest(copy), "v2")
    assert (copy / "outside.txt").read_text() == "keep me"
    assert owned.read_text() == "keep me too"


def test_overwrite_removes_the_earlier_runs_files_that_it_does_not_write_again(tmp_path):
    """A distillation run (teacher and student files), then the same key again with --kd none
    and --overwrite: the earlier teacher's files are gone (a removal that does nothing leaves
    them), the rest of the folder is untouched."""
    flags = ["--dataset", "synthetic", "--synthetic-train-size", "40", "--synthetic-test-size",
             "20", "--width", "4", "--epochs", "1", "--batch-size", "20", "--device", "cpu",
             "--no-progress", "--no-tensorboard", "--teacher", "resnet18", "--output-dir",
             tmp_path, "--run-name", "k"]
    _ok(run_script("model_training_mid.py", *flags, "--kd", "skip"))
    ckpts = tmp_path / "saved_pth_model"
    assert (ckpts / "k_teacher.pth").exists() and (ckpts / "k_teacher_last.pth").exists()
    (tmp_path / "notes.txt").write_text("mine")
    _ok(run_script("model_training_mid.py", *flags, "--kd", "none", "--overwrite"))
    assert not (ckpts / "k_teacher.pth").exists() and not (ckpts / "k_teacher_last.pth").exists()
    assert (ckpts / "k_student.pth").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    record = json.loads((tmp_path / "numpy_outputs" / "manifest_k.json").read_text())
    assert not any("teacher" in name for name in record["files"])


def test_unwritable_tensorboard_folder_is_found_before_anything_is_removed(tmp_path):
    root = tmp_path / "root"
    _ok(run_script(BASE, *ARGS, "--no-tensorboard", "--output-dir", root, "--run-name", "k"))
    (root / "runs").write_text("a file where the TensorBoard folder goes")
    before = files_digest(root)
    _refused(run_script(BASE, *ARGS, "--output-dir", root, "--run-name", "k", "--overwrite"),
             "tensorboard", "runs")
    assert files_digest(root) == before


def test_stale_temporaries_of_the_key_are_removed_and_no_others(copy):
    ckpts = copy / "saved_pth_model"
    mine = ckpts / ".v2_baseline.pth.tmp-abc12345.pth"  # mkstemp's 8 random characters
    theirs = ckpts / ".good_v2_baseline.pth.tmp-abc12345.pth"
    users = ckpts / ".tmp-abc12345.pth"
    not_a_temporary = ckpts / ".v2_baseline.pth.tmp-abc12345.pth.lock"
    for path in (mine, theirs, users, not_a_temporary):
        path.write_bytes(b"half a checkpoint")
    _ok(run_script(BASE, *ARGS, "--no-tensorboard", "--output-dir", copy, "--run-name", "v2",
                   "--overwrite"))
    assert not mine.exists() and theirs.exists() and users.exists()
    assert not_a_temporary.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_files_respect_the_umask(tmp_path, umask):
    out = tmp_path / "out"
    _ok(run_script(BASE, *ARGS, "--no-tensorboard", "--output-dir", out, "--run-name", "u",
                   umask=umask))
    files = [out / "saved_pth_model" / "u_baseline.pth", out / "numpy_outputs" / "summary_u.json",
             out / "numpy_outputs" / "val_accuracy_u.npy"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_two_starts_with_one_key_exactly_one_runs(tmp_path):
    out = tmp_path / "out"
    args = [*ARGS, "--synthetic-train-size", "800", "--epochs", "2", "--output-dir", out,
            "--run-name", "once"]
    with open(tmp_path / "first.out", "w") as fo, open(tmp_path / "first.err", "w") as fe:
        first = start_script(BASE, *args, stdout=fo, stderr=fe)
        try:
            lock = out / "numpy_outputs" / ".once.lock"
            deadline = time.monotonic() + 120
            while not (lock.exists() and lock.read_text().strip()):
                assert first.poll() is None, (tmp_path / "first.err").read_text()
                assert time.monotonic() < deadline, "the first run never took its lock"
                time.sleep(0.02)
            second = run_script(BASE, *args)
            # refused at once, not after waiting for the lock: the first is still training
            assert first.poll() is None, "the second start waited for the first run to end"
            _refused(second, "in use by process", str(first.pid))
            assert first.wait(300) == 0, (tmp_path / "first.err").read_text()
        finally:
            if first.poll() is None:
                first.send_signal(signal.SIGKILL)
    summary = json.loads((out / "numpy_outputs" / "summary_once.json").read_text())
    assert summary["run_key"] == "once"
    assert not lock.exists(), "the lock file outlived its run"
    events = [f for _, _, fs in os.walk(out / "runs" / "once") for f in fs
              if f.startswith("events.out.tfevents.")]
    # one run's TensorBoard writer (plus its hparams writer), not two runs'
    assert 1 <= len(events) <= 2, events
