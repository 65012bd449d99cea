"""What a tune costs, printed by `sweep.py create --dry-run`: the number of runs of each step
and the training images they pass, and the GPU-hours at a measured throughput (the distillation
benchmarks in docs/gpu/, `benchmark.py --benches distill`) or one given with --images-per-s.

The estimate is a lower bound of the training alone: every run is counted at the distillation
throughput (the student-alone runs are faster, the teacher's forward pass included in the
benchmark), evaluation and start-up are not counted, and packing several small runs per GPU
(`work --per-gpu`) raises the total rate by what tools/gpu_check.sh measures.
"""
import glob
import json
import os

__all__ = ["TRAIN_IMAGES", "tune_runs", "run_images", "measured_throughput", "cost_lines"]

# training-split sizes of the datasets a tune can name (before --limit-train / --val-split)
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "fashion-mnist": 60_000,
                "svhn": 73_257, "imagenet": 1_281_167}
_GPU_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "docs",
                        "gpu")


def tune_runs(tune) -> dict:
    """step -> number of runs (the retrain at its most: a tuned row for every searched method)."""
    searched = [m for m in tune["methods"].values() if m["params"]]
    confirm = tune.get("confirm")
    rows = len(tune["methods"]) + len(tune.get("derived") or {})
    if tune.get("defaults", True):
        rows += len(searched)
    return {"searches": len(searched) * tune["n_trials"],
            "confirmation": (len(searched) * confirm["top"] * len(confirm["seeds"])
                             if confirm else 0),
            "retrain": rows * len(tune["seeds"])}


def run_images(args):
    """Training images one run passes (epochs x its training split), or None when the
    dataset's size is not known here."""
    size = TRAIN_IMAGES.get(getattr(args, "dataset", None))
    limit = getattr(args, "limit_train", None)
    if limit:
        size = min(limit, size) if size else limit
    if size is None:
        return None
    return int(args.epochs * size * (1 - (getattr(args, "val_split", 0) or 0)))


def measured_throughput(args, gpu_dir=_GPU_DIR):
    """(images/s, source) of the distillation benchmark in docs/gpu/ that ran this teacher,
    student and width at this precision (bf16 for 'auto'), the best of them; None if none did."""
    want = ("bf16" if getattr(args, "precision", "auto") in ("auto", "bf16") else
            args.precision)
    width = getattr(args, "student_width", None) or getattr(args, "width", None)
    best = None
    for path in sorted(glob.glob(os.path.join(gpu_dir, "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):  # a file of docs/gpu/ is read, not trusted
            continue
        inner = doc.get("benchmarks")
        benches = [doc] + [b for b in (inner.values() if isinstance(inner, dict) else [])
                           if isinstance(b, dict)]
        for b in benches:
            c = b.get("config") if isinstance(b.get("config"), dict) else {}
            rows = b.get("rows") if isinstance(b.get("rows"), list) else []
            if (c.get("teacher"), c.get("student")) != (args.teacher, args.student) or \
                    (width is not None and c.get("width") != width):
                continue
            for r in rows:
                if isinstance(r, dict) and r.get("bench") == "distill" and \
                        r.get("path") == "ours" and r.get("precision") == want and \
                        isinstance(r.get("images_per_s"), (int, float)) and \
                        not isinstance(r["images_per_s"], bool) and 0 < r["images_per_s"] < 1e12:
                    rate = float(r["images_per_s"])
                    if best is None or rate > best[0]:
                        batch = c.get("batch_size")
                        note = "" if batch == getattr(args, "batch_size", batch) else (
                            f" (this tune trains at batch {args.batch_size}: expect fewer "
                            f"images/s)")
                        best = (rate, f"{os.path.basename(path)}, {b.get('device_name', 'GPU')}, "
                                      f"{want}, measured at batch {batch}{note}")
    return best


def cost_lines(tune, args, images_per_s=None) -> list:
    """The lines `create --dry-run` prints for a tune; args: one retrain run's parsed flags."""
    runs = tune_runs(tune)
    total = sum(runs.values())
    lines = [f"runs: {total} ({', '.join(f'{k} {v}' for k, v in runs.items())})"]
    per_run = run_images(args)
    if per_run is None:
        return lines + ["cost: the dataset's size is not known here (give limit-train)"]
    images = per_run * total
    lines.append(f"training images: {images:,} ({per_run:,} per run: {args.epochs} epochs)")
    rate = (images_per_s, "--images-per-s") if images_per_s else measured_throughput(args)
    if rate is None:
        lines.append(f"GPU-hours: no distillation benchmark of {args.teacher} -> {args.student} "
                     f"at this width in docs/gpu/ (run tools/gpu_check.sh, or give "
                     f"--images-per-s)")
    else:
        lines.append(f"GPU-hours: at least {images / rate[0] / 3600:,.1f} on one GPU at "
                     f"{rate[0]:,.0f} images/s ({rate[1]}; training only, one run at a time; "
                     f"--per-gpu packing of small runs raises the rate)")
    return lines
