"""tools/gpu_check.sh --dry-run: every part of the GPU check on the CPU at a tiny size, read back
from its JSON and markdown summaries (the prepared GPU check must not fail on the GPU machine
for a reason the CPU could have shown). The parts run in two dry runs, one per test file, so
that the suite's two processes share them: the CUDA tests and the benchmarks here, the training
runs (the Fashion-MNIST pair, the depth runs, many trials per GPU) in test_gpu_check_runs.py."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, script_env

pytestmark = pytest.mark.slow  # heavy end-to-end checks: `pytest -m "not slow"` skips them

PARTS = "tests,bench,bench_compile,bench_imagenet,bench_campaign"


def run_dry(out, parts):
    """tools/gpu_check.sh --dry-run --parts PARTS OUT, which must pass -> (its summary.json as a
    dict, its summary.md)."""
    env = dict(script_env(), PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "tools", "gpu_check.sh"), "--dry-run",
                           "--parts", parts, str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["dry_run"] is True
    return summary, (out / "summary.md").read_text()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return run_dry(tmp_path_factory.mktemp("gpu_check") / "out", PARTS)


def test_dry_run_passes_the_tests_and_benchmarks(dry_run):
    summary, md = dry_run
    parts = summary["parts"]
    for name in ("tests", "bench", "bench_compile", "bench_imagenet", "bench_resnet8x4",
                 "bench_compile_resnet8x4"):
        assert parts[name]["status"] == "ok", (name, parts[name])
    campaign = [n for n in parts if n.startswith("bench_campaign_")]
    assert len(campaign) >= 3 and all(parts[n]["status"] == "ok" for n in campaign), parts
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
    assert "| bench | ok |" in md and "## CUDA tests" in md and "x ref" in md and "repeats" in md
    assert "## Fashion-MNIST" not in md  # the other file's parts


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "tools", "gpu_check.sh"), "--dry-run",
                           str(tmp_path)], env=dict(script_env(), PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not empty" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine" and len(os.listdir(tmp_path)) == 1
