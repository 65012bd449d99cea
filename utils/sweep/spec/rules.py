"""The rules every spec entry is checked by (spec files are data: nothing in one is trusted):
the limits, flag names and values, search ranges and a search's settings. One place for both
kinds of search (a plain `search` and each method's search in a `tune`)."""
import json
import math
import re

from skipkd.errors import UserError
from utils.sweep.spec.keys import COMPOUND

__all__ = ["LIMITS", "SCALARS", "SEARCH_KEYS", "MAX_TRIALS", "check_depth", "check_flags", "positive",
           "normalize_param", "search_settings"]

# Bounds checked before anything is expanded (docs/SWEEPS.md, "Limits"): a grid file is data,
# and a typo must not make `create` run for hours or allocate without end.
LIMITS = {"depth": 16,                 # nesting of the spec's objects and lists
          "axes": 32,                  # grid axes
          "axis_values": 10_000,       # values (or variants) of one axis
          "flags": 1_000,              # flags of one fixed/teacher/variant object
          "grid_trials": 100_000,      # grid points (the product of the axis lengths)
          "number": 10**15,            # the magnitude of any number in the spec
          "text": 10_000}              # characters of any string

SEARCH_KEYS = ("n_trials", "params", "sampler", "pruner", "seed", "direction")
SCALARS = (str, int, float, bool)
_FLAG_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_.-]+)?")
# the most trials of one search (a plain search, or each method's in a tune)
MAX_TRIALS = 100_000


def check_depth(raw, source: str):
    """Refuse a spec nested deeper than LIMITS['depth'], or holding a number or a string beyond
    LIMITS (walked without recursion, before anything else looks at it)."""
    stack = [(raw, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > LIMITS["depth"]:
            raise UserError(f"{source}: {where or 'the spec'} is nested deeper than "
                            f"{LIMITS['depth']} levels")
        if isinstance(value, dict):
            if len(value) > LIMITS["axis_values"]:
                raise UserError(f"{source}: {where or 'the spec'} has {len(value):,} entries "
                                f"(at most {LIMITS['axis_values']:,})")
            stack += [(v, depth + 1, f"{where}.{str(k)[:40]}".lstrip(".")) for k, v in value.items()]
        elif isinstance(value, list):
            if len(value) > LIMITS["axis_values"]:
                raise UserError(f"{source}: {where} has {len(value):,} values (at most "
                                f"{LIMITS['axis_values']:,})")
            stack += [(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value)]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > LIMITS["number"] or \
                    isinstance(value, float) and math.isfinite(value) and abs(value) > LIMITS["number"]:
                raise UserError(f"{source}: {where} is a number beyond +-{LIMITS['number']:.0e}")
        elif isinstance(value, str) and len(value) > LIMITS["text"]:
            raise UserError(f"{source}: {where} is a string of {len(value):,} characters (at "
                            f"most {LIMITS['text']:,})")


def check_flags(args, what: str) -> dict:
    if not isinstance(args, dict):
        raise UserError(f"{what}: expected an object of flag: value")
    if len(args) > LIMITS["flags"]:
        raise UserError(f"{what}: {len(args):,} flags (at most {LIMITS['flags']:,})")
    out = {}
    for flag, value in args.items():
        if not isinstance(flag, str) or not _FLAG_RE.fullmatch(flag.lstrip("-")):
            raise UserError(f"{what}: {flag!r} is not a flag name")
        flag = flag.lstrip("-")
        ok = value is None or isinstance(value, SCALARS) or (
            isinstance(value, list) and all(isinstance(v, SCALARS) for v in value))
        if not ok:
            raise UserError(f"{what}: --{flag} must be a string, number, boolean or a list of "
                            f"them, got {json.dumps(value)[:60]}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{what}: --{flag} must be finite, got {value}")
        out[flag] = value
    for flag in out:
        base = flag.partition(".")[0]
        if "." in flag and base not in COMPOUND:
            raise UserError(f"{what}: {flag!r}: only {' and '.join(COMPOUND)} take NAME.KEY "
                            f"entries")
        if "." in flag and base in out:
            raise UserError(f"{what}: give either --{base} or {base}.NAME entries, not both")
    return out


def positive(raw, key, default, integer=False):
    value = raw.get(key, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (
            value >= 0 if integer else 0 < value < 1e6):
        what = "a whole number >= 0" if integer else "a positive number of seconds"
        raise UserError(f"'{key}' must be {what}, got {value!r}")
    return value


def normalize_param(flag, rule, what) -> dict:
    if not isinstance(rule, dict):
        raise UserError(f"{what}: expected {{low, high[, log, type]}} or {{choices}}")
    if "choices" in rule:
        choices = rule["choices"]
        if set(rule) - {"choices"} or not isinstance(choices, list) or not choices or not all(
                isinstance(c, SCALARS) for c in choices):
            raise UserError(f"{what}: choices must be a non-empty list of values")
        return {"choices": list(choices)}
    if set(rule) - {"low", "high", "log", "type", "step"} or not {"low", "high"} <= set(rule):
        raise UserError(f"{what}: expected low and high (and optionally log, type, step)")
    kind = rule.get("type", "float")
    if kind not in ("float", "int"):
        raise UserError(f"{what}: type must be float or int")
    low, high, log, step = rule["low"], rule["high"], bool(rule.get("log", False)), rule.get("step")
    num = int if kind == "int" else (int, float)
    for name, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if isinstance(v, bool) or not isinstance(v, num) or not math.isfinite(v):
            raise UserError(f"{what}: {name} must be "
                            f"{'a whole number' if kind == 'int' else 'a number'}")
    if not low < high:
        raise UserError(f"{what}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise UserError(f"{what}: a log range needs low > 0")
    if log and step is not None:
        raise UserError(f"{what}: give log or step, not both")
    if step is not None and step <= 0:
        raise UserError(f"{what}: step must be positive")
    return {"type": kind, "low": low, "high": high, "log": log, "step": step}


def search_settings(entry: dict, what: str, n_default: int, pruner_default: str) -> dict:
    """A search's n_trials, sampler, pruner and seed, checked alike wherever a search is given
    (a plain `search`, or a `tune`, whose searches default to no pruner so that every method
    spends its whole budget): {"n_trials", "sampler", "pruner", "seed"}."""
    n = entry.get("n_trials", n_default)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TRIALS:
        raise UserError(f"{what}: n_trials must be a whole number in 1..{MAX_TRIALS}, got {n!r}")
    sampler, pruner = entry.get("sampler", "tpe"), entry.get("pruner", pruner_default)
    if sampler not in ("tpe", "random"):
        raise UserError(f"{what}: sampler must be tpe or random, got {sampler!r}")
    if pruner not in ("median", "none"):
        raise UserError(f"{what}: pruner must be median or none, got {pruner!r}")
    seed = entry.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed < 2**32):
        raise UserError(f"{what}: seed must be a whole number in 0..{2**32 - 1}")
    return {"n_trials": n, "sampler": sampler, "pruner": pruner, "seed": seed}
