"""The GPU check: CUDA tests, full-width benchmarks and a short Fashion-MNIST run, each part
stopped at its own time limit, summarised in OUT/summary.json and OUT/summary.md.

    tools/gpu_check.sh OUT                 # on a CUDA machine (430 s at most)
    tools/gpu_check.sh --dry-run OUT       # every part on the CPU at a tiny size

It needs only python3 with torch, torchvision, numpy, tqdm, tensorboard, matplotlib and pytest
(no network, no plotly/torchviz/nbclient). Parts run as subprocesses in their own process group:
one that runs past its limit is killed and reported as `timeout`, and the rest still run.
Fashion-MNIST comes from --fmnist-dir (the four IDX files, e.g. carried with the working tree
in data/fashion-mnist/); the dry run writes a tiny stand-in in that format.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skipkd.io.files import atomic_write_text, open_append  # noqa: E402
from gpu_report import (DEPTH_RUNS, depth_result, fmnist_result, markdown,  # noqa: E402
                        parse_tests, read_json, sweep_result)

BENCH_PAIRS = [("resnet34", "resnet18", "parallel"), ("resnet32x4", "resnet8x4", "none")]
# the GPU campaign's CIFAR-100 pairs (experiments/grids/gpu/): their distillation throughput at
# the crd recipe's batch of 64 and their own widths, which `sweep.py create --dry-run` reads
# from docs/gpu/ to estimate a tune's GPU-hours
CAMPAIGN_PAIRS = [("resnet56", "resnet20"), ("resnet110", "resnet32"),
                  ("resnet32x4", "resnet8x4")]


def _budget(text):
    """Seconds for the whole check: a finite number in [10, 86400]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 10 <= value <= 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be in [10, 86400] seconds, got {text}")
    return value


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for summary.json, summary.md and logs.txt (created)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every part on the CPU at a tiny size (what CI runs)")
    p.add_argument("--budget", type=_budget, default=None,
                   help="seconds for the whole check (default 560 on a GPU, 600 dry)")
    p.add_argument("--fmnist-dir", default=None,
                   help="folder with the Fashion-MNIST IDX files (default: data/fashion-mnist in "
                        "the repository, else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--parts", default=None,
                   help="comma-separated subset of: tests, bench, bench_compile, bench_imagenet, "
                        "bench_campaign, fmnist, sweep_small, depth_resnet18, depth_resnet34, "
                        "depth_resnet34_fp32")
    return p


# ------------------------------------------------------------------ parts
def _python():
    return sys.executable


def plan(args, out, work):
    """[(name, limit_s, argv, env, artefact)] for this run: the GPU sizes, or the dry run's."""
    dry = args.dry_run
    dev = "cpu" if dry else "cuda"
    py = _python()
    if dry:
        size = ["--width", "4", "--batch-size", "16", "--eval-batch-size", "32", "--steps", "1",
                "--repeats", "1", "--warmup", "1", "--workers", "0"]
    else:  # full width; the reference's DataLoader gets 8 of the 16 cores
        size = ["--width", "64", "--batch-size", "512", "--eval-batch-size", "1024", "--steps",
                "20", "--repeats", "3", "--warmup", "5", "--workers", "8"]
    from skipkd.models import MODELS
    parts = []
    tests_env = {"CUDA_TESTS_DEVICE": dev}
    test_argv = [py, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
                 os.path.join(REPO, "tests", "test_cuda.py")]
    if dry:  # inductor on 2 CPU cores takes minutes: the compile tests run on the GPU only
        test_argv += ["-m", "not compile"]
    parts.append(("tests", 140, test_argv, tests_env, None))
    for i, (teacher, student, eca) in enumerate(BENCH_PAIRS):
        if teacher not in MODELS or student not in MODELS:
            parts.append((f"bench_{student}", 0, None, None,
                          f"skipped: {teacher} / {student} are not registered models yet"))
            continue
        tag = "" if i == 0 else f"_{student}"
        common = [py, os.path.join(REPO, "benchmark.py"), "--device", dev, "--teacher", teacher,
                  "--student", student, "--placement", eca, "--kd", "skip", "--channels-last", *size]
        parts.append((f"bench{tag}", 100 if i == 0 else 45,
                      common + ["--precisions", "fp32,bf16", "--no-compile",
                                "--benches", "teacher,distill,eval" if i == 0 else "distill",
                                "--json", os.path.join(work, f"bench{tag}.json")], {}, None))
        # the dry run compiles one precision: inductor on 2 CPU cores takes ~15 s per compile
        parts.append((f"bench_compile{tag}", 110 if i == 0 else 60,
                      common + ["--precisions", "fp32" if dry else "bf16,fp32", "--compile",
                                "--benches", "distill",
                                "--json", os.path.join(work, f"bench_compile{tag}.json")], {}, None))
        if i == 0:  # the same step replayed as CUDA graphs (torch.compile mode reduce-overhead)
            parts.append(("bench_cudagraphs", 0, None, None,
                          "skipped: CUDA only (the dry run's bench_compile covers the path)")
                         if dry else
                         ("bench_cudagraphs", 90, common + [
                             "--precisions", "bf16", "--compile", "--compile-mode",
                             "reduce-overhead", "--benches", "distill", "--json",
                             os.path.join(work, "bench_cudagraphs.json")], {}, None))
    # the ImageNet pair at 224 pixels (the dry run: 32): the distillation step in bf16 against
    # the reference path, and the streamed data pipeline alone per loader process count
    imagenet = [py, os.path.join(REPO, "benchmark.py"), "--device", dev,
                "--teacher", "resnet34_imagenet", "--student", "resnet18_imagenet",
                "--placement", "none", "--kd", "skip", "--channels-last",
                "--benches", "distill,data", "--json", os.path.join(work, "bench_imagenet.json")]
    imagenet += (["--width", "4", "--image-size", "32", "--batch-size", "8", "--eval-batch-size",
                  "8", "--steps", "1", "--repeats", "1", "--warmup", "1", "--workers", "0",
                  "--precisions", "fp32", "--data-workers", "0,1", "--data-files", "20"] if dry else
                 ["--width", "64", "--image-size", "224", "--batch-size", "256",
                  "--eval-batch-size", "256", "--steps", "10", "--repeats", "3", "--warmup", "3",
                  "--workers", "8", "--precisions", "bf16", "--data-workers", "0,4,8,16",
                  "--data-files", "1024"])
    parts.append(("bench_imagenet", 90, imagenet, {}, None))
    for teacher, student in CAMPAIGN_PAIRS:
        argv = [py, os.path.join(REPO, "benchmark.py"), "--device", dev, "--teacher", teacher,
                "--student", student, "--placement", "none", "--kd", "skip", "--channels-last",
                "--no-compile", "--reference", "false", "--benches", "distill",
                "--json", os.path.join(work, f"bench_campaign_{student}.json")]
        argv += (["--width", "4", "--batch-size", "8", "--eval-batch-size", "8", "--steps", "1",
                  "--repeats", "1", "--warmup", "1", "--workers", "0", "--precisions", "fp32"]
                 if dry else
                 ["--batch-size", "64", "--eval-batch-size", "256", "--steps", "30",
                  "--repeats", "3", "--warmup", "5", "--workers", "8", "--precisions", "bf16"])
        parts.append((f"bench_campaign_{student}", 40, argv, {}, None))
    fm_dir = args.fmnist_dir
    if dry:
        fm_dir = os.path.join(work, "fashion-mnist")
        write_tiny_fashion_mnist(fm_dir)
    elif fm_dir is None:
        local = os.path.join(REPO, "data", "fashion-mnist")
        fm_dir = local if os.path.isdir(local) else "/usr/share/datasets/fashion-mnist"
    fm = [py, os.path.join(REPO, "model_training_mid.py"), "--dataset", "fashion-mnist",
          "--data-dir", fm_dir, "--teacher", "resnet34", "--student", "resnet18", "--kd", "skip",
          "--placement", "parallel", "--device", dev, "--val-split", "0.1", "--no-progress",
          "--output-dir", os.path.join(work, "fmnist"), "--run-name", "gpu_check"]
    fm += (["--width", "4", "--epochs", "1", "--batch-size", "32"] if dry else
           ["--width", "64", "--epochs", "4", "--batch-size", "256", "--eval-batch-size", "1024"])
    parts.append(("fmnist", 80, fm, {}, None))
    # aggregate trials/hour of the studies' small pair at several trials per GPU (the GPU runs
    # them as sweep.py work --gpus 0 --per-gpu P; the dry run on a fake device list)
    parts.append(("sweep_small", 200 if not dry else 120,
                  [py, os.path.join(REPO, "tools", "gpu_sweep.py"), "--data-dir", fm_dir,
                   "--work", os.path.join(work, "sweep"), "--json",
                   os.path.join(work, "sweep_small.json")] + (["--dry-run"] if dry else []),
                  {}, None))
    # is the deeper net alone weaker than resnet18 alone at full width (docs/RESULTS.md, "A
    # teacher that teaches")? The same recipe as the fmnist part, no distillation; resnet34 also
    # in fp32, as the weak teacher of h200_check_1 ran in bf16 (--precision auto)
    for tag, arch, precision in DEPTH_RUNS:
        argv = [py, os.path.join(REPO, "model_training.py"), "--dataset", "fashion-mnist",
                "--data-dir", fm_dir, "--model", arch, "--placement", "parallel", "--device", dev,
                "--val-split", "0.1", "--no-progress", "--no-tensorboard", "--precision",
                precision, "--output-dir", os.path.join(work, "depth"), "--run-name", tag]
        argv += (["--width", "4", "--epochs", "1", "--batch-size", "32"] if dry else
                 ["--width", "64", "--epochs", "4", "--batch-size", "256",
                  "--eval-batch-size", "1024"])
        parts.append((tag, 50, argv, {}, None))
    # the slowest part last, so that it cannot starve the others
    order = {"tests": 0, "bench": 1, "fmnist": 2, "sweep_small": 3}
    parts.sort(key=lambda p: order.get(p[0], 3))
    if args.parts:
        keep = {s.strip() for s in args.parts.split(",")}
        parts = [p for p in parts if p[0] in keep or p[0].split("_resnet")[0] in keep]
    return parts


def write_tiny_fashion_mnist(folder, n_train=240, n_test=80):
    """Four IDX files in Fashion-MNIST's layout from the synthetic generator (grayscale 28x28)."""
    from skipkd.data import make_synthetic, write_idx
    os.makedirs(folder, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        d = make_synthetic(n, seed=seed, image_size=28)
        gray = d.images.float().mean(1).round().to(dtype=d.images.dtype).numpy()
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), gray)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), d.labels.numpy())


OPTIONAL = ("plotly", "torchviz", "nbclient", "nbformat")  # not on the GPU machine's python3


def hide_optional_packages(work):
    """The dry run hides the packages that the GPU machine lacks (an import of one of them
    raises ImportError in every part), so a top-level import of one fails here first."""
    root = os.path.join(work, "no_optional")
    for name in OPTIONAL:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        atomic_write_text(os.path.join(root, name, "__init__.py"),
                          f"raise ImportError('{name} is hidden by the gpu_check dry run: the "
                          f"GPU machine does not have it')\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)


def run_part(name, limit, argv, env_extra, log):
    """Runs argv in its own process group for at most `limit` seconds; -> (status, rc, wall)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", TQDM_DISABLE="1",
               **(env_extra or {}))
    t0 = time.perf_counter()
    log.write(f"\n===== {name}: {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=max(limit, 1))
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc, status = None, "timeout"
    wall = time.perf_counter() - t0
    log.write(f"===== {name}: {status} (rc {rc}) after {wall:.1f}s\n")
    log.flush()
    return status, rc, round(wall, 1)


def environment(dry):
    import torch
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
           "dry_run": dry, "host": platform.node(), "processor": platform.processor()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   bf16_supported=torch.cuda.is_bf16_supported())
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return env


# ------------------------------------------------------------------ main
def main(args):
    if os.path.exists(args.out) and os.listdir(args.out):
        raise SystemExit(f"gpu_check: error: {args.out} exists and is not empty; give a new folder")
    os.makedirs(args.out, exist_ok=True)
    budget = args.budget or (600.0 if args.dry_run else 560.0)
    start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="gpu_check_")
    if args.dry_run:
        hide_optional_packages(work)
    summary = {"environment": environment(args.dry_run), "budget_s": budget, "parts": {},
               "benchmarks": {}}
    print(json.dumps(summary["environment"]), flush=True)
    with open_append(os.path.join(args.out, "logs.txt")) as log:
        for name, limit, argv, env_extra, note in plan(args, args.out, work):
            if argv is None:
                summary["parts"][name] = {"status": note, "limit_s": 0, "wall_s": 0}
                continue
            left = budget - (time.perf_counter() - start)
            if left < 5:
                summary["parts"][name] = {"status": "not run: budget spent", "limit_s": limit,
                                          "wall_s": 0}
                continue
            lim = min(limit, left)
            print(f"--- {name} (limit {lim:.0f} s)", flush=True)
            status, rc, wall = run_part(name, lim, argv, env_extra, log)
            summary["parts"][name] = {"status": status, "rc": rc, "wall_s": wall, "limit_s": lim,
                                      "command": " ".join(os.path.relpath(a, REPO)
                                                          if a.startswith(REPO) else a
                                                          for a in argv)}
            print(f"    {status} in {wall:.0f} s", flush=True)
            if name.startswith("bench"):
                bench = read_json(os.path.join(work, f"{name}.json"))
                if bench:
                    summary["benchmarks"][name] = bench
    with open(os.path.join(args.out, "logs.txt")) as f:
        summary["tests"] = parse_tests(f.read())
    summary["fmnist"] = fmnist_result(work)
    summary["depth"] = depth_result(work)
    summary["sweep_small"] = sweep_result(work)
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    shutil.rmtree(work, ignore_errors=True)
    atomic_write_text(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=2))
    md = markdown(summary)
    atomic_write_text(os.path.join(args.out, "summary.md"), md)
    print(md)
    bad = [n for n, p in summary["parts"].items() if p["status"] not in ("ok",)
           and not p["status"].startswith("skipped")]
    failed_tests = [k for k, v in summary["tests"].items() if v in ("FAILED", "ERROR")]
    if bad or failed_tests:
        print(f"gpu_check: not clean: parts {bad or 'ok'}, failed tests {failed_tests or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
