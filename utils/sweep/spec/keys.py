"""Names and command lines: a study's name, a trial's run key, and a trial's {flag: value} as
the training script's command line.

Values are flags' values as on the command line: true/false for booleans, a list repeats the
flag, and a flag written `kd-weights.skip` / `kd-opt.dkd.warmup` is gathered into
`--kd-weights skip=...` / `--kd-opt dkd.warmup=...` (see COMPOUND).
"""
import hashlib
import json
import re

from skipkd.errors import UserError
from skipkd.io.outputs import RUN_KEY_MAX, validate_run_key

__all__ = ["COMPOUND", "validate_study_name", "trial_key", "to_argv"]

# flags gathered from `name.sub` keys into one comma-separated value
COMPOUND = ("kd-weights", "kd-opt")
_STUDY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_BAD = re.compile(r"[^A-Za-z0-9._+=-]")


def validate_study_name(name: str) -> str:
    """A study name names the sweep folder and prefixes every run key: letters, digits, . _ -,
    starting with a letter or digit, at most 64 characters."""
    if not _STUDY_RE.fullmatch(name or ""):
        raise UserError(f"bad study name {name!r}: use letters, digits and . _ - (starting with a "
                        f"letter or digit, at most 64 characters)")
    return name


def _label(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def _fmt(value) -> str:
    """A value as the command line spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def trial_key(study: str, parts) -> str:
    """The run key of a grid point: {study}_{axis}={label}_..., characters outside a run key's
    set replaced by '-', with a short hash when that changed anything or the key is too long."""
    body = "_".join(f"{a}={lab}" for a, lab in parts)
    raw = f"{study}_{body}" if body else study
    key = _KEY_BAD.sub("-", raw)
    if key != raw or len(key) > RUN_KEY_MAX:
        tag = "_" + _digest(raw)
        key = key[:RUN_KEY_MAX - len(tag)] + tag
    return validate_run_key(key)


def to_argv(args: dict) -> list:
    """{flag: value} -> ['--flag', 'value', ...] (the module docstring has the rules)."""
    argv, compound = [], {}
    for flag, value in args.items():
        if value is None:
            continue
        base, dot, sub = flag.partition(".")
        if dot and base in COMPOUND:
            compound.setdefault(base, []).append(f"{sub}={_fmt(value)}")
        elif isinstance(value, list):
            for v in value:
                argv += [f"--{flag}", _fmt(v)]
        else:
            argv += [f"--{flag}", _fmt(value)]
    for base, items in compound.items():
        argv += [f"--{base}", ",".join(items)]
    return argv
