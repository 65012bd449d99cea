"""`sweep.py report T` on a tune (tune.py): the retrain grid's report with a Tuning section in
front: the budget, each search's validation accuracy at its start and at its best, each method's
chosen setting, and default vs tuned test accuracy, each against the baseline and against each
other, paired by seed with 95% intervals.
"""
from skipkd.errors import UserError
from utils.sweep.report.build import build_report
from utils.sweep.report.stats import paired_delta
from utils.sweep.report.tables import _delta_text, _num, _pm
from utils.sweep.run.progress import Progress, key_states
from utils.sweep.run.storage import load_sweep
from utils.sweep.run.tune import best_trial, budget_trials, search_sweeps
from utils.sweep.spec.keys import _label
from utils.sweep.spec.normalize import normalize_baseline
from utils.sweep.spec.sources import baseline_flag
from utils.sweep.spec.tune import TUNED, retrain_name, search_name

__all__ = ["search_summaries", "tune_report", "tune_section"]


def search_summaries(store, sweep) -> dict:
    """label -> the search's budget, counts, and its start and best trials within the budget."""
    out = {}
    for label, sub in search_sweeps(store, sweep).items():
        start_params = sweep.spec["tune"]["methods"][label]["start"]
        done = budget_trials(sub)
        states = list(key_states(sub.study.get_trials(deepcopy=False)).values())
        start = next((t for t in done if start_params is not None
                      and t.params == start_params), None)
        best = best_trial(sub, start_params)
        out[label] = {"study": sub.name, "budget": sub.spec["search"]["n_trials"],
                      "done": len(done), "failed": states.count("failed"),
                      "start_value": start.value if start else None,
                      "best_value": best.value if best else None}
    return out


def tune_report(store, sweep, sweep_dir, baseline=None) -> dict:
    """The report of a tune: the retrain grid's, with the tuning section in front."""
    summaries = search_summaries(store, sweep)
    if retrain_name(sweep.name) not in store.study_names():
        left = ", ".join(f"{label} {s['done']}/{s['budget']}" for label, s in summaries.items())
        raise UserError(f"tune '{sweep.name}': no retrain yet (searches: {left} trials done); "
                        f"the report comes from the retrain that follows them (one search: "
                        f"python sweep.py report {search_name(sweep.name, 'LABEL')} --dir DIR "
                        f"--out DIR/report-LABEL)")
    retrain = load_sweep(store, retrain_name(sweep.name))
    if baseline:  # this report only
        retrain.spec["baseline"] = normalize_baseline({"baseline": baseline_flag(baseline)},
                                                      retrain.spec, "--baseline")
    rep = build_report(retrain, sweep_dir)
    rep["name"] = sweep.name
    rep["tune_spec"] = dict(sweep.spec["tune"])
    if baseline:
        rep["tune_spec"]["baseline"] = next(iter(retrain.spec["baseline"].values()))
    rep["spec"] = dict(retrain.spec, description=sweep.spec["description"])
    rep["extra_md"] = tune_section(rep, summaries)
    if not Progress(retrain).overview()["finished"]:
        rep["extra_md"].append("")
        rep["extra_md"].append("*The retrain is still running: the rows below are partial.*")
    return rep


def tune_section(rep, summaries) -> list:
    """The markdown lines in front of the retrain's results: budget, chosen settings, and the
    default-vs-tuned table (Δ against the baseline, paired by seed)."""
    tune = rep["tune_spec"]
    configs = {c["axes"].get("method"): c for c in rep["configs"]}
    lines = ["", "## Tuning", "",
             f"- Budget: {tune['n_trials']} search trials per method ({tune['sampler']} sampler, "
             f"seed {tune['seed']}, {'median pruner' if tune['pruner'] == 'median' else 'no pruning'}), "
             f"each trial one training run with `--seed {tune['search_seed']}`, scored on the "
             f"held-out validation split (best epoch); the search runs never read the test split "
             f"(`--no-report-test`). The first trial of each search is its start setting (the "
             f"method's defaults) when the tune file gives one.",
             f"- Retrain: each method at its defaults and, where the search chose something else, "
             f"at the chosen setting (`-tuned`), on the fresh seeds "
             f"{', '.join(map(str, tune['seeds']))}; test accuracy of the best-validation "
             f"checkpoint" + (f", Δ against `{tune['baseline']}` paired by seed with its 95% "
                              f"interval." if tune["baseline"] else " (no baseline: no Δ)."),
             "- A trial that failed (e.g. a combination of options the method refuses) counts "
             "against its search's budget; the table says how many did.",
             "", "| method | searched | val % start → best | chosen setting | default: test best % "
             "| Δ default [95% CI] | tuned: test best % | Δ tuned [95% CI] | tuned − default "
             "[95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    variants = rep["spec"]["grid"]["method"]["variants"]  # what the retrain trains
    for label, m in tune["methods"].items():
        s = summaries.get(label)
        d, t = configs.get(label), configs.get(label + TUNED)
        if s is None:
            searched, vals, setting = "no", "", "(not searched)"
        else:
            searched = f"{s['done']}/{s['budget']}" + (f", {s['failed']} failed"
                                                      if s["failed"] else "")
            vals = f"{_num(s['start_value'])} → {_num(s['best_value'])}"
            tuned = variants.get(label + TUNED)
            if tuned is not None:  # the searched values (those that differ from the start)
                start = m["start"] or {}
                chosen = {k: v for k, v in tuned.items() if k in m["params"]}
                moved = {k: v for k, v in chosen.items() if start.get(k) != v}
                setting = ", ".join(f"{k}={_short(v)}" for k, v in moved.items()) + (
                    "; the rest as the start" if len(moved) < len(chosen) else "")
            elif s["best_value"] is None:
                setting = "(no completed trial: no tuned row)"
            else:
                setting = "= start (the default row is its retrain)"
        cells = [label, searched, vals, setting or "—"]
        for c in (d, t):
            if c is None:
                cells += ["—", "—"]
                continue
            delta = (_delta_text(c["delta_test_acc_best"]) if c.get("baseline") else
                     "(baseline)" if c["axes"].get("method") == tune["baseline"] else "—")
            cells += [_pm(*c["test_acc_best"]), delta or "—"]
        gain = "—"
        if d is not None and t is not None:
            by_seed = {r["seed"]: r["test_acc_best"] for r in d["rows"]}
            gain = _delta_text(paired_delta([(r["test_acc_best"], by_seed.get(r["seed"]))
                                             for r in t["rows"]]))
        lines.append("| " + " | ".join(cells + [gain]) + " |")
    return lines


def _short(v):
    return f"{v:.3g}" if isinstance(v, float) else _label(v)
