"""Equal-budget tuning (utils/sweep/spec/tune.py, utils/sweep/run/tune.py): the tune file's checks, --no-report-test, and an
end-to-end tune of two methods with three search trials each on tiny data whose test split is
absent while the searches run, so a search that read it would fail.
"""
import json
import os
import re
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


_CE = {"low": 0.1, "high": 1, "log": True}


def _equal_methods():
    """Three methods searched with equal breadth (utils/sweep/spec/breadth.py)."""
    return {
        "none": {"flags": {"kd": "none"},
                 "params": {"lr": {"low": 0.02, "high": 0.5, "log": True},
                            "weight-decay": {"low": 5e-5, "high": 5e-3, "log": True}},
                 "start": {"lr": 0.1, "weight-decay": 5e-4}},
        "logit": {"flags": {"kd": "logit"}, "weight": "beta",
                  "params": {"beta": {"low": 1 / 30, "high": 100, "log": True},
                             "temperature": {"low": 1, "high": 8, "log": True},
                             "ce-weight": dict(_CE)},
                  "start": {"beta": 1.0, "temperature": 4.0, "ce-weight": 1.0}},
        "skip": {"flags": {"kd": "skip"}, "weight": "alpha",
                 "params": {"alpha": {"low": 0.01, "high": 30, "log": True},
                            "ce-weight": dict(_CE)},
                 "start": {"alpha": 0.3, "ce-weight": 1.0}}}


@pytest.mark.slow
def test_tune_end_to_end_confirm_derived_contrasts(tmp_path, tiny_cifar, run):
    """Three methods x 3 search trials: the searches never read the test split (it is not on
    disk while they run); each search's top 2 settings are run again on a confirm seed
    (validation only) and the better one is chosen; the retrain runs the defaults, the chosen
    settings and a derived row (skip from a random teacher) on the fresh seeds, tested; the
    report pairs like with like and prints the pre-registered contrasts with Holm intervals."""
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
             "width": 4, "placement": "none", "teacher-checkpoint": str(teacher)}
    tune = {"fixed": fixed, "tune": {
        "n_trials": 3, "seeds": [1, 2], "seed": 7, "confirm": {"top": 2, "seeds": [5]},
        "methods": _equal_methods(),
        "derived": {"skip-random": {"from": "skip", "flags": {"teacher-random": True}}},
        "contrasts": [{"name": "skip vs alone", "a": "skip", "b": "none"},
                      {"name": "skip vs best logit", "a": "skip",
                       "b": {"best_of": ["logit", "none"]}},
                      {"name": "control", "a": "skip", "b": "skip-random"}]}}
    grid = tmp_path / "tune.json"
    grid.write_text(json.dumps(tune))
    sdir = tmp_path / "sweep"
    assert_ok(run("sweep.py", "create", "tt", "--grid", grid, "--dir", sdir))
    # the searches and the confirmation runs: 3 methods x (3 trials + 2 candidates x 1 seed)
    proc = assert_ok(run("sweep.py", "work", "tt", "--dir", sdir, "--n-trials", "15",
                         timeout=900))
    assert "failed" not in proc.stdout.replace("0 failed", "")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(sdir / "optuna-journal.log")))
    top2 = {}
    for method in ("none", "logit", "skip"):
        study = optuna.load_study(study_name=f"tt-search-{method}", storage=storage)
        trials = study.get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3
        for t in trials:
            argv = t.user_attrs["argv"]
            assert argv[argv.index("--seed") + 1] == "0"
            summary = _read_json(sdir / "numpy_outputs" / f"summary_{t.user_attrs['key']}.json")
            assert summary["dataset"]["test_read"] is False
            assert t.value == summary["student"]["best_val_acc"]  # the objective: validation
        assert trials[0].params == tune["tune"]["methods"][method]["start"]
        ranked = sorted(trials, key=lambda t: (-t.value, t.number != 0, t.number))
        top2[method] = [ranked[0].params] + [t.params for t in ranked[1:]
                                             if t.params != ranked[0].params][:1]
    confirm = optuna.load_study(study_name="tt-confirm", storage=storage)
    runs = confirm.get_trials()
    assert len(runs) == 6 and {t.state.name for t in runs} == {"COMPLETE"}
    assert {t.user_attrs["seed"] for t in runs} == {5}
    variants = confirm.user_attrs["sweep:spec"]["grid"]["method"]["variants"]
    for method, tops in top2.items():
        for rank, params in enumerate(tops, 1):
            assert variants[f"{method}.c{rank}"] == {"kd": method, **params}
    value = {t.params["method"]: t.value for t in runs}
    for t in runs:
        summary = _read_json(sdir / "numpy_outputs" / f"summary_{t.user_attrs['key']}.json")
        assert summary["dataset"]["test_read"] is False  # the choice never sees the test set
    # the retrain reads the test set: put it back
    shutil.move(hidden, test_batch)
    assert_ok(run("sweep.py", "work", "tt", "--dir", sdir, timeout=900))
    retrain = optuna.load_study(study_name="tt-retrain", storage=storage)
    rows = retrain.get_trials()
    assert {t.state.name for t in rows} == {"COMPLETE"}
    assert {t.user_attrs["seed"] for t in rows} == {1, 2}  # fresh seeds
    rvariants = retrain.user_attrs["sweep:spec"]["grid"]["method"]["variants"]
    chosen = {}
    for method, tops in top2.items():
        assert rvariants[method] == {"kd": method}
        rank = 1 if len(tops) == 1 or value[f"{method}.c1"] >= value[f"{method}.c2"] else 2
        chosen[method] = tops[rank - 1]
        if chosen[method] == tune["tune"]["methods"][method]["start"]:
            assert f"{method}-tuned" not in rvariants
        else:
            assert rvariants[f"{method}-tuned"] == {"kd": method, **chosen[method]}
    assert rvariants["skip-random"] == {"kd": "skip", **chosen["skip"], "teacher-random": True}
    for t in rows:
        assert t.user_attrs["test_acc_best"] is not None
    assert_ok(run("sweep.py", "report", "tt", "--dir", sdir))
    report = (sdir / "report" / "report.md").read_text()
    assert "## Tuning" in report and "3 search trials per method" in report
    assert "| logit | 3/3 |" in report and "| skip | 3/3 |" in report
    assert "fresh seeds 1, 2" in report and "## Pre-registered contrasts" in report
    assert "Holm" in report
    control = next(line for line in report.splitlines() if line.startswith("| control |"))
    cells = [c.strip() for c in control.strip("|").split("|")]
    assert cells[3] == "2" and cells[4] != "—"  # paired over the 2 retrain seeds
    chosen = "skip-tuned" if "skip-tuned" in rvariants else "skip"
    assert cells[1] == f"`{chosen}`" and cells[2] == "`skip-random`"
    row = next(line for line in report.splitlines() if line.startswith("| method=skip-random |"))
    assert re.search(r"\| [+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] \|", row), row
    # reporting the retrain alone would compare across kinds: refused
    proc = run("sweep.py", "report", "tt-retrain", "--dir", sdir, "--out", tmp_path / "r2")
    assert_refused(proc, "part of the tune 'tt'", "python sweep.py report tt")
    proc = run("sweep.py", "report", "tt", "--dir", sdir, "--baseline", "method=skip-tuned",
               "--out", tmp_path / "r3")
    assert_refused(proc, "name the method", "never across")


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
    raw = {"fixed": {"dataset": "synthetic"}, "tune": {"n_trials": 3, "seeds": [1, 2],
                                                       "methods": _equal_methods()}}
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


# ---------------------------------------------------------------- equal breadth (spec/breadth.py)
def main(argv):
    """sweep.py's main -> its exit status."""
    from sweep import main as sweep_main
    try:
        return sweep_main(argv) or 0
    except SystemExit as exc:
        return exc.code


def _equal_tune(**over):
    tune = {"n_trials": 3, "seeds": [1, 2], "methods": _equal_methods()}
    tune.update(over)
    return {"fixed": {"dataset": "synthetic", "epochs": 4, "val-split": 0.2}, "tune": tune}


def _dist(tau=(1, 8)):
    return {"flags": {"kd": "dist"}, "weight": "kd-weights.dist",
            "params": {"kd-weights.dist": {"low": 1 / 30, "high": 100, "log": True},
                       "kd-opt.dist.tau": {"low": tau[0], "high": tau[1], "log": True},
                       "ce-weight": dict(_CE)},
            "start": {"kd-weights.dist": 1.0, "kd-opt.dist.tau": 4.0, "ce-weight": 1.0}}


def _dkd(warmup):
    return {"flags": {"kd": "dkd", "kd-opt.dkd.warmup": warmup}, "weight": "kd-weights.dkd",
            "params": {"kd-weights.dkd": {"low": 1 / 30, "high": 100, "log": True},
                       "kd-opt.dkd.temperature": {"low": 1, "high": 8, "log": True},
                       "ce-weight": dict(_CE)},
            "start": {"kd-weights.dkd": 1.0, "kd-opt.dkd.temperature": 4.0, "ce-weight": 1.0}}


def _m(label):
    return lambda r: r["tune"]["methods"][label]


@pytest.mark.parametrize("change, needle", [
    # the student alone is tuned on the recipe every method shares
    (lambda r: r["tune"]["methods"]["none"].update(params={}, start=None), "search --lr"),
    # every distillation method names its main weight ...
    (lambda r: _m("skip")(r).pop("weight"), "name its main weight"),
    # ... searched over the same span relative to its published default
    (lambda r: _m("skip")(r)["params"]["alpha"].update(low=0.03), "unequal breadth"),
    (lambda r: _m("skip")(r)["params"]["alpha"].update(log=False), "unequal breadth"),
    (lambda r: _m("logit")(r)["params"]["beta"].update(high=30), "unequal breadth"),
    (lambda r: _m("skip")(r)["start"].update(alpha=1.0), "published default, 0.3"),
    (lambda r: _m("skip")(r).update(weight="ce-weight"), "not the weight of one of its terms"),
    # a temperature where the method has one, the same range everywhere
    (lambda r: (_m("logit")(r)["params"].pop("temperature"), _m("logit")(r)["start"].pop(
        "temperature")), "has a temperature"),
    (lambda r: r["tune"]["methods"].update(dist=_dist(tau=(1, 4))), "temperature range"),
    # the CE weight, searched by every distillation method over one range
    (lambda r: (_m("skip")(r)["params"].pop("ce-weight"), _m("skip")(r)["start"].pop(
        "ce-weight")), "--ce-weight"),
    (lambda r: _m("skip")(r)["params"]["ce-weight"].update(low=0.5), "CE weight range"),
    # a loss variant with its own scale is its own method
    (lambda r: (_m("skip")(r)["params"].update({"kd-opt.skip.loss": {"choices": ["mse", "cosine"]}}),
                _m("skip")(r)["start"].update({"kd-opt.skip.loss": "mse"})), "own weight range"),
    # no method without a search
    (lambda r: r["tune"]["methods"].update(fit={"flags": {"kd": "fitnet"}}), "no params"),
])
def test_create_refuses_unequal_breadth(tmp_path, change, needle, capsys):
    """`sweep.py create` refuses a tune file whose breadth is unequal, in one line."""
    raw = _equal_tune()
    change(raw)
    grid = tmp_path / "t.json"
    grid.write_text(json.dumps(raw))
    assert main(["create", "t", "--grid", str(grid), "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle.lower() in err.lower(), err
    assert not (tmp_path / "s").exists()


def test_create_accepts_equal_breadth(tmp_path, capsys):
    raw = _equal_tune()
    raw["tune"]["methods"]["dist"] = _dist()
    raw["tune"]["methods"]["dkd"] = _dkd(2)
    grid = tmp_path / "t.json"
    grid.write_text(json.dumps(raw))
    assert main(["create", "t", "--grid", str(grid), "--dir", str(tmp_path / "s"),
                 "--dry-run"]) == 0, capsys.readouterr().err
    assert "the grid is valid" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["flags", "default", "params"])
def test_create_refuses_a_warmup_longer_than_the_run(tmp_path, where, capsys):
    """DKD's warm-up, its default (20 epochs) included, is never longer than the run (4)."""
    raw = _equal_tune()
    dkd = _dkd(5)
    if where == "default":
        del dkd["flags"]["kd-opt.dkd.warmup"]
    elif where == "params":
        dkd["flags"].pop("kd-opt.dkd.warmup")
        dkd["params"]["kd-opt.dkd.warmup"] = {"choices": [1, 8]}
        dkd["start"]["kd-opt.dkd.warmup"] = 1
    raw["tune"]["methods"]["dkd"] = dkd
    grid = tmp_path / "t.json"
    grid.write_text(json.dumps(raw))
    assert main(["create", "t", "--grid", str(grid), "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "longer than the run (4 epochs)" in err, err


def test_create_refuses_option_combinations_the_term_refuses(tmp_path, capsys):
    """A search that may draw skip.stages=all with skip.where=mid (which the term refuses)
    would lose a trial: refused at create."""
    raw = _equal_tune()
    skip = raw["tune"]["methods"]["skip"]
    skip["params"].update({"kd-opt.skip.where": {"choices": ["shortcut", "mid"]},
                           "kd-opt.skip.stages": {"choices": ["hint", "all"]}})
    skip["start"].update({"kd-opt.skip.where": "shortcut", "kd-opt.skip.stages": "hint"})
    raw["tune"]["methods"]["skip"] = skip
    from utils.sweep.spec.breadth import _check_combinations
    from skipkd.kd import KD_TERMS
    with pytest.raises(UserError, match="skip.where=mid, skip.stages=all.*refuses"):
        _check_combinations("skip", skip["params"], ["skip"], KD_TERMS, "t")
    # the term refuses the same combination itself
    with pytest.raises(ValueError, match="does not combine"):
        KD_TERMS["skip"].check_combination({**KD_TERMS["skip"].options, "where": "mid",
                                            "stages": "all"})
    # through create: one option set by the method's flags, the other searched
    skip["params"].pop("kd-opt.skip.stages")
    skip["start"].pop("kd-opt.skip.stages")
    skip["flags"]["kd-opt.skip.stages"] = "all"
    grid = tmp_path / "t.json"
    grid.write_text(json.dumps(raw))
    assert main(["create", "t", "--grid", str(grid), "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "skip.where=mid" in err and "refuses" in err, err


@pytest.mark.parametrize("change, needle", [
    (lambda t: t.update(confirm={"top": 2}), "confirm"),
    (lambda t: t.update(confirm={"top": 0, "seeds": [7]}), "top"),
    (lambda t: t.update(confirm={"top": 2, "seeds": [1]}), "retrain seed"),
    (lambda t: t.update(confirm={"top": 2, "seeds": [0]}), "search seed"),
    (lambda t: t.update(derived={"x": {"from": "nosuch", "flags": {"placement": "last"}}}),
     "method label"),
    (lambda t: t.update(derived={"x": {"from": "skip", "flags": {}}}), "at least one flag"),
    (lambda t: t.update(derived={"x": {"from": "skip", "flags": {"alpha": 3}}}), "searched"),
    (lambda t: t.update(derived={"skip": {"from": "skip", "flags": {"placement": "last"}}}),
     "new label"),
    (lambda t: t.update(contrasts=[{"name": "a", "a": "skip", "b": "nosuch"}]), "label"),
    (lambda t: t.update(contrasts=[{"name": "a", "a": "skip-tuned", "b": "none"}]),
     "chosen row"),
    (lambda t: t.update(contrasts=[{"name": "a", "a": "skip", "b": "skip"}]), "itself"),
    (lambda t: t.update(contrasts=[{"name": "a", "a": "skip", "b": {"best_of": ["logit"]}}]),
     "two or more"),
    (lambda t: t.update(contrasts=[{"name": "a", "a": "skip", "b": "none"}] * 2), "repeats"),
    (lambda t: t.update(defaults="no"), "defaults"),
    (lambda t: t["methods"]["skip"].update(weight="beta"), "one of params"),
])
def test_tune_confirm_derived_contrasts_refusals(change, needle):
    raw = _equal_tune()
    change(raw["tune"])
    with pytest.raises(UserError, match=needle):
        normalize_spec(raw, "t.json")


def test_retrain_rows_with_and_without_defaults():
    """defaults false: a tuned method has its chosen row only; a derived row is its method's
    chosen setting plus its flags; the grid's baseline is the baseline's chosen row."""
    from utils.sweep.spec.tune import chosen_rows, retrain_raw
    raw = _equal_tune(derived={"skip-eca": {"from": "skip", "flags": {"placement": "parallel"}}})
    spec = normalize_spec(raw, "t.json")
    chosen = {"none": {"lr": 0.2, "weight-decay": 1e-3}, "logit":
              spec["tune"]["methods"]["logit"]["start"], "skip": {"alpha": 3.0, "ce-weight": 0.5}}
    grid = retrain_raw(spec, chosen)["grid"]["method"]
    assert set(grid) == {"none", "none-tuned", "logit", "skip", "skip-tuned", "skip-eca"}
    spec["tune"]["defaults"] = False
    out = retrain_raw(spec, chosen)
    assert set(out["grid"]["method"]) == {"none-tuned", "logit", "skip-tuned", "skip-eca"}
    assert out["grid"]["method"]["skip-eca"] == {"kd": "skip", "alpha": 3.0, "ce-weight": 0.5,
                                                  "placement": "parallel"}
    assert out["baseline"] == {"method": "none-tuned"}
    assert chosen_rows(spec["tune"], chosen) == {"none": "none-tuned", "logit": "logit",
                                                  "skip": "skip-tuned", "skip-eca": "skip-eca"}


def test_confirmed_choice_is_the_best_confirmed_mean():
    """The rule: the top settings re-run on the confirm seeds; the best mean validation wins
    (not the search's best single trial); a candidate with a failed run is left out."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial
    from utils.sweep.run.tune import confirmed_settings
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = _Search(_search_with([70.0, 90.0, 85.0, 60.0], start=50.0), 4)
    tune = {"methods": {"m": {"start": {"x": 50.0}, "params": {"x": {}}}},
            "confirm": {"top": 3, "seeds": [8, 9]}}
    confirm = optuna.create_study(direction="maximize")
    dist = {"method": CategoricalDistribution(["m.c1", "m.c2", "m.c3"])}
    for label, seed, value, state in [("m.c1", 8, 80.0, None), ("m.c1", 9, 81.0, None),
                                      ("m.c2", 8, 84.0, None), ("m.c2", 9, 83.0, None),
                                      ("m.c3", 8, 99.0, None), ("m.c3", 9, None, "FAIL")]:
        confirm.add_trial(create_trial(
            params={"method": label}, distributions=dist, value=value,
            state=TrialState.FAIL if state else TrialState.COMPLETE,
            user_attrs={"key": f"{label}_{seed}"}))

    class _Confirm:  # the candidates are read from the confirm grid, as it was made
        study = confirm
        spec = {"grid": {"method": {"variants": {"m.c1": {"kd": "x", "x": 1.0},
                                                 "m.c2": {"kd": "x", "x": 2.0},
                                                 "m.c3": {"kd": "x", "x": 50.0}}}}}
    chosen, info = confirmed_settings(_Confirm, tune, {"m": search})
    # search ranks: #1 x=1 (90), #2 x=2 (85), #3 start (70); #2 has the better confirmed mean,
    # #3's one run scored 99 but its other run failed: left out
    assert chosen == {"m": {"x": 2.0}}
    assert info["m"]["rank"] == 2 and info["m"]["value"] == pytest.approx(83.5)
    assert info["m"]["candidates"] == [(1, 80.5, 2), (2, 83.5, 2), (3, 99.0, 1)]


def test_holm_intervals_against_an_independent_computation():
    """Holm's step-down on three contrasts, checked against p-values and intervals computed
    here from the t distribution by hand (scipy.stats.ttest_1samp, t.ppf)."""
    from scipy import stats as st
    from utils.sweep.report.stats import holm
    data = [[1.0, 2.0, 1.5, 2.2, 1.8], [0.1, -0.2, 0.3, 0.0, -0.1], [3.0, 3.5, 2.9, 3.1, 3.3]]
    out = holm(data)
    ps = [st.ttest_1samp(d, 0.0).pvalue for d in data]
    order = sorted(range(3), key=lambda k: ps[k])  # 2, 0, 1
    levels = {order[0]: 0.05 / 3, order[1]: 0.05 / 2, order[2]: 0.05 / 1}
    for k, d in enumerate(data):
        n = len(d)
        mean = sum(d) / n
        sd = (sum((x - mean) ** 2 for x in d) / (n - 1)) ** 0.5
        half = st.t.ppf(1 - levels[k] / 2, n - 1) * sd / n ** 0.5
        assert out[k]["p"] == pytest.approx(ps[k], rel=1e-9)
        assert out[k]["level"] == pytest.approx(levels[k])
        assert out[k]["low"] == pytest.approx(mean - half) and out[k]["high"] == pytest.approx(
            mean + half)
        assert out[k]["holds"] == (ps[k] <= levels[k])
    assert [out[k]["holds"] for k in range(3)] == [True, False, True]
    adj = sorted(min(1, (3 - i) * ps[order[i]]) for i in range(3))
    assert out[order[0]]["p_holm"] == pytest.approx(3 * ps[order[0]])
    assert out[order[1]]["p_holm"] == pytest.approx(max(3 * ps[order[0]], 2 * ps[order[1]]))
    assert adj  # computed
    # once one fails, every later one is tested at the failed level (no rejection after it)
    out = holm([[0.5, -0.4, 0.3], [5.0, 5.1, 4.9], [0.1, 0.2, -0.3]])
    failed = [o for o in out if not o["holds"]]
    assert len({o["level"] for o in failed}) == 1


def test_dry_run_prints_runs_and_gpu_hours(capsys):
    """create --dry-run on a tune: its runs per step and the GPU-hours at a throughput,
    checked against the arithmetic of the file (5 methods searched x 6 trials; top 2 x 2
    confirm seeds; 7 retrain rows x 10 seeds; 15 epochs x 3,000 images x 0.9)."""
    from conftest import REPO_ROOT
    grid = os.path.join(REPO_ROOT, "experiments", "grids", "verdict_low.json")
    assert main(["create", "x", "--grid", grid, "--dry-run", "--images-per-s", "1000"]) == 0
    out = capsys.readouterr().out
    assert "runs: 120 (searches 30, confirmation 20, retrain 70)" in out
    assert "40,500 per run" in out
    assert f"at least {120 * 40_500 / 1000 / 3600:,.1f} on one GPU" in out


def test_report_pairs_like_with_like():
    """A tune's Δ: chosen rows against the baseline's chosen row, default rows against its
    default row; a cross comparison is never computed."""
    from utils.sweep.report.tune import _pair_by_kind, row_kind

    def config(name, accs):  # as build_report names a grid's rows
        return {"config": f"method={name}", "axes": {"method": name},
                "rows": [{"seed": s, "test_acc_best": a, "test_acc_last": a}
                         for s, a in zip((1, 2, 3), accs)]}
    tune = {"methods": {"none": {}, "skip": {}, "logit": {}}, "derived": {"skip-eca": {}}}
    configs = [config("none", [70, 71, 72]), config("none-tuned", [80, 81, 82]),
               config("skip", [75, 76, 77]), config("skip-tuned", [90, 91, 92]),
               config("logit", [85, 86, 87]), config("skip-eca", [95, 96, 97])]
    rows_of = {"none": "none-tuned", "skip": "skip-tuned", "logit": "logit",
               "skip-eca": "skip-eca"}
    assert [row_kind(c["axes"]["method"], tune, rows_of) for c in configs] == [
        "default", "chosen", "default", "chosen", "both", "chosen"]
    _pair_by_kind(configs, tune, rows_of, "none")
    by = {c["axes"]["method"]: c for c in configs}
    assert by["skip"]["baseline"] == "method=none" and by["skip"]["delta_test_acc_best"][1] == 5
    assert by["skip-tuned"]["baseline"] == "method=none-tuned"
    assert by["skip-tuned"]["delta_test_acc_best"][1] == 10
    assert by["logit"]["baseline"] == "method=none-tuned"  # its choice is its defaults
    assert by["skip-eca"]["delta_test_acc_best"][1] == 15
    assert by["none"]["baseline"] is None and "delta_test_acc_best" not in by["none"]
    assert by["none-tuned"]["baseline"] is None
    # against another method: kind with kind
    _pair_by_kind(configs, tune, rows_of, "skip")
    assert by["none"]["baseline"] == "method=skip"
    assert by["none-tuned"]["baseline"] == "method=skip-tuned"
    assert by["skip-eca"]["baseline"] == "method=skip-tuned"
    # a method whose search made no choice keeps its default row, which is never paired with
    # a chosen one; a row derived from it is not chosen either
    rows_of = {"none": "none-tuned", "skip": None, "logit": "logit", "skip-eca": None}
    configs = [c for c in configs if c["axes"]["method"] != "skip-tuned"]
    _pair_by_kind(configs, tune, rows_of, "none")
    by = {c["axes"]["method"]: c for c in configs}
    assert row_kind("skip", tune, rows_of) == "default"
    assert by["skip"]["baseline"] == "method=none"  # defaults with defaults
    assert row_kind("skip-eca", tune, rows_of) == "default"


def test_measured_throughput_reads_the_gpu_checks(tmp_path):
    """The GPU-hours estimate reads the distillation benchmark of the same pair and width
    from a GPU check's summary (its `benchmarks`, as tools/gpu_check.py writes them) or a
    benchmark's own JSON; the best matching rate at the tune's precision."""
    import types
    from utils.sweep.spec.cost import measured_throughput, run_images

    def bench(teacher, student, width, rows):
        return {"config": {"teacher": teacher, "student": student, "width": width,
                           "batch_size": 64}, "device_name": "GPU X",
                "rows": [{"bench": "distill", "path": p, "precision": pr, "images_per_s": r}
                         for p, pr, r in rows]}
    (tmp_path / "check.json").write_text(json.dumps({"benchmarks": {
        "bench_campaign_resnet20": bench("resnet56", "resnet20", None,
                                         [("ours", "bf16", 5000.0), ("reference", "bf16", 9e9),
                                          ("ours", "fp32", 3000.0)]),
        "bench": bench("resnet34", "resnet18", 64, [("ours", "bf16", 20000.0)])}}))
    (tmp_path / "bench.json").write_text(json.dumps(
        bench("resnet56", "resnet20", None, [("ours", "bf16", 6000.0)])))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"benchmarks": {"b": {
        "config": ["resnet56"], "rows": "many"}, "c": {
        "config": {"teacher": "resnet56", "student": "resnet20"},
        "rows": [1, {"bench": "distill", "path": "ours", "precision": "bf16",
                     "images_per_s": -5.0}]}}}))  # read, not trusted: ignored
    args = types.SimpleNamespace(teacher="resnet56", student="resnet20", width=None,
                                 student_width=None, precision="bf16", batch_size=64)
    rate, source = measured_throughput(args, gpu_dir=str(tmp_path))
    assert rate == 6000.0 and "bench.json" in source and "GPU X" in source
    args.precision = "fp32"
    assert measured_throughput(args, gpu_dir=str(tmp_path))[0] == 3000.0
    args.student = "resnet32"
    assert measured_throughput(args, gpu_dir=str(tmp_path)) is None
    one = types.SimpleNamespace(dataset="cifar100", limit_train=None, val_split=0.1, epochs=240)
    assert run_images(one) == 240 * 45_000
