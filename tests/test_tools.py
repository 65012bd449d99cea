"""The analysis tools run on the outputs of a tiny real training run.

One module-scoped fixture trains a resnet34 teacher -> resnet18 student (skip KD, with a
connector since the widths differ) and a resnet18 baseline on a small synthetic set; every tool
then runs on those files and the tests check what it wrote.
"""
import importlib.util
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from conftest import run_script  # noqa: E402
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402

KD_KEY, BASE_KEY = "tools-kd", "tools-base"
DATA_FLAGS = ["--dataset", "synthetic", "--synthetic-train-size", "300",
              "--synthetic-test-size", "100", "--epochs", "2", "--batch-size", "50",
              "--eval-batch-size", "100", "--no-progress", "--no-tensorboard", "--device", "cpu"]


def _cmd(script, *args):
    return [sys.executable, os.path.join(ROOT, script), *map(str, args)]


def _run(script, *args, timeout=120):
    return run_script(script, *args, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, \
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def _run_parallel(commands, timeout=300):
    """Run the commands two at a time (each its own process; conftest.run_script)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda cmd: run_script(*cmd[1:], timeout=timeout), commands))


def _png_ok(path, min_size=50):
    """The file is a PNG that PIL opens, reasonably large, and not a blank canvas."""
    from PIL import Image
    assert os.path.exists(path), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_size, im.size
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 0, f"{path} is blank"
    return pixels.shape


def _import_script(path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tools_run(tmp_path_factory):
    """Root folder of a finished KD run (teacher width 8, student width 4) and a baseline."""
    root = tmp_path_factory.mktemp("tools_run")
    kd, base = _run_parallel([
        _cmd("model_training_mid.py", *DATA_FLAGS, "--teacher", "resnet34", "--student",
             "resnet18", "--teacher-width", "8", "--student-width", "4", "--kd", "skip",
             "--eca", "parallel", "--output-dir", root, "--run-name", KD_KEY),
        _cmd("model_training.py", *DATA_FLAGS, "--model", "resnet18", "--width", "4",
             "--output-dir", root, "--run-name", BASE_KEY),
    ])
    _ok(kd)
    _ok(base)
    ckpt = os.path.join(root, "saved_pth_model")
    return {
        "root": str(root), "numpy": os.path.join(root, "numpy_outputs"), "ckpt_dir": ckpt,
        "teacher": os.path.join(ckpt, f"{KD_KEY}_teacher.pth"),
        "student": os.path.join(ckpt, f"{KD_KEY}_student.pth"),
        "baseline": os.path.join(ckpt, f"{BASE_KEY}_baseline.pth"),
        "summary": json.load(open(os.path.join(root, "numpy_outputs", f"summary_{KD_KEY}.json"))),
    }


# ---------------------------------------------------------------- plotting
def test_plotting_png_and_html(tools_run, tmp_path):
    out = tmp_path / "plots"
    proc = _ok(_run("numpy_outputs/plotting.py", "--run", KD_KEY, "--baseline", BASE_KEY,
                    "--numpy-dir", tools_run["numpy"], "--out-dir", out, "--name", "curves"))
    assert "curves.png" in proc.stdout
    _png_ok(out / "curves.png", min_size=300)
    html = (out / "curves.html").read_text()
    assert "Plotly.newPlot" in html or "plotly" in html.lower()
    for name in ("teacher val", "teacher train", "student val", f"baseline ({BASE_KEY}) val"):
        assert f'"name":"{name}"' in html, name
    # the series are in the page as plain numbers: the student's val accuracy per epoch
    ys = [[float(v) for v in m.split(",")] for m in re.findall(r'"y":\[([^\]]*)\]', html)]
    want = np.load(os.path.join(tools_run["numpy"], f"val_accuracy_student_{KD_KEY}.npy"))
    assert any(len(y) == len(want) and np.allclose(y, want) for y in ys)
    assert len(want) == 2  # one entry per epoch


def test_plotting_single_metric_and_list(tools_run, tmp_path):
    mod = _import_script("numpy_outputs/plotting.py", "plotting_tool")
    keys = mod.main(mod.get_args_parser().parse_args(["--numpy-dir", tools_run["numpy"], "--list"]))
    assert set(keys) == {KD_KEY, BASE_KEY}
    paths = mod.main(mod.get_args_parser().parse_args(
        ["--numpy-dir", tools_run["numpy"], "--run", KD_KEY, BASE_KEY, "--metric", "loss",
         "--format", "png", "--out-dir", str(tmp_path)]))
    assert len(paths) == 1
    _png_ok(paths[0])


# ---------------------------------------------------------------- ONNX
def test_onnx_export_matches_pytorch_and_has_no_connector(tools_run, tmp_path):
    import onnx
    import onnxruntime as ort

    assert tools_run["summary"]["student"]["connector_params"] > 0  # KD trained a connector
    path = tmp_path / "student.onnx"
    proc = _ok(_run("convertToOnnx.py", tools_run["student"], "--output", path))
    assert "batch 7" in proc.stdout and "ok:" in proc.stdout
    model_proto = onnx.load(str(path))
    onnx.checker.check_model(model_proto)
    assert [i.name for i in model_proto.graph.input] == ["input"]
    assert [o.name for o in model_proto.graph.output] == ["logits"]

    ckpt = load_checkpoint(tools_run["student"])
    model = model_from_checkpoint(ckpt).eval()
    state = model.state_dict()
    names = [init.name for init in model_proto.graph.initializer]
    assert names and set(names) <= set(state), set(names) - set(state)
    assert not any("connector" in n or n.startswith("skip") for n in names)
    for init in model_proto.graph.initializer:  # same tensors as the student checkpoint
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), state[init.name].numpy())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = model(x).logits.numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - ref).max() <= 1e-4


def test_onnx_with_hint(tools_run, tmp_path):
    import onnx
    mod = _import_script("convertToOnnx.py", "onnx_tool")
    out = tmp_path / "teacher.onnx"
    result = mod.main(mod.get_args_parser().parse_args(
        [tools_run["teacher"], "--output", str(out), "--with-hint"]))
    assert result["max_abs_diff"] <= 1e-4
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits", "hint"]
    assert set(result["diffs"]) == {1, 7}


# ---------------------------------------------------------------- torchviz
@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz 'dot' is not installed (Debian package 'graphviz')")
def test_visualize_graph_png(tools_run, tmp_path):
    out = tmp_path / "graph.png"
    _ok(_run("visualize.py", tools_run["student"], "--output", out))
    _png_ok(out, min_size=200)


def test_visualize_without_dot_names_the_package(tools_run, tmp_path, monkeypatch, capsys):
    from skipkd.errors import exit_on_user_error
    mod = _import_script("visualize.py", "visualize_tool")
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(mod.main)(mod.get_args_parser().parse_args(
            [tools_run["student"], "--output", str(tmp_path / "g.png")]))
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'graphviz'" in lines[0] and "dot" in lines[0]


# ---------------------------------------------------------------- evaluation
def test_evaluate_reproduces_logged_accuracy(tools_run, tmp_path):
    out = tmp_path / "eval"
    _ok(_run("evaluate.py", tools_run["student"], "--out-dir", out, "--logdir", tmp_path / "tb"))
    stem = f"{KD_KEY}_student"
    result = json.loads((out / f"{stem}_eval.json").read_text())
    # the test split: the run's report of its best-validation checkpoint
    assert result["accuracy"] == pytest.approx(tools_run["summary"]["student"]["test_acc_best"],
                                               abs=1e-9)
    # the held-out validation split: what training logged when it chose that checkpoint
    val_json = tmp_path / "val.json"
    _ok(_run("evaluate.py", tools_run["student"], "--split", "val", "--out-dir", tmp_path / "v",
             "--json", val_json, "--no-tensorboard"))
    logged = load_checkpoint(tools_run["student"])["metrics"]["val"]["acc"]
    assert json.loads(val_json.read_text())["accuracy"] == pytest.approx(logged, abs=1e-9)
    assert logged == pytest.approx(tools_run["summary"]["student"]["best_val_acc"], abs=1e-9)
    assert result["num_images"] == 100 and result["dataset"] == "synthetic"
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 100
    assert 100.0 * np.trace(cm) / cm.sum() == pytest.approx(result["accuracy"])
    assert len(result["per_class_accuracy"]) == 10
    _png_ok(out / f"{stem}_confusion.png", min_size=300)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


def test_evaluate_tta_in_process(tools_run, tmp_path):
    mod = _import_script("evaluate.py", "evaluate_tool")
    args = mod.get_args_parser().parse_args(
        [tools_run["baseline"], "--tta", "--out-dir", str(tmp_path), "--no-tensorboard", "--quiet"])
    result = mod.main(args)
    assert result["tta"] is True and 0.0 <= result["accuracy"] <= 100.0
    assert os.path.exists(tmp_path / f"{BASE_KEY}_baseline_tta_eval.json")
    # the flip TTA really averages the logits of the image and its mirror
    from utils.analysis import checkpoint_loader, checkpoint_test_data, predict_logits
    ckpt = load_checkpoint(tools_run["baseline"])
    model = model_from_checkpoint(ckpt).eval()
    loader = checkpoint_loader(ckpt, checkpoint_test_data(ckpt)[0])
    plain, labels = predict_logits(model, loader)
    tta, _ = predict_logits(model, loader, tta=True)
    x, _ = next(iter(loader))
    with torch.no_grad():
        flipped = model(x.flip(3)).logits
    torch.testing.assert_close(tta[:len(x)], 0.5 * (plain[:len(x)] + flipped), atol=1e-5, rtol=0)
    assert result["accuracy"] == pytest.approx(100.0 * (tta.argmax(1) == labels).double().mean().item())


def test_held_out_validation_split_is_rebuilt():
    """--split val rebuilds the run's held-out part of the training split (--val-split)."""
    from utils.analysis import checkpoint_test_data
    from skipkd.data import held_out_split, load_dataset
    from skipkd.errors import UserError
    train, _ = load_dataset("synthetic", train_size=200, test_size=50, seed=1234)
    _, val, digest = held_out_split(train, 0.25, 3)
    ckpt = {"model": {"num_classes": 10, "in_channels": 3},
            "args": {"dataset": "synthetic", "synthetic_train_size": 200, "synthetic_test_size": 50},
            "data": {"dataset": "synthetic", "val_split": 0.25, "split_seed": 3,
                     "val_indices_sha1": digest}}
    got, name = checkpoint_test_data(ckpt, split="val")
    assert name == "synthetic" and torch.equal(got.images, val.images)
    assert torch.equal(got.labels, val.labels) and len(got) == 50
    assert len(checkpoint_test_data(ckpt, split="test")[0]) == 50
    ckpt["data"]["val_indices_sha1"] = "0" * 12  # data that differ from the run's
    with pytest.raises(UserError, match="held-out"):
        checkpoint_test_data(ckpt, split="val")


# ---------------------------------------------------------------- efficiency
def test_efficiency_report(tools_run, tmp_path):
    out = tmp_path / "eff.json"
    proc = _ok(_run("efficiency.py", "--run", KD_KEY, "--ckpt-dir", tools_run["ckpt_dir"],
                    "--latency-repeats", "3", "--throughput-batch", "8", "--throughput-iters", "1",
                    "--warmup", "1", "--json", out))
    assert "| parameters |" in proc.stdout and "teacher / student" in proc.stdout
    report = json.loads(out.read_text())
    teacher, student = report["models"]
    assert (teacher["label"], teacher["arch"], student["label"], student["arch"]) == \
        ("teacher", "resnet34", "student", "resnet18")
    for row, key in ((teacher, "teacher"), (student, "student")):
        model = model_from_checkpoint(load_checkpoint(tools_run[key]))
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["size_mb"] == pytest.approx(os.path.getsize(tools_run[key]) / 2 ** 20, abs=1e-3)
        assert row["latency_ms"] > 0 and row["throughput_img_s"] > 0
    assert teacher["macs"] > student["macs"] > 0
    assert report["compression_ratio"] == pytest.approx(teacher["params"] / student["params"])


def test_macs_of_a_known_layer():
    """FlopCounterMode-based MACs: a 3x3 conv, 3->8 channels on 32x32, plus an 8->10 linear."""
    from utils.analysis import count_macs
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 10))
    assert count_macs(net, (1, 3, 32, 32)) == 8 * 32 * 32 * 3 * 9 + 8 * 10


# ---------------------------------------------------------------- comparison table
def test_compare_runs_table(tools_run, tmp_path):
    out = tmp_path / "comparison.md"
    proc = _ok(_run("compare_runs.py", "--numpy-dir", tools_run["numpy"], "--output", out))
    text = out.read_text()
    assert text.strip().endswith(proc.stdout.strip().split("\nwrote")[0].strip().splitlines()[-1])
    rows = [line for line in text.splitlines() if line.startswith(f"| {KD_KEY} |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    s = tools_run["summary"]
    base = json.load(open(os.path.join(tools_run["numpy"], f"summary_{BASE_KEY}.json")))["baseline"]
    # the default: the test accuracy of each best-validation checkpoint (held-out protocol)
    s_acc, t_acc, b_acc = (s["student"]["test_acc_best"], s["teacher"]["test_acc_best"],
                           base["test_acc_best"])
    assert cells[2:7] == ["held-out", "resnet34 w8", "resnet18 w4", "parallel", "skip 0.3"]
    assert cells[7:10] == [f"{t_acc:.2f}", f"{b_acc:.2f}", f"{s_acc:.2f}"]
    assert cells[10] == f"{s_acc - b_acc:+.2f}" and cells[11] == f"{s_acc - t_acc:+.2f}"
    assert cells[-1] == BASE_KEY  # matched automatically: resnet18, width 4, same data
    assert any(line.startswith(f"| {BASE_KEY} |") for line in text.splitlines())  # baselines


# ---------------------------------------------------------------- feature maps + notebook
def test_features_capture_real_outputs(tools_run, tmp_path):
    from utils.analysis.features import capture_features, layer_names, save_feature_figures, test_image
    ckpt = load_checkpoint(tools_run["student"])
    model = model_from_checkpoint(ckpt).eval()
    image, label, name = test_image(ckpt, 0)
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    from utils.analysis.features import normalise_image
    x = normalise_image(image, ckpt)
    feats, out = capture_features(model, x)
    assert list(feats) == layer_names(model) and len(feats) == 1 + 8 + 1
    torch.testing.assert_close(feats["hint"], out.hint)            # the real hint
    with torch.no_grad():
        torch.testing.assert_close(feats["stem"], model.stem(x))  # the real stem output
    paths = save_feature_figures(model, ckpt, image, str(tmp_path), layer="stages.1.0")
    for p in paths.values():
        _png_ok(p)


def test_load_image_file(tmp_path):
    from PIL import Image
    from skipkd.errors import UserError
    from utils.analysis.features import load_image
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    rgb[..., 0] = 200                                   # a red picture, not square
    Image.fromarray(rgb).save(tmp_path / "red.png")
    img = load_image(str(tmp_path / "red.png"), size=32, channels=3)
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    assert int(img[0].min()) == 200 and int(img[1:].max()) == 0
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(str(tmp_path / "bad.png"))


def test_train_tiny_checkpoint_round_trip(tmp_path):
    from utils.analysis import checkpoint_loader, checkpoint_test_data, predict_logits
    from utils.analysis.notebook import train_tiny_checkpoint
    path = train_tiny_checkpoint(str(tmp_path / "tiny.pth"), train_size=128, test_size=64)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    logits, labels = predict_logits(model, checkpoint_loader(ckpt, checkpoint_test_data(ckpt)[0]))
    acc = 100.0 * (logits.argmax(1) == labels).double().mean().item()
    assert acc == pytest.approx(ckpt["metrics"]["val"]["acc"])


def test_notebook_committed_without_outputs():
    import nbformat
    nb = nbformat.read(os.path.join(ROOT, "features_visualization.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_headless(tools_run, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    out_dir = tmp_path / "feature_maps"
    monkeypatch.setenv("FEATURES_CHECKPOINT", tools_run["student"])
    monkeypatch.setenv("FEATURES_OUT_DIR", str(out_dir))
    monkeypatch.setenv("FEATURES_LAYER", "stages.0.1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(os.path.join(ROOT, "features_visualization.ipynb"), as_version=4)
    NotebookClient(nb, timeout=60, kernel_name="python3",  # each cell within 60 s
                   resources={"metadata": {"path": ROOT}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the plots are shown inline
    for name in ("mean_activations", "channels_stages.0.1", "first_layer_kernels", "hint"):
        _png_ok(out_dir / f"{name}.png")


# ---------------------------------------------------------------- bad input
SCRIPTS = {"evaluate": "evaluate.py", "onnx": "convertToOnnx.py", "visualize": "visualize.py",
           "efficiency": "efficiency.py", "plotting": "numpy_outputs/plotting.py",
           "compare": "compare_runs.py"}


@pytest.fixture(scope="module")
def bad_files(tools_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "corrupt.pth").write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    (d / "truncated.pth").write_bytes(open(tools_run["student"], "rb").read()[:2000])
    torch.save({"weights": torch.zeros(3)}, d / "foreign.pth")
    return {"missing": str(d / "missing.pth"), "corrupt": str(d / "corrupt.pth"),
            "truncated": str(d / "truncated.pth"), "foreign": str(d / "foreign.pth"),
            "ckpt_dir": tools_run["ckpt_dir"], "numpy": tools_run["numpy"]}


# case -> (tool, argv with {placeholders}, text the one-line message must contain)
BAD_CASES = {
    "evaluate-missing": ("evaluate", ["{missing}"], "checkpoint not found"),
    "evaluate-truncated": ("evaluate", ["{truncated}"], "cannot load checkpoint"),
    "onnx-corrupt": ("onnx", ["{corrupt}"], "cannot load checkpoint"),
    "onnx-missing": ("onnx", ["{missing}"], "checkpoint not found"),
    "visualize-foreign": ("visualize", ["{foreign}"], "not a checkpoint of this project"),
    "efficiency-missing": ("efficiency", ["{missing}", "--no-timing"], "checkpoint not found"),
    "efficiency-unknown-key": ("efficiency", ["--run", "nope", "--ckpt-dir", "{ckpt_dir}"], KD_KEY),
    "plotting-unknown-key": ("plotting", ["--run", "nope", "--numpy-dir", "{numpy}"], KD_KEY),
    "plotting-unknown-baseline": ("plotting", ["--run", KD_KEY, "--baseline", "nope",
                                               "--numpy-dir", "{numpy}"], BASE_KEY),
    "compare-unknown-key": ("compare", ["--runs", "nope", "--numpy-dir", "{numpy}"], BASE_KEY),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_error(bad_files, case, capsys):
    """In-process through the same wrapper as the scripts' __main__ (fast); the subprocess test
    below checks the real command line once."""
    from skipkd.errors import exit_on_user_error
    tool, argv, expected = BAD_CASES[case]
    mod = _import_script(SCRIPTS[tool], f"{tool}_tool")
    argv = [a.format(**bad_files) for a in argv]
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(mod.main)(mod.get_args_parser().parse_args(argv))
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]
    if "unknown" in case:
        assert "unknown run key 'nope'" in lines[0]


def test_bad_input_command_line(bad_files):
    proc = _run("evaluate.py", bad_files["corrupt"])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot load checkpoint")


def test_plotting_compares_training_and_validation_cross_entropy(tools_run):
    """The loss panel draws training CE (not CE + alpha * hint MSE) beside validation CE; the
    distillation term gets its own panel; the loss axes are logarithmic by default."""
    plotting = _import_script("numpy_outputs/plotting.py", "plotting_tool")
    series = plotting.collect_series(tools_run["numpy"], [KD_KEY], None,
                                     ["loss", "distillation"], ["val", "train"])
    npy = lambda name: np.load(os.path.join(tools_run["numpy"], name)).tolist()
    train = next(s for s in series if s["metric"] == "loss" and s["role"] == "student"
                 and s["split"] == "train")
    from skipkd.io.history import read_history
    hist = read_history(os.path.join(tools_run["numpy"], f"history_{KD_KEY}.json"), KD_KEY)
    assert train["y"] == pytest.approx(hist["student"][("train", "loss_ce")].tolist())
    assert train["y"] != pytest.approx(npy(f"train_loss_student_{KD_KEY}.npy"))
    val = next(s for s in series if s["metric"] == "loss" and s["role"] == "student"
               and s["split"] == "val")
    assert val["y"] == pytest.approx(npy(f"val_loss_student_{KD_KEY}.npy"))
    kd = [s for s in series if s["metric"] == "distillation"]
    assert [(s["role"], s["part"]) for s in kd] == [("student", "skip")]
    assert plotting.get_args_parser().parse_args([]).loss_scale == "log"
