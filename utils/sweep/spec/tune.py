"""Equal-budget tuning, the spec side (the tune file's shape, each search's spec and the
retrain grid's; run/tune.py runs them): every method gets the same search, then its chosen setting is trained
again on fresh seeds beside its defaults (docs/SWEEPS.md, "Equal-budget tuning").

A tune file has, instead of `grid` or `search`, a `tune` entry:

    tune  {"methods": {LABEL: {"flags": {flag: value},           what makes the method
                               "params": {flag: range},          its own knobs (none: not searched)
                               "start": {flag: value}}},         the first trial (its defaults)
           "n_trials": N,          search trials per method: the budget, the same for every one
           "sampler": "tpe", "seed": S, "pruner": "none",   the searches' sampler (seeded)
           "search_seed": 0,       --seed of every search trial
           "seeds": [1, 2, 3, 4, 5],   fresh seeds of the retrain (never the search seed)
           "baseline": LABEL}      what the deltas compare with (default: the method with --kd none)

`sweep.py create T --grid FILE` makes one search study per searched method, `T-search-LABEL`
(an ordinary search: the spec's fixed flags, the method's flags, --seed search_seed and
--no-report-test, so the trials never read the test split and are scored on the held-out
validation split only), and the record `T` that holds the tune spec. `sweep.py work T` runs
the searches, and once every one is finished makes `T-retrain`: a grid of every method at its
flags (the defaults) and, for each searched method, at its flags plus the best trial's
parameters (`LABEL-tuned`), on the fresh seeds, with the test accuracy reported and paired
against the baseline. `sweep.py report T` (report/tune.py) is that grid's report with the
searches' budget, each method's chosen setting and a default-vs-tuned table in front. All
studies share the sweep folder and the storage.
"""
import copy
import re

from skipkd.errors import UserError
from utils.sweep.spec.rules import check_flags, normalize_param, search_settings

__all__ = ["TUNE_KEYS", "TUNED", "normalize_tune", "search_name", "retrain_name", "search_raw",
           "retrain_raw"]

TUNE_KEYS = ("methods", "n_trials", "sampler", "seed", "pruner", "search_seed", "seeds",
             "baseline")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
TUNED = "-tuned"


def search_name(tune_name, label):
    return f"{tune_name}-search-{label}"


def retrain_name(tune_name):
    return f"{tune_name}-retrain"


def normalize_tune(raw: dict, source: str) -> dict:
    """The `tune` entry checked, with its defaults."""
    what = f"{source}: tune"
    tune = raw["tune"]
    if not isinstance(tune, dict):
        raise UserError(f"{what}: expected an object with methods, n_trials and seeds")
    unknown = [k for k in tune if k not in TUNE_KEYS]
    if unknown:
        raise UserError(f"{what}: unknown entry {unknown[0]!r} (known: {', '.join(TUNE_KEYS)})")
    for key in ("grid", "search", "exclude", "baseline"):
        if key in raw:
            raise UserError(f"{source}: give 'tune' or '{key}', not both (a tune makes its own "
                            f"searches and retrain grid)")
    if "teacher" in raw:
        raise UserError(f"{source}: a tune distils every trial from one teacher: train it once "
                        f"and give its checkpoint as teacher-checkpoint in 'fixed' (so every "
                        f"method and seed learns from the same network)")
    # the searches' settings, checked as a plain search's; no pruner by default, so that every
    # method spends its whole budget; seeded by default, so that a tune repeats
    settings = search_settings({"seed": 0, **tune}, what, n_default=8, pruner_default="none")
    search_seed = tune.get("search_seed", 0)
    if isinstance(search_seed, bool) or not isinstance(search_seed, int) or \
            not 0 <= search_seed < 2**32:
        raise UserError(f"{what}: search_seed must be a whole number in 0..{2**32 - 1}, got "
                        f"{search_seed!r}")
    seeds = tune.get("seeds", [1, 2, 3, 4, 5])
    if not isinstance(seeds, list) or not seeds or len(seeds) > 1000 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        raise UserError(f"{what}: seeds must be a non-empty list of whole numbers >= 0")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{what}: seeds repeat")
    if search_seed in seeds:
        raise UserError(f"{what}: the retrain's seeds must be fresh: {search_seed} is the "
                        f"search seed")
    fixed = check_flags(raw.get("fixed", {}), f"{source}: fixed")
    _check_tune_owned(fixed, f"{source}: fixed")
    methods = tune.get("methods")
    if not isinstance(methods, dict) or not methods or len(methods) > 64:
        raise UserError(f"{what}: methods: expected an object of 1..64 label: {{flags, params}}")
    out = {}
    for label, m in methods.items():
        mwhat = f"{what}.methods.{label}"
        if not isinstance(label, str) or not _LABEL_RE.fullmatch(label) or \
                label.endswith(TUNED):
            raise UserError(f"{mwhat}: a label is 1-40 letters, digits, . _ - (not ending in "
                            f"{TUNED})")
        if not isinstance(m, dict) or set(m) - {"flags", "params", "start"}:
            raise UserError(f"{mwhat}: expected an object with flags, params and start")
        flags = check_flags(m.get("flags", {}), f"{mwhat}.flags")
        _check_tune_owned(flags, f"{mwhat}.flags")
        params = {}
        raw_params = m.get("params") or {}
        if not isinstance(raw_params, dict):
            raise UserError(f"{mwhat}.params: expected an object of flag: range")
        for flag, rule in raw_params.items():
            check_flags({flag: None}, f"{mwhat}.params")
            if flag.lstrip("-") in ("seed", "report-test"):
                raise UserError(f"{mwhat}.params: --{flag.lstrip('-')} is set by the tune")
            params[flag.lstrip("-")] = normalize_param(flag, rule, f"{mwhat}.params.{flag}")
        start = m.get("start")
        if start is not None:
            start = {str(k).lstrip("-"): v for k, v in check_flags(start, f"{mwhat}.start").items()}
            _check_start(start, params, f"{mwhat}.start")
        for flag in params:  # a plain --kd-opt beside kd-opt.NAME: the retrain would drop one
            base = flag.partition(".")[0]
            if "." in flag and (base in flags or base in fixed):
                raise UserError(f"{mwhat}.params: {flag} searches inside --{base}, which "
                                f"'{'flags' if base in flags else 'fixed'}' sets whole: write "
                                f"that as {base}.NAME entries")
        out[label] = {"flags": flags, "params": params, "start": start}
    if not any(m["params"] for m in out.values()):
        raise UserError(f"{what}: no method has params: nothing to tune")
    baseline = tune.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise UserError(f"{what}: baseline must be a method label")
    if baseline is None:
        baseline = next((lab for lab, m in out.items() if m["flags"].get("kd") == "none"), None)
    elif baseline not in out:
        raise UserError(f"{what}: baseline {baseline!r} is not a method label")
    return {"methods": out, **settings, "search_seed": search_seed, "seeds": list(seeds),
            "baseline": baseline}


def _check_tune_owned(flags: dict, what: str):
    for flag in flags:
        if flag in ("seed", "report-test"):
            raise UserError(f"{what}: --{flag} is set by the tune (search_seed, seeds; the "
                            f"searches never read the test split)")


def _check_start(start, params, what):
    """A start setting names every searched flag once, with a value inside its range."""
    if set(start) != set(params):
        missing = sorted(set(params) - set(start)) or sorted(set(start) - set(params))
        raise UserError(f"{what}: give a value for each searched flag and nothing else "
                        f"({missing[0]!r})")
    for flag, v in start.items():
        rule = params[flag]
        if "choices" in rule:
            if v not in rule["choices"]:
                raise UserError(f"{what}: --{flag} {v!r} is not one of {rule['choices']}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or \
                not rule["low"] <= v <= rule["high"] or (rule["type"] == "int" and
                                                          not isinstance(v, int)):
            raise UserError(f"{what}: --{flag} {v!r} is outside [{rule['low']}, "
                            f"{rule['high']}]")


def _common(spec) -> dict:
    return {"script": spec["script"], "heartbeat": spec["heartbeat"], "grace": spec["grace"],
            "max_retries": spec["max_retries"]}


def search_raw(spec, label) -> dict:
    """The raw spec of one method's search."""
    tune, m = spec["tune"], spec["tune"]["methods"][label]
    fixed = {**spec["fixed"], **m["flags"], "seed": tune["search_seed"], "report-test": False}
    return {**_common(spec), "fixed": fixed,
            "description": f"Search of method {label} for the tune of the same name: "
                           f"{tune['n_trials']} trials, scored on held-out validation only.",
            "search": {"n_trials": tune["n_trials"], "params": copy.deepcopy(m["params"]),
                       "sampler": tune["sampler"], "pruner": tune["pruner"],
                       "seed": tune["seed"]}}


def retrain_raw(spec, chosen: dict, force=False) -> dict:
    """The raw spec of the retrain grid; chosen: label -> the best trial's params (a method
    whose search chose its start setting gets no tuned row: it would repeat the default one;
    nor does one whose search has no completed trial). force: a tuned row for every chosen."""
    tune = spec["tune"]
    variants = {}
    for label, m in tune["methods"].items():
        variants[label] = dict(m["flags"])
        best = chosen.get(label)
        if m["params"] and best is not None and (force or best != m["start"]):
            variants[label + TUNED] = {**m["flags"], **best}
    raw = {**_common(spec), "fixed": dict(spec["fixed"]), "description": spec["description"],
           "grid": {"seed": list(tune["seeds"]), "method": variants}}
    raw["baseline"] = {"method": tune["baseline"]} if tune["baseline"] else None
    return raw
