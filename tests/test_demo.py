"""The main job: `make demo` runs demo.py; here its exact command at a tiny size, with the three
rows of its table read back and checked against the runs' own summaries."""
import json
import os
import re

import pytest

from conftest import REPO_ROOT, assert_ok


def test_make_demo_runs_demo_py():
    with open(os.path.join(REPO_ROOT, "Makefile"), encoding="utf-8") as f:
        text = f.read()
    recipe = text.split("\ndemo: ", 1)[1].split("\n\n", 1)[0]
    assert recipe.splitlines()[1].strip() == "$(PY) demo.py $(DEMO_ARGS)"


@pytest.mark.slow  # two training runs as fresh interpreters, as the demo starts them
def test_demo_at_a_tiny_size(tmp_path, run, tiny_cifar):
    out = tmp_path / "out"
    proc = assert_ok(run("demo.py", "--data-dir", tiny_cifar, "--train-size", "200",
                         "--test-size", "100", "--epochs", "1", "--teacher-epochs", "1",
                         "--output-dir", out, timeout=600))
    text = proc.stdout
    assert f"demo task: CIFAR-10 from {tiny_cifar}" in text
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| (teacher|student alone|student distilled) \| ([^|]+) \| ([\d,]+) \| ([\d.]+) \|$",
        text, re.M)}
    assert set(rows) == {"teacher", "student alone", "student distilled"}
    read = lambda key: json.loads((out / "numpy_outputs" / f"summary_{key}.json").read_text())  # noqa: E731
    alone, distil = read("demo_alone"), read("demo")
    for name, result in (("teacher", distil["teacher"]), ("student alone", alone["student"]),
                         ("student distilled", distil["student"])):
        assert float(rows[name][2]) == round(result["test_acc_best"], 2), name
        assert int(rows[name][1].replace(",", "")) == result["params"], name
    assert rows["teacher"][0].startswith("resnet20 width 16")
    assert rows["student alone"][0].startswith("resnet8 width 8")
    # the same recipe and seed for both students
    for flag in ("seed", "epochs", "lr", "batch_size", "limit_train"):
        assert alone["args"][flag] == distil["args"][flag], flag
    gain = distil["student"]["test_acc_best"] - alone["student"]["test_acc_best"]
    assert f"gain of distillation: {gain:+.2f} points" in text
    assert re.search(r"^demo: done in \d+ s of wall time$", text, re.M)
