"""Two run keys never share a file, a run's record lists what it wrote (with hashes), and no
output is written through a planted symbolic link.

The end-to-end cases run the real scripts the way a user does and compare every file's bytes
before and after; the name rule itself is checked over random keys and metric names."""
import hashlib
import json
import os
import random
import string

import pytest

from conftest import assert_ok, assert_refused, files_digest, run_script
from skipkd.io.history import read_history
from skipkd.io.outputs import RUN_KEY_MAX, RunOutputs

TINY = ["--dataset", "synthetic", "--synthetic-train-size", "120", "--synthetic-test-size", "40",
        "--width", "4", "--batch-size", "40", "--eval-batch-size", "40", "--epochs", "1",
        "--device", "cpu", "--no-progress", "--no-tensorboard"]


_ok, _refused = assert_ok, assert_refused


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ------------------------------------------------------------------ the name rule

def _all_paths(root, key):
    """Every path a run of `key` can write or hold, whatever its script, roles and metrics."""
    out = RunOutputs(str(root), key)
    return set(out.candidates()) | {out.manifest, out.lock_path, out.tb_dir}


def _random_key(rng):
    """Keys built from the pieces that made names collide: roles, metric names, underscores."""
    pieces = ["teacher", "student", "baseline", "loss", "ce", "accuracy", "lr", "start", "skip",
              "dkd", "tckd", "last", "state", "good", "v2", "summary", "history", "manifest",
              "train", "val", "json", "npy", "pth"]
    parts = [rng.choice(pieces + [rng.choice(string.ascii_letters + string.digits)])
             for _ in range(rng.randint(1, 4))]
    seps = ["_", "_", ".", "-", "=", "+"]
    key = parts[0]
    for part in parts[1:]:
        key += rng.choice(seps) + part
    return key[:RUN_KEY_MAX]


def test_no_two_keys_share_an_output_path(tmp_path):
    """500 random pairs of distinct keys (plus the pairs that collided before), each with the
    paths of every role and every metric name: no path belongs to both."""
    rng = random.Random(0)
    pairs = [("ce_good", "good"), ("student_x", "x"), ("teacher_a", "a"), ("x_teacher", "x"),
             ("loss_ce", "ce"), ("a", "a_teacher_last"), ("summary_z", "z.history")]
    while len(pairs) < 500:
        a, b = _random_key(rng), _random_key(rng)
        if a != b:
            pairs.append((a, b))
    for a, b in pairs:
        shared = _all_paths(tmp_path, a) & _all_paths(tmp_path, b)
        assert not shared, (a, b, shared)


def test_every_metric_lives_in_the_history_not_in_a_shared_name(tmp_path):
    """A baseline and a distillation run whose flat names would have collided (loss of key
    ce_good = CE part of key good) each write their own history, read back by name."""
    out = RunOutputs(str(tmp_path), "good")
    out.save_history("student", {"train_loss": [1.0], "train_loss_ce": [0.5], "val_acc": [10.0]})
    other = RunOutputs(str(tmp_path), "ce_good")
    other.save_history("baseline", {"train_loss": [2.0], "val_acc": [20.0]})
    good = read_history(out.history, "good")
    assert good["student"][("train", "loss_ce")].tolist() == [0.5]
    assert read_history(other.history, "ce_good")["baseline"][("train", "loss")].tolist() == [2.0]
    flat = sorted(os.listdir(tmp_path / "numpy_outputs"))
    assert "train_loss_ce_good.npy" in flat  # ce_good's loss, the original's name ...
    assert not any(n.startswith("train_loss_ce_") and n != "train_loss_ce_good.npy" for n in flat)
    # ... and good's CE part is not written under any flat name
    manifest = json.loads((tmp_path / "numpy_outputs" / "manifest_good.json").read_text())
    assert "numpy_outputs/train_loss_ce_good.npy" not in manifest["files"]


def test_a_baseline_key_that_looks_like_a_role_writes_no_flat_array(tmp_path):
    out = RunOutputs(str(tmp_path), "student_x")
    out.save_history("baseline", {"val_acc": [1.0]})
    assert sorted(os.listdir(tmp_path / "numpy_outputs")) == ["history_student_x.json",
                                                              "manifest_student_x.json"]
    assert read_history(out.history)["baseline"][("val", "accuracy")].tolist() == [1.0]


# ------------------------------------------------------------------ the two cases

@pytest.mark.slow
def test_overwrite_of_one_key_never_removes_another_keys_arrays(tmp_path):
    """model_training.py --run-name ce_good, then model_training_mid.py --run-name good (twice,
    the second with --overwrite): every file of ce_good keeps its bytes, and good's record
    lists exactly the files it wrote, each with its hash."""
    root = tmp_path / "root"
    _ok(run_script("model_training.py", *TINY, "--output-dir", root, "--run-name", "ce_good"))
    theirs = {k: v for k, v in files_digest(root).items() if "ce_good" in k}
    assert "numpy_outputs/train_loss_ce_good.npy" in theirs
    mid = ["model_training_mid.py", *TINY, "--kd", "skip+logit", "--output-dir", root,
           "--run-name", "good"]
    _ok(run_script(*mid))
    _ok(run_script(*mid, "--overwrite"))
    after = files_digest(root)
    assert {k: after.get(k) for k in theirs} == theirs
    record = json.loads((root / "numpy_outputs" / "manifest_good.json").read_text())
    written = {k for k in after if k.endswith(("_good.json", "_good.npy", ".pth"))
               and "ce_good" not in k and not k.startswith("numpy_outputs/manifest_")}
    assert set(record["files"]) == written
    for name, hashes in record["files"].items():
        assert hashes == [after[name]], name


def test_a_planted_lock_link_is_refused_and_its_target_kept(tmp_path):
    root = tmp_path / "root"
    (root / "numpy_outputs").mkdir(parents=True)
    target = tmp_path / "precious.txt"
    target.write_text("the user's file")
    (root / "numpy_outputs" / ".lk.lock").symlink_to(target)
    _refused(run_script("model_training.py", *TINY, "--output-dir", root, "--run-name", "lk"),
             "lock", "symbolic link")
    assert target.read_text() == "the user's file"
    assert not (root / "saved_pth_model" / "lk_baseline.pth").exists()


def test_a_lock_that_is_not_a_regular_file_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "numpy_outputs" / ".lk.lock").mkdir(parents=True)
    _refused(run_script("model_training.py", *TINY, "--output-dir", root, "--run-name", "lk"),
             "lock")


# ------------------------------------------------------------------ links and edits

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished baseline run 'k' with TensorBoard logs."""
    root = tmp_path_factory.mktemp("finished") / "root"
    args = [a for a in TINY if a != "--no-tensorboard"]
    _ok(run_script("model_training.py", *args, "--output-dir", root, "--run-name", "k"))
    return root


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.mark.parametrize("name", ["numpy_outputs/summary_k.json", "numpy_outputs/history_k.json",
                                  "numpy_outputs/val_accuracy_k.npy",
                                  "saved_pth_model/k_baseline.pth",
                                  "saved_pth_model/k_baseline_state.pth", "runs/k"])
def test_a_link_planted_at_an_output_path_leaves_its_target_unchanged(finished, tmp_path, name):
    """Each kind of output path (summary, history, array, checkpoint, state, TensorBoard folder)
    replaced by a link to a user's file or folder: the run is refused, and the target keeps its
    bytes, with and without --overwrite."""
    root = _copy(finished, tmp_path / "root")
    target = tmp_path / ("folder" if name == "runs/k" else "precious.bin")
    if name == "runs/k":
        target.mkdir()
        (target / "notes.txt").write_text("keep")
    else:
        target.write_bytes(b"the user's bytes")
    path = root / name
    if path.is_dir():
        import shutil
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)
    before = files_digest(root)
    args = [a for a in TINY if a != "--no-tensorboard"]
    for extra in ([], ["--overwrite"]):
        proc = run_script("model_training.py", *args, "--output-dir", root, "--run-name", "k",
                          *extra)
        _refused(proc)
        assert files_digest(root) == before
    if name == "runs/k":
        assert os.listdir(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "keep"
    else:
        assert target.read_bytes() == b"the user's bytes"


def test_overwrite_refuses_a_file_edited_after_the_run_wrote_it(finished, tmp_path):
    root = _copy(finished, tmp_path / "root")
    edited = root / "numpy_outputs" / "summary_k.json"
    edited.write_text(edited.read_text() + "\n# my notes\n")
    before = files_digest(root)
    _refused(run_script("model_training.py", *TINY, "--output-dir", root, "--run-name", "k",
                        "--overwrite"), "summary_k.json", "changed")
    assert files_digest(root) == before


def test_a_records_hash_entries_are_checked_not_trusted(finished, tmp_path):
    """Entries that are not lists of SHA-256 hex strings, or for names the key cannot produce,
    are dropped: the files they name count as not the run's, and nothing is removed."""
    root = _copy(finished, tmp_path / "root")
    record = root / "numpy_outputs" / "manifest_k.json"
    data = json.loads(record.read_text())
    data["files"]["numpy_outputs/summary_k.json"] = "anything"
    data["files"]["../outside"] = [_sha(record)]
    record.write_text(json.dumps(data))
    before = files_digest(root)
    _refused(run_script("model_training.py", *TINY, "--output-dir", root, "--run-name", "k",
                        "--overwrite"), "summary_k.json", "no record")
    assert files_digest(root) == before


def test_an_earlier_versions_folder_lists_no_phantom_keys(tmp_path):
    """A folder of flat arrays only (runs of earlier versions, with every loss part as an array):
    the loss parts' arrays (train_loss_dkd_student_K1.npy, ...) are not taken for run keys."""
    import numpy as np

    from utils.analysis.runs import list_run_keys, load_history
    d = tmp_path / "numpy_outputs"
    d.mkdir()
    for name in ("val_accuracy_student_K1", "train_loss_student_K1", "train_loss_ce_student_K1",
                 "train_loss_dkd_student_K1", "train_loss_dkd_tckd_student_K1",
                 "val_accuracy_B2", "train_loss_B2", "train_loss_ce_B2"):
        np.save(d / f"{name}.npy", np.array([1.0, 2.0]))
    assert list_run_keys(str(d)) == ["B2", "K1"]
    hist = load_history(str(d), "K1")["student"]
    assert hist[("train", "loss_dkd")].tolist() == [1.0, 2.0]
