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
    tune      equal-budget tuning of several methods (spec/tune.py has its shape), instead of a grid
              or a search
    heartbeat, grace, max_retries: how dead workers are noticed (seconds) and how often a killed
              trial is retried

This module checks a spec's shape and fills its defaults (normalize_spec). sources.py
reads one, expand.py turns it into trials, and check.py parses every trial's command line
with the script's own parser before anything is written, so an unknown method, model or flag
is a one-line error at `create`. Values are flags' values as on the command line (keys.py):
true/false for booleans, a list repeats the flag, and a flag written `kd-weights.skip` /
`kd-opt.dkd.warmup` is gathered into `--kd-weights skip=...` / `--kd-opt dkd.warmup=...`.
"""
import json
import math
import re

from skipkd.errors import UserError
from utils.sweep.spec.keys import _label
from utils.sweep.spec.rules import (LIMITS, SCALARS, SEARCH_KEYS, check_depth, check_flags,
                                    normalize_param, positive, search_settings)
from utils.sweep.spec.scripts import SCRIPTS
from utils.sweep.spec.tune import normalize_tune

__all__ = ["DEFAULTS", "TOP_KEYS", "normalize_spec", "normalize_baseline", "axis_labels"]

DEFAULTS = {"heartbeat": 30.0, "grace": 120.0, "max_retries": 3}
TOP_KEYS = ("description", "script", "fixed", "grid", "exclude", "search", "teacher", "baseline",
            "heartbeat", "grace", "max_retries", "tune")


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
            "fixed": check_flags(raw.get("fixed", {}), f"{source}: fixed")}
    if "tune" in raw:  # equal-budget tuning (spec/tune.py): its searches and retrain are specs too
        spec.update(grid=None, search=None, exclude=[], teacher=None, baseline=None,
                    tune=normalize_tune(raw, source))
        for key, default in DEFAULTS.items():
            spec[key] = positive(raw, key, default, integer=key == "max_retries")
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
    spec["teacher"] = None if teacher is None else check_flags(teacher, f"{source}: teacher")
    spec["baseline"] = normalize_baseline(raw, spec, source)
    for key, default in DEFAULTS.items():
        spec[key] = positive(raw, key, default, integer=key == "max_retries")
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
            if not values or not all(isinstance(v, SCALARS) for v in values):
                raise UserError(f"{what}: expected a non-empty list of values")
            check_flags({axis: values[0]}, what)
            out[axis] = {"flag": axis.lstrip("-"), "values": list(values)}
            flags = {axis.lstrip("-")}
        elif isinstance(values, dict):
            if not values:
                raise UserError(f"{what}: expected at least one variant")
            variants = {}
            for label, flags_of in values.items():
                variants[str(label)] = check_flags(flags_of, f"{what}, variant {label!r}")
            out[axis] = {"variants": variants}
            flags = {f for v in variants.values() for f in v}
        else:
            raise UserError(f"{what}: expected a list of values or an object of named variants")
        labels = axis_labels(out[axis])
        if len(set(labels)) != len(labels):
            raise UserError(f"{what}: values repeat")
        for flag in flags:
            if flag in setters:
                raise UserError(f"{source}: grid axes {setters[flag]!r} and {axis!r} both set "
                                f"--{flag}")
            setters[flag] = axis
    return out


def axis_labels(axis: dict) -> list:
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
            bad = [v for v in values if v not in axis_labels(grid[axis])]
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
    settings = search_settings(search, what, n_default=20, pruner_default="median")
    if search.get("direction", "maximize") != "maximize":
        raise UserError(f"{what}: the objective (held-out validation accuracy) is maximised")
    params = search.get("params")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{what}: params: expected an object of flag: range")
    out = {}
    for flag, rule in params.items():
        check_flags({flag: None}, f"{what}.params")
        out[flag.lstrip("-")] = normalize_param(flag, rule, f"{what}.params.{flag}")
    return {**settings, "params": out}


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
            if _label(value) not in axis_labels(grid[axis]):
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
