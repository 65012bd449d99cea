"""Equal-budget tuning (utils/sweep/spec/tune.py, utils/sweep/run/tune.py): the tune file's checks, --no-report-test, and an
end-to-end tune of two methods with three search trials each on tiny data whose test split is
absent while the searches run, so a search that read it would fail.
"""
import json
import shutil

import pytest

from conftest import assert_ok, assert_refused
from skipkd.errors import UserError
from utils.sweep.spec.normalize import normalize_spec


def _tune(**over):
    tune = {"n_trials": 3, "seeds": [1, 2], "methods": {
        "none": {"flags": {"kd": "none"}},
        "logit": {"flags": {"kd": "logit"},
                  "params": {"temperature": {"low": 1, "high": 8, "log": True}},
                  "start": {"temperature": 4.0}}}}
    tune.update(over)
    return {"fixed": {"dataset": "synthetic"}, "tune": tune}


@pytest.mark.parametrize("change, needle", [
    (lambda r: r["tune"].update(seeds=[0, 1]), "must be fresh"),
    (lambda r: r.update(teacher={"eca": "none"}), "teacher-checkpoint"),
    (lambda r: r.update(grid={"seed": [0]}), "not both"),
    (lambda r: r["fixed"].update(seed=3), "set by the tune"),
    (lambda r: r["tune"]["methods"]["logit"].update(start={"temperature": 20.0}), "outside"),
    (lambda r: r["tune"]["methods"]["logit"].update(start={"beta": 1.0}), "each searched flag"),
    (lambda r: r["tune"]["methods"]["logit"].update(params={}, start=None), "nothing to tune"),
    (lambda r: r["tune"]["methods"].update({"a+b": {"flags": {"kd": "skip"}}}), "label"),
    (lambda r: r["tune"].update(seeds=[1, 1]), "repeat"),
    (lambda r: r["tune"].update(baseline="dkd"), "not a method label"),
    (lambda r: r["tune"].update(budget=3), "unknown entry"),
    (lambda r: r["tune"].update(methods=[1]), "methods"),
    (lambda r: r["tune"].update(methods="x"), "methods"),
    (lambda r: r["tune"]["methods"]["logit"].update(flags=5), "expected an object"),
    (lambda r: r["tune"]["methods"]["logit"].update(flags=[1]), "expected an object"),
    (lambda r: r["tune"].update(baseline=[]), "baseline"),
    (lambda r: r["tune"]["methods"]["logit"]["flags"].update({"report-test": True}),
     "set by the tune"),
    (lambda r: r["tune"]["methods"]["logit"].update(
        flags={"kd": "logit", "kd-opt": "logit.standardize=1"},
        params={"kd-opt.logit.standardize": {"choices": [0, 1]}}, start=None), "NAME entries"),
])
def test_tune_file_refusals(change, needle):
    raw = _tune()
    change(raw)
    with pytest.raises(UserError, match=needle):
        normalize_spec(raw, "t.json")


def test_tune_defaults_and_baseline():
    spec = normalize_spec(_tune(), "t.json")["tune"]
    assert spec["baseline"] == "none" and spec["search_seed"] == 0
    assert spec["sampler"] == "tpe" and spec["pruner"] == "none"
    assert spec["methods"]["none"]["params"] == {}


def test_no_report_test_needs_a_held_out_split(run, fast_flags):
    proc = run("model_training.py", *fast_flags, "--epochs", "1", "--val-split", "0",
               "--no-report-test", "--output-dir", "/nonexistent-never-written")
    assert_refused(proc, "--no-report-test", "--val-split")


def _read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_tune_two_methods_end_to_end(tmp_path, tiny_cifar, run):
    """Two methods x 3 search trials: the searches never read the test split (it is not on
    disk while they run), each picks its best held-out validation trial, and the retrain runs
    the defaults and the chosen settings on the fresh seeds, tested."""
    import optuna
    data = tmp_path / "data"
    shutil.copytree(tiny_cifar, data)
    test_batch = data / "cifar-10-batches-py" / "test_batch"
    hidden = tmp_path / "test_batch.hidden"
    shutil.move(test_batch, hidden)  # from here until the retrain, no run can read the test set
    common = ["--dataset", "cifar10", "--data-dir", str(data), "--batch-size", "50",
              "--eval-batch-size", "100", "--val-split", "0.25", "--no-progress",
              "--device", "cpu", "--tensorboard", "false"]
    out = tmp_path / "teacher"
    assert_ok(run("model_training.py", *common, "--model", "resnet8", "--width", "4",
                  "--epochs", "1", "--no-report-test", "--run-name", "t", "--output-dir", out))
    teacher = out / "saved_pth_model" / "t_baseline.pth"
    fixed = {"dataset": "cifar10", "data-dir": str(data), "batch-size": 50,
             "eval-batch-size": 100, "val-split": 0.25, "progress": False, "device": "cpu",
             "tensorboard": False, "epochs": 1, "teacher": "resnet8", "student": "resnet8",
             "width": 4, "eca": "none", "teacher-checkpoint": str(teacher)}
    tune = {"fixed": fixed, "tune": {"n_trials": 3, "seeds": [1, 2], "seed": 7, "methods": {
        "none": {"flags": {"kd": "none"}},
        "logit": {"flags": {"kd": "logit"},
                  "params": {"temperature": {"low": 1, "high": 8, "log": True},
                             "beta": {"low": 0.1, "high": 10, "log": True}},
                  "start": {"temperature": 4.0, "beta": 1.0}},
        "skip": {"flags": {"kd": "skip"},
                 "params": {"alpha": {"low": 0.01, "high": 10, "log": True},
                            "kd-opt.skip.loss": {"choices": ["mse", "nmse", "cosine"]}}}}}}
    grid = tmp_path / "tune.json"
    grid.write_text(json.dumps(tune))
    sdir = tmp_path / "sweep"
    assert_ok(run("sweep.py", "create", "tt", "--grid", grid, "--dir", sdir))
    # the searches only: 2 methods x 3 trials
    proc = assert_ok(run("sweep.py", "work", "tt", "--dir", sdir, "--n-trials", "6",
                         timeout=900))
    assert "failed" not in proc.stdout.replace("0 failed", "")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(sdir / "optuna-journal.log")))
    best = {}
    for method, n_params in (("logit", 2), ("skip", 2)):
        study = optuna.load_study(study_name=f"tt-search-{method}", storage=storage)
        trials = study.get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3
        for t in trials:
            argv = t.user_attrs["argv"]
            assert "--no-report-test" in " ".join(argv) or \
                argv[argv.index("--report-test") + 1] == "false"
            assert argv[argv.index("--seed") + 1] == "0"
            summary = _read_json(sdir / "numpy_outputs" / f"summary_{t.user_attrs['key']}.json")
            assert summary["dataset"]["test_read"] is False
            assert summary["student"]["test_acc_best"] is None
            assert t.value == summary["student"]["best_val_acc"]  # the objective: validation
            assert len(t.params) == n_params
        if method == "logit":  # its start setting is the first trial
            assert trials[0].params == {"temperature": 4.0, "beta": 1.0}
        top = max(t.value for t in trials)
        best[method] = next(t for t in trials if t.value == top).params
    # the retrain reads the test set: put it back
    shutil.move(hidden, test_batch)
    assert_ok(run("sweep.py", "work", "tt", "--dir", sdir, timeout=900))
    retrain = optuna.load_study(study_name="tt-retrain", storage=storage)
    rows = retrain.get_trials()
    assert {t.state.name for t in rows} == {"COMPLETE"}
    assert {t.user_attrs["seed"] for t in rows} == {1, 2}  # fresh seeds, never the search's 0
    variants = retrain.user_attrs["sweep:spec"]["grid"]["method"]["variants"]
    for method in ("logit", "skip"):
        assert variants[method] == {"kd": method}
        if f"{method}-tuned" in variants:  # the best validation trial's setting
            assert variants[f"{method}-tuned"] == {"kd": method, **best[method]}
        else:
            assert method == "logit" and best[method] == {"temperature": 4.0, "beta": 1.0}
    for t in rows:
        assert t.user_attrs["test_acc_best"] is not None
    assert_ok(run("sweep.py", "report", "tt", "--dir", sdir))
    report = (sdir / "report" / "report.md").read_text()
    assert "## Tuning" in report and "3 search trials per method" in report
    assert "| logit | 3/3 |" in report and "| skip | 3/3 |" in report
    assert "fresh seeds 1, 2" in report


def test_seeded_search_draws_differ_between_trials_and_repeat():
    """Workers each build their sampler from the search's seed: seeded by the trial's number,
    two trials asked by two workers get different draws, and a trial's draw repeats."""
    import optuna
    from utils.sweep.run.claim import search_sampler
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def draw(number):
        study = optuna.create_study(direction="maximize")
        trial = study.ask()
        study.sampler = search_sampler({"seed": 3, "sampler": "tpe"}, number)
        return trial.suggest_float("x", 0.0, 1.0)

    assert draw(1) != draw(2)
    assert draw(1) == draw(1)


def test_tune_refuses_a_search_without_a_held_out_split(tmp_path, run):
    raw = _tune()
    raw["fixed"].update({"val-split": 0, "epochs": 1})
    grid = tmp_path / "t.json"
    grid.write_text(json.dumps(raw))
    proc = run("sweep.py", "create", "t", "--grid", grid, "--dir", tmp_path / "s")
    assert_refused(proc, "held-out validation split", "--val-split")
    assert not (tmp_path / "s").exists()  # refused before the sweep folder is made


class _Search:
    """What budget_trials/best_trial read of a search sweep: its study and its budget."""

    def __init__(self, study, n_trials):
        self.study, self.spec = study, {"search": {"n_trials": n_trials}}


def _search_with(values, start=None):
    """An in-memory study whose trial i has key k{i}, parameter x = i and value values[i]
    (trial 0 at x = start when given)."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for i, v in enumerate(values):
        x = float(start if (i == 0 and start is not None) else i)
        study.add_trial(create_trial(params={"x": x}, distributions={
            "x": FloatDistribution(0, 100)}, value=v, user_attrs={"key": f"k{i}"}))
    return study


def test_best_trial_keeps_the_budget_and_prefers_the_start_on_a_tie():
    from utils.sweep.run.tune import best_trial, budget_trials
    # 3 allowed; a 4th trial (a worker's race past the budget) is better but not counted
    sub = _Search(_search_with([70.0, 80.0, 75.0, 99.0]), 3)
    assert [t.number for t in budget_trials(sub)] == [0, 1, 2]
    assert best_trial(sub, None).params == {"x": 1.0}
    # a tie between the start setting and a later trial: the start is kept
    sub = _Search(_search_with([80.0, 80.0, 60.0], start=50.0), 3)
    assert best_trial(sub, {"x": 50.0}).number == 0
    # a tie between two other trials: the earlier one
    sub = _Search(_search_with([10.0, 80.0, 80.0], start=50.0), 3)
    assert best_trial(sub, {"x": 50.0}).number == 1
    assert best_trial(_Search(_search_with([]), 3), None) is None
