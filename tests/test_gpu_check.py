"""tools/gpu_check.sh --dry-run: every part of the GPU check on the CPU at a tiny size, read back
from its JSON and markdown summaries (the prepared GPU check must not fail on the GPU machine
for a reason the CPU could have shown)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, script_env

pytestmark = pytest.mark.slow  # heavy end-to-end checks: `pytest -m "not slow"` skips them


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    env = dict(script_env(), PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "tools", "gpu_check.sh"), "--dry-run",
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def test_dry_run_passes_every_part(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["dry_run"] is True
    parts = summary["parts"]
    for name in ("tests", "bench", "bench_compile", "bench_imagenet", "fmnist", "sweep_small",
                 "depth_resnet18",
                 "depth_resnet34", "depth_resnet34_fp32"):
        assert parts[name]["status"] == "ok", (name, parts[name])
    # the CUDA tests ran on the CPU (none skipped for want of a GPU), compile tests deselected
    tests = summary["tests"]
    assert tests and set(tests.values()) == {"PASSED"}, tests
    assert any(k.startswith("test_mixed_precision") for k in tests)
    assert any(k.startswith("test_one_process_torchrun") for k in tests)
    # both benchmark runs: reference and ours in fp32 and bf16, eager and compiled
    eager = {(r["bench"], r["path"], r["precision"]) for r in summary["benchmarks"]["bench"]["rows"]}
    assert {("distill", "reference", "fp32"), ("distill", "ours", "fp32"),
            ("distill", "ours", "bf16"), ("teacher", "ours", "bf16"), ("eval", "ours", "fp32")} <= eager
    imagenet = {(r["bench"], r["path"]) for r in summary["benchmarks"]["bench_imagenet"]["rows"]}
    assert {("distill", "ours"), ("data", "workers=0"), ("data", "workers=1")} <= imagenet
    compiled = summary["benchmarks"]["bench_compile"]
    assert compiled["config"]["compile"] is True
    assert {r["precision"] for r in compiled["rows"] if r["path"] == "ours"} == {"fp32"}  # dry
    assert all(r["images_per_s"] > 0 for r in compiled["rows"])
    fm = summary["fmnist"]
    assert fm["protocol"].startswith("held-out-val")
    for role in ("teacher", "student"):
        assert 0 <= fm[role]["test_acc_best"] <= 100
    depth = summary["depth"]  # each net alone: resnet18, resnet34 (auto and fp32 precision)
    assert [depth[t]["arch"] for t in ("depth_resnet18", "depth_resnet34", "depth_resnet34_fp32")] \
        == ["resnet18", "resnet34", "resnet34"]
    assert depth["depth_resnet34_fp32"]["precision"] == "fp32"
    assert all(0 <= r["test_acc_best"] <= 100 for r in depth.values())
    # many trials per GPU (a fake device list): every trial of each level ran, figures > 0
    levels = summary["sweep_small"]["levels"]
    assert [lv["per_gpu"] for lv in levels] == [1, 2]
    assert all(lv["done"] == lv["trials"] and lv["trials_per_hour"] > 0 and
               lv["images_per_s"] > 0 for lv in levels)
    assert levels[0]["x_per_gpu_1"] == 1.0
    md = (out / "summary.md").read_text()
    assert "| bench | ok |" in md and "## Fashion-MNIST" in md and "x ref" in md
    assert "## Depth" in md and "## Many trials per GPU" in md and "repeats" in md


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "tools", "gpu_check.sh"), "--dry-run",
                           str(tmp_path)], env=dict(script_env(), PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not empty" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine" and len(os.listdir(tmp_path)) == 1
