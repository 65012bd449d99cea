"""`sweep.py report T` on a tune (tune.py): the retrain grid's report with a Tuning section in
front: the budget, each search's validation accuracy at its start and at its best, each method's
chosen setting, and default vs tuned test accuracy, each against the baseline and against each
other, paired by seed with 95% intervals.
"""
from skipkd.errors import UserError
from utils.sweep.report.build import build_report
from utils.sweep.report.stats import holm, paired_delta
from utils.sweep.report.tables import _delta_text, _num, _pm
from utils.sweep.run.progress import Progress, key_states
from utils.sweep.run.storage import load_sweep
from utils.sweep.run.tune import best_trial, budget_trials, search_sweeps, selection
from utils.sweep.spec.keys import _label
from utils.sweep.spec.tune import TUNED, chosen_rows, retrain_name, search_name

__all__ = ["search_summaries", "tune_report", "tune_section"]


def search_summaries(store, sweep, searches=None) -> dict:
    """label -> the search's budget, counts, and its start and best trials within the budget
    (searches: the tune's search sweeps, when already loaded)."""
    out = {}
    for label, sub in (searches or search_sweeps(store, sweep)).items():
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
    searches = search_sweeps(store, sweep)
    summaries = search_summaries(store, sweep, searches)
    if retrain_name(sweep.name) not in store.study_names():
        left = ", ".join(f"{label} {s['done']}/{s['budget']}" for label, s in summaries.items())
        raise UserError(f"tune '{sweep.name}': no retrain yet (searches: {left} trials done); "
                        f"the report comes from the retrain that follows them (one search: "
                        f"python sweep.py report {search_name(sweep.name, 'LABEL')} --dir DIR "
                        f"--out DIR/report-LABEL)")
    retrain = load_sweep(store, retrain_name(sweep.name))
    tune = sweep.spec["tune"]
    tune.setdefault("derived", {})
    tune.setdefault("contrasts", [])
    chosen, confirm_info = selection(store, sweep, searches)
    rows_of = chosen_rows(tune, chosen)  # label -> its chosen row, None: no choice was made
    base = tune["baseline"]
    if baseline:  # this report only: a method label; each row is paired with its own kind
        axis, _, value = baseline.partition("=")
        if axis != "method" or value not in tune["methods"]:
            raise UserError(f"--baseline {baseline}: a tune's report pairs rows with a method "
                            f"of the tune: --baseline method=LABEL, LABEL one of "
                            f"{', '.join(tune['methods'])}" + (
                                f" (name the method, {value[:-len(TUNED)]!r}: its chosen row is "
                                f"compared with chosen rows and its default row with default "
                                f"rows, never across)" if value.endswith(TUNED) else ""))
        base = value
    rep = build_report(retrain, sweep_dir)
    _pair_by_kind(rep["configs"], tune, rows_of, base)
    rep["name"] = sweep.name
    rep["tune_spec"] = dict(tune, baseline=base)
    # the protocol's Δ line and the "(baseline)" mark: the chosen baseline row, where every
    # row is a chosen one; else none (the tuning section says how rows are paired)
    kinds = {row_kind(c["axes"].get("method"), tune, rows_of) for c in rep["configs"]}
    shown = {"method": rows_of.get(base)} if base and rows_of.get(base) and \
        "default" not in kinds else None
    rep["spec"] = dict(retrain.spec, baseline=shown, description=sweep.spec["description"])
    rep["rows_of"] = rows_of
    rep["extra_md"] = tune_section(rep, summaries, confirm_info)
    if tune["contrasts"]:
        rep["extra_md"] += contrast_section(rep, tune, rows_of, summaries, confirm_info)
    if not Progress(retrain).overview()["finished"]:
        rep["extra_md"].append("")
        rep["extra_md"].append("*The retrain is still running: the rows below are partial.*")
    return rep


def row_kind(label, tune, rows_of) -> str:
    """The kind of the retrain row of method-axis value `label`: 'chosen' (a method's chosen
    setting other than its defaults, or a derived row of a method with a choice), 'default' (a
    method's defaults where its chosen setting is another row, or where no choice was made: a
    search without a completed trial, confirmation runs that all failed), 'both' (a method whose
    choice is its defaults)."""
    if rows_of.get(label) == label:
        return "chosen" if label in tune["derived"] else "both"
    return "chosen" if label.endswith(TUNED) else "default"


def _pair_by_kind(configs, tune, rows_of, base):
    """The Δ of every row against the baseline method's row of the same kind: a chosen row
    against its chosen row, a default row against its default row (the selection rule:
    docs/RESULTS.md). A row without a counterpart of its kind gets no Δ; a cross comparison
    is never computed. Rows are found by their method-axis value."""
    by_label = {c["axes"].get("method"): c for c in configs}
    base_rows = {"chosen": rows_of.get(base) if base else None,
                 "default": base if base in by_label and base in tune["methods"] else None}
    for c in configs:
        c["baseline"] = None
        for f in ("test_acc_best", "test_acc_last"):
            c.pop(f"delta_{f}", None)
        if not base:
            continue
        label = c["axes"].get("method")
        kind = row_kind(label, tune, rows_of)
        target = base_rows["default" if kind == "default" else "chosen"]
        if kind == "both" and rows_of.get(base) is None:
            target = None  # the baseline made no choice: nothing chosen to compare with
        if target is None or target == label or target not in by_label:
            continue
        c["baseline"] = by_label[target]["config"]
        brs = {r["seed"]: r for r in by_label[target]["rows"]}
        for f in ("test_acc_best", "test_acc_last"):
            c[f"delta_{f}"] = paired_delta([(r[f], brs[r["seed"]][f]) for r in c["rows"]
                                            if r["seed"] in brs])


def _resolve(side, rows_of, summaries, confirm_info):
    """A contrast's side -> (its chosen row or None, how it was picked); best_of is picked on
    validation only: the confirmed mean when there are confirmation runs, else the search's
    best trial."""
    if isinstance(side, str):
        return rows_of.get(side), (None if rows_of.get(side) else f"{side}: no chosen setting")
    rated = []
    for label in side["best_of"]:
        if confirm_info is not None and (confirm_info.get(label) or {}).get("value") is not None:
            rated.append((confirm_info[label]["value"], label))
        elif confirm_info is None and summaries.get(label, {}).get("best_value") is not None:
            rated.append((summaries[label]["best_value"], label))
    if not rated:
        return None, "no validation result"
    value, label = max(rated)
    how = (f"best of {', '.join(side['best_of'])} on validation: {label} ({value:.2f}%"
           f"{', confirmed mean' if confirm_info is not None else ', search'})")
    return rows_of.get(label), how


def contrast_section(rep, tune, rows_of, summaries, confirm_info) -> list:
    """The pre-registered contrasts (stated in the tune file before the runs): each side's
    chosen row, paired by seed, with Holm-corrected intervals (report/stats.py holm)."""
    configs = {c["axes"].get("method"): c for c in rep["configs"]}
    picked, diffs = [], []
    for c in tune["contrasts"]:
        a, how_a = _resolve(c["a"], rows_of, summaries, confirm_info)
        b, how_b = _resolve(c["b"], rows_of, summaries, confirm_info)
        ds = []
        if a in configs and b in configs:
            by_seed = {r["seed"]: r["test_acc_best"] for r in configs[b]["rows"]}
            ds = [r["test_acc_best"] - by_seed[r["seed"]] for r in configs[a]["rows"]
                  if r["seed"] in by_seed and r["test_acc_best"] is not None
                  and by_seed[r["seed"]] is not None]
        picked.append((c, a, b, " ".join(h for h in (how_a, how_b) if h)))
        diffs.append(ds)
    res = holm(diffs)
    lines = ["", "## Pre-registered contrasts", "",
             "- Stated in the tune file before any run; each side is its method's chosen "
             "row (the selection rule: validation only); test accuracy of the best-validation "
             "checkpoint, a − b paired by seed over the retrain's seeds.",
             f"- Holm's correction over the {len(diffs)} contrasts: ranked by p, the i-th "
             f"tested at 5% / (m − i + 1) until one does not hold, every later one at that "
             f"level, so the yes/no calls together are wrong with probability at most 5%. "
             f"Each interval is the t-interval at its contrast's level and excludes 0 exactly "
             f"when the contrast holds; the intervals are not claimed to cover all at once "
             f"(Bonferroni's, at 5% / m each, would).",
             "", "| contrast | a | b | seeds | a − b (points) | Holm interval | level | p | "
             "p (Holm) | holds |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for (c, a, b, how), r in zip(picked, res):
        interval = (f"[{r['low']:+.2f}, {r['high']:+.2f}]" if r["low"] is not None else "—")
        mean = f"{r['mean']:+.2f}" if r["mean"] is not None else "—"
        lines.append(f"| {c['name']} | `{a}` | `{b}` | {r['n']} | {mean} | {interval} | "
                     f"{100 * (1 - r['level']):.2f}% | {_p(r['p'])} | {_p(r['p_holm'])} | "
                     f"{'yes' if r['holds'] else 'no'} |")
        if how:
            notes.append(f"- {c['name']}: {how}.")
    return lines + ([""] + notes if notes else [])


def _p(p):
    return "—" if p is None else f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def tune_section(rep, summaries, confirm_info=None) -> list:
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
             _rule_line(tune),
             "- Retrain: each method at its chosen setting (`-tuned` where it is not the "
             "method's defaults)" + (", and at its defaults" if tune.get("defaults", True) else "")
             + f"{_derived_text(tune)}, on the fresh seeds "
             f"{', '.join(map(str, tune['seeds']))}; test accuracy of the best-validation "
             f"checkpoint" + (f", Δ against `{tune['baseline']}` paired by seed with its 95% "
                              f"interval." if tune["baseline"] else " (no baseline: no Δ)."),
             "- Δ pairs like with like: a chosen row with the baseline's chosen row, a default "
             "row with its default row; a chosen row is never compared with a default one.",
             "- A trial that failed (e.g. a crash) counts against its search's budget; the table "
             "says how many did.",
             "", "| method | searched | val % start → best | chosen setting | chosen: test best % "
             "| Δ chosen [95% CI] | defaults: test best % | Δ defaults [95% CI] | chosen − "
             "defaults [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    rows_of = rep.get("rows_of") or {}
    variants = rep["spec"]["grid"]["method"]["variants"]  # what the retrain trains
    for label, m in tune["methods"].items():
        s = summaries.get(label)
        row = rows_of.get(label)
        chosen_c = configs.get(row) if row else None
        default_c = configs.get(label) if row != label else None
        if s is None:
            searched, vals, setting = "no", "", "(not searched: its defaults)"
        else:
            searched = f"{s['done']}/{s['budget']}" + (f", {s['failed']} failed"
                                                      if s["failed"] else "")
            vals = f"{_num(s['start_value'])} → {_num(s['best_value'])}"
            if row is None:
                setting = "(no choice: no completed search trial or confirmation)"
            elif row == label:
                setting = "its defaults"
            else:  # the searched values (those that differ from the start)
                start = m["start"] or {}
                chosen = {k: v for k, v in variants[row].items() if k in m["params"]}
                moved = {k: v for k, v in chosen.items() if start.get(k) != v}
                setting = ", ".join(f"{k}={_short(v)}" for k, v in moved.items()) + (
                    "; the rest as the defaults" if len(moved) < len(chosen) else "")
        cells = [label, searched, vals, setting]
        for c in (chosen_c, default_c):
            if c is None:
                cells += ["= chosen" if (c is default_c and row == label) else
                          "not retrained" if (c is default_c and not tune.get("defaults", True))
                          else "—", ""]
                continue
            delta = (_delta_text(c["delta_test_acc_best"]) if c.get("baseline") else
                     "(baseline)" if label == tune["baseline"] else "—")
            cells += [_pm(*c["test_acc_best"]), delta or "—"]
        gain = ""
        if chosen_c is not None and default_c is not None:
            by_seed = {r["seed"]: r["test_acc_best"] for r in default_c["rows"]}
            gain = _delta_text(paired_delta([(r["test_acc_best"], by_seed.get(r["seed"]))
                                             for r in chosen_c["rows"]]))
        lines.append("| " + " | ".join(cells + [gain]) + " |")
    if confirm_info:
        lines += ["", "Confirmation runs (mean held-out validation % over the confirm seeds, by "
                  "search rank; the chosen one in bold):", ""]
        for label, info in confirm_info.items():
            cells = []
            for rank, value, n in info["candidates"]:
                text = f"#{rank} {_num(value)} ({n} run{'s' if n != 1 else ''})"
                cells.append(f"**{text}**" if info.get("rank") == rank else text)
            lines.append(f"- {label}: " + ", ".join(cells))
    return lines


def _derived_text(tune) -> str:
    rows = [f"`{k}` ({v['from']}'s chosen setting with "
            + ", ".join(f"{f}={_short(x)}" for f, x in v["flags"].items()) + ")"
            for k, v in (tune.get("derived") or {}).items()]
    return "; derived rows: " + ", ".join(rows) if rows else ""


def _rule_line(tune) -> str:
    """The selection rule in one line (docs/RESULTS.md, "The rule")."""
    c = tune.get("confirm")
    if c is None:
        return ("- Choice: each method's setting is its search's best held-out validation trial "
                "(a tie goes to the defaults); never the test split.")
    return (f"- Choice (validation only): each search's top {c['top']} settings (a tie goes to "
            f"the defaults) are trained again on seeds {', '.join(map(str, c['seeds']))}, not "
            f"read by the search and not the retrain's, and the one with the best mean held-out "
            f"validation accuracy over them is the method's chosen setting.")


def _short(v):
    return f"{v:.3g}" if isinstance(v, float) else _label(v)
