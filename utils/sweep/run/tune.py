"""Equal-budget tuning, the running side: the searches made at `create`, run by `work` method by
method, then the retrain grid made once every search is finished (spec/tune.py has the tune
file's shape; report/tune.py its report)."""
import argparse
import fcntl
import os
import signal
import sys
import time

from optuna.exceptions import DuplicatedStudyError
from optuna.trial import TrialState

from skipkd.errors import UserError
from skipkd.io.files import open_lock
from utils.sweep.run.progress import Progress
from utils.sweep.run.storage import TEACHERS_SUFFIX, create_sweep, load_sweep
from utils.sweep.run.worker import Worker
from utils.sweep.spec.check import check_plan
from utils.sweep.spec.expand import expand, grid_distributions
from utils.sweep.spec.normalize import normalize_spec
from utils.sweep.spec.tune import (confirm_label, confirm_name, confirm_raw, retrain_name,
                                   retrain_raw, search_name)

__all__ = ["create_tune", "search_sweeps", "budget_trials", "best_trial", "top_trials",
           "chosen_settings", "confirm_candidates", "confirmed_settings", "selection", "work"]


def create_tune(store, name, spec, subs):
    """The searches (each with its start setting queued first), then the record study."""
    names = set(store.study_names())
    for n in [name, name + TEACHERS_SUFFIX, retrain_name(name), confirm_name(name)] + \
            [s for s, _, _ in subs]:
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
    return {label: load_sweep(store, search_name(sweep.name, label))
            for label, m in sweep.spec["tune"]["methods"].items() if m["params"]}


def _finished(sub) -> bool:
    return Progress(sub).overview()["finished"]


def budget_trials(sub) -> list:
    """The search's completed trials among its first n_trials run keys (workers that ask at
    the same moment may run a few more; those are left out, so every method has the same
    budget), in trial order."""
    trials = sorted(sub.study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = []
    for t in trials:
        k = t.user_attrs.get("key")
        if k and k not in keys:
            keys.append(k)
    allowed = set(keys[:sub.spec["search"]["n_trials"]])
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and t.user_attrs.get("key") in allowed]


def top_trials(sub, start, n) -> list:
    """The n best held-out validation trials within the budget, of distinct settings, best
    first; a tie goes to the start setting, then to the earlier trial (so a search that finds
    nothing better keeps the defaults)."""
    ranked = sorted(budget_trials(sub), key=lambda t: (-t.value, not (
        start is not None and t.params == start), t.number))
    out = []
    for t in ranked:
        if all(t.params != o.params for o in out):
            out.append(t)
        if len(out) == n:
            break
    return out


def best_trial(sub, start):
    top = top_trials(sub, start, 1)
    return top[0] if top else None


def chosen_settings(searches, methods) -> dict:
    """label -> the params of the search's best trial; None for a search without any completed
    trial (the method keeps only its default row; a warning says so)."""
    out = {}
    for label, sub in searches.items():
        best = best_trial(sub, methods[label]["start"])
        if best is None:
            print(f"warning: the search of method {label} has no completed trial: it gets no "
                  f"tuned row (its failures: python sweep.py report {sub.name} --dir DIR --out "
                  f"DIR/report-{sub.name})", file=sys.stderr, flush=True)
        out[label] = None if best is None else dict(best.params)
    return out


def confirm_candidates(searches, tune) -> dict:
    """label -> the params of its search's top trials (confirm.top), best first."""
    return {label: [dict(t.params) for t in top_trials(sub, tune["methods"][label]["start"],
                                                       tune["confirm"]["top"])]
            for label, sub in searches.items()}


def confirmed_settings(confirm, tune, searches) -> tuple:
    """The selection rule with confirmation runs: (label -> the params of the candidate with
    the best mean held-out validation accuracy over the confirm seeds (a candidate with a
    failed run is left out; a tie goes to the better search rank), label -> {"value": that
    mean, "n": runs, "rank": its search rank, "candidates": [(rank, mean, n)]})."""
    cands = {label: [] for label in searches}  # the candidates as the confirm grid holds them
    variants = confirm.spec["grid"]["method"]["variants"]
    for label in cands:
        params = tune["methods"][label]["params"]
        rank = 1
        while confirm_label(label, rank) in variants:
            cands[label].append({k: v for k, v in variants[confirm_label(label, rank)].items()
                                 if k in params})
            rank += 1
    runs = {}
    for t in confirm.study.get_trials(deepcopy=False):
        key = t.user_attrs.get("key")
        if t.state == TrialState.COMPLETE and t.value is not None and key:
            runs.setdefault(t.params.get("method"), {})[key] = t.value
    want = len(tune["confirm"]["seeds"])
    chosen, info = {}, {}
    for label, ps in cands.items():
        rated = []
        for rank, p in enumerate(ps, 1):
            vals = list(runs.get(confirm_label(label, rank), {}).values())
            if len(vals) == want:
                rated.append((sum(vals) / len(vals), -rank, p))
            info.setdefault(label, {"candidates": []})["candidates"].append(
                (rank, sum(vals) / len(vals) if vals else None, len(vals)))
        if not rated:
            why = ("every one has a failed run" if ps else "its search has no completed trial")
            print(f"warning: no confirmed candidate of method {label} ({why}): it gets no "
                  f"tuned row", file=sys.stderr, flush=True)
            chosen[label] = None
            continue
        value, neg_rank, p = max(rated, key=lambda r: (r[0], r[1]))
        chosen[label] = dict(p)
        info[label].update({"value": value, "n": want, "rank": -neg_rank})
    return chosen, info


def _stage(store, sweep, sweep_dir, rname, make_raw, make_parsers):
    """A grid made from the searches (the confirmation runs, the retrain): loaded when it
    exists, else made (once, under a lock in the sweep folder, with Ctrl-C and SIGTERM held
    back until it is whole; on a database shared by several machines, the loser of a race
    loads the winner's)."""
    with os.fdopen(open_lock(os.path.join(sweep_dir, f".{sweep.name}.tune.lock"),
                             "tune lock")) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rname not in store.study_names():
            rspec = normalize_spec(make_raw(), f"tune {rname}")
            parsers = make_parsers()  # PyTorch comes with them: only here, once
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


def selection(store, sweep, searches) -> tuple:
    """The selection rule (docs/RESULTS.md): (label -> the chosen params or None, the
    confirmation runs' info or None). With confirm, the confirmed choice (none at all where no
    search had a candidate, so no confirmation grid was made); else each search's best trial.
    The retrain is made from it and the report reads it, so the two cannot disagree."""
    tune = sweep.spec["tune"]
    if tune.get("confirm") is None:
        return chosen_settings(searches, tune["methods"]), None
    if confirm_name(sweep.name) not in store.study_names():
        return {label: None for label in searches}, None
    return confirmed_settings(load_sweep(store, confirm_name(sweep.name)), tune, searches)


def _run_stage(stage, sweep_dir, args, slot, limit):
    opts = argparse.Namespace(**vars(args))
    opts.n_trials = limit
    w = Worker(stage, sweep_dir, opts, slot=slot)
    rc = w.run()
    return rc, w


def work(store, sweep, sweep_dir, args, make_parsers, slot=None) -> int:
    """`sweep.py work T` on a tune: the searches (each until it has no trial to give), then,
    when all are finished, the retrain grid (checked with make_parsers(): the scripts' parsers,
    handed in by sweep.py so that a worker imports PyTorch only if it makes the retrain). Returns the exit status. One Worker per search,
    kept between passes, so its heartbeats see a dead worker's trial go stale and queue it
    again."""
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
    tune = sweep.spec["tune"]
    cands = confirm_candidates(searches, tune) if tune.get("confirm") is not None else {}
    if any(cands.values()):
        confirm = _stage(store, sweep, sweep_dir, confirm_name(sweep.name),
                         lambda: confirm_raw(sweep.spec, cands), make_parsers)
        before = limit_left()
        rc, w = _run_stage(confirm, sweep_dir, args, slot, before)
        ran, failed = ran + w.ran, failed + w.failed
        if w.stop is not None or (args.n_trials is not None and ran >= args.n_trials):
            return rc if w.stop is not None else (1 if failed else 0)
        while not _finished(confirm):  # its last runs go on elsewhere
            if not args.wait:
                print("the confirmation runs are not finished (--no-wait): stopping", flush=True)
                return 1 if failed else 0
            try:
                time.sleep(max(args.poll, 5.0))
            except KeyboardInterrupt:
                print("stopped (SIGINT) waiting for the confirmation runs", file=sys.stderr,
                      flush=True)
                return 130
            rc, w = _run_stage(confirm, sweep_dir, args, slot, limit_left())
            ran, failed = ran + w.ran, failed + w.failed
            if w.stop is not None:
                return rc
            if args.n_trials is not None and ran >= args.n_trials:
                print(f"ran {ran} trial(s) (--n-trials): stopping", flush=True)
                return 1 if failed else 0
    retrain = _stage(store, sweep, sweep_dir, retrain_name(sweep.name),
                     lambda: retrain_raw(sweep.spec, selection(store, sweep, searches)[0]),
                     make_parsers)
    rc, w = _run_stage(retrain, sweep_dir, args, slot, limit_left())
    failed += w.failed
    return rc if w.stop is not None else (1 if failed else rc)
