"""Trials per hour of the studies' small pair on one GPU at several trials per GPU: a resnet20
teacher trained once on Fashion-MNIST, then, for each --per-gpu level, a fresh study of logit-KD
resnet8 students distilled from it, run by `sweep.py work --gpus G --per-gpu P`; the wall time of
each level gives the aggregate trials/hour and training images/s.

    python tools/gpu_sweep.py --data-dir DIR --work DIR --json OUT.json            (a GPU)
    python tools/gpu_sweep.py --dry-run --data-dir DIR --work DIR --json OUT.json  (the CPU)

The dry run uses a fake device list (utils/sweep/run/gpus.py, SWEEP_FAKE_GPUS) and tiny sizes, so
the whole path runs in the test suite. Part of tools/gpu_check.sh.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skipkd.errors import UserError  # noqa: E402
from skipkd.io.files import atomic_write_text, open_append  # noqa: E402
from skipkd.io.summary import read_summary  # noqa: E402

SIZES = {  # per-gpu levels and trials per level; recipe of the runs
    "gpu": dict(levels=(1, 4, 8), trials=(4, 8, 16), teacher_epochs=3, epochs=2, batch=64,
                limit_train=3000, width=None),
    "dry": dict(levels=(1, 2), trials=(2, 2), teacher_epochs=1, epochs=1, batch=32,
                limit_train=120, width=4),
}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--work", required=True, help="a new folder for the runs")
    p.add_argument("--json", required=True, help="where the figures go")
    p.add_argument("--gpu", type=int, default=0, help="the GPU to load (default 0)")
    p.add_argument("--dry-run", action="store_true", help="the CPU, a fake GPU, tiny sizes")
    return p


def _run(argv, env=None, log=None):
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_sweep: {' '.join(argv[1:3])} failed (exit {proc.returncode})")


def _size_flags(size):
    return ["--width", str(size["width"])] if size["width"] else []


def main(args):
    size = SIZES["dry" if args.dry_run else "gpu"]
    os.makedirs(args.work, exist_ok=False)
    py, device = sys.executable, "cpu" if args.dry_run else "cuda"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    if args.dry_run:
        fake = os.path.join(args.work, "fake_gpus.json")
        atomic_write_text(fake, json.dumps({str(args.gpu): 1_000_000}))
        env["SWEEP_FAKE_GPUS"] = fake
    common = ["--dataset", "fashion-mnist", "--data-dir", os.path.abspath(args.data_dir),
              "--limit-train", str(size["limit_train"]), "--val-split", "0.1",
              "--batch-size", str(size["batch"]), "--no-progress", "--no-tensorboard",
              *_size_flags(size)]
    log = open_append(os.path.join(args.work, "log.txt"))
    t0 = time.perf_counter()
    _run([py, os.path.join(REPO, "model_training.py"), "--model", "resnet20", "--placement", "none",
          "--epochs", str(size["teacher_epochs"]), "--device", device, "--output-dir",
          os.path.join(args.work, "teacher"), "--run-name", "teacher", *common], env, log)
    teacher_s = time.perf_counter() - t0
    ckpt = os.path.join(args.work, "teacher", "saved_pth_model", "teacher_baseline.pth")
    fixed = {"dataset": "fashion-mnist", "data-dir": os.path.abspath(args.data_dir),
             "teacher-checkpoint": ckpt, "student": "resnet8", "kd": "logit", "eca": "none",
             "epochs": size["epochs"], "batch-size": size["batch"], "device": device,
             "limit-train": size["limit_train"], "val-split": 0.1, "tensorboard": False,
             "progress": False}
    if size["width"]:
        fixed["width"] = size["width"]
    levels = []
    for per_gpu, n in zip(size["levels"], size["trials"]):
        study, folder = f"per_gpu_{per_gpu}", os.path.join(args.work, f"per_gpu_{per_gpu}")
        grid = os.path.join(args.work, f"{study}.json")
        atomic_write_text(grid, json.dumps({"description": f"{n} students at {per_gpu} per GPU",
                                            "fixed": fixed, "grid": {"seed": list(range(n))}}))
        _run([py, os.path.join(REPO, "sweep.py"), "create", study, "--grid", grid, "--dir",
              folder], env, log)
        work = [py, os.path.join(REPO, "sweep.py"), "work", study, "--dir", folder, "--gpus",
                str(args.gpu), "--per-gpu", str(per_gpu), "--poll", "0.2", "--no-wait"]
        if args.dry_run:
            work += ["--threads", "1"]
        start = time.perf_counter()
        _run(work, env, log)
        wall = time.perf_counter() - start
        images = done = 0
        for seed in range(n):  # the runs' exact keys (sweep keys: study_seed=N), validated
            key = f"{study}_seed={seed}"
            try:
                s = read_summary(os.path.join(folder, "numpy_outputs", f"summary_{key}.json"), key)
            except UserError:
                continue
            sizes = (s.get("dataset") or {}).get("train_size"), (s.get("student") or {}).get("epochs")
            if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes):
                done += 1
                images += sizes[0] * sizes[1]
        levels.append({"per_gpu": per_gpu, "trials": n, "done": done, "wall_s": round(wall, 1),
                       "trials_per_hour": round(done / wall * 3600, 1),
                       "images_per_s": round(images / wall, 1)})
    base = levels[0]["trials_per_hour"] or None
    for lv in levels:
        lv["x_per_gpu_1"] = round(lv["trials_per_hour"] / base, 2) if base else None
    out = {"pair": "resnet20 -> resnet8 (logit KD), Fashion-MNIST", "dry_run": args.dry_run,
           "teacher_s": round(teacher_s, 1), "recipe": fixed, "levels": levels}
    atomic_write_text(args.json, json.dumps(out, indent=2))
    print(json.dumps(levels))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
