"""Derived files are untrusted too: run summaries, per-epoch arrays and histories, checkpoint data
metadata, sweep journals and report records, the notebook's settings. Each case damages one
file in its own copy of a good run's folder (a one-trial sweep whose run was trained here), runs
the tool that reads it back, and checks: a one-line error (or one warning per skipped run and
the other runs still reported), no traceback, and every file of the copy unchanged (sha256).

Most cases call the tool's main() in this process with its own parser (importing torch once);
the issue's three cases, the sweep worker and the notebook run as a user runs them."""
import importlib.util
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, files_digest, run_script
from skipkd.errors import exit_on_user_error
from skipkd.io.outputs import MAKER_ENV
from utils.sweep.run.child import sweep_maker

MID = "model_training_mid.py"
STUDY, KEY = "s", "s_seed=0"   # the sweep's one trial and its run key
FLAGS = ("--dataset synthetic --synthetic-train-size 120 --synthetic-test-size 40 --width 4 "
         "--batch-size 40 --epochs 1 --device cpu --no-progress --no-tensorboard --kd skip "
         "--teacher resnet8 --student resnet8 --precision fp32")


# ------------------------------------------------------------------ the good run
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """-> (the sweep folder after its worker recorded the trial, a copy from before the worker
    ran). The trial's run is trained here with the worker's own command line."""
    root = tmp_path_factory.mktemp("derived")
    out = str(root / "good")
    _ok(run_script("sweep.py", "create", STUDY, "--dir", out, "--script", MID, "--args", FLAGS,
                   "--seeds", "0"))
    from utils.sweep.run.storage import load_sweep, open_store
    trial, = load_sweep(open_store(None, out, create=False), STUDY).study.get_trials()
    assert trial.user_attrs["key"] == KEY
    _ok(run_script(MID, *trial.user_attrs["argv"], "--run-name", KEY, "--output-dir", out,
                   env={MAKER_ENV: sweep_maker(STUDY)}))  # as the sweep's worker runs it
    before_work = str(root / "before_work")
    shutil.copytree(out, before_work)
    _ok(run_script("sweep.py", "work", STUDY, "--dir", out, "--poll", "0.2"))
    return out, before_work


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


# ------------------------------------------------------------------ damage, one file each
def _path(out, name):
    folder = "saved_pth_model" if name.endswith(".pth") else "numpy_outputs"
    return os.path.join(out, folder, name)


def npy(name, array):
    return lambda out: np.save(_path(out, name), array, allow_pickle=True)


def rewrite(name, change):
    """The file's bytes replaced by change(its bytes)."""
    def damage(out):
        with open(_path(out, name), "rb") as f:
            data = change(f.read())
        with open(_path(out, name), "wb") as f:
            f.write(data)
    return damage


def raw(name, data):
    def damage(out):
        with open(_path(out, name), "wb") as f:
            f.write(data)
    return damage


def both(*damages):
    return lambda out: [d(out) for d in damages]


def json_edit(edit, src=f"history_{KEY}.json", dst=None, **top):
    """numpy_outputs/dst: a copy of src with the top-level fields `top`, then edit(doc)."""
    def damage(out):
        with open(_path(out, src)) as f:
            doc = {**json.load(f), **top}
        edit(doc)
        with open(_path(out, dst or src), "w") as f:
            json.dump(doc, f)
    return damage


def summary(edit, name="summary_x.json", key="x"):
    """The good run's summary as run `key`'s (summary_x.json), then edit(summary)."""
    return json_edit(edit, f"summary_{KEY}.json", name, run_key=key)


def ckpt(edit):
    """saved_pth_model/bad.pth: the student checkpoint with edit(ckpt) applied."""
    def damage(out):
        c = torch.load(_path(out, f"{KEY}_student.pth"), weights_only=True)
        edit(c)
        torch.save(c, _path(out, "bad.pth"))
    return damage


def journal(pattern, repl):
    """The sweep's journal with its first match of `pattern` (a regular expression) replaced."""
    def damage(out):
        path = os.path.join(out, "optuna-journal.log")
        text, n = re.subn(pattern, repl, open(path).read(), count=1)
        assert n == 1, pattern
        with open(path, "w") as f:
            f.write(text)
    return damage


def report_record(text):
    """report/.sweep-report.json, the record of what an earlier report wrote, as `text`."""
    def damage(out):
        os.makedirs(os.path.join(out, "report"))
        with open(os.path.join(out, "report", ".sweep-report.json"), "w") as f:
            f.write(text)
    return damage


def setitem(section, field, value):
    def edit(doc):
        doc[section][field] = value
    return edit


def delitem(section, field):
    return lambda doc: doc[section].pop(field)


# ------------------------------------------------------------------ the cases
PLOT, CMP, EVAL, SWEEP = "numpy_outputs/plotting.py", "compare_runs.py", "evaluate.py", "sweep.py"
EFF = "efficiency.py"
PLOT_OLD = ["--numpy-dir", "{out}/numpy_outputs", "--out-dir", "{tmp}/plots", "--run", "old"]
PLOT_GOOD = PLOT_OLD[:-1] + [KEY]
COMPARE = ["--numpy-dir", "{out}/numpy_outputs", "--output", "{tmp}/comparison.md"]
EVALUATE = ["{out}/saved_pth_model/bad.pth", "--device", "cpu", "--tensorboard", "false"]
EFFICIENCY = ["{out}/saved_pth_model/bad.pth", "--no-timing", "--json", "{tmp}/efficiency.json"]
REPORT = ["report", STUDY, "--dir", "{out}", "--out", "{tmp}/report"]
SUBPROCESS = {"npy-strings", "summary-without-base-width", "ckpt-synthetic-test-set-1e9"}

# id: (tool, args, damage, verdict, substrings of stderr (any case)); verdict: "error" (one
# line), "skip" (one warning, the other run compared) or "shown" (shown without the damaged
# value)
CASES = {
    # ---- per-epoch arrays of an earlier version's folder (run 'old': arrays, no history)
    "npy-strings": (PLOT, PLOT_OLD, npy("val_accuracy_old.npy", np.array(["9", "x"])), "error",
                    ["val_accuracy_old.npy", "not numbers"]),
    "npy-object-array": (PLOT, PLOT_OLD, npy("val_accuracy_old.npy", np.array([1, None])),
                         "error", ["val_accuracy_old.npy", "python objects"]),
    "npy-matrix": (PLOT, PLOT_OLD, npy("val_loss_old.npy", np.zeros((3, 4))), "error",
                   ["val_loss_old.npy", "3x4"]),
    "npy-complex": (PLOT, PLOT_OLD, npy("train_loss_old.npy", np.ones(2, complex)), "error",
                    ["train_loss_old.npy", "complex"]),
    "npy-infinite": (PLOT, PLOT_OLD, npy("val_accuracy_old.npy", np.array([1.0, np.inf])),
                     "error", ["val_accuracy_old.npy", "infinite"]),
    "npy-too-long": (PLOT, PLOT_OLD, npy("val_accuracy_old.npy", np.zeros(1_000_001, np.uint8)),
                     "error", ["val_accuracy_old.npy", "1,000,001"]),
    "npy-truncated": (PLOT, PLOT_OLD, both(npy("val_accuracy_old.npy", np.arange(50.0)),
                                           rewrite("val_accuracy_old.npy", lambda b: b[:208])),
                      "error", ["val_accuracy_old.npy", "truncated"]),  # 10 of its 50 values
    "npy-is-an-archive": (PLOT, PLOT_OLD, raw("val_accuracy_old.npy", b"PK\x03\x04" + b"\0" * 60),
                          "error", ["val_accuracy_old.npy"]),
    # ---- the run history (validated by skipkd/io/history.py)
    "history-truncated": (PLOT, PLOT_GOOD, rewrite(f"history_{KEY}.json", lambda b: b[:300]),
                          "error", [f"history_{KEY}.json"]),
    "history-text-values": (PLOT, PLOT_GOOD, json_edit(lambda d: d["roles"]["student"]["val"]
                                                     .update(accuracy=["high"])), "error",
                            ["roles.student.val.accuracy", "numbers"]),
    "history-nested-too-deeply": (PLOT, PLOT_GOOD, raw(f"history_{KEY}.json", (
        '{"format": "skipkd-eca/history", "version": 1, "roles": ' + "[" * 100_000
        + "]" * 100_000 + "}").encode()), "error", [f"history_{KEY}.json", "nested"]),
    "history-400-digit-number": (PLOT, PLOT_GOOD, rewrite(f"history_{KEY}.json", lambda b: re.sub(
        rb'"accuracy": \[[0-9.]+', b'"accuracy": [1' + b"0" * 400, b, count=1)), "error",
        [f"history_{KEY}.json", "too large"]),
    # ---- run summaries: compare_runs.py skips a damaged run and compares the others
    "summary-without-base-width": (CMP, COMPARE, raw("summary_x.json",
                                                     b'{"run_key": "x", "student": '
                                                     b'{"arch": "resnet18"}}'), "skip",
                                   ["summary_x.json", "student.base_width", "missing"]),
    "summary-accuracy-text": (CMP, COMPARE, summary(setitem("student", "test_acc_best", "high")),
                              "skip", ["summary_x.json", "student.test_acc_best", "'high'"]),
    "summary-accuracy-250": (CMP, COMPARE, summary(setitem("student", "best_val_acc", 250)),
                             "skip", ["student.best_val_acc", "0..100"]),
    "summary-400-digit-accuracy": (CMP, COMPARE, summary(setitem("student", "test_acc_last",
                                                                 10 ** 400)), "skip",
                                   ["student.test_acc_last", "0..100"]),
    "summary-width-text": (CMP, COMPARE, summary(setitem("teacher", "base_width", "4")), "skip",
                           ["teacher.base_width", "not an integer"]),
    "summary-role-not-object": (CMP, COMPARE, summary(lambda d: d.update(student="resnet8")),
                                "skip", ["summary_x.json", '"student"', "not an object"]),
    "summary-kd-weight-text": (CMP, COMPARE, summary(setitem("student", "kd_weights",
                                                             {"skip": "0.3"})), "skip",
                               ["student.kd_weights.skip"]),
    "summary-dataset-list": (CMP, COMPARE, summary(lambda d: d.update(dataset=[1, 2])), "skip",
                             ['"dataset"', "not an object"]),
    "summary-other-run-key": (CMP, COMPARE, summary(lambda d: None, key="someone_else"), "skip",
                              ['"run_key"', "someone_else"]),
    "summary-truncated": (CMP, COMPARE, raw("summary_x.json", b'{"run_key": "x", "stu'), "skip",
                          ["cannot read run summary", "summary_x.json"]),
    "summary-a-json-list": (CMP, COMPARE, raw("summary_x.json", b"[1, 2, 3]"), "skip",
                            ["summary_x.json", "not a run summary"]),
    "summary-named-in-runs": (CMP, COMPARE + ["--runs", "x"],
                              summary(delitem("student", "arch")), "error",
                              ["summary_x.json", "student.arch", "missing"]),
    "summary-named-as-baseline": (CMP, COMPARE + ["--baseline", "x"],
                                  summary(setitem("student", "params", -5)), "error",
                                  ["student.params", "-5"]),
    "summary-the-only-one": (CMP, COMPARE, summary(setitem("student", "epochs", 1.5),
                                                   name=f"summary_{KEY}.json", key=KEY),
                             "error", [f"summary_{KEY}.json", "student.epochs",
                                       "no run left"]),
    # ---- checkpoint data metadata: bounded before the data are made
    "ckpt-synthetic-test-set-1e9": (EVAL, EVALUATE, ckpt(lambda c: c["args"].update(
        synthetic_test_size=1_000_000_000)), "error",
        ["bad.pth", "args.synthetic_test_size", "1,000,000"]),
    "ckpt-synthetic-train-set-negative": (EVAL, EVALUATE, ckpt(lambda c: c["args"].update(
        synthetic_train_size=-3)), "error", ["bad.pth", "args.synthetic_train_size"]),
    "ckpt-image-size-text": (EVAL, EVALUATE, ckpt(lambda c: c["args"].update(image_size="big")),
                             "error", ["bad.pth", "args.image_size", "big"]),
    "ckpt-eval-batch-size-zero": (EVAL, EVALUATE, ckpt(lambda c: c["args"].update(
        eval_batch_size=0)), "error", ["bad.pth", "args.eval_batch_size"]),
    "ckpt-split-seed-negative": (EVAL, EVALUATE + ["--split", "val"], ckpt(
        lambda c: c["data"].update(split_seed=-1)), "error", ["bad.pth", "data.split_seed"]),
    "ckpt-limit-test-negative": (EVAL, EVALUATE, ckpt(lambda c: c["args"].update(limit_test=-5)),
                                 "error", ["bad.pth", "args.limit_test"]),
    "ckpt-logged-accuracy-text": (EFF, EFFICIENCY, ckpt(
        lambda c: c["metrics"].update(val={"acc": "ninety"})), "shown", []),
    "ckpt-logged-metrics-a-list": (EFF, EFFICIENCY, ckpt(
        lambda c: c["metrics"].update(val=[1, 2])), "shown", []),
    "ckpt-model-image-size-huge": (EVAL, EVALUATE, ckpt(lambda c: c["model"].update(
        image_size=100_000)), "error", ["bad.pth", "model.image_size", "1..1024"]),
    # ---- the sweep: a recorded result edited in the journal, the report's own record
    "sweep-result-edited": (SWEEP, REPORT, journal(r'("result":\{[^{]*"test_acc_best":)[0-9.]+',
                                                   r'\1"5%"'), "error",
                            ["test_acc_best", "no completed trial"]),
    "sweep-result-params-text": (SWEEP, REPORT, journal(r'"params":[0-9]+,"teacher_params"',
                                                        '"params":"many","teacher_params"'),
                                 "error", ["params", "unusable"]),
    "sweep-journal-corrupt-line": (SWEEP, REPORT, journal(r'\{"op_code":8',
                                                          'not a record\n{"op_code":8'),
                                   "error", ["optuna-journal.log", "not a journal record"]),
    "sweep-report-record-files-number": (SWEEP, REPORT[:-1] + ["{out}/report"],
                                         report_record('{"files": 5}'), "error",
                                         [".sweep-report.json", '"files"']),
}


def _fill(args, out, tmp):
    return [a.format(out=out, tmp=tmp) for a in args]


def _module(script):
    """The tool's module, imported once from its file (numpy_outputs/plotting.py included)."""
    name = "derived_" + os.path.basename(script)[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, script))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_MODULES = {}


def _run_in_process(script, args, capsys):
    """(exit code, stdout, stderr) of the tool's main() on args; any other exception than the
    tool's own exit is a traceback and fails the test."""
    capsys.readouterr()
    try:
        if script == SWEEP:
            import sweep
            code = sweep.main(args)
        else:
            if script not in _MODULES:
                _MODULES[script] = _module(script)
            mod = _MODULES[script]
            exit_on_user_error(mod.main)(mod.get_args_parser().parse_args(args))
            code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_derived_file(case, good, tmp_path, capsys, record_property):
    script, args, damage, verdict, needles = CASES[case]
    out = str(tmp_path / "run")
    shutil.copytree(good[0], out)
    damage(out)
    before = files_digest(out)
    args = _fill(args, out, str(tmp_path))
    if case in SUBPROCESS:
        proc = run_script(script, *args)
        code, stdout, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code, stdout, err = _run_in_process(script, args, capsys)
    record_property("battery_verdict", f"exit {code}: {err.strip()[:300]}")  # conftest prints
    assert "Traceback" not in err and "Traceback" not in stdout, err
    lines = err.strip().splitlines()
    if verdict == "error":
        assert code == 2, f"exit {code}\n{stdout}\n{err}"
        assert len(lines) == 1 and lines[0].startswith("error:"), err
    elif verdict == "shown":
        # the row of a value no checkpoint has is left out of the table
        assert code == 0 and not lines and "val accuracy" not in stdout, (code, stdout, err)
    else:  # the damaged run skipped with one warning line, the good run still compared
        assert code == 0, f"exit {code}\n{stdout}\n{err}"
        assert len(lines) == 1 and lines[0].startswith("warning:"), err
        table = open(os.path.join(tmp_path, "comparison.md")).read()
        assert f"| {KEY} |" in table and "| x |" not in table, table
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in {err!r}"
    assert files_digest(out) == before, f"{case} changed the run's files"
    record_property("battery_unchanged", True)


def test_the_good_run_reads_back(good, tmp_path, capsys):
    """The readers accept what the scripts write: the same tools on the undamaged copy."""
    out = good[0]
    before = files_digest(out)
    for script, args in ((CMP, COMPARE), (PLOT, PLOT_GOOD + ["--format", "png"]),
                         (SWEEP, REPORT)):
        code, _, err = _run_in_process(script, _fill(args, out, str(tmp_path)), capsys)
        assert code in (0, None) and not err.strip(), (script, code, err)
    assert files_digest(out) == before


def test_sweep_worker_with_an_edited_summary(good, tmp_path):
    """The run's summary edited before the worker reads it: the trial fails with one line that
    names the file and the field, the run's files are untouched, the report says why in one
    line."""
    out = str(tmp_path / "run")
    shutil.copytree(good[1], out)
    summary(setitem("student", "test_acc_best", "high"), name=f"summary_{KEY}.json",
            key=KEY)(out)
    runs = lambda: {p: h for p, h in files_digest(out).items()  # noqa: E731
                    if p.startswith(("numpy_outputs", "saved_pth_model"))}
    before = runs()
    proc = run_script("sweep.py", "work", STUDY, "--dir", out, "--poll", "0.2")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    failed = [line for line in proc.stdout.splitlines() if "failed:" in line]
    assert len(failed) == 1 and f"summary_{KEY}.json" in failed[0] \
        and "student.test_acc_best" in failed[0], proc.stdout
    assert runs() == before
    proc = run_script("sweep.py", "report", STUDY, "--dir", out)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: study '{STUDY}' has no completed trial yet (0 running, 0 waiting, 1 failed)"]


def test_sweep_report_leaves_out_an_unusable_trial(good, capsys):
    """Of two completed trials, the one whose recorded result is damaged is left out with one
    warning line; the other is reported."""
    import optuna
    from types import SimpleNamespace
    from utils.sweep.report.build import build_report
    from utils.sweep.run.storage import load_sweep, open_store
    real = load_sweep(open_store(None, good[0], create=False), STUDY)
    done, = real.study.get_trials()
    study = optuna.create_study(direction="maximize")
    bad = {**done.user_attrs["result"], "test_acc_last": "n/a"}
    for key, result in ((KEY, done.user_attrs["result"]), ("bad", bad)):
        study.add_trial(optuna.trial.create_trial(value=done.value, user_attrs={
            **done.user_attrs, "key": key, "result": result}))
    capsys.readouterr()
    rep = build_report(SimpleNamespace(spec=real.spec, study=study, teachers=None, name=STUDY,
                                       store=real.store), good[0])
    assert [r["key"] for r in rep["rows"]] == [KEY]
    assert capsys.readouterr().err.strip().splitlines() == [
        "warning: trial 1 (run 'bad'): result field test_acc_last is 'n/a', not a number; left "
        "out of the report"]


@pytest.mark.parametrize("env, needle", [
    ({"FEATURES_INDEX": "abc"}, "FEATURES_INDEX='abc'"),
    ({"FEATURES_INDEX": "-1"}, "FEATURES_INDEX=-1"),
    ({"FEATURES_LAYER": "../../etc"}, "FEATURES_LAYER"),
    ({"FEATURES_CHECKPOINT": "no_such.pth"}, "no such file"),
    ({"FEATURES_DATA_DIR": "no_such_folder"}, "no such folder"),
    ({"FEATURES_OUT_DIR": "{file}"}, "is a file"),
])
def test_notebook_settings(env, needle, tmp_path):
    from utils.analysis.notebook import notebook_settings
    from skipkd.errors import UserError
    (tmp_path / "a_file").write_text("mine")
    env = {k: v.format(file=str(tmp_path / "a_file")) for k, v in env.items()}
    env.setdefault("FEATURES_OUT_DIR", str(tmp_path / "maps"))
    with pytest.raises(UserError, match="FEATURES_|no such") as info:
        notebook_settings(env)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "maps").exists()  # nothing made when a setting is wrong
    assert (tmp_path / "a_file").read_text() == "mine"


def test_notebook_bad_setting_is_one_line(tmp_path, monkeypatch):
    """In the notebook itself (a Jupyter kernel): one line 'error: ...', no traceback."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    monkeypatch.setenv("FEATURES_INDEX", "seven")
    monkeypatch.setenv("FEATURES_OUT_DIR", str(tmp_path / "maps"))
    nb = nbformat.read(os.path.join(REPO_ROOT, "features_visualization.ipynb"), as_version=4)
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=60, kernel_name="python3",
                       resources={"metadata": {"path": REPO_ROOT}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].traceback == [
        "error: FEATURES_INDEX='seven': expected an integer >= 0"], errors
    assert not (tmp_path / "maps").exists()


def test_battery_is_broad():
    assert len(CASES) >= 20
    assert {s for s, *_ in CASES.values()} == {PLOT, CMP, EVAL, EFF, SWEEP}
