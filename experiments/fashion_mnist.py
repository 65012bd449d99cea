"""Measure what skip-connection KD (with and without ECA) does to a student on real images.

On Fashion-MNIST: one resnet34 teacher per seed, then resnet18 students with KD none / skip /
skip + ECA parallel / skip + ECA last / logit, each distilled from that seed's teacher; checkpoint
selection on a held-out 10% of the training set, accuracy reported on the test set. Writes
docs/RESULTS.md with mean +- std over seeds, the protocol, wall times and the exact commands.

    python experiments/fashion_mnist.py --data-dir /usr/share/datasets/fashion-mnist

Runs whose summary already exists are reused, so an interrupted sweep continues where it stopped.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (student kd mode, student ECA placement, label)
STUDENTS = {
    "none": ("none", "none", "resnet18, no teacher (same recipe)"),
    "skip": ("skip", "none", "resnet18, skip KD"),
    "skip-eca-parallel": ("skip", "parallel", "resnet18, skip KD + ECA parallel"),
    "skip-eca-last": ("skip", "last", "resnet18, skip KD + ECA last"),
    "logit": ("logit", "none", "resnet18, logit KD (T=4)"),
}


def sweep_parser(description, output_dir, results):
    """The flags every Fashion-MNIST sweep shares; callers add their own."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                   help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--width", type=int, default=8, help="base width of every model")
    p.add_argument("--epochs", type=int, default=6, help="epochs per model")
    p.add_argument("--limit-train", type=int, default=12000,
                   help="training images used (before the 10%% validation split)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds")
    p.add_argument("--precision", default="fp32", help="training precision")
    p.add_argument("--device", default="auto", help="device")
    p.add_argument("--extra", default="", help="extra flags passed to every training command")
    p.add_argument("--output-dir", default=os.path.join(REPO, "experiments", output_dir),
                   help="where the runs write their outputs")
    p.add_argument("--results", default=os.path.join(REPO, "docs", results),
                   help="the markdown report to write")
    return p


def get_args_parser():
    p = sweep_parser(__doc__.split("\n\n")[0], "fashion_mnist_runs", "RESULTS.md")
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS),
                   help="student configurations")
    return p


def common_flags(args, seed):
    return ["--dataset", "fashion-mnist", "--data-dir", args.data_dir, "--width", str(args.width),
            "--epochs", str(args.epochs), "--limit-train", str(args.limit_train),
            "--val-split", "0.1", "--seed", str(seed), "--precision", args.precision,
            "--device", args.device, "--output-dir", args.output_dir, "--no-progress",
            "--no-tensorboard"] + shlex.split(args.extra)


def run(cmd, key, args, log):
    summary = os.path.join(args.output_dir, "numpy_outputs", f"summary_{key}.json")
    # paths inside the repository shown relative to it, as a user types them
    shown = " ".join(shlex.quote(c) for c in ["python"] + cmd[1:]).replace(REPO + os.sep, "")
    if os.path.exists(summary):
        print(f"reusing {key}")
    else:
        print(f"running {key}: {shown}", flush=True)
        t0 = time.perf_counter()
        with open(log, "a") as f:
            proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            sys.exit(f"error: {key} failed (exit {proc.returncode}); see {log}")
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
    with open(summary) as f:
        return json.load(f), shown


def mean_std(values):
    if not values:
        return "-"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def write_report(args, rows, commands, teacher_rows, data_cfg, env):
    lines = [
        "# Results on Fashion-MNIST",
        "",
        "Made by `experiments/fashion_mnist.py` on the real Fashion-MNIST (Debian's "
        "`dataset-fashion-mnist`, IDX files, 28x28 grayscale zero-padded to 32x32, one input "
        "channel).",
        "",
        "## Protocol",
        "",
        f"- Data: the first {args.limit_train} training images, of which a stratified 10% "
        f"(split seed 0) is held out for validation; the full 10,000-image test set for "
        f"reporting. Normalisation statistics from the training part.",
        f"- Models: resnet34 teacher and resnet18 students at base width {args.width} "
        f"(reduced width to fit a 2-core CPU), {args.epochs} epochs each, the default recipe "
        f"(SGD Nesterov, lr 0.1 per 128 images, batch 128, 1 warm-up epoch then cosine, crop + "
        f"horizontal flip), {args.precision}.",
        "- One teacher per seed (ECA none); every student of that seed is distilled from it. "
        "KD none = the student trained alone with the same recipe (the fair baseline).",
        "- Skip KD: alpha 0.3; logit KD: beta 1.0, T 4.",
        "- Checkpoint selection: best held-out validation accuracy. *Test (best)* is that "
        "checkpoint on the test set; *test (last)* is the last epoch's weights.",
        f"- Seeds: {', '.join(map(str, args.seeds))}; mean ± sample standard deviation.",
        f"- Machine: {env.get('device')}, {env.get('threads')} threads, torch {env.get('torch')}.",
        "",
        "## Results",
        "",
        "| model | test acc (best-val ckpt) % | test acc (last epoch) % | Δ vs no-teacher student | params | wall time / run |",
        "|---|---|---|---|---|---|",
    ]
    base = rows.get("none", {}).get("best", [])
    t_best = [r["test_acc_best"] for r in teacher_rows]
    t_last = [r["test_acc_last"] for r in teacher_rows]
    if teacher_rows:
        lines.append(f"| resnet34 teacher | {mean_std(t_best)} | {mean_std(t_last)} | | "
                     f"{teacher_rows[0]['params']:,} | {statistics.mean(r['wall_time_s'] for r in teacher_rows):.0f} s |")
    for name in args.students:
        r = rows.get(name)
        if not r:
            continue
        delta = "" if name == "none" or not base else \
            f"{statistics.mean(r['best']) - statistics.mean(base):+.2f}"
        lines.append(f"| {STUDENTS[name][2]} | {mean_std(r['best'])} | {mean_std(r['last'])} | "
                     f"{delta} | {r['params']:,} | {statistics.mean(r['wall']):.0f} s |")
    write_markdown(args.results, lines, commands)


KEPT_MARKER = "<!-- kept when this report is regenerated -->"


def write_markdown(path, lines, commands):
    """Write a report: `lines`, then the sweep's own command and the per-seed `commands`. What
    an existing report holds from KEPT_MARKER on (sections made by other tools, e.g. GPU runs)
    is carried over to the new one."""
    lines = lines + ["", "## Commands", "", "The sweep:", "", "```bash",
                     "python " + " ".join(shlex.quote(a) for a in
                                          [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
                     "```", "", "which ran, per seed:", "", "```bash"] + commands + ["```", ""]
    kept = ""
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
        if KEPT_MARKER in old:
            kept = old[old.index(KEPT_MARKER):]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + ("\n" + kept if kept else ""))
    print(f"wrote {path}")


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    log = os.path.join(args.output_dir, "sweep.log")
    py = sys.executable
    rows, commands, teacher_rows = {}, [], []
    data_cfg, env = {}, {}
    for seed in args.seeds:
        t_key = f"fm_teacher_w{args.width}_e{args.epochs}_s{seed}"
        cmd = [py, os.path.join(REPO, "model_training.py"), "--model", "resnet34", "--eca", "none",
               "--run-name", t_key] + common_flags(args, seed)
        summary, shown = run(cmd, t_key, args, log)
        teacher_rows.append(summary["baseline"])
        data_cfg, env = summary["dataset"], summary.get("environment", {})
        if seed == args.seeds[0]:
            commands.append(shown)
        teacher_ckpt = summary["baseline"]["checkpoint"]
        for name in args.students:
            kd, eca, _ = STUDENTS[name]
            key = f"fm_{name}_w{args.width}_e{args.epochs}_s{seed}"
            cmd = [py, os.path.join(REPO, "model_training_mid.py"), "--student", "resnet18",
                   "--kd", kd, "--eca", eca, "--run-name", key] + common_flags(args, seed)
            if kd != "none":
                cmd += ["--teacher-checkpoint", teacher_ckpt]
            summary, shown = run(cmd, key, args, log)
            st = summary["student"]
            r = rows.setdefault(name, {"best": [], "last": [], "wall": [], "params": st["params"]})
            r["best"].append(st["test_acc_best"])
            r["last"].append(st["test_acc_last"])
            r["wall"].append(st["wall_time_s"])
            if seed == args.seeds[0]:
                commands.append(shown)
        write_report(args, rows, commands, teacher_rows, data_cfg, env)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
