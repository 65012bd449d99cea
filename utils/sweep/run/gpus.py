"""Trials on the GPUs of one machine: `sweep.py work STUDY --gpus 0,1 --per-gpu N`.

The command starts one worker per slot (N per listed GPU), each an ordinary worker process
(heartbeats, retries, resume: worker.py) whose trials run as their own processes, with their
own CUDA context, on that slot's GPU (CUDA_VISIBLE_DEVICES). A slot is a lock file held while its
worker lives, `{sweep folder}/.gpu_slots/{host}/gpu{G}.slot{J}.lock`, so that several such
commands on one machine never put more than N trials on one GPU: a worker that finds every slot
of its GPU held stops at once.

Before each trial starts, its worker reads the GPU's free memory (nvidia-smi); below
--min-free-mib, the trial is not started: it goes back to the queue (a new attempt of the same
run key, not counted as a failure) for a later look by this or another worker, and this worker
waits a little before it claims again. Nothing is lost.

Testing aid: with SWEEP_FAKE_GPUS=FILE (a JSON object {"0": free MiB, "1": ...}, read at each
look) the GPUs are that list, their free memory is the file's, and the runs keep the --device of
the study (the placement logic runs on a CPU machine).
"""
import argparse
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from skipkd.errors import UserError
from skipkd.io.files import make_folder, open_lock
from utils.sweep.spec.scripts import REPO

__all__ = ["FAKE_ENV", "gpu_list", "free_memory", "GpuSlot", "launch_slots"]

FAKE_ENV = "SWEEP_FAKE_GPUS"
MAX_GPUS = 64
MAX_WORKERS = 256  # slot workers one `--gpus` command may start on one machine


def gpu_list(text) -> list:
    """--gpus: comma-separated distinct GPU indices, e.g. 0,1,3."""
    try:
        ids = [int(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices such as 0,1, got {text!r}") from None
    if not ids or len(set(ids)) != len(ids) or not all(0 <= i < MAX_GPUS for i in ids):
        raise argparse.ArgumentTypeError(f"expected distinct GPU indices in 0..{MAX_GPUS - 1}, "
                                         f"got {text!r}")
    return ids


def _fake() -> dict | None:
    path = os.environ.get(FAKE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return {int(k): int(v) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{FAKE_ENV}={path}: expected a JSON object of GPU index -> free MiB "
                        f"({exc})") from None


def free_memory() -> dict | None:
    """{GPU index: free MiB} of this machine's GPUs; None when they cannot be read."""
    fake = _fake()
    if fake is not None:
        return fake
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return {int(i): int(float(m)) for i, m in (ln.split(",") for ln in out.splitlines()
                                                   if ln.strip())}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class GpuSlot:
    """One of the `per_gpu` slots of a GPU, held (a lock file) while this worker lives."""

    def __init__(self, run_dir, gpu, per_gpu, min_free_mib):
        self.gpu, self.per_gpu, self.min_free_mib = gpu, per_gpu, min_free_mib
        self.run_dir = run_dir
        self.folder = os.path.join(run_dir, ".gpu_slots", _host_folder())
        self.index = self.fd = None
        self.fake = bool(os.environ.get(FAKE_ENV))
        self.unreadable_said = False

    def acquire(self) -> bool:
        """Hold a free slot of the GPU; False when all are held by other workers. A link at
        .gpu_slots, at its host folder or at a slot's lock is a one-line UserError."""
        make_folder(self.folder, self.run_dir, "GPU slot folder")
        for j in range(self.per_gpu):
            path = os.path.join(self.folder, f"gpu{self.gpu}.slot{j}.lock")
            fd = open_lock(path, "GPU slot lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.index, self.fd = j, fd
            return True
        return False

    def memory(self) -> tuple:
        """(enough, free MiB or None): whether a trial may start on this GPU now."""
        free = (free_memory() or {}).get(self.gpu)
        if free is None:  # unreadable: the run starts (a CUDA error would fail it as before)
            return True, None
        return free >= self.min_free_mib, free

    def describe(self) -> str:
        return f"GPU {self.gpu} slot {self.index}"


def launch_slots(args, study_argv, run_dir) -> int:
    """Start one worker per slot (`--per-gpu` on each of `--gpus`), wait for all of them, and
    return the worst exit code. Ctrl-C reaches every worker (one process group)."""
    total = len(args.gpus) * args.per_gpu
    if total > MAX_WORKERS:
        raise UserError(f"--gpus {','.join(map(str, args.gpus))} --per-gpu {args.per_gpu} would "
                        f"start {total} workers; at most {MAX_WORKERS} on one machine")
    found = free_memory()
    if found is None:
        raise UserError(f"--gpus {','.join(map(str, args.gpus))}: no GPU can be seen on this "
                        f"machine (nvidia-smi is missing or fails); run without --gpus to use "
                        f"--device")
    if not set(args.gpus) <= set(found):
        missing = sorted(set(args.gpus) - set(found))
        raise UserError(f"--gpus {','.join(map(str, args.gpus))}: no GPU {missing[0]} on this "
                        f"machine (it has {', '.join(map(str, sorted(found))) or 'none'})")
    # the slots' folder, checked once here (a planted link is refused before any worker starts)
    make_folder(os.path.join(run_dir, ".gpu_slots", _host_folder()), run_dir, "GPU slot folder")
    procs = []
    for gpu in args.gpus:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu))
        for _ in range(args.per_gpu):
            cmd = [sys.executable, os.path.join(REPO, "sweep.py"), "work", *study_argv,
                   "--gpu-slot", str(gpu), "--per-gpu", str(args.per_gpu),
                   "--min-free-mib", str(args.min_free_mib)]
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
    print(f"started {len(procs)} worker(s): {args.per_gpu} per GPU on GPU "
          f"{', '.join(map(str, args.gpus))}", flush=True)
    codes = []
    for p in procs:
        while True:
            try:
                codes.append(p.wait())
                break
            except KeyboardInterrupt:  # the workers got it too (same process group)
                time.sleep(0.1)
    return max(codes, key=lambda c: (c != 0, abs(c))) if codes else 0


def _host_folder() -> str:
    """This machine's name as one plain folder name (a host name with a separator, or . or ..,
    would lead elsewhere)."""
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in socket.gethostname())
    return name if name.strip(".") else "host"
