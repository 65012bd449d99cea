"""Markdown comparison of distillation runs from numpy_outputs/summary_*.json: teacher, baseline
student, distilled student, ECA placement, KD mode, accuracy deltas and parameters.

    python compare_runs.py [--runs KEY ...] [--baseline KEY | --baseline RUN=BASELINE ...]

A run's baseline is the student architecture trained without a teacher: a model_training.py
run, or a model_training_mid.py run with --kd none. Unless given, it is found automatically:
same student architecture, width, dataset and test-set size, preferring the same ECA
placement, then the same training-set size, epochs and seed.
"""
import glob
import math
import os
import sys

from skipkd.errors import UserError, exit_on_user_error
from skipkd.io.outputs import atomic_write_text
from utils.analysis.runs import load_summaries, unknown_key_message
from utils.analysis.toolargs import check_output_path, tool_parser


def get_args_parser():
    p = tool_parser("Compare teacher, baseline student and distilled student across "
                                  "runs as a markdown table (printed and saved).")
    p.add_argument("--numpy-dir", default="numpy_outputs",
                   help="folder with the runs' summary_<key>.json files")
    p.add_argument("--runs", nargs="+", metavar="KEY", default=None,
                   help="distillation runs to compare (default: every run with a --kd other than none)")
    p.add_argument("--baseline", nargs="+", metavar="KEY|RUN=KEY", default=[],
                   help="baseline for all runs (KEY) or for one run (RUN=KEY); runs not named get "
                        "an automatic match")
    p.add_argument("--no-auto-baseline", dest="auto_baseline", action="store_false",
                   help="do not match baselines automatically")
    p.add_argument("--acc", choices=["test", "last", "best", "final"], default="test",
                   help="test: test accuracy of the best-validation checkpoint (under the "
                        "test-as-val protocol, its validation accuracy, which is optimistic); "
                        "last: test accuracy of the last epoch; best / final: best-epoch / "
                        "final-epoch validation accuracy. The table names each run's protocol")
    p.add_argument("--output", default=None,
                   help="markdown file to write (default: <numpy-dir>/comparison.md)")
    return p


# ---------------------------------------------------------------- reading summaries
def readable_summaries(numpy_dir, runs, baselines) -> dict:
    """{key: summary} of the folder's valid summaries. A damaged one (skipkd/io/summary.py) is
    skipped with a one-line warning, unless --runs or --baseline names it: then it is the
    one-line error (a table without the asked-for run would mislead)."""
    summaries, damaged = load_summaries(numpy_dir)
    named = set(runs or ()) | {part for spec in baselines for part in spec.split("=")}
    for key, why in damaged.items():
        if key in named:
            raise UserError(why)
    if not summaries:
        if damaged:
            more = f" (and {len(damaged) - 1} more damaged)" if len(damaged) > 1 else ""
            raise UserError(f"{next(iter(damaged.values()))}{more}; no run left to compare")
        raise UserError(f"no summary_*.json files in {numpy_dir}: train a run first")
    for key, why in damaged.items():
        print(f"warning: {why}; run {key!r} skipped", file=sys.stderr)
    return summaries


def _student_of(summary):
    """The model a run contributes as a baseline: its 'baseline', or a --kd none student."""
    if "baseline" in summary:
        return summary["baseline"]
    if (summary.get("args") or {}).get("kd") == "none" and "student" in summary:
        return summary["student"]
    return None


def protocol(summary) -> str:
    """'held-out' or 'test-as-val' (older summaries without the field: test-as-val)."""
    p = (summary.get("dataset") or {}).get("protocol") or "test-as-val"
    return "held-out" if p.startswith("held-out") else "test-as-val"


def _dataset_id(summary):
    d = summary.get("dataset") or {}
    return d.get("dataset"), d.get("test_size")


def _acc(result, which):
    if not result:
        return None
    v = None
    if which in ("test", "last"):  # summaries without a test report: test-as-val, the same
        v = result.get("test_acc_best" if which == "test" else "test_acc_last")
    if v is None:
        v = result.get("final_val_acc" if which in ("final", "last") else "best_val_acc")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def match_baseline(run, candidates):
    """Best automatic baseline key for `run` among {key: summary}, or None."""
    s = run["student"]
    args = run.get("args") or {}
    best, best_score = None, -1
    for key, cand in sorted(candidates.items()):
        b = _student_of(cand)
        if key == run["run_key"] or b is None:
            continue
        if (b.get("arch"), b.get("base_width")) != (s.get("arch"), s.get("base_width")):
            continue
        if _dataset_id(cand) != _dataset_id(run):
            continue
        cargs = cand.get("args") or {}
        score = (8 * (b.get("placement") == s.get("placement"))
                 + 4 * ((cand.get("dataset") or {}).get("train_size")
                        == (run.get("dataset") or {}).get("train_size"))
                 + 2 * (b.get("epochs") == s.get("epochs"))
                 + 1 * (cargs.get("seed") == args.get("seed")))
        if score > best_score:
            best, best_score = key, score
    return best


def _parse_baselines(specs, summaries, where):
    """--baseline values -> (default key or None, {run: key})."""
    default, per_run = None, {}
    for spec in specs:
        run, _, key = spec.rpartition("=")
        if key not in summaries:
            raise UserError(unknown_key_message(key, sorted(summaries), where))
        if _student_of(summaries[key]) is None:
            raise UserError(f"run {key!r} is not a baseline (no model_training.py result and "
                            f"not a --kd none run)")
        if run:
            if run not in summaries:
                raise UserError(unknown_key_message(run, sorted(summaries), where))
            per_run[run] = key
        else:
            default = key
    return default, per_run


# ---------------------------------------------------------------- table
def _pct(v):
    return "-" if v is None else f"{v:.2f}"


def _delta(a, b):
    return "-" if a is None or b is None else f"{a - b:+.2f}"


def _params(n):
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def comparison_rows(summaries, keys, default_baseline, per_run, auto, which):
    rows = []
    for key in keys:
        run = summaries[key]
        s, t = run.get("student"), run.get("teacher")
        if s is None:
            continue
        bkey = per_run.get(key) or default_baseline
        if bkey is None and auto:
            bkey = match_baseline(run, summaries)
        b = _student_of(summaries[bkey]) if bkey else None
        s_acc, t_acc, b_acc = _acc(s, which), _acc(t, which), _acc(b, which)
        if t is not None and t_acc is None:  # a reused teacher: only its saved best accuracy
            t_acc = _acc(t, "best")
        d = run.get("dataset") or {}
        rows.append({
            "run": key,
            "dataset": f"{d.get('dataset', '?')} ({d.get('train_size', '?')}/{d.get('test_size', '?')})",
            "protocol": protocol(run),
            "teacher": f"{t['arch']} w{t['base_width']}" if t else "-",
            "student": f"{s['arch']} w{s['base_width']}",
            "placement": s.get("placement", "-"), "kd": kd_label(s, run),
            "teacher_acc": t_acc, "baseline_acc": b_acc, "student_acc": s_acc,
            "baseline_key": bkey, "teacher_params": t.get("params") if t else None,
            "student_params": s.get("params"),
        })
    return rows


def kd_label(student: dict, run: dict) -> str:
    """The distillation terms with their weights ('skip 0.3 + logit 1'), or the --kd string
    when the summary does not record the weights (older runs)."""
    kd = str(student.get("kd") or (run.get("args") or {}).get("kd", "-"))
    weights = student.get("kd_weights")
    if isinstance(weights, dict) and weights and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights.values()):
        return " + ".join(f"{str(name)[:32]} {w:g}" for name, w in weights.items())
    return kd


def markdown(rows, baselines, which):
    head = ["run", "dataset (train/test)", "protocol", "teacher", "student", "placement",
            "KD (term weight)", "teacher acc",
            "baseline acc", "KD student acc", "Δ student−baseline", "Δ student−teacher",
            "params T / S", "baseline run"]
    what = {"test": "test accuracy of the best-validation checkpoint",
            "last": "test accuracy of the last epoch",
            "best": "best-epoch validation accuracy",
            "final": "final-epoch validation accuracy"}[which]
    out = [f"Accuracy: {what} (%); Δ in percentage points. Protocol: held-out = checkpoint "
           f"chosen on a held-out part of the training set; test-as-val = chosen on the test set "
           f"(optimistic).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join([
            r["run"], r["dataset"], r["protocol"], r["teacher"], r["student"], r["placement"], r["kd"],
            _pct(r["teacher_acc"]), _pct(r["baseline_acc"]), _pct(r["student_acc"]),
            _delta(r["student_acc"], r["baseline_acc"]), _delta(r["student_acc"], r["teacher_acc"]),
            f"{_params(r['teacher_params'])} / {_params(r['student_params'])}",
            r["baseline_key"] or "-"]) + " |")
    if baselines:
        out += ["", "Baselines (no teacher):", "",
                "| run | dataset (train/test) | protocol | model | placement | acc | params |",
                "|---|---|---|---|---|---|---|"]
        for key, summ in baselines.items():
            b = _student_of(summ)
            d = summ.get("dataset") or {}
            out.append(f"| {key} | {d.get('dataset', '?')} ({d.get('train_size', '?')}/"
                       f"{d.get('test_size', '?')}) | {protocol(summ)} | {b['arch']} w{b['base_width']} | "
                       f"{b.get('placement', '-')} | {_pct(_acc(b, which))} | {_params(b.get('params'))} |")
    return "\n".join(out)


def main(args):
    if not os.path.isdir(args.numpy_dir):
        raise UserError(f"--numpy-dir folder not found: {args.numpy_dir}")
    output = args.output or os.path.join(args.numpy_dir, "comparison.md")
    inputs = {p for d in (args.numpy_dir, glob.escape(args.numpy_dir))  # what load_summaries reads
              for p in glob.glob(os.path.join(d, "summary_*.json"))}
    check_output_path(output, inputs, "--output", create=True)
    summaries = readable_summaries(args.numpy_dir, args.runs, args.baseline)
    where = args.numpy_dir
    if args.runs:
        for key in args.runs:
            if key not in summaries:
                raise UserError(unknown_key_message(key, sorted(summaries), where))
        keys = args.runs
    else:
        keys = [k for k, s in summaries.items() if "student" in s and _student_of(s) is None]
    default_b, per_run = _parse_baselines(args.baseline, summaries, where)
    rows = comparison_rows(summaries, keys, default_b, per_run, args.auto_baseline, args.acc)
    baselines = {k: s for k, s in summaries.items() if _student_of(s) is not None}
    if not rows and not baselines:
        raise UserError(f"no distillation or baseline runs in {args.numpy_dir}")
    text = markdown(rows, baselines, args.acc)
    print(text)
    atomic_write_text(output, "# Run comparison\n\n" + text + "\n")
    print(f"\nwrote {output}")
    return rows


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
