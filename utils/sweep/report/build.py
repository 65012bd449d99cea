"""`sweep.py report`: one report of a study, from the metrics its trials recorded (each copied
from the run's own JSON summary, so the report needs no access to the runs' files).

A grid: per configuration (every axis but the seed) the test accuracy of the best-validation
checkpoint and of the last epoch, mean +- sample standard deviation over seeds; the paired
difference against the baseline configuration of the same seed (mean and 95% confidence
interval, mean +- t(0.975, n-1) * sd / sqrt(n)); parameters and cost (wall time, images/s).
A search: the trials ranked by their objective (held-out validation accuracy).

Written: report.md, configs.csv (grids), trials.csv, figures.html (plotly, interactive) and a
PNG per figure (matplotlib). Files are written atomically; the folder's record
(.sweep-report.json) lists what the report wrote, and a file of the same name that it did not
write stops the report before anything is written.

Modules: stats.py (mean +- std, paired deltas), tables.py (report.md and the CSV files),
figures.py (plotly and matplotlib); this module gathers the trials into one report and writes it.
"""
import json
import os
import shlex
import sys
from datetime import datetime, timezone

from skipkd.errors import UserError
from skipkd.io.outputs import atomic_write, atomic_write_text
from utils.sweep.report.figures import figures
from utils.sweep.report.stats import mean_std, paired_delta
from utils.sweep.report.tables import configs_csv, markdown, trials_csv
from utils.sweep.run.heartbeat import END_ATTR
from utils.sweep.run.progress import key_states
from utils.sweep.run.results import result_problem

__all__ = ["build_report", "write_report", "command_line"]

RECORD = ".sweep-report.json"
COMPLETE_FIELDS = ("test_acc_best", "test_acc_last", "best_val_acc", "final_val_acc",
                   "best_epoch", "epochs", "params", "teacher_params", "kd_learned_params",
                   "wall_time_s", "train_images_per_s", "protocol", "environment", "val_acc")


def _rows(study):
    """One row per run key with a COMPLETE trial (the first), and the trials that failed."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    rows, seen, skipped = [], set(), []
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        key = t.user_attrs.get("key")
        if key in seen:
            continue
        recorded = t.user_attrs.get("result") or {}
        result = dict(recorded) if isinstance(recorded, dict) else {}
        for f in COMPLETE_FIELDS:
            result.setdefault(f, t.user_attrs.get(f))
        why = (result_problem(result) if isinstance(recorded, dict)
               else "its recorded result is not an object")
        if why:  # a journal edited by hand (or a study of an earlier version): left out
            skipped.append(f"trial {t.number} (run {str(key)[:80]!r}): {why}")
            continue
        seen.add(key)
        rows.append({"number": t.number, "key": key, "config": t.user_attrs.get("config", ""),
                     "axes": t.user_attrs.get("axes") or {}, "seed": t.user_attrs.get("seed"),
                     "argv": t.user_attrs.get("argv") or [], "script": t.user_attrs.get("script"),
                     "params_optuna": dict(t.params), "value": t.value,
                     "attempt": t.user_attrs.get("attempt", 1),
                     "duration_s": ((t.datetime_complete - t.datetime_start).total_seconds()
                                    if t.datetime_start and t.datetime_complete else None),
                     **result})
    states = key_states(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL
              and states.get(t.user_attrs.get("key")) == "failed"]
    counts = {s: list(states.values()).count(s) for s in ("done", "running", "waiting", "failed")}
    counts["retried"] = sum(1 for t in trials if t.state == TrialState.FAIL
                            and t.system_attrs.get(END_ATTR) in ("stale", "interrupted"))
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    counts["pruned"] = len(pruned)
    counts["pruned_at"] = [(t.number, t.last_step) for t in pruned]
    counts["skipped"] = skipped
    return rows, failed, counts, trials


def _config_order(trials):
    order = {}
    for t in trials:
        order.setdefault(t.user_attrs.get("config", ""), t.number)
    return order


def build_report(sweep, sweep_dir) -> dict:
    """Everything the report shows, computed in memory (nothing written)."""
    spec = sweep.spec
    rows, failed, counts, trials = _rows(sweep.study)
    if not rows:
        unusable = (f"; {len(counts['skipped'])} with an unusable result, e.g. "
                    f"{counts['skipped'][0]}" if counts["skipped"] else "")
        raise UserError(f"study '{sweep.name}' has no completed trial yet ({counts['running']} "
                        f"running, {counts['waiting']} waiting, {counts['failed']} failed"
                        f"{unusable})")
    teacher_rows, teacher_failed, tcounts = [], [], None
    if sweep.teachers is not None:
        teacher_rows, teacher_failed, tcounts, _ = _rows(sweep.teachers)
    for why in counts["skipped"] + (tcounts or {}).get("skipped", []):
        print(f"warning: {why}; left out of the report", file=sys.stderr)
    rep = {"name": sweep.name, "spec": spec, "storage": sweep.store.label, "rows": rows,
           "failed": failed + teacher_failed, "counts": counts, "teacher_counts": tcounts,
           "teachers": teacher_rows, "sweep_dir": sweep_dir, "kind": "grid" if spec["search"]
           is None else "search", "made": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if spec["search"] is None:
        rep["configs"] = _configs(rows, spec, _config_order(trials))
    return rep


def _configs(rows, spec, order):
    by_config = {}
    for r in rows:
        by_config.setdefault(r["config"], []).append(r)
    baseline = spec.get("baseline")

    def base_of(axes):
        if not baseline:
            return None
        want = {a: l for a, l in axes.items() if a != "seed"}
        want.update(baseline)
        for name, rs in by_config.items():
            if {a: l for a, l in rs[0]["axes"].items() if a != "seed"} == want:
                return name
        return None

    out = []
    for name in sorted(by_config, key=lambda c: order.get(c, 0)):
        rs = sorted(by_config[name], key=lambda r: (str(r["seed"]), r["number"]))
        c = {"config": name, "axes": {a: l for a, l in rs[0]["axes"].items() if a != "seed"},
             "seeds": [r["seed"] for r in rs], "keys": [r["key"] for r in rs], "rows": rs}
        for f in ("test_acc_best", "test_acc_last", "best_epoch", "wall_time_s",
                  "train_images_per_s", "best_val_acc"):
            c[f] = mean_std(r[f] for r in rs)
        c["wall_time_total"] = sum(r["wall_time_s"] or 0 for r in rs)
        c["params"] = rs[0]["params"]
        c["teacher_params"] = rs[0]["teacher_params"]
        c["kd_learned_params"] = rs[0].get("kd_learned_params")
        c["epochs"] = rs[0]["epochs"]
        c["protocols"] = sorted({str(r["protocol"]) for r in rs})
        bname = base_of(rs[0]["axes"])
        c["baseline"] = bname if bname != name else None
        if c["baseline"] is not None:
            brs = {r["seed"]: r for r in by_config[bname]}
            for f in ("test_acc_best", "test_acc_last"):
                c[f"delta_{f}"] = paired_delta([(r[f], brs[r["seed"]][f]) for r in rs
                                                if r["seed"] in brs])
        out.append(c)
    return out


def _check_out_dir(out_dir, names, study):
    """Refuse (before anything is written) a folder that is a file, unwritable, or that holds a
    file of one of our names which an earlier report of this folder did not write."""
    if os.path.islink(os.path.normpath(out_dir)):  # "link/" too
        raise UserError(f"report folder {out_dir} is a symbolic link: a report is never written "
                        f"through one; give the folder itself")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"report folder {out_dir} is a file")
    parent = out_dir if os.path.isdir(out_dir) else os.path.dirname(os.path.abspath(out_dir))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"report folder {out_dir} is not writable")
    owned = set()
    record = os.path.join(out_dir, RECORD)
    if os.path.isfile(record):
        try:
            with open(record) as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError):
            raise UserError(f"report record {record} is unreadable; move it away") from None
        files = data.get("files", []) if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(isinstance(n, str) for n in files):
            raise UserError(f"report record {record}: \"files\" is not a list of file names; "
                            f"move it away")
        if data.get("study") != study:
            raise UserError(f"report folder {out_dir} holds the report of study "
                            f"{str(data.get('study'))[:80]!r} ({RECORD}), not of '{study}'; give "
                            f"another --out")
        owned = set(files)
    elif os.path.exists(record):
        raise UserError(f"{record} is not a file")
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.lexists(path) and (name not in owned or not os.path.isfile(path)):
            raise UserError(f"{path} exists and was not written by sweep.py report; move it "
                            f"away or give another --out")
    return owned


def write_report(rep, out_dir, command_line, plotlyjs="inline") -> list:
    figs = figures(rep)
    rep["figure_names"] = [name for name, _, _ in figs]
    texts = {"report.md": markdown(rep, command_line), "trials.csv": trials_csv(rep)}
    if rep["kind"] == "grid":
        texts["configs.csv"] = configs_csv(rep)
    html = ["<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>Sweep {rep['name']}</title></head><body>",
            f"<h1>Sweep {rep['name']}</h1>"]
    for i, (name, pfig, _) in enumerate(figs):
        include = (True if plotlyjs == "inline" else "cdn") if i == 0 else False
        html.append(pfig.to_html(full_html=False, include_plotlyjs=include))
    html.append("</body></html>")
    texts["figures.html"] = "\n".join(html)
    names = list(texts) + [f"{name}.png" for name, _, _ in figs]
    owned = _check_out_dir(out_dir, names, rep["name"])
    os.makedirs(out_dir, exist_ok=True)
    record = {"study": rep["name"], "files": sorted(owned | set(names))}
    atomic_write_text(os.path.join(out_dir, RECORD), json.dumps(record, indent=1) + "\n")
    for name, text in texts.items():
        atomic_write_text(os.path.join(out_dir, name), text)
    for name, _, mfig in figs:
        atomic_write(os.path.join(out_dir, f"{name}.png"),
                     lambda f, m=mfig: m.savefig(f, format="png", dpi=110), "wb", suffix=".png")
    return [os.path.join(out_dir, n) for n in names]


def command_line():
    return " ".join(shlex.quote(a) for a in ["python", "sweep.py"] + sys.argv[1:])
