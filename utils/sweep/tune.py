"""Equal-budget tuning: every method gets the same search, then its chosen setting is trained
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
against the baseline. `sweep.py report T` (tune_report.py) is that grid's report with the
searches' budget, each method's chosen setting and a default-vs-tuned table in front. All
studies share the sweep folder and the storage.
"""
import argparse
import copy
import fcntl
import os
import re
import sys
import time

from skipkd.errors import UserError
from skipkd.io.files import open_lock

__all__ = ["TUNE_KEYS", "TUNED", "normalize_tune", "search_name", "retrain_name", "sub_specs",
           "create_tune", "search_sweeps", "budget_trials", "best_trial", "chosen_settings",
           "work"]

TUNE_KEYS = ("methods", "n_trials", "sampler", "seed", "pruner", "search_seed", "seeds",
             "baseline")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
TUNED = "-tuned"


def search_name(tune_name, label):
    return f"{tune_name}-search-{label}"


def retrain_name(tune_name):
    return f"{tune_name}-retrain"


def normalize_tune(raw: dict, source: str, check_flags, normalize_param) -> dict:
    """The `tune` entry checked, with its defaults (check_flags/normalize_param: spec.py's)."""
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
    n = tune.get("n_trials", 8)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000:
        raise UserError(f"{what}: n_trials must be a whole number in 1..10000, got {n!r}")
    sampler, pruner = tune.get("sampler", "tpe"), tune.get("pruner", "none")
    if sampler not in ("tpe", "random"):
        raise UserError(f"{what}: sampler must be tpe or random, got {sampler!r}")
    if pruner not in ("median", "none"):
        raise UserError(f"{what}: pruner must be median or none, got {pruner!r}")
    seed, search_seed = tune.get("seed", 0), tune.get("search_seed", 0)
    for name, v in (("seed", seed), ("search_seed", search_seed)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32:
            raise UserError(f"{what}: {name} must be a whole number >= 0, got {v!r}")
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
    return {"methods": out, "n_trials": n, "sampler": sampler, "pruner": pruner, "seed": seed,
            "search_seed": search_seed, "seeds": list(seeds), "baseline": baseline}


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


def sub_specs(spec, name, parsers):
    """Every search's (study name, normalized spec, plan), checked by the scripts' parsers,
    and the retrain grid checked at the start settings (at create time)."""
    from utils.sweep.expand import expand
    from utils.sweep.plan_check import check_argv, check_plan
    from utils.sweep.expand import search_trial
    from utils.sweep.spec import normalize_spec
    out = []
    for label, m in spec["tune"]["methods"].items():
        if not m["params"]:
            continue
        sname = search_name(name, label)
        sspec = normalize_spec(search_raw(spec, label), f"tune method {label}")
        plan = expand(sspec, sname, parsers)
        check_plan(sspec, plan, parsers)
        if m["start"] is not None:
            t = search_trial(sspec, "check", 0, m["start"], None)
            check_argv(parsers, t["script"], t["argv"], f"method {label}, start setting")
        _check_held_out(parsers, sspec, label)
        out.append((sname, sspec, plan))
    # the retrain as it may come out: every searched method with a tuned row at its low ends
    stand_in = {label: {f: _ends(r)[0] for f, r in m["params"].items()}
                for label, m in spec["tune"]["methods"].items() if m["params"]}
    rspec = normalize_spec(retrain_raw(spec, stand_in, force=True), "tune retrain")
    check_plan(rspec, expand(rspec, retrain_name(name), parsers), parsers)
    return out


def _ends(rule) -> list:
    return list(rule["choices"]) if "choices" in rule else [rule["low"], rule["high"]]


def _check_held_out(parsers, sspec, label):
    """A search is scored on a held-out split: --val-split must end up > 0 (a preset such as
    'crd' or 'original' sets 0, the test set as validation)."""
    from utils.sweep.expand import search_trial
    from utils.sweep.plan_check import check_argv
    params = sspec["search"]["params"]
    base = {f: _ends(r)[0] for f, r in params.items()}
    for flag, rule in params.items():  # each end of each parameter, as check_plan parses them
        for value in _ends(rule):
            t = search_trial(sspec, "check", 0, {**base, flag: value}, None)
            args = check_argv(parsers, t["script"], t["argv"], f"tune method {label}")
            if not getattr(args, "val_split", 0):
                raise UserError(f"tune method {label}: the search needs a held-out validation "
                                f"split (--val-split > 0) at every point it may try: it never "
                                f"reads the test set")


def create_tune(store, name, spec, subs):
    """The searches (each with its start setting queued first), then the record study."""
    from utils.sweep.storage import TEACHERS_SUFFIX, create_sweep
    names = set(store.study_names())
    for n in [name, name + TEACHERS_SUFFIX, retrain_name(name)] + [s for s, _, _ in subs]:
        if n in names:
            raise UserError(f"study {n!r} already exists in {store.label}; choose another name "
                            f"(or give another --dir / --storage)")
    for sname, sspec, plan in subs:
        sweep = create_sweep(store, sname, sspec, plan, {})
        label = sname[len(search_name(name, "")):]
        start = spec["tune"]["methods"][label]["start"]
        if start is not None:
            sweep.study.enqueue_trial(start, user_attrs={"start": True})
    return create_sweep(store, name, spec, {"trials": [], "teachers": []}, {})


# ---------------------------------------------------------------------- the worker
def search_sweeps(store, sweep):
    from utils.sweep.storage import load_sweep
    return {label: load_sweep(store, search_name(sweep.name, label))
            for label, m in sweep.spec["tune"]["methods"].items() if m["params"]}


def _finished(sub) -> bool:
    from utils.sweep.progress import Progress
    return Progress(sub).overview()["finished"]


def budget_trials(sub) -> list:
    """The search's completed trials among its first n_trials run keys (workers that ask at
    the same moment may run a few more; those are left out, so every method has the same
    budget), in trial order."""
    from optuna.trial import TrialState
    trials = sorted(sub.study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = []
    for t in trials:
        k = t.user_attrs.get("key")
        if k and k not in keys:
            keys.append(k)
    allowed = set(keys[:sub.spec["search"]["n_trials"]])
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and t.user_attrs.get("key") in allowed]


def best_trial(sub, start):
    """The best held-out validation trial within the budget; a tie goes to the start setting,
    then to the earlier trial (so a search that finds nothing better keeps the defaults)."""
    done = budget_trials(sub)
    if not done:
        return None
    return max(done, key=lambda t: (t.value, start is not None and t.params == start,
                                    -t.number))


def chosen_settings(searches, methods) -> dict:
    """label -> the params of the search's best trial; None for a search without any completed
    trial (the method keeps only its default row; a warning says so)."""
    import sys
    out = {}
    for label, sub in searches.items():
        best = best_trial(sub, methods[label]["start"])
        if best is None:
            print(f"warning: the search of method {label} has no completed trial: it gets no "
                  f"tuned row (its failures: python sweep.py report {sub.name} --dir DIR --out "
                  f"DIR/report-{sub.name})", file=sys.stderr, flush=True)
        out[label] = None if best is None else dict(best.params)
    return out


def _retrain(store, sweep, sweep_dir, searches):
    """The retrain grid: loaded when it exists, else made (once, under a lock in the sweep
    folder, with Ctrl-C and SIGTERM held back until it is whole; on a database shared by
    several machines, the loser of a race loads the winner's)."""
    import signal
    from optuna.exceptions import DuplicatedStudyError
    from utils.sweep.expand import expand, grid_distributions
    from utils.sweep.plan_check import check_plan
    from utils.sweep.scripts import Parsers
    from utils.sweep.spec import normalize_spec
    from utils.sweep.storage import create_sweep, load_sweep
    rname = retrain_name(sweep.name)
    with os.fdopen(open_lock(os.path.join(sweep_dir, f".{sweep.name}.tune.lock"),
                             "tune lock")) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rname not in store.study_names():
            chosen = chosen_settings(searches, sweep.spec["tune"]["methods"])
            rspec = normalize_spec(retrain_raw(sweep.spec, chosen), "tune retrain")
            parsers = Parsers()
            plan = expand(rspec, rname, parsers)
            check_plan(rspec, plan, parsers)
            held = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
            try:
                create_sweep(store, rname, rspec, plan, grid_distributions(rspec))
            except (UserError, DuplicatedStudyError):
                pass  # made meanwhile by a worker on another machine
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    for _ in range(60):  # its spec is written last: wait for one being made elsewhere
        try:
            return load_sweep(store, rname)
        except UserError:
            time.sleep(1.0)
    raise UserError(f"study {rname!r} in {store.label} is half made (the worker making it was "
                    f"killed): remove it (optuna delete-study --study-name {rname} --storage "
                    f"...) and start the workers again; the searches are kept")


def work(store, sweep, sweep_dir, args, slot=None) -> int:
    """`sweep.py work T` on a tune: the searches (each until it has no trial to give), then,
    when all are finished, the retrain grid. Returns the exit status. One Worker per search,
    kept between passes, so its heartbeats see a dead worker's trial go stale and queue it
    again."""
    from utils.sweep.worker import Worker
    ran = failed = 0
    workers = {}

    def limit_left():
        return None if args.n_trials is None else args.n_trials - ran

    while True:
        searches = search_sweeps(store, sweep)
        for label, sub in searches.items():
            if args.n_trials is not None and ran >= args.n_trials:
                break
            w = workers.get(label)
            if w is None:
                opts = argparse.Namespace(**vars(args))
                opts.wait = False  # a search with nothing free: on to the next method
                w = workers[label] = Worker(sub, sweep_dir, opts, slot=slot)
            elif _finished(sub):
                continue
            before = w.ran
            w.limit = None if args.n_trials is None else w.ran + limit_left()
            rc = w.run()
            w.retry_failed, w.announce = False, False  # --retry-failed: once, at the start
            ran, failed = ran + w.ran - before, failed + w.failed
            w.failed = 0
            if w.stop is not None:
                return rc
        if args.n_trials is not None and ran >= args.n_trials:
            print(f"ran {ran} trial(s) (--n-trials): stopping", flush=True)
            return 1 if failed else 0
        if all(_finished(s) for s in searches.values()):
            break
        if not args.wait:
            print("the searches have no trial to take now (--no-wait): stopping", flush=True)
            return 1 if failed else 0
        try:  # trials run elsewhere; the next pass takes up any whose worker died
            time.sleep(max(args.poll, 5.0))
        except KeyboardInterrupt:
            print("stopped (SIGINT) between searches", file=sys.stderr, flush=True)
            return 130
    retrain = _retrain(store, sweep, sweep_dir, searches)
    opts = argparse.Namespace(**vars(args))
    opts.n_trials = limit_left()
    opts.retry_failed = args.retry_failed
    w = Worker(retrain, sweep_dir, opts, slot=slot)
    rc = w.run()
    failed += w.failed
    return rc if w.stop is not None else (1 if failed else rc)
