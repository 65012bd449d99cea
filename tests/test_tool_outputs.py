"""The analysis tools never damage their inputs or earlier files ("nothing deleted").

Every case runs the real script, as a user would, in a temporary folder that already holds a
checkpoint, a run's arrays and summary and some earlier outputs; the folder is hashed before and
after. An output path that is an input (the checkpoint itself), an existing folder where a file
goes, or an unwritable place must be refused with a one-line error before any work, leaving every
earlier file byte-identical and adding none. The data folder a checkpoint names is printed when
used and --data-dir wins over it.
"""
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

KEY = "tiny"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_cifar):
    """A tiny resnet18 trained for one epoch on the tiny CIFAR-10 folder (args.data_dir = it)."""
    from utils.analysis.notebook import train_tiny_checkpoint
    folder = tmp_path_factory.mktemp("tool_outputs_ckpt")
    return train_tiny_checkpoint(str(folder / "tiny.pth"), width=4, train_size=64, test_size=32,
                                 dataset="cifar10", data_dir=tiny_cifar)


def make_work(folder, ckpt):
    """`folder` holding the checkpoint twice (model.pth and weights.png: a name with an image
    extension), numpy_outputs/ of run KEY, earlier outputs and existing folders."""
    shutil.copy(ckpt, folder / "model.pth")
    shutil.copy(ckpt, folder / "weights.png")
    numpy_dir = folder / "numpy_outputs"
    numpy_dir.mkdir()
    for split in ("train", "val"):
        np.save(numpy_dir / f"{split}_accuracy_{KEY}.npy", np.array([20.0, 30.0]))
        np.save(numpy_dir / f"{split}_loss_{KEY}.npy", np.array([2.2, 2.0]))
    summary = {"run_key": KEY, "dataset": {"dataset": "cifar10", "train_size": 64, "test_size": 32},
               "baseline": {"arch": "resnet18", "base_width": 4, "eca": "parallel",
                            "best_val_acc": 30.0, "final_val_acc": 30.0, "params": 1000}}
    (numpy_dir / f"summary_{KEY}.json").write_text(json.dumps(summary))
    (folder / "earlier.json").write_text('{"accuracy": 12.5}\n')
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "folder").mkdir()
    (folder / "folder" / "inside.txt").write_text("keep me\n")
    (folder / "folder.png").mkdir()          # a folder with an image name
    return folder


def make_locked(work):
    """-> (a place no file can be written to, undo): a 0o500 folder, or, where that stays
    writable (root), a path under a regular file, which fails for root too."""
    folder = work / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    if not os.access(folder, os.W_OK):
        return folder, lambda: folder.chmod(0o700)
    folder.chmod(0o700)
    folder.rmdir()
    return work / "notes.txt", lambda: None


@pytest.fixture
def work(tmp_path, tiny_ckpt):
    return make_work(tmp_path, tiny_ckpt)


def _one_line_error(proc):
    assert proc.returncode == 2, \
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


BENCH_TINY = ["--benches", "eval", "--no-reference", "--precisions", "fp32", "--width", "4",
              "--batch-size", "8", "--eval-batch-size", "8", "--steps", "1", "--repeats", "1",
              "--warmup", "1", "--device", "cpu"]

# case -> (script, argv with {work}/{locked} placeholders, words ('|') the message must hold one of)
REFUSED = {
    # the output is the checkpoint itself
    "visualize-output-is-checkpoint": (
        "visualize.py", ["{work}/weights.png", "--output", "{work}/weights.png"], "is an input"),
    "onnx-output-is-checkpoint": (
        "convertToOnnx.py", ["{work}/model.pth", "--output", "{work}/model.pth"], "is an input"),
    "evaluate-json-is-checkpoint": (
        "evaluate.py", ["{work}/model.pth", "--json", "{work}/model.pth", "--no-tensorboard"],
        "is an input"),
    "efficiency-json-is-checkpoint": (
        "efficiency.py", ["{work}/model.pth", "--no-timing", "--json", "{work}/model.pth"],
        "is an input"),
    "compare-output-is-summary": (
        "compare_runs.py", ["--numpy-dir", "{work}/numpy_outputs", "--output",
                            f"{{work}}/numpy_outputs/summary_{KEY}.json"], "is an input"),
    # an existing folder where a file goes
    "visualize-output-is-folder": (
        "visualize.py", ["{work}/model.pth", "--output", "{work}/folder.png"], "existing folder"),
    "onnx-output-is-folder": (
        "convertToOnnx.py", ["{work}/model.pth", "--output", "{work}/folder"], "existing folder"),
    "evaluate-json-is-folder": (
        "evaluate.py", ["{work}/model.pth", "--json", "{work}/folder", "--no-tensorboard"],
        "existing folder"),
    "benchmark-json-is-folder": (
        "benchmark.py", [*BENCH_TINY, "--json", "{work}/folder"], "existing folder"),
    # an unwritable place
    "evaluate-out-dir-unwritable": (
        "evaluate.py", ["{work}/model.pth", "--out-dir", "{locked}/eval", "--no-tensorboard"],
        "not writable|not a folder"),
    "plotting-out-dir-unwritable": (
        "numpy_outputs/plotting.py", ["--run", KEY, "--numpy-dir", "{work}/numpy_outputs",
                                      "--out-dir", "{locked}/plots"], "not writable|not a folder"),
    "efficiency-json-unwritable": (
        "efficiency.py", ["{work}/model.pth", "--no-timing", "--json", "{locked}/eff.json"],
        "not writable|not a folder"),
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory, tiny_ckpt, run, digest):
    """Every REFUSED case run once, two at a time (each is mostly interpreter start-up), each in
    its own folder: {case: (CompletedProcess, digest before, digest after)}."""
    jobs, undo = {}, []
    for case, (script, argv, _) in REFUSED.items():
        work = make_work(tmp_path_factory.mktemp(case), tiny_ckpt)
        locked, restore = make_locked(work)
        undo.append(restore)
        jobs[case] = (work, script, [a.format(work=work, locked=locked) for a in argv],
                      digest(work))
    results = {}
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {case: pool.submit(run, script, *argv, timeout=180)
                       for case, (_, script, argv, _) in jobs.items()}
            for case, future in futures.items():
                work, _, _, before = jobs[case]
                results[case] = (future.result(), before, digest(work))
        yield results
    finally:
        for restore in undo:
            restore()


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_output_path_is_refused_and_nothing_changes(case, refused):
    proc, before, after = refused[case]
    line = _one_line_error(proc)
    assert any(word in line for word in REFUSED[case][2].split("|")), line
    assert after == before  # the checkpoint and every earlier file as they were, no new file


# ---------------------------------------------------------------- visualize: CKPT.png
FAKE_DOT = """#!{python}
# Graphviz stand-in for machines without it: writes a small PNG where `dot -T png` would
import sys
from PIL import Image
args = sys.argv[1:]
fmt = [a[2:] for a in args if a.startswith("-T")][0].split(":")[0]
out = args[args.index("-o") + 1] if "-o" in args else args[args.index("-O") + 1] + "." + fmt
Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format=fmt.upper())
"""


@pytest.fixture
def dot_on_path(tmp_path_factory, monkeypatch):
    """Graphviz's real `dot` when installed, else a stand-in on PATH for the scripts run here."""
    if shutil.which("dot") is None:
        bin_dir = tmp_path_factory.mktemp("fake_dot")
        fake = bin_dir / "dot"
        fake.write_text(FAKE_DOT.format(python=sys.executable))
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_visualize_output_next_to_checkpoint_keeps_it(work, dot_on_path, run, digest):
    """--output CKPT.png: graphviz used to write its source to CKPT and then delete it."""
    ckpt = work / "model.pth"
    before = digest(work)
    proc = run("visualize.py", ckpt, "--output", f"{ckpt}.png", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    after = digest(work)
    assert set(after) == set(before) | {"model.pth.png"}  # no temporary folder or source left
    assert {k: after[k] for k in before} == before        # the checkpoint is intact
    assert (work / "model.pth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- evaluate: the data folder
def test_evaluate_announces_the_data_folder_of_the_checkpoint(work, tiny_cifar, run, digest):
    before = digest(work)
    proc = run("evaluate.py", work / "model.pth", "--out-dir", work / "eval", "--no-tensorboard",
               "--quiet", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if "from the checkpoint" in line]
    assert len(notes) == 1 and tiny_cifar in notes[0], proc.stdout
    result = json.loads((work / "eval" / "model_eval.json").read_text())
    assert result["data_dir"] == os.path.abspath(tiny_cifar) and result["data_dir_from_checkpoint"]
    assert result["num_images"] == 32
    after = digest(work)
    assert {k: after[k] for k in before} == before


def test_evaluate_uses_data_dir_when_given(work, tiny_cifar, run, digest):
    mine = work / "my_data"
    shutil.copytree(tiny_cifar, mine)
    before = digest(work)
    proc = run("evaluate.py", work / "model.pth", "--data-dir", mine, "--json", work / "e.json",
               "--out-dir", work / "eval", "--no-tensorboard", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from the checkpoint" not in proc.stdout and tiny_cifar not in proc.stdout
    result = json.loads((work / "e.json").read_text())
    assert result["data_dir"] == str(mine) and result["data_dir_from_checkpoint"] is False
    after = digest(work)
    assert {k: after[k] for k in before} == before


def test_evaluate_refuses_a_data_dir_that_is_not_a_string(work, run, digest):
    ckpt = torch.load(work / "model.pth", map_location="cpu", weights_only=True)
    ckpt["args"]["data_dir"] = ["/", "etc"]           # loads safely, but is not a folder name
    torch.save(ckpt, work / "crafted.pth")
    before = digest(work)
    proc = run("evaluate.py", work / "crafted.pth", "--no-tensorboard", timeout=120)
    line = _one_line_error(proc)
    assert "data_dir" in line, line
    assert digest(work) == before
