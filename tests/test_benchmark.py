"""benchmark.py in its tiny mode: a smoke test of every bench and both paths (no timing check)."""
import json

from conftest import run_script


def test_benchmark_tiny_mode_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script("benchmark.py", "--width", "4", "--batch-size", "8", "--eval-batch-size", "16",
                      "--steps", "1", "--repeats", "1", "--warmup", "1", "--workers", "0",
                      "--precisions", "fp32,bf16", "--benches", "teacher,distill,eval,terms",
                      "--terms", "skip+crd+fitnet", "--json", out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    got = {(r["bench"], r["path"], r["precision"]) for r in rows}
    for bench in ("teacher", "distill", "eval"):
        assert (bench, "reference", "fp32") in got
        assert (bench, "ours", "fp32") in got and (bench, "ours", "bf16") in got
    # the terms bench: the plain student step, then each term alone against it
    for path in ("none", "skip", "crd", "fitnet"):
        assert ("terms", path, "fp32") in got and ("terms", path, "bf16") in got
    for r in rows:
        assert r["images_per_s"] > 0 and r["ratio"] > 0
    assert "ratio" in proc.stdout


def test_benchmark_rejects_unknown_bench():
    proc = run_script("benchmark.py", "--benches", "nope", "--steps", "1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
