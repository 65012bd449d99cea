"""Checking a plan before anything is written: every distinct command line of its trials and
teachers through the script's own parser (a search: each parameter at both ends of its range).
"""
import contextlib
import io

from skipkd.errors import UserError
from skipkd.io.files import validate_run_key
from utils.sweep.spec.expand import search_trial
from utils.sweep.spec.keys import _label
from utils.sweep.spec.scripts import SCRIPTS, Parsers

__all__ = ["check_argv", "check_plan", "check_stored_trial"]


def check_argv(parsers, script, argv, what):
    """Parse one trial's command line with the script's own parse_args (as the run will) -> the
    parsed arguments; a refusal is a one-line UserError."""
    sink = io.StringIO()  # a note the parser prints (e.g. on original flags) is not shown here
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return parsers.parse(script, argv)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


def check_plan(spec: dict, plan: dict, parsers=None):
    """Every distinct command line of the plan through its script's parser; a search checks
    each parameter at its low and high end (or each choice)."""
    parsers = parsers or Parsers()
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


def check_stored_trial(parsers, attrs: dict, what: str):
    """A trial's record as read back from the storage (a journal or database anyone may have
    edited) checked like a user's flags before the worker writes anything for it: its run key
    and its shared teacher's are plain names, its script is one of SCRIPTS, and its flags are
    strings that the script's own parser accepts and that leave the run's place to the sweep
    (no --resume or --overwrite: the worker decides those). A one-line UserError otherwise."""
    def bad(why):
        return UserError(f"{what}: its stored record is not one this sweep wrote ({why})")

    try:
        key = validate_run_key(attrs.get("key"))
        if attrs.get("teacher_key") is not None:
            validate_run_key(attrs.get("teacher_key"))
    except UserError as exc:
        raise bad(str(exc).replace(" (--run-name)", "")) from None
    script = attrs.get("script")
    if not isinstance(script, str) or script not in SCRIPTS:
        raise bad(f"script {str(script)[:60]!r} is not one of {', '.join(SCRIPTS)}")
    argv = attrs.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise bad("its flags are not a list of strings")
    attempt = attrs.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise bad(f"attempt {str(attempt)[:20]!r} is not a positive whole number")
    # fp32 last: the check never asks CUDA about bf16 (a CUDA context in every slot worker)
    args = check_argv(parsers, script, argv + ["--run-name", key, "--output-dir", ".",
                                               "--precision", "fp32"], what)
    if args.resume or args.overwrite:
        raise bad("its flags ask for --resume or --overwrite, which only the worker sets")
    if args.download:
        raise bad("its flags ask for --download: a sweep reads its data, it never fetches it "
                  "into a folder named in the storage")
