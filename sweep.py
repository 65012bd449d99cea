"""Sweeps on Optuna: grids (methods x ECA placements x seeds x teacher/student pairs) or searches
(alpha, temperature, per-term weights), any number of workers, one report. docs/SWEEPS.md.

    python sweep.py create fm --grid experiments/grids/fashion_mnist.json
    python sweep.py work fm          # as many as you like, here or on other machines
    python sweep.py report fm        # sweeps/fm/report/report.md, CSV and figures
"""
import argparse
import os
import sys

from skipkd.argparsing import HelpFormatter, OneLineParser, add_bool, int_in
from skipkd.errors import UserError, exit_on_user_error
from utils.sweep.run.gpus import gpu_list

STORAGE_HELP = ("where the study lives: a database URL Optuna accepts (e.g. "
                "postgresql://user:pass@host:5432/db, for workers on many machines) or a journal "
                "file (default: DIR/optuna-journal.log, nothing to install)")


def _positive_seconds(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < v < 1e6:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return v


def _rate(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e12:
        raise argparse.ArgumentTypeError(f"expected images per second > 0, got {text!r}")
    return value


def _threads(text):
    v = _count(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def _count(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0 or v > 10_000_000:
        raise argparse.ArgumentTypeError(f"must be in 0..10,000,000, got {text}")
    return v


def get_args_parser():
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{create,work,report}",
                           parser_class=OneLineParser)
    _add_create(sub)
    _add_work(sub)
    _add_report(sub)
    return p


def _subparser(sub, name, help, description):
    """A command's parser, with what every command takes: the study, its folder, its storage."""
    sp = sub.add_parser(name, formatter_class=HelpFormatter, help=help, description=description)
    sp.add_argument("study", help="the study's name (letters, digits, . _ -); it names the "
                                  "sweep folder and prefixes every run key")
    sp.add_argument("--dir", default=None,
                    help="the sweep folder: the runs' files (saved_pth_model/, "
                         "numpy_outputs/, runs/), logs/, report/ and the default storage "
                         "(default: sweeps/STUDY)")
    sp.add_argument("--storage", default=None, help=STORAGE_HELP)
    return sp


def _add_create(sub):
    c = _subparser(sub, "create", "define a grid or a search space as an Optuna study",
                   "Define a grid or a search space as an Optuna study: from a grid file, or "
                   "from flags. Every trial's command line is checked by its script's own "
                   "parser first; nothing is written when one is wrong.")
    c.add_argument("--grid", default=None, metavar="FILE",
                   help="the grid or search file (.json or .toml; docs/SWEEPS.md, examples in "
                        "experiments/grids/)")
    c.add_argument("--script", choices=["model_training_mid.py", "model_training.py"],
                   default=None, help="without --grid: the training script "
                                      "(default: model_training_mid.py)")
    c.add_argument("--args", default=None, metavar="'FLAGS'",
                   help="without --grid: the script's flags of every trial, quoted, e.g. "
                        "'--dataset cifar10 --epochs 100'")
    c.add_argument("--axis", action="append", metavar="FLAG=V1,V2,...",
                   help="without --grid: a grid axis over one flag, e.g. kd=none,skip,logit "
                        "(repeatable)")
    c.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="without --grid: the seed axis, e.g. 0,1,2")
    c.add_argument("--search", action="append", metavar="FLAG=RANGE",
                   help="without --grid: a searched flag: alpha=float:0.01:10:log, "
                        "epochs=int:2:8, placement=choice:none,parallel, kd-weights.logit=float:0.1:2 "
                        "(repeatable)")
    c.add_argument("--n-trials", type=_count, default=None,
                   help="without --grid: the search's number of trials (default 20)")
    c.add_argument("--pruner", choices=["median", "none"], default=None,
                   help="without --grid: stop unpromising search trials early on their per-epoch "
                        "validation accuracy (default median)")
    c.add_argument("--teacher-args", default=None, metavar="'FLAGS'",
                   help="without --grid: share one teacher run per seed (model_training.py with "
                        "these flags on top of the students' data and recipe flags, e.g. "
                        "'--placement none')")
    c.add_argument("--baseline", default=None, metavar="AXIS=VALUE",
                   help="without --grid: what the deltas compare with (default: the axis value "
                        "that sets --kd none)")
    c.add_argument("--heartbeat", type=_positive_seconds, default=None,
                   help="seconds between a running trial's heartbeats (default 30)")
    c.add_argument("--grace", type=_positive_seconds, default=None,
                   help="a running trial without a heartbeat for this long is taken up again "
                        "(default 120; at least twice --heartbeat)")
    c.add_argument("--max-retries", type=_count, default=None,
                   help="how often a trial whose worker died is retried (default 3)")
    add_bool(c, "--dry-run", False, "check the grid and print the trials; write nothing (a "
             "tune: its runs, training images and GPU-hours)")
    c.add_argument("--images-per-s", type=_rate, default=None, metavar="N",
                   help="with --dry-run on a tune: the GPU-hours at this training throughput "
                        "(default: the matching distillation benchmark in docs/gpu/)")


def _add_work(sub):
    w = _subparser(sub, "work", "a worker: run the study's trials until none is left",
                   "A worker: takes the next trial, runs the training script on it, records "
                   "its metrics; start as many as you like, on one machine or many. Ctrl-C "
                   "stops it cleanly (the running trial saves its state and goes back to the "
                   "queue).")
    w.add_argument("--n-trials", type=_count, default=None,
                   help="run at most this many trials, then stop (default: until the study is "
                        "finished)")
    add_bool(w, "--wait", True, "when no trial is free but others run, wait: a trial whose "
                                "worker dies is taken up again (--no-wait: stop)")
    add_bool(w, "--retry-failed", False, "first queue again every trial that failed")
    w.add_argument("--poll", type=_positive_seconds, default=1.0,
                   help="seconds between looks at the running child (an idle worker looks at "
                        "the storage every heartbeat/2 seconds, at most 5)")
    w.add_argument("--data-dir", default=None,
                   help="this machine's dataset folder (overrides the grid's --data-dir; it may "
                        "differ between machines and between a run and its resume)")
    w.add_argument("--device", default=None,
                   help="this worker's --device for its runs (e.g. cuda:1)")
    w.add_argument("--threads", type=_threads, default=None,
                   help="CPU threads of each run (OMP_NUM_THREADS and MKL_NUM_THREADS of the "
                        "child; default: inherited). On a CPU machine, start one worker per "
                        "core with --threads 1: several multi-threaded runs on the same cores "
                        "slow each other down many times over")
    add_bool(w, "--preload", True,
             "start each CPU trial (--device cpu) as a fork of one interpreter that has imported "
             "torch and torchvision: no 3-4 s of imports per trial (Linux; a trial that may use "
             "a GPU always starts fresh). --no-preload: each trial a fresh `python SCRIPT`")
    w.add_argument("--gpus", type=gpu_list, default=None, metavar="I,J,...",
                   help="run trials on these GPUs of this machine: --per-gpu workers per GPU, "
                        "each trial its own process with its own CUDA context (docs/SWEEPS.md)")
    w.add_argument("--per-gpu", type=int_in(1, 64), default=1, metavar="N",
                   help="with --gpus: trials at once on each GPU (across every sweep.py work on "
                        "this machine)")
    w.add_argument("--min-free-mib", type=int_in(0, 10_000_000), default=1024, metavar="MIB",
                   help="with --gpus: a trial starts only when its GPU has this much free "
                        "memory; otherwise it goes back to the queue for later")
    w.add_argument("--gpu-slot", type=int_in(0, 63), default=None, help=argparse.SUPPRESS)


def _add_report(sub):
    r = _subparser(sub, "report",
                   "mean +- std over seeds, paired deltas, markdown, CSV, figures",
                   "The study's report: markdown, CSV, plotly HTML and PNG figures (works while "
                   "trials still run).")
    r.add_argument("--out", default=None, help="the report folder (default: DIR/report)")
    r.add_argument("--baseline", default=None, metavar="AXIS=VALUE",
                   help="compare with this grid point instead of the study's baseline (e.g. "
                        "method=skip: the deltas of every other method against skip, paired by "
                        "seed)")
    r.add_argument("--update", default=None, metavar="DOC",
                   help="also put the report into this markdown document, between its lines "
                        "'<!-- sweep.py report STUDY: begin -->' and '<!-- sweep.py report "
                        "STUDY: end -->' (everything else in it is kept; e.g. docs/RESULTS.md)")
    r.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline",
                   help="embed plotly.js in figures.html (works offline, ~4 MB) or load it from "
                        "a CDN")


def _dir(args):
    from utils.sweep.spec.keys import validate_study_name
    from utils.sweep.run.storage import default_dir
    validate_study_name(args.study)
    return args.dir or default_dir(args.study)


def create(args):
    from utils.sweep.run.child import check_no_foreign_runs
    from utils.sweep.spec.expand import expand, grid_distributions
    from utils.sweep.spec.check import check_plan
    from utils.sweep.spec.parsers import Parsers
    from utils.sweep.spec.normalize import normalize_spec
    from utils.sweep.spec.sources import load_spec_file, spec_from_flags
    from utils.sweep.run.storage import check_journal_path, create_sweep
    sweep_dir = _dir(args)
    if args.storage and "://" not in args.storage:  # a user's file is refused before any write
        check_journal_path(args.storage, create=True)
    flag_mode = any(v is not None for v in (args.script, args.args, args.axis, args.seeds,
                                            args.search, args.n_trials, args.pruner,
                                            args.teacher_args, args.baseline))
    if args.grid is not None and flag_mode:
        raise UserError("give --grid FILE or the grid's flags (--args, --axis, --seeds, "
                        "--search, ...), not both")
    if args.grid is None and not flag_mode:
        raise UserError("nothing to sweep: give --grid FILE, or --args/--axis/--seeds/--search")
    raw = load_spec_file(args.grid) if args.grid is not None else spec_from_flags(args)
    for key in ("heartbeat", "grace", "max_retries"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    spec = normalize_spec(raw, args.grid or "sweep")
    parsers = Parsers()
    if spec.get("tune") is not None:
        return _create_tune(args, spec, parsers, sweep_dir)
    plan = expand(spec, args.study, parsers)
    check_plan(spec, plan, parsers)
    n, nt = len(plan["trials"]), len(plan["teachers"])
    what = (f"{n} trial(s)" if spec["search"] is None else
            f"a search of {spec['search']['n_trials']} trial(s)") + \
        (f" and {nt} shared teacher run(s)" if nt else "")
    if args.dry_run:
        for t in plan["teachers"] + plan["trials"]:
            print(f"{t['key']}: python {t['script']} {' '.join(t['argv'])}")
        print(f"{what}: the grid is valid (--dry-run: nothing written)")
        return 0
    check_no_foreign_runs(sweep_dir, [t["key"] for t in plan["teachers"] + plan["trials"]])
    store = _open_for_create(args, sweep_dir)
    distributions = grid_distributions(spec) if spec["search"] is None else {}
    create_sweep(store, args.study, spec, plan, distributions)
    return _created(args, store, what, sweep_dir)


def _created(args, store, what, sweep_dir) -> int:
    """What `create` says once the study is written: what it holds and how to start workers."""
    print(f"study '{args.study}' in {store.label}: {what}; runs go to {sweep_dir}")
    more = "" if args.dir is None else f" --dir {args.dir}"
    if args.storage is not None:
        more += " --storage URL" if "***" in store.label else f" --storage '{store.label}'"
    print(f"start workers with: python sweep.py work {args.study}{more}")
    return 0


def _open_for_create(args, sweep_dir):
    from utils.sweep.run.storage import open_store
    from utils.sweep.run.worker import check_run_dir
    if args.storage and "://" in args.storage:
        store = open_store(args.storage, sweep_dir, create=True)  # reachable before any file
        check_run_dir(sweep_dir)
    else:
        check_run_dir(sweep_dir)
        store = open_store(args.storage, sweep_dir, create=True)
    return store


def _create_tune(args, spec, parsers, sweep_dir):
    """A tune file: one search per method and the record study (utils/sweep/spec/tune.py, utils/sweep/run/tune.py)."""
    from utils.sweep.run.tune import create_tune
    from utils.sweep.spec.tune_plan import sub_specs
    subs = sub_specs(spec, args.study, parsers)  # every command line checked first
    tune = spec["tune"]
    what = (f"a tune of {len(tune['methods'])} method(s): {len(subs)} search(es) of "
            f"{tune['n_trials']} trial(s), then a retrain on seeds "
            f"{','.join(map(str, tune['seeds']))}")
    if args.dry_run:
        from utils.sweep.spec.cost import cost_lines
        from utils.sweep.spec.check import check_argv
        for name, _, _ in subs:
            print(f"{name}: a search of {tune['n_trials']} trial(s)")
        from utils.sweep.spec.expand import search_trial
        from utils.sweep.spec.tune_plan import param_ends
        # one distillation run stands for all (its flags set the images and the pair)
        sspec = next((ss for _, ss, _ in subs if ss["fixed"].get("kd") != "none"), subs[0][1])
        t = search_trial(sspec, "cost", 0, {f: param_ends(r)[0] for f, r in
                                             sspec["search"]["params"].items()}, None)
        for line in cost_lines(tune, check_argv(parsers, t["script"], t["argv"], "cost"),
                               args.images_per_s):
            print(line)
        print(f"{what}: the grid is valid (--dry-run: nothing written)")
        return 0
    store = _open_for_create(args, sweep_dir)
    create_tune(store, args.study, spec, subs)
    return _created(args, store, what, sweep_dir)


def _slot_worker_argv(args) -> list:
    """The flags of one slot's worker (--gpus): the study and this command's own settings."""
    argv = [args.study, "--poll", str(args.poll), "--wait" if args.wait else "--no-wait"]
    for flag, value in (("--dir", args.dir), ("--storage", args.storage),
                        ("--n-trials", args.n_trials), ("--data-dir", args.data_dir),
                        ("--device", args.device), ("--threads", args.threads)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--retry-failed"] if args.retry_failed else []) \
        + ([] if args.preload else ["--no-preload"])


def work(args):
    from utils.sweep.run.gpus import FAKE_ENV, GpuSlot, launch_slots
    from utils.sweep.run.storage import load_sweep, open_store
    from utils.sweep.run.worker import Worker, check_run_dir
    sweep_dir = _dir(args)
    store = open_store(args.storage, sweep_dir, create=False)
    sweep = load_sweep(store, args.study)
    check_run_dir(sweep_dir)
    if args.gpus is not None:
        if args.gpu_slot is not None:
            raise UserError("give --gpus or --gpu-slot, not both")
        return launch_slots(args, _slot_worker_argv(args), sweep_dir)
    slot = None
    if args.gpu_slot is not None:
        slot = GpuSlot(sweep_dir, args.gpu_slot, args.per_gpu, args.min_free_mib)
        if not slot.acquire():
            print(f"GPU {args.gpu_slot}: its {args.per_gpu} slot(s) are all taken by other "
                  f"workers on this machine; stopping", flush=True)
            return 0
        if args.device is None and not os.environ.get(FAKE_ENV):
            args.device = "cuda"  # CUDA_VISIBLE_DEVICES holds the slot's GPU only
    if sweep.spec.get("tune") is not None:
        from utils.sweep.run.tune import work as tune_work
        from utils.sweep.spec.parsers import Parsers
        return tune_work(store, sweep, sweep_dir, args, Parsers, slot=slot)
    return Worker(sweep, sweep_dir, args, slot=slot).run()


def report(args):
    from utils.sweep.report.document import check_document, update_document
    from utils.sweep.spec.normalize import normalize_baseline
    from utils.sweep.spec.sources import baseline_flag
    from utils.sweep.report.build import build_report, command_line, write_report
    from utils.sweep.run.storage import load_sweep, open_store
    sweep_dir = _dir(args)
    store = open_store(args.storage, sweep_dir, create=False)
    sweep = load_sweep(store, args.study)
    part = args.study.rpartition("-")
    if sweep.spec.get("tune") is None and part[2] in ("retrain", "confirm") and \
            part[0] in store.study_names() and load_sweep(store, part[0]).spec.get("tune"):
        raise UserError(f"study '{args.study}' is part of the tune '{part[0]}': its own report "
                        f"would compare chosen settings with defaults; report the tune "
                        f"(python sweep.py report {part[0]}), which compares chosen with chosen "
                        f"and defaults with defaults")
    if args.baseline and sweep.spec.get("tune") is None:  # this report only: the study keeps its own
        sweep.spec["baseline"] = normalize_baseline(
            {"baseline": baseline_flag(args.baseline)}, sweep.spec, "--baseline")
    if args.update:
        check_document(args.update, args.study)  # before anything is written
    if sweep.spec.get("tune") is not None:
        from utils.sweep.report.tune import tune_report
        rep = tune_report(store, sweep, sweep_dir, args.baseline)
    else:
        rep = build_report(sweep, sweep_dir)
    out = args.out or os.path.join(sweep_dir, "report")
    paths = write_report(rep, out, command_line(), args.plotlyjs)
    with open(paths[0], encoding="utf-8") as f:
        text = f.read()
    if args.update:
        update_document(args.update, args.study, text, out, paths)
        print(f"updated the block of '{args.study}' in {args.update}")
    if "## Results" in text:  # the table, on the terminal
        print(text.split("## Results", 1)[1].split("\n## ", 1)[0].strip())
    print(f"wrote {out}/: {', '.join(os.path.basename(p) for p in paths)}")
    return 0


@exit_on_user_error
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    return {"create": create, "work": work, "report": report}[args.command](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `sweep.py create ... --dry-run | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
