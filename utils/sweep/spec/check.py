"""Checking a plan before anything is written: every distinct command line of its trials and
teachers through the script's own parser (a search: each parameter at both ends of its range).
"""
import contextlib
import io

from skipkd.errors import UserError
from utils.sweep.spec.expand import search_trial
from utils.sweep.spec.keys import _label

__all__ = ["check_argv", "check_plan"]


def check_argv(parsers, script, argv, what):
    """Parse one trial's command line with the script's own parse_args (as the run will) -> the
    parsed arguments; a refusal is a one-line UserError."""
    sink = io.StringIO()  # a note the parser prints (e.g. on original flags) is not shown here
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return parsers.parse(script, argv)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


def check_plan(spec: dict, plan: dict, parsers):
    """Every distinct command line of the plan through its script's parser; a search checks
    each parameter at its low and high end (or each choice)."""
    seen = set()
    runs = [(t["script"], t["argv"] + ["--run-name", t["key"]], f"trial {t['key']}")
            for t in plan["trials"] + plan["teachers"]]
    if spec["search"] is not None:
        params = spec["search"]["params"]
        ends = {f: ([r["low"], r["high"]] if "low" in r else r["choices"])
                for f, r in params.items()}
        base = {f: v[0] for f, v in ends.items()}
        for flag, values in ends.items():
            for v in values:
                t = search_trial(spec, "check", 0, {**base, flag: v}, plan["teacher_key"])
                runs.append((t["script"], t["argv"], f"search --{flag} {_label(v)}"))
    for script, argv, what in runs:
        sig = (script, tuple(a for a in argv))
        if sig in seen:
            continue
        seen.add(sig)
        check_argv(parsers, script, argv, what)
