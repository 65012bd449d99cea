"""Bad input: a non-zero exit, one line on stderr, no traceback, and the outputs of an earlier
good run (same --output-dir and run key) byte-for-byte unchanged, with nothing added.

Every case runs against its own copy of one good run's output folder (sha256 of every file
before and after); the cases are independent processes, so they run two at a time."""
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import files_digest, run_script
from skipkd.models import create_model
from skipkd.io.checkpoint import save_checkpoint
from skipkd.data import write_cifar10

pytestmark = pytest.mark.slow  # heavy end-to-end checks: `pytest -m "not slow"` skips them

MID, BASE = "model_training_mid.py", "model_training.py"
EVAL, VIS, ONNX, EFF = "evaluate.py", "visualize.py", "convertToOnnx.py", "efficiency.py"
CMP, PLOT = "compare_runs.py", "numpy_outputs/plotting.py"
SWEEP, BENCH = "sweep.py", "benchmark.py"
TOOLS = (EVAL, VIS, ONNX, EFF, CMP, PLOT, SWEEP, BENCH)  # their cases take no training flags
_SWEEP_ARGS = ["--dir", "{out}/sweeps/s", "--args", "--dataset synthetic --epochs 1", "--seeds", "0"]
KEY = "good"  # every case uses the good run's key: anything it wrote would land on its files


def _common(data_dir, out, tensorboard=False):
    return ["--dataset", "cifar10", "--data-dir", data_dir, "--width", "4", "--epochs", "1",
            "--batch-size", "50", "--eval-batch-size", "100", "--output-dir", out,
            "--no-progress", "--device", "cpu", "--run-name", KEY,
            *([] if tensorboard else ["--no-tensorboard"])]


# id: (script, extra args, substrings the message must contain (any case)). Extra args may name
# {out} (the case's copy of the good outputs), {data} (the tiny CIFAR-10), the bad data folders
# and the checkpoint files of the `paths` fixture; a later flag overrides _common's.
CASES = {
    # ---- flags and values
    "unknown-teacher": (MID, ["--teacher", "resnet19"], ["resnet19", "resnet18", "resnet152"]),
    "unknown-student": (MID, ["--student", "vgg17"], ["vgg17", "resnet50"]),
    "unknown-baseline-model": (BASE, ["--model", "resnet19"], ["resnet19", "resnet34"]),
    "bad-eca": (BASE, ["--eca", "first"], ["first", "parallel"]),
    "negative-epochs": (MID, ["--epochs", "-1"], ["-1"]),
    "negative-alpha": (MID, ["--alpha", "-0.5"], ["alpha", "-0.5"]),
    "lr-nan": (BASE, ["--lr", "nan"], ["--lr", "nan"]),
    "ECA-maybe": (MID, ["--ECA", "maybe"], ["maybe"]),
    "even-eca-k": (MID, ["--eca-k", "4"], ["eca-k", "4"]),
    "eca-and-ECA": (BASE, ["--eca", "last", "--ECA", "yes"], ["--eca"]),
    "bad-run-name": (MID, ["--run-name", "a/b"], ["run-name"]),
    "run-name-dotdot": (BASE, ["--run-name", "..", "--overwrite"], ["run-name", ".."]),
    "run-name-dot": (MID, ["--run-name", ".", "--overwrite"], ["run-name"]),
    "run-name-glob": (BASE, ["--run-name", "go?d", "--overwrite"], ["run-name", "?"]),
    "run-name-brackets": (MID, ["--run-name", "goo[d]", "--overwrite"], ["run-name", "["]),
    "run-name-too-long": (BASE, ["--run-name", "k" * 300], ["run-name", "300"]),
    "run-name-leading-dash": (BASE, ["--run-name=-good"], ["run-name", "letter or a digit"]),
    "run-name-empty": (MID, ["--run-name", ""], ["run-name", "empty"]),
    "unknown-kd": (MID, ["--kd", "skip+fitnets"], ["fitnets"]),
    "kd-opt-out-of-range": (MID, ["--kd", "crd", "--kd-opt", "crd.feat_dim=1000000000"],
                            ["crd.feat_dim", "4096"]),
    "kd-opt-unknown": (MID, ["--kd", "at", "--kd-opt", "at.q=2"], ["at", "'q'"]),
    "kd-opt-unchosen-term": (MID, ["--kd", "skip", "--kd-opt", "dkd.beta=2"], ["dkd"]),
    "kd-weights-unchosen-term": (MID, ["--kd", "skip", "--kd-weights", "crd=5"], ["crd"]),
    "fitnet-stage-missing": (MID, ["--kd", "fitnet", "--kd-opt", "fitnet.stage=9"],
                             ["fitnet.stage", "9"]),
    "skip-without-hint": (MID, ["--kd", "skip", "--teacher", "vgg8", "--eca", "none"],
                          ["skip", "hint"]),
    "width-the-family-refuses": (BASE, ["--model", "ShuffleV1", "--eca", "none"],
                                 ["ShuffleV1", "divisible"]),
    "placement-the-family-lacks": (BASE, ["--model", "vgg8", "--eca", "parallel"],
                                   ["vgg8", "parallel"]),
    "unknown-flag": (MID, ["--teacher-lr", "0.1"], ["--teacher-lr"]),
    "every-loss-weight-zero": (MID, ["--kd", "logit", "--kd-recipe", "hinton", "--ce-weight", "0",
                                     "--beta", "0"],
                               ["weight is zero"]),
    "zero-init-residual-vgg": (BASE, ["--model", "vgg8", "--eca", "none", "--zero-init-residual"],
                               ["--zero-init-residual", "residual"]),
    "device-mps": (BASE, ["--device", "mps"], ["mps"]),
    "device-cuda-without-cuda": (BASE, ["--device", "cuda"], ["cuda"]),
    "fp16-on-cpu": (BASE, ["--precision", "fp16"], ["fp16", "cpu"]),
    # ---- numbers beyond what the machine (or the code) can take: refused before any work
    "seed-too-large": (BASE, ["--seed", "99999999999"], ["--seed", "4,294,967,295"]),
    "split-seed-negative": (BASE, ["--split-seed", "-3"], ["--split-seed"]),
    "width-zero": (MID, ["--width", "0"], ["--width"]),
    "width-huge": (BASE, ["--width", "100000"], ["--width", "1,024"]),
    "teacher-width-huge": (MID, ["--teacher-width", "5000"], ["--teacher-width"]),
    "crop-padding-huge": (BASE, ["--crop-padding", "1000"], ["--crop-padding"]),
    "synthetic-size-huge": (BASE, ["--dataset", "synthetic", "--synthetic-train-size",
                                   "1000000000"], ["--synthetic-train-size"]),
    "batch-size-huge": (BASE, ["--batch-size", "10000000"], ["--batch-size"]),
    "image-size-tiny": (BASE, ["--image-size", "2"], ["--image-size"]),
    "warmup-longer-than-run": (BASE, ["--warmup-epochs", "5"], ["--warmup-epochs", "--epochs 1"]),
    "momentum-above-one": (BASE, ["--momentum", "1.5"], ["--momentum"]),
    "temperature-zero": (MID, ["--temperature", "0"], ["--temperature"]),
    "alpha-inf": (MID, ["--alpha", "inf"], ["--alpha"]),
    "val-split-one": (BASE, ["--val-split", "1.0"], ["--val-split"]),
    "eca-k-huge": (MID, ["--eca-k", "1001"], ["--eca-k"]),
    "epochs-huge": (MID, ["--epochs", "10000000"], ["--epochs"]),
    # ---- the run key and its outputs
    "same-key-without-overwrite": (MID, [], ["--overwrite", KEY]),
    "same-key-other-script": (BASE, [], ["--overwrite", KEY]),
    "resume-and-overwrite": (MID, ["--resume", "--overwrite"], ["--resume", "--overwrite"]),
    "resume-without-state": (MID, ["--resume", "--run-name", "other"], ["other", "no saved"]),
    "resume-kd-key-as-baseline": (BASE, ["--resume"], [KEY, "no saved baseline state"]),
    "resume-other-width": (MID, ["--resume", "--width", "8"], ["--width 4 (now 8)"]),
    "resume-other-lr": (MID, ["--resume", "--lr", "0.05"], ["--lr", "0.05"]),
    "resume-corrupt-state": (BASE, ["--resume", "--run-name", "corrupt"],
                             ["corrupt_baseline_state.pth", "not a readable checkpoint"]),
    "resume-not-a-state": (BASE, ["--resume", "--run-name", "notstate"],
                           ["notstate_baseline_state.pth", "not a training-state file"]),
    "output-dir-under-a-file": (MID, ["--output-dir", "{out}/numpy_outputs/summary_good.json/x"],
                                ["cannot create output folder", "summary_good.json"]),
    # ---- data folders
    "missing-data-dir": (MID, ["--data-dir", "{missing_data}"], ["{missing_data}"]),
    "data-dir-without-cifar": (BASE, ["--data-dir", "{empty_data}"], ["cifar-10-batches-py"]),
    "empty-cifar-folder": (BASE, ["--data-dir", "{empty_cifar}"], ["data_batch_1"]),
    "malformed-cifar-batch": (BASE, ["--data-dir", "{malformed}"], ["data_batch_3"]),
    "crafted-cifar-pickle": (BASE, ["--data-dir", "{crafted}"], ["data_batch_2", "refusing"]),
    "cifar-label-10": (MID, ["--data-dir", "{label10}"], ["data_batch_1", "label"]),
    # ---- teacher checkpoints
    "teacher-ckpt-other-arch": (MID, ["--teacher-checkpoint", "{r50}", "--teacher", "resnet34"],
                                ["resnet50", "resnet34"]),
    "teacher-ckpt-mislabelled": (MID, ["--teacher-checkpoint", "{mislabelled}"], ["do not match"]),
    "teacher-ckpt-corrupt": (MID, ["--teacher-checkpoint", "{corrupt}"], ["corrupt.pth"]),
    "teacher-ckpt-truncated": (MID, ["--teacher-checkpoint", "{truncated}"], ["truncated.pth"]),
    "teacher-ckpt-foreign": (MID, ["--teacher-checkpoint", "{foreign}"],
                             ["foreign.pth", "not a checkpoint"]),
    "teacher-ckpt-missing": (MID, ["--teacher-checkpoint", "{missing}"],
                             ["does_not_exist.pth", "not found"]),
    "teacher-ckpt-directory": (MID, ["--teacher-checkpoint", "{ckpt_dir}"], ["is a directory"]),
    "teacher-ckpt-100-classes": (MID, ["--teacher-checkpoint", "{c100}"], ["100 classes"]),
    "teacher-ckpt-width-text": (MID, ["--teacher-checkpoint", "{width_text}"], ["base_width"]),
    # ---- the analysis tools, on the same folder (their outputs would land beside the run's)
    "evaluate-missing-ckpt": (EVAL, ["{missing}"], ["does_not_exist.pth", "not found"]),
    "evaluate-corrupt-ckpt": (EVAL, ["{corrupt}"], ["corrupt.pth"]),
    "evaluate-std-zero": (EVAL, ["{std_zero}"], ["std"]),
    "evaluate-json-is-the-checkpoint": (EVAL, ["{out}/saved_pth_model/good_student.pth", "--json",
                                               "{out}/saved_pth_model/good_student.pth"],
                                        ["good_student.pth"]),
    "evaluate-data-dir-missing": (EVAL, ["{out}/saved_pth_model/good_student.pth", "--data-dir",
                                         "{missing_data}"], ["{missing_data}"]),
    "visualize-foreign-ckpt": (VIS, ["{foreign}"], ["foreign.pth"]),
    "visualize-output-is-the-checkpoint": (VIS, ["{out}/saved_pth_model/good_student.pth",
                                                 "--output",
                                                 "{out}/saved_pth_model/good_student.pth"],
                                           ["good_student.pth"]),
    "onnx-truncated-ckpt": (ONNX, ["{truncated}"], ["truncated.pth"]),
    "onnx-output-is-a-folder": (ONNX, ["{out}/saved_pth_model/good_student.pth", "--output",
                                       "{out}/saved_pth_model"], ["saved_pth_model"]),
    "efficiency-width-text": (EFF, ["{width_text}", "--no-timing"], ["base_width"]),
    "efficiency-unknown-run": (EFF, ["--run", "nope", "--ckpt-dir", "{out}/saved_pth_model"],
                               ["nope"]),
    "compare-unknown-run": (CMP, ["--numpy-dir", "{out}/numpy_outputs", "--runs", "nope"],
                            ["nope", KEY]),
    "plotting-unknown-run": (PLOT, ["--numpy-dir", "{out}/numpy_outputs", "--run", "nope"],
                             ["nope", KEY]),
    "plotting-bad-dpi": (PLOT, ["--numpy-dir", "{out}/numpy_outputs", "--dpi", "0"], ["--dpi"]),
    "teacher-ckpt-std-zero": (MID, ["--teacher-checkpoint", "{std_zero}"], ["std"]),
    # ---- sweep.py: files it did not make, grids too big or too deep (the user's files outside
    # the output folder are checked byte for byte by test_sweep_left_the_users_files_alone)
    "sweep-storage-user-file": (SWEEP, ["create", "s", "--storage", "{user_file}", *_SWEEP_ARGS],
                                ["user_notes.txt", "not an optuna journal"]),
    "sweep-storage-user-file-link": (SWEEP, ["create", "s", "--storage", "{user_link}",
                                             *_SWEEP_ARGS], ["notes_link.log", "symbolic link"]),
    "sweep-storage-truncated-journal": (SWEEP, ["create", "s", "--storage", "{cut_journal}",
                                                *_SWEEP_ARGS], ["cut.log", "unfinished"]),
    "sweep-work-corrupt-journal": (SWEEP, ["work", "s", "--storage", "{bad_journal}", "--dir",
                                           "{out}/sweeps/s"], ["bad.log", "line 2"]),
    "sweep-report-journal-link": (SWEEP, ["report", "s", "--storage", "{user_link}", "--dir",
                                          "{out}/sweeps/s"], ["symbolic link"]),
    "sweep-astronomical-grid": (SWEEP, ["create", "s", "--grid", "{huge_grid}", "--dir",
                                        "{out}/sweeps/s"], ["multiply", "100,000"]),
    "sweep-deeply-nested-grid": (SWEEP, ["create", "s", "--grid", "{deep_grid}", "--dir",
                                         "{out}/sweeps/s"], ["nested"]),
    "sweep-huge-integer-bound": (SWEEP, ["create", "s", "--grid", "{big_int_grid}", "--dir",
                                         "{out}/sweeps/s"], ["search.params.lr.high", "beyond"]),
    "sweep-grid-values-wrong-type": (SWEEP, ["create", "s", "--grid", "{string_axis_grid}",
                                             "--dir", "{out}/sweeps/s"], ["seed", "list"]),
    "benchmark-fp8": (BENCH, ["--precisions", "fp8"], ["fp8", "fp32, bf16, fp16"]),
    "benchmark-negative-workers": (BENCH, ["--workers", "-1"], ["--workers", "-1"]),
}


class _RunsCode:
    """Unpickled without restriction, this would call os.makedirs(path)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_cifar, tiny_data):
    """Checkpoint files for the teacher-checkpoint cases and the bad data folders."""
    d = tmp_path_factory.mktemp("ckpts")
    data_cfg = {"dataset": "cifar10", "mean": [0.5] * 3, "std": [0.25] * 3, "num_classes": 10,
                "in_channels": 3, "image_size": 32, "classes": [str(i) for i in range(10)]}
    model_cfg = {"num_classes": 10, "base_width": 4, "in_channels": 3, "eca": "parallel",
                 "eca_k": None, "image_size": 32}
    r50 = save_checkpoint(str(d / "r50_teacher.pth"), create_model("resnet50", base_width=4,
                                                                    placement="parallel"),
                          arch="resnet50", role="teacher", model_cfg=model_cfg, data_cfg=data_cfg,
                          metrics={"val": {"acc": 10.0, "loss": 2.3}}, epoch=1)
    # a resnet18's weights labelled as a resnet34
    mislabelled = save_checkpoint(str(d / "mislabelled.pth"),
                                  create_model("resnet18", base_width=4, placement="parallel"),
                                  arch="resnet34", role="teacher", model_cfg=model_cfg,
                                  data_cfg=data_cfg, epoch=1)
    # a sound teacher, but for 100 classes
    c100 = save_checkpoint(str(d / "c100.pth"),
                           create_model("resnet18", num_classes=100, base_width=4, placement="parallel"),
                           arch="resnet18", role="teacher",
                           model_cfg={**model_cfg, "num_classes": 100},
                           data_cfg={**data_cfg, "num_classes": 100}, epoch=1)
    corrupt = d / "corrupt.pth"
    corrupt.write_bytes(os.urandom(4096))
    truncated = d / "truncated.pth"
    truncated.write_bytes(open(r50, "rb").read()[:2000])
    foreign = d / "foreign.pth"
    torch.save({"weights": torch.zeros(3)}, foreign)
    (d / "a_folder.pth").mkdir()

    good = torch.load(r50, weights_only=True)
    width_text = str(d / "width_text.pth")
    torch.save({**good, "model": {**good["model"], "base_width": "4"}}, width_text)
    std_zero = str(d / "std_zero.pth")
    torch.save({**good, "data": {**good["data"], "std": [0.25, 0.0, 0.25]}}, std_zero)

    data = tmp_path_factory.mktemp("bad_data")
    (data / "empty").mkdir()
    (data / "empty_cifar" / "cifar-10-batches-py").mkdir(parents=True)
    folder = write_cifar10(str(data / "malformed"), *tiny_data)
    # a readable pickle that is not a CIFAR batch (wrong row length)
    with open(os.path.join(folder, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    # a batch whose unpickling would run code (it would create the folder `ran`)
    crafted = write_cifar10(str(data / "crafted"), *tiny_data)
    with open(os.path.join(crafted, "data_batch_2"), "wb") as f:
        pickle.dump(_RunsCode(str(data / "ran")), f)
    label10 = write_cifar10(str(data / "label10"), *tiny_data)
    with open(os.path.join(label10, "data_batch_1"), "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # written by this fixture: trusted
    batch[b"labels"] = [10] + list(batch[b"labels"])[1:]
    with open(os.path.join(label10, "data_batch_1"), "wb") as f:
        pickle.dump(batch, f)
    sweeps = _sweep_inputs(tmp_path_factory.mktemp("sweep_inputs"))
    return {**sweeps, "data": tiny_cifar, "r50": r50, "width_text": width_text, "std_zero": std_zero,
            "crafted": str(data / "crafted"), "label10": str(data / "label10"), "mislabelled": mislabelled, "c100": c100,
            "corrupt": str(corrupt), "truncated": str(truncated), "foreign": str(foreign),
            "missing": str(d / "does_not_exist.pth"), "ckpt_dir": str(d / "a_folder.pth"),
            "missing_data": str(data / "no_such_data"), "empty_data": str(data / "empty"),
            "empty_cifar": str(data / "empty_cifar"), "malformed": str(data / "malformed")}


USER_BYTES = b"my notes, not a journal\nsecond line\n"


def _sweep_inputs(d):
    """A user's file (and a link to it) where a journal would go, damaged journals, and grid
    files that are too big, too deep or of the wrong types."""
    import json
    user = d / "user_notes.txt"
    user.write_bytes(USER_BYTES)
    (d / "notes_link.log").symlink_to(user)
    record = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]})
    (d / "cut.log").write_text(record + "\n" + record[:20])
    (d / "bad.log").write_text(record + "\nnot a record\n")
    axes = {f"a{i}": {f"v{j}": {"seed": j} for j in range(10)} for i in range(20)}
    grids = {"huge_grid": {"script": BASE, "grid": axes},
             "big_int_grid": {"script": BASE, "search": {"n_trials": 3, "params": {
                 "lr": {"low": 1, "high": 10 ** 400, "type": "int"}}}},
             "string_axis_grid": {"script": BASE, "grid": {"seed": "0,1"}}}
    out = {"user_file": str(user), "user_link": str(d / "notes_link.log"),
           "cut_journal": str(d / "cut.log"), "bad_journal": str(d / "bad.log")}
    for name, grid in grids.items():
        (d / f"{name}.json").write_text(json.dumps(grid))
        out[name] = str(d / f"{name}.json")
    (d / "deep_grid.json").write_text('{"grid": ' + '{"a": ' * 5000 + "1" + "}" * 5001)
    out["deep_grid"] = str(d / "deep_grid.json")
    out["before"] = files_digest(d)
    return out


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, tiny_cifar):
    """One good tiny distillation run (key 'good', TensorBoard on) plus two planted state files
    of other keys: a corrupt one and a checkpoint that is not a training state."""
    out = str(tmp_path_factory.mktemp("good_run"))
    proc = run_script(MID, *_common(tiny_cifar, out, tensorboard=True))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    ckpts = os.path.join(out, "saved_pth_model")
    with open(os.path.join(ckpts, "corrupt_baseline_state.pth"), "wb") as f:
        f.write(os.urandom(4096))
    shutil.copyfile(os.path.join(ckpts, f"{KEY}_student.pth"),
                    os.path.join(ckpts, "notstate_baseline_state.pth"))
    digest = files_digest(out)
    assert any(p.startswith("runs") for p in digest) and len(digest) > 20, sorted(digest)
    return out, digest


@pytest.fixture(scope="module")
def battery(good_run, paths, tmp_path_factory):
    """Run every case (two at a time), each with --output-dir a fresh copy of the good outputs.
    -> {case: (CompletedProcess, the copy's folder, its message needles)}"""
    good, _ = good_run
    root = tmp_path_factory.mktemp("battery")

    def one(case):
        script, extra, needles = CASES[case]
        out = str(root / case)
        shutil.copytree(good, out)
        fill = {**paths, "out": out}
        common = [] if script in TOOLS else _common(paths["data"], out)
        proc = run_script(script, *common, *[a.format(**fill) for a in extra])
        return proc, out, [n.format(**fill) for n in needles]

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(one, CASES)))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, battery, good_run, record_property):
    proc, out, needles = battery[case]
    # user properties reach the main process under pytest-xdist too (conftest prints them)
    record_property("battery_verdict", f"exit {proc.returncode}: {proc.stderr.strip()[:300]}")
    _assert_one_line_error(proc, needles)
    _, before = good_run
    assert files_digest(out) == before, f"{case} changed the earlier outputs"
    record_property("battery_unchanged", True)


def test_crafted_pickle_ran_nothing(battery, paths):
    assert "crafted-cifar-pickle" in battery
    assert not os.path.exists(os.path.join(os.path.dirname(paths["crafted"]), "ran"))


def test_sweep_left_the_users_files_alone(battery, paths):
    """The files behind --storage (a user's file, a link to it, damaged journals) and the grid
    files keep their bytes; the link is still a link."""
    d = os.path.dirname(paths["user_file"])
    assert files_digest(d) == paths["before"]
    assert open(paths["user_file"], "rb").read() == USER_BYTES
    assert os.path.islink(paths["user_link"])


def test_battery_is_broad():
    assert len(CASES) >= 60 and len({(s, tuple(a)) for s, a, _ in CASES.values()}) == len(CASES)
    assert {s for s, _, _ in CASES.values()} == {MID, BASE, *TOOLS}  # every script and tool


def _assert_one_line_error(proc, needles):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    err = proc.stderr.strip()
    assert err, "empty stderr"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, f"more than one line on stderr:\n{proc.stderr}"
    assert err.startswith("error:") or ": error:" in err, err
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in {err!r}"
