"""What a sweep runs (its spec, from a grid file or the flags of `sweep.py create`): the spec's
shape checked and its defaults filled in.

A spec (docs/SWEEPS.md has the reference) is a dict:

    script    model_training_mid.py (default) or model_training.py
    fixed     {flag: value} given to every trial (flag without the leading --)
    grid      {axis: [v1, v2, ...]}            a flag and its values, e.g. "seed": [0, 1, 2]
              {axis: {label: {flag: value}}}   named variants that set several flags together
    exclude   [{axis: label or [labels]}]      grid points left out
    search    {"n_trials": N, "params": {flag: {"low", "high", "log", "type"} or {"choices"}},
               "sampler": "tpe"|"random", "pruner": "median"|"none", "seed": S}
    teacher   {flag: value}: one shared teacher run per distinct teacher (model_training.py),
              which the students load with --teacher-checkpoint (default: each run trains its own)
    baseline  {axis: label}: the grid point each one is compared with, seed by seed (default:
              the value that sets --kd none, the no-teacher student)
    tune      equal-budget tuning of several methods (tune.py has its shape), instead of a grid
              or a search
    heartbeat, grace, max_retries: how dead workers are noticed (seconds) and how often a killed
              trial is retried

This module checks a spec's shape and fills its defaults (normalize_spec). spec_sources.py
reads one, expand.py turns it into trials, and plan_check.py parses every trial's command line
with the script's own parser before anything is written, so an unknown method, model or flag
is a one-line error at `create`. Values are flags' values as on the command line (keys.py):
true/false for booleans, a list repeats the flag, and a flag written `kd-weights.skip` /
`kd-opt.dkd.warmup` is gathered into `--kd-weights skip=...` / `--kd-opt dkd.warmup=...`.
"""
import json
import math
import re

from skipkd.errors import UserError
from utils.sweep.keys import COMPOUND, _label
from utils.sweep.scripts import SCRIPTS

__all__ = ["DEFAULTS", "TOP_KEYS", "normalize_spec", "LIMITS", "check_depth"]

# Bounds checked before anything is expanded (docs/SWEEPS.md, "Limits"): a grid file is data,
# and a typo must not make `create` run for hours or allocate without end.
LIMITS = {"depth": 16,                 # nesting of the spec's objects and lists
          "axes": 32,                  # grid axes
          "axis_values": 10_000,       # values (or variants) of one axis
          "flags": 1_000,              # flags of one fixed/teacher/variant object
          "grid_trials": 100_000,      # grid points (the product of the axis lengths)
          "number": 10**15,            # the magnitude of any number in the spec
          "text": 10_000}              # characters of any string

DEFAULTS = {"heartbeat": 30.0, "grace": 120.0, "max_retries": 3}
TOP_KEYS = ("description", "script", "fixed", "grid", "exclude", "search", "teacher", "baseline",
            "heartbeat", "grace", "max_retries", "tune")
SEARCH_KEYS = ("n_trials", "params", "sampler", "pruner", "seed", "direction")
_SCALARS = (str, int, float, bool)
_FLAG_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_.-]+)?")


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


def _check_flags(args, what: str) -> dict:
    if not isinstance(args, dict):
        raise UserError(f"{what}: expected an object of flag: value")
    if len(args) > LIMITS["flags"]:
        raise UserError(f"{what}: {len(args):,} flags (at most {LIMITS['flags']:,})")
    out = {}
    for flag, value in args.items():
        if not isinstance(flag, str) or not _FLAG_RE.fullmatch(flag.lstrip("-")):
            raise UserError(f"{what}: {flag!r} is not a flag name")
        flag = flag.lstrip("-")
        ok = value is None or isinstance(value, _SCALARS) or (
            isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value))
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


def _positive(raw, key, default, integer=False):
    value = raw.get(key, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (
            value >= 0 if integer else 0 < value < 1e6):
        what = "a whole number >= 0" if integer else "a positive number of seconds"
        raise UserError(f"'{key}' must be {what}, got {value!r}")
    return value


def normalize_spec(raw: dict, source: str) -> dict:
    """Check the shape of a raw spec and fill defaults; returns a JSON-able spec."""
    check_depth(raw, source)
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise UserError(f"{source}: unknown entry {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    script = raw.get("script", "model_training_mid.py")
    if script not in SCRIPTS:
        raise UserError(f"{source}: unknown script {script!r}; choose from {', '.join(SCRIPTS)}")
    spec = {"description": str(raw.get("description", "")), "script": script,
            "fixed": _check_flags(raw.get("fixed", {}), f"{source}: fixed")}
    if "tune" in raw:  # equal-budget tuning (tune.py): its searches and retrain are specs too
        from utils.sweep.tune import normalize_tune
        spec.update(grid=None, search=None, exclude=[], teacher=None, baseline=None,
                    tune=normalize_tune(raw, source, _check_flags, _normalize_param))
        for key, default in DEFAULTS.items():
            spec[key] = _positive(raw, key, default, integer=key == "max_retries")
        return spec
    grid, search = raw.get("grid"), raw.get("search")
    if grid is not None and search is not None:
        raise UserError(f"{source}: give a grid or a search, not both")
    spec["grid"] = _normalize_grid(grid, source) if grid is not None else None
    spec["search"] = _normalize_search(search, source) if search is not None else None
    if spec["grid"] is None and spec["search"] is None:
        spec["grid"] = {}  # one trial: the fixed flags
    spec["exclude"] = _normalize_exclude(raw.get("exclude", []), spec["grid"] or {}, source)
    teacher = raw.get("teacher")
    if teacher is not None and script != "model_training_mid.py":
        raise UserError(f"{source}: 'teacher' (a shared teacher run) needs script "
                        f"model_training_mid.py")
    spec["teacher"] = None if teacher is None else _check_flags(teacher, f"{source}: teacher")
    spec["baseline"] = normalize_baseline(raw, spec, source)
    for key, default in DEFAULTS.items():
        spec[key] = _positive(raw, key, default, integer=key == "max_retries")
    if spec["grace"] < 2 * spec["heartbeat"]:
        raise UserError(f"{source}: 'grace' ({spec['grace']:g}s) must be at least twice "
                        f"'heartbeat' ({spec['heartbeat']:g}s)")
    return spec


def _normalize_grid(grid, source) -> dict:
    if not isinstance(grid, dict):
        raise UserError(f"{source}: grid: expected an object of axis: values")
    if len(grid) > LIMITS["axes"]:
        raise UserError(f"{source}: grid: {len(grid)} axes (at most {LIMITS['axes']})")
    total = math.prod(len(v) if isinstance(v, (list, dict)) else 1 for v in grid.values())
    if total > LIMITS["grid_trials"]:  # from the axis lengths, before anything is expanded
        raise UserError(f"{source}: grid: the axes multiply to {total:,} trials (at most "
                        f"{LIMITS['grid_trials']:,}); split the study or shorten an axis")
    out, setters = {}, {}
    for axis, values in grid.items():
        what = f"{source}: grid axis {axis!r}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", str(axis)):
            raise UserError(f"{what}: not a valid axis name")
        if isinstance(values, list):
            if not values or not all(isinstance(v, _SCALARS) for v in values):
                raise UserError(f"{what}: expected a non-empty list of values")
            _check_flags({axis: values[0]}, what)
            out[axis] = {"flag": axis.lstrip("-"), "values": list(values)}
            flags = {axis.lstrip("-")}
        elif isinstance(values, dict):
            if not values:
                raise UserError(f"{what}: expected at least one variant")
            variants = {}
            for label, flags_of in values.items():
                variants[str(label)] = _check_flags(flags_of, f"{what}, variant {label!r}")
            out[axis] = {"variants": variants}
            flags = {f for v in variants.values() for f in v}
        else:
            raise UserError(f"{what}: expected a list of values or an object of named variants")
        labels = _axis_labels(out[axis])
        if len(set(labels)) != len(labels):
            raise UserError(f"{what}: values repeat")
        for flag in flags:
            if flag in setters:
                raise UserError(f"{source}: grid axes {setters[flag]!r} and {axis!r} both set "
                                f"--{flag}")
            setters[flag] = axis
    return out


def _axis_labels(axis: dict) -> list:
    return list(axis["variants"]) if "variants" in axis else [_label(v) for v in axis["values"]]


def _normalize_exclude(exclude, grid, source) -> list:
    if not isinstance(exclude, list):
        raise UserError(f"{source}: exclude: expected a list of {{axis: value}} objects")
    out = []
    for item in exclude:
        if not isinstance(item, dict) or not item:
            raise UserError(f"{source}: exclude: expected {{axis: value}} objects, got "
                            f"{json.dumps(item)[:60]}")
        entry = {}
        for axis, values in item.items():
            if axis not in grid:
                raise UserError(f"{source}: exclude names {axis!r}, which is not a grid axis")
            values = [_label(v) for v in (values if isinstance(values, list) else [values])]
            bad = [v for v in values if v not in _axis_labels(grid[axis])]
            if bad:
                raise UserError(f"{source}: exclude: {bad[0]!r} is not a value of axis {axis!r}")
            entry[axis] = values
        out.append(entry)
    return out


def _normalize_search(search, source) -> dict:
    what = f"{source}: search"
    if not isinstance(search, dict):
        raise UserError(f"{what}: expected an object with n_trials and params")
    unknown = [k for k in search if k not in SEARCH_KEYS]
    if unknown:
        raise UserError(f"{what}: unknown entry {unknown[0]!r} (known: {', '.join(SEARCH_KEYS)})")
    n = search.get("n_trials", 20)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise UserError(f"{what}: n_trials must be a whole number in 1..100000, got {n!r}")
    sampler, pruner = search.get("sampler", "tpe"), search.get("pruner", "median")
    if sampler not in ("tpe", "random"):
        raise UserError(f"{what}: sampler must be tpe or random, got {sampler!r}")
    if pruner not in ("median", "none"):
        raise UserError(f"{what}: pruner must be median or none, got {pruner!r}")
    if search.get("direction", "maximize") != "maximize":
        raise UserError(f"{what}: the objective (held-out validation accuracy) is maximised")
    seed = search.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UserError(f"{what}: seed must be a whole number >= 0")
    params = search.get("params")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{what}: params: expected an object of flag: range")
    out = {}
    for flag, rule in params.items():
        _check_flags({flag: None}, f"{what}.params")
        out[flag.lstrip("-")] = _normalize_param(flag, rule, f"{what}.params.{flag}")
    return {"n_trials": n, "sampler": sampler, "pruner": pruner, "seed": seed, "params": out}


def _normalize_param(flag, rule, what) -> dict:
    if not isinstance(rule, dict):
        raise UserError(f"{what}: expected {{low, high[, log, type]}} or {{choices}}")
    if "choices" in rule:
        choices = rule["choices"]
        if set(rule) - {"choices"} or not isinstance(choices, list) or not choices or not all(
                isinstance(c, _SCALARS) for c in choices):
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


def normalize_baseline(raw, spec, source):
    grid = spec["grid"] or {}
    if "baseline" in raw:
        base = raw["baseline"]
        if base is None:
            return None
        if not isinstance(base, dict) or not base:
            raise UserError(f"{source}: baseline: expected {{axis: value}} (or null for none)")
        out = {}
        for axis, value in base.items():
            if axis not in grid:
                raise UserError(f"{source}: baseline names {axis!r}, which is not a grid axis")
            if axis == "seed":
                raise UserError(f"{source}: baseline: deltas are paired by seed; name another axis")
            if _label(value) not in _axis_labels(grid[axis]):
                raise UserError(f"{source}: baseline: {value!r} is not a value of axis {axis!r}")
            out[axis] = _label(value)
        return out
    for axis, rule in grid.items():  # the no-teacher student, when the grid has one
        if rule.get("flag") == "kd" and "none" in rule["values"]:
            return {axis: "none"}
        for label, flags in rule.get("variants", {}).items():
            if flags.get("kd") == "none":
                return {axis: label}
    return None
