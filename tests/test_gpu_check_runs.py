"""tools/gpu_check.sh --dry-run, its training parts (the Fashion-MNIST teacher and student, each
net alone for the depth question, many trials per GPU on a fake device list), read back from
the summaries; the CUDA tests and benchmarks are test_gpu_check.py's dry run."""
import pytest

from test_gpu_check import run_dry

pytestmark = pytest.mark.slow  # heavy end-to-end checks: `pytest -m "not slow"` skips them


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return run_dry(tmp_path_factory.mktemp("gpu_check_runs") / "out", "fmnist,sweep_small,depth")


def test_dry_run_passes_the_training_parts(dry_run):
    summary, md = dry_run
    parts = summary["parts"]
    assert set(parts) == {"fmnist", "sweep_small", "depth_resnet18", "depth_resnet34",
                          "depth_resnet34_fp32"}, sorted(parts)
    assert all(p["status"] == "ok" for p in parts.values()), parts
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
    assert "## Fashion-MNIST" in md and "## Depth" in md and "## Many trials per GPU" in md
    assert "## CUDA tests" not in md  # the other file's parts
