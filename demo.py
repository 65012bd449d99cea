"""The main job (`make demo`): a teacher, the student alone and the student distilled from the
teacher, under the same recipe and seed, ending with a three-row table and the gain.

    python demo.py [--data-dir ./data] [--epochs 15] [--teacher-epochs 15] [--output-dir .]

The task is chosen so that capacity matters: a small student (resnet8 at width 8, 20K
parameters) on little data (3,000 training images) leaves room for a larger teacher (resnet20
at width 16, 272K parameters) to help. The data: CIFAR-10 when it is in --data-dir, else the
real Fashion-MNIST when it is installed (Debian's dataset-fashion-mnist; `make demo` installs it
when run as root), else the built-in synthetic patterns (easy enough that any network nearly
solves them, so the teacher may not lead there: the output says so).

The distilled student uses skip-connection KD together with DIST's logit term (`--kd skip+dist`,
both at their published defaults): in this regime skip KD alone at its default weight gains
nothing measurable. docs/RESULTS.md has the methods one by one over 10 seeds ("The verdict")
and skip + DIST over 5 (the equal-budget tune, with a teacher trained longer than the demo's
and all 10,000 test images); one seed of the demo is an illustration, not a measurement.
"""
import json
import os
import subprocess
import sys
import time

from skipkd.argparsing import OneLineParser, int_in
from skipkd.errors import UserError, exit_on_user_error

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
KD = "skip+dist"  # the hint and DIST's logit term, each at its published default weight


def get_args_parser():
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data",
                   help="where CIFAR-10 is looked for (cifar-10-batches-py/)")
    p.add_argument("--fashion-mnist-dir", default=FASHION_MNIST,
                   help="the Fashion-MNIST IDX files, used when CIFAR-10 is not found")
    p.add_argument("--train-size", type=int_in(20, 60_000), default=3000,
                   help="training images (10%% of them held out to choose the checkpoint)")
    p.add_argument("--test-size", type=int_in(10, 10_000), default=2000,
                   help="test images the three models are scored on")
    p.add_argument("--epochs", type=int_in(1, 1000), default=15, help="epochs of each student")
    p.add_argument("--teacher-epochs", type=int_in(1, 1000), default=15,
                   help="epochs of the teacher")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    p.add_argument("--output-dir", default=".",
                   help="where the runs write (saved_pth_model/, numpy_outputs/, runs/)")
    return p


def choose_task(args):
    """(dataset flags, one line saying which data and why)."""
    if os.path.isdir(os.path.join(args.data_dir, "cifar-10-batches-py")):
        return (["--dataset", "cifar10", "--data-dir", args.data_dir],
                f"CIFAR-10 from {args.data_dir}")
    if os.path.isdir(args.fashion_mnist_dir):
        return (["--dataset", "fashion-mnist", "--data-dir", args.fashion_mnist_dir],
                f"Fashion-MNIST from {args.fashion_mnist_dir}")
    return (["--dataset", "synthetic", "--synthetic-train-size", str(args.train_size),
             "--synthetic-test-size", str(args.test_size)],
            "synthetic patterns (no CIFAR-10 in --data-dir, no Fashion-MNIST installed: "
            "`apt-get install dataset-fashion-mnist`); they are easy enough that the teacher "
            "may not lead")


def commands(args):
    """(the task line, the student-alone command, the distillation command)."""
    data, task = choose_task(args)
    common = [*data, "--limit-train", str(args.train_size), "--limit-test", str(args.test_size),
              "--val-split", "0.1", "--batch-size", "64", "--epochs", str(args.epochs),
              "--student", "resnet8", "--student-width", "8", "--placement", "none",
              "--precision", "fp32", "--seed", str(args.seed), "--tensorboard", "false",
              "--output-dir", args.output_dir, "--overwrite"]
    alone = [*common, "--kd", "none", "--run-name", "demo_alone"]
    distil = [*common, "--kd", KD, "--teacher", "resnet20", "--teacher-width", "16",
              "--teacher-epochs", str(args.teacher_epochs), "--run-name", "demo"]
    return task, alone, distil


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def table(alone_summary, distil_summary) -> tuple:
    """(markdown lines of the three rows, the gain in points)."""
    t, s, a = distil_summary["teacher"], distil_summary["student"], alone_summary["student"]
    rows = [("teacher", t, f"{t['arch']} width {t['base_width']}, {t['epochs']} epochs"),
            ("student alone", a, f"{a['arch']} width {a['base_width']}, cross-entropy only"),
            ("student distilled", s, f"{s['arch']} width {s['base_width']}, "
                                     f"{s['kd']} KD from the teacher above")]
    lines = ["| model | what | parameters | test accuracy % |", "|---|---|---:|---:|"]
    for name, r, what in rows:
        lines.append(f"| {name} | {what} | {r['params']:,} | {r['test_acc_best']:.2f} |")
    return lines, s["test_acc_best"] - a["test_acc_best"]


@exit_on_user_error
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.time()
    task, alone, distil = commands(args)
    print(f"demo task: {task}; {args.train_size:,} training images (10% held out), a small "
          f"student (resnet8, width 8) and a larger teacher (resnet20, width 16), so that "
          f"capacity matters; distilled with skip KD + DIST's logit term (skip KD alone at its "
          f"default weight gains nothing measurable in this regime: docs/RESULTS.md)",
          flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    for what, argv_ in (("1/2 the student alone", alone),
                        ("2/2 the teacher, then the student distilled from it", distil)):
        print(f"\n== {what}: python model_training_mid.py {' '.join(argv_)}", flush=True)
        proc = subprocess.run([sys.executable, os.path.join(here, "model_training_mid.py"),
                               *argv_])
        if proc.returncode != 0:
            raise UserError(f"the run for '{what}' failed (exit {proc.returncode}); its output "
                            f"is above")
    numpy_dir = os.path.join(args.output_dir, "numpy_outputs")
    lines, gain = table(_read(os.path.join(numpy_dir, "summary_demo_alone.json")),
                        _read(os.path.join(numpy_dir, "summary_demo.json")))
    print("\n" + "\n".join(lines))
    print(f"\ngain of distillation: {gain:+.2f} points over the student alone (one seed, "
          f"test accuracy of the best-validation checkpoint on {args.test_size:,} test images; "
          f"docs/RESULTS.md measures the methods over 10 seeds)")
    print(f"files: {os.path.join(args.output_dir, 'saved_pth_model')}/demo_*.pth (checkpoints), "
          f"{numpy_dir}/summary_demo*.json and the per-epoch arrays (results)")
    print(f"demo: done in {time.time() - start:.0f} s of wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
