"""What a sweep's preloaded trials save: the same small study run by one worker whose trials
start as forks of its preloaded interpreter (the default) and by one with `--no-preload` (each
trial a fresh `python SCRIPT`), in turns, on the CPU.

    python tools/bench_trial_start.py [--trials 6] [--repeats 3] [--epochs 1]

Each repeat creates the study afresh in a temporary folder (synthetic data, resnet8 -> resnet8
without a teacher, width 4, one thread per run) and times `sweep.py work` to its end: the wall
time and the CPU time the machine was busy meanwhile (run it on an otherwise idle machine), and
counts the trials that started preloaded. Prints each repeat, the medians, and the ratio fresh /
preloaded. Nothing is written outside the temporary folders (the study's, and the preloaded
interpreter's socket folder, which the worker removes as it ends).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skipkd.argparsing import int_in  # noqa: E402
from skipkd.io.files import atomic_write_text  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int_in(1, 100), default=6, help="trials in the study (seeds)")
    p.add_argument("--repeats", type=int_in(1, 20), default=3, help="timed runs of each way")
    p.add_argument("--epochs", type=int_in(1, 100), default=1, help="epochs of each trial")
    return p


def _machine_cpu():
    """The CPU seconds this machine has been busy (Linux: /proc/stat, every process's, as the
    trials' own processes are not all children of this one); elsewhere this process's
    children's (which misses the preloaded trials)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime


def _preloaded(folder) -> int:
    """How many of the study's trials started preloaded (their record says so)."""
    import optuna
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        os.path.join(folder, "optuna-journal.log")))
    study = optuna.load_study(study_name="b", storage=storage)
    return sum(t.user_attrs.get("child_preloaded") is True for t in study.get_trials())


def run_study(folder, trials, epochs, preload):
    """Create the study in folder and run one worker over it -> (wall s, CPU s, trials that
    started preloaded)."""
    grid = {"fixed": {"dataset": "synthetic", "synthetic-train-size": 200,
                      "synthetic-test-size": 100, "width": 4, "epochs": epochs,
                      "batch-size": 50, "device": "cpu", "progress": False,
                      "tensorboard": False, "teacher": "resnet8", "student": "resnet8",
                      "precision": "fp32", "kd": "none"},
            "grid": {"seed": list(range(trials))}}
    path = os.path.join(folder, "grid.json")
    atomic_write_text(path, json.dumps(grid))
    sweep = os.path.join(REPO, "sweep.py")
    subprocess.run([sys.executable, sweep, "create", "b", "--grid", path, "--dir", folder],
                   check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    argv = [sys.executable, sweep, "work", "b", "--dir", folder, "--poll", "0.2", "--threads", "1"]
    cpu0, t0 = _machine_cpu(), time.perf_counter()
    subprocess.run(argv + ([] if preload else ["--no-preload"]), check=True, env=env,
                   stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t0, _machine_cpu() - cpu0
    return wall, cpu, _preloaded(folder)


def main(args):
    rows = {True: [], False: []}
    for r in range(args.repeats):
        for preload in (True, False):
            with tempfile.TemporaryDirectory(prefix="skipkd-bench-start-") as folder:
                wall, cpu, forked = run_study(folder, args.trials, args.epochs, preload)
            rows[preload].append((wall, cpu))
            print(f"repeat {r + 1}: {'preloaded' if preload else 'fresh    '} "
                  f"{args.trials} trials in {wall:6.1f} s wall, {cpu:6.1f} s CPU "
                  f"({forked}/{args.trials} started preloaded)", flush=True)
    med = {p: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for p, v in rows.items()}
    for p, name in ((True, "preloaded"), (False, "fresh")):
        print(f"median {name:9s}: {med[p][0]:6.1f} s wall ({med[p][0] / args.trials:.2f} s a "
              f"trial), {med[p][1]:6.1f} s CPU ({med[p][1] / args.trials:.2f} s a trial)")
    print(f"fresh / preloaded: {med[False][0] / med[True][0]:.2f}x wall, "
          f"{med[False][1] / med[True][1]:.2f}x CPU")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
