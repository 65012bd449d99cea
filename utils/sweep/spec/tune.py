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
import json
import re

from skipkd.errors import UserError
from utils.sweep.spec.rules import check_flags, normalize_param, search_settings

__all__ = ["TUNE_KEYS", "TUNED", "normalize_tune", "search_name", "retrain_name", "search_raw",
           "retrain_raw", "confirm_name", "confirm_label", "confirm_raw", "chosen_rows", "is_tuned"]

TUNE_KEYS = ("methods", "n_trials", "sampler", "seed", "pruner", "search_seed", "seeds",
             "baseline", "confirm", "derived", "contrasts", "defaults")
METHOD_KEYS = ("flags", "params", "start", "weight")
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
        if not isinstance(m, dict) or set(m) - set(METHOD_KEYS):
            raise UserError(f"{mwhat}: expected an object with {', '.join(METHOD_KEYS)}")
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
        weight = m.get("weight")
        if weight is not None and (not isinstance(weight, str) or
                                   weight.lstrip("-") not in params):
            raise UserError(f"{mwhat}.weight: names the searched flag that is the method's main "
                            f"weight (one of params), got {weight!r}")
        out[label] = {"flags": flags, "params": params, "start": start,
                      "weight": weight.lstrip("-") if weight else None}
    if not any(m["params"] for m in out.values()):
        raise UserError(f"{what}: no method has params: nothing to tune")
    baseline = tune.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise UserError(f"{what}: baseline must be a method label")
    if baseline is None:
        baseline = next((lab for lab, m in out.items() if m["flags"].get("kd") == "none"), None)
    elif baseline not in out:
        raise UserError(f"{what}: baseline {baseline!r} is not a method label")
    confirm = _confirm(tune.get("confirm"), seeds, search_seed, what)
    derived = _derived(tune.get("derived"), out, what)
    contrasts = _contrasts(tune.get("contrasts"), out, derived, what)
    defaults = tune.get("defaults", True)
    if not isinstance(defaults, bool):
        raise UserError(f"{what}: defaults must be true (retrain every method at its defaults "
                        f"too) or false (its chosen setting only)")
    return {"methods": out, **settings, "search_seed": search_seed, "seeds": list(seeds),
            "baseline": baseline, "confirm": confirm, "derived": derived,
            "contrasts": contrasts, "defaults": defaults}


def _confirm(raw, seeds, search_seed, what):
    """The selection rule's re-runs: the `top` best trials of each search trained again on the
    `seeds` (validation only); None: the search's best trial is the choice."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"top", "seeds"}:
        raise UserError(f"{what}.confirm: expected {{\"top\": N, \"seeds\": [...]}}")
    top, cseeds = raw["top"], raw["seeds"]
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 20:
        raise UserError(f"{what}.confirm.top: a whole number in 1..20, got {top!r}")
    if not isinstance(cseeds, list) or not 1 <= len(cseeds) <= 100 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in cseeds) \
            or len(set(cseeds)) != len(cseeds):
        raise UserError(f"{what}.confirm.seeds: a list of 1..100 distinct whole numbers >= 0")
    clash = [s for s in cseeds if s in seeds or s == search_seed]
    if clash:
        raise UserError(f"{what}.confirm.seeds: {clash[0]} is also a "
                        f"{'search' if clash[0] == search_seed else 'retrain'} seed: the choice "
                        f"is confirmed on seeds of its own")
    return {"top": top, "seeds": list(cseeds)}


def _derived(raw, methods, what):
    """Rows made from a searched method's chosen setting plus flags (an ablation, a control):
    LABEL -> {"from": METHOD, "flags": {...}}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > 64:
        raise UserError(f"{what}.derived: expected an object of label: {{from, flags}}")
    out = {}
    for label, d in raw.items():
        dwhat = f"{what}.derived.{label}"
        if not isinstance(label, str) or not _LABEL_RE.fullmatch(label) or \
                label.endswith(TUNED) or label in methods:
            raise UserError(f"{dwhat}: a new label of 1-40 letters, digits, . _ - (not a method's)")
        if not isinstance(d, dict) or set(d) != {"from", "flags"} or \
                not isinstance(d["from"], str) or d["from"] not in methods:
            raise UserError(f"{dwhat}: expected {{\"from\": a method label, \"flags\": {{...}}}}")
        flags = check_flags(d["flags"], f"{dwhat}.flags")
        _check_tune_owned(flags, f"{dwhat}.flags")
        if not flags:
            raise UserError(f"{dwhat}.flags: a derived row differs from its method by at least "
                            f"one flag")
        searched = [f for f in flags if f in methods[d["from"]]["params"]]
        if searched:
            raise UserError(f"{dwhat}.flags: --{searched[0]} is searched by {d['from']}: a "
                            f"derived row keeps the chosen value")
        out[label] = {"from": d["from"], "flags": flags}
    return out


def _contrasts(raw, methods, derived, what):
    """The pre-registered contrasts: [{"name", "a", "b"}], each side a method or derived label
    (its chosen row) or {"best_of": [method labels]} (the one the selection rule rates best on
    validation)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > 32:
        raise UserError(f"{what}.contrasts: expected a list of at most 32 {{name, a, b}}")
    labels = set(methods) | set(derived)
    out, names = [], set()
    for i, c in enumerate(raw):
        cwhat = f"{what}.contrasts[{i}]"
        if not isinstance(c, dict) or set(c) != {"name", "a", "b"} or \
                not isinstance(c["name"], str) or not 1 <= len(c["name"]) <= 80:
            raise UserError(f"{cwhat}: expected {{\"name\": text, \"a\": label, \"b\": label}}")
        if c["name"] in names:
            raise UserError(f"{cwhat}: the name {c['name']!r} repeats")
        names.add(c["name"])
        sides = []
        for side in ("a", "b"):
            v = c[side]
            if isinstance(v, str) and v.endswith(TUNED) and v[:-len(TUNED)] in methods:
                raise UserError(f"{cwhat}.{side}: name the method ({v[:-len(TUNED)]!r}): a contrast "
                                f"always takes each side's chosen row")
            if isinstance(v, str) and v in labels:
                sides.append(v)
            elif isinstance(v, dict) and set(v) == {"best_of"} and isinstance(v["best_of"], list) \
                    and len(v["best_of"]) >= 2 and all(isinstance(x, str) and x in methods
                                                       for x in v["best_of"]) and \
                    len(set(v["best_of"])) == len(v["best_of"]):
                sides.append({"best_of": sorted(v["best_of"])})
            else:
                raise UserError(f"{cwhat}.{side}: a method or derived label, or {{\"best_of\": "
                                f"[two or more method labels]}}, got {json.dumps(v)[:60]}")
        if sides[0] == sides[1]:
            raise UserError(f"{cwhat}: compares {sides[0]!r} with itself")
        out.append({"name": c["name"], "a": sides[0], "b": sides[1]})
    return out


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


def is_tuned(m, best, force=False) -> bool:
    """Whether a method gets a `-tuned` row: searched, with a choice, other than its start."""
    return bool(m["params"]) and best is not None and (force or best != m["start"])


def chosen_rows(tune, chosen: dict) -> dict:
    """label (method or derived) -> the retrain row that holds its chosen setting; None for a
    searched method whose search made no choice (no completed trial, or confirmation runs
    that all failed: it keeps its default row only) and for a row derived from one."""
    out = {}
    for label, m in tune["methods"].items():
        if m["params"] and chosen.get(label) is None:
            out[label] = None
        else:
            out[label] = label + TUNED if is_tuned(m, chosen.get(label)) else label
    for label, d in (tune.get("derived") or {}).items():
        out[label] = label if out.get(d["from"]) else None
    return out


def confirm_name(tune_name):
    return f"{tune_name}-confirm"


def confirm_label(label, rank):
    return f"{label}.c{rank}"


def confirm_raw(spec, candidates: dict) -> dict:
    """The raw spec of the confirmation grid: candidates: label -> [params of the search's
    top trials, best first]; each trained again on the confirm seeds, scored on validation
    only (the test split is not read)."""
    tune = spec["tune"]
    variants = {confirm_label(label, i + 1): {**tune["methods"][label]["flags"], **p}
                for label, ps in candidates.items() for i, p in enumerate(ps)}  # none: no grid
    return {**_common(spec), "fixed": {**spec["fixed"], "report-test": False},
            "description": f"Confirmation runs of the tune's top {tune['confirm']['top']} "
                          f"settings per method, validation only.",
            "grid": {"seed": list(tune["confirm"]["seeds"]), "method": variants},
            "baseline": None}


def retrain_raw(spec, chosen: dict, force=False) -> dict:
    """The raw spec of the retrain grid; chosen: label -> the chosen params (a method whose
    choice is its start setting gets no tuned row: it would repeat the default one; nor does
    one whose search has no completed trial). force: a tuned row for every chosen. With
    `defaults` false a tuned method has its tuned row only. Derived rows are their method's
    chosen setting plus their flags."""
    tune = spec["tune"]
    variants = {}
    for label, m in tune["methods"].items():
        best = chosen.get(label)
        tuned = is_tuned(m, best, force)
        if tune.get("defaults", True) or not tuned:
            variants[label] = dict(m["flags"])
        if tuned:
            variants[label + TUNED] = {**m["flags"], **best}
    for label, d in tune.get("derived", {}).items():
        m = tune["methods"][d["from"]]
        variants[label] = {**m["flags"], **(chosen.get(d["from"]) or {}), **d["flags"]}
    raw = {**_common(spec), "fixed": dict(spec["fixed"]), "description": spec["description"],
           "grid": {"seed": list(tune["seeds"]), "method": variants}}
    base = tune["baseline"]
    if base and base + TUNED in variants:  # the grid's own deltas: chosen rows vs the chosen
        base += TUNED                      # baseline (report/tune.py pairs the defaults apart)
    raw["baseline"] = {"method": base} if base else None
    return raw
