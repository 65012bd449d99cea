"""`sweep.py work`: a worker. Start as many as you like, on one machine or many; each claims the
next trial, runs the real training script as a child process and records the run's metrics.

A trial is one run key; its files are that run's files in the sweep folder (the child runs there
with `--output-dir .`). What makes a killed worker lose nothing:

- Heartbeats: while a trial runs, its worker writes a counter into the trial every `heartbeat`
  seconds. Every worker watches the other running trials; one whose counter has not moved for
  `grace` seconds *of the watching worker's own clock* (so clocks need not agree) is marked
  failed and queued again as a new trial with the same run key. The transition RUNNING -> FAIL
  is atomic in the storage, so exactly one worker queues the retry.
- The retry resumes the run from its state files (`--resume`) when they are there (the sweep
  folder on a shared disk), else starts it again; a run that had finished just says "nothing to
  resume", and its summary is read, so no trial is trained twice to completion.
- The child dies with its worker: Linux sends it SIGTERM when the worker dies
  (PR_SET_PDEATHSIG; a CPU trial forked from the worker's preloaded interpreter through that
  interpreter, which the kernel kills with the worker; otherwise through a tiny bootstrap that
  asks for it before it becomes the training script), and SIGTERM makes the script save its
  state at the next step and exit. It (and the preloaded interpreter) run in their own
  sessions, so Ctrl-C reaches the worker only, which forwards one SIGINT.
- A worker whose own trial was marked dead (a stalled network, a suspended process) takes the
  trial's retry over, or stops its child if another worker already has.
- Ctrl-C (or SIGTERM) stops a worker cleanly: the child saves its state, the trial is queued
  again for the next worker, and the worker exits 130 (143).

The parts, each a class that owns its state, built by Worker.__init__ with what it needs and
called through its public methods:
- Heartbeats (heartbeat.py): this worker's heartbeat in its trial, other workers' stale trials
  failed and queued again, takeovers, how a trial ends (finish), the storage's trouble;
- Claimer (claim.py): the next trial (queued retries, students whose teacher is here, a new
  search trial), claimed atomically; uses Heartbeats.beat;
- ChildRunner (child.py): runs a claimed trial as a child process and watches it,
  then hands its end to ResultRecorder;
- ResultRecorder (results.py): the run's metrics from its own summary, the trial's final state;
- Progress (progress.py): the study's trials counted for the progress line; Status the line.
Worker (this module) holds the loop, the signals and the counts of trials run and failed.
"""
import argparse
import os
import signal
import socket
import sys
import time

from skipkd.io.files import writable_folder
from utils.sweep.run.child import ChildRunner
from utils.sweep.run.claim import Claimer, search_sampler
from utils.sweep.run.heartbeat import Heartbeats, transient
from utils.sweep.run.progress import Progress, Status
from utils.sweep.run.results import ResultRecorder

__all__ = ["Worker", "check_run_dir"]


class Worker:
    """One worker of a sweep (`sweep.py work`); run() until no trial is left or it is stopped."""

    def __init__(self, sweep, run_dir, args, slot=None):
        self.sweep, self.spec = sweep, sweep.spec
        self.slot = slot          # a GPU slot (gpus.GpuSlot) under `sweep.py work --gpus`
        self.run_dir = os.path.abspath(run_dir)
        self.poll = args.poll
        self.limit, self.wait = args.n_trials, args.wait
        self.retry_failed = args.retry_failed
        self.stop = None          # the signal that asked this worker to stop
        self.signals = 0
        self.ran = self.failed = 0
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.status = Status()
        self.announce = True      # its first and last lines (a tune's later passes: quiet)
        stop = lambda: self.stop  # noqa: E731  (the parts ask; only the signal handler sets it)
        self.beats = Heartbeats(sweep, self.status, self.host, self.pid, self.poll, stop)
        self.claimer = Claimer(sweep, self.run_dir, self.beats)
        self.progress = Progress(sweep)
        self.recorder = ResultRecorder(self.run_dir, self.beats, self.status, self.progress)
        options = argparse.Namespace(data_dir=args.data_dir, device=args.device, poll=args.poll,
                                     threads=getattr(args, "threads", None), slot=slot,
                                     preload=getattr(args, "preload", True))
        self.runner = ChildRunner(sweep, self.run_dir, options, self.beats, self.recorder,
                                  self.progress, self.status, stop)
        if self.spec["search"] is not None:
            self._set_search_strategy()
        import optuna
        for study in self.sweep.studies:  # grids and teachers are queued, never sampled
            if study is not self.sweep.study or self.spec["search"] is None:
                study.sampler = optuna.samplers.RandomSampler()

    # ------------------------------------------------------------------ set-up
    def _set_search_strategy(self):
        import optuna
        s = self.spec["search"]
        sampler = search_sampler(s)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
                  if s["pruner"] == "median" else optuna.pruners.NopPruner())
        self.sweep.study.sampler, self.sweep.study.pruner = sampler, pruner

    def _on_signal(self, signum, frame):
        self.signals += 1
        name = signal.Signals(signum).name
        child = self.runner.child
        child = child if child is not None and child.poll() is None else None
        if self.stop is None:
            self.stop = signum
            if child is not None:
                child.send_signal(signum)  # the script saves its state at the next step
                self.status.event(f"{name}: stopping; {self.runner.current.name()} saves its "
                                  f"state and goes back to the queue (again to stop at once)")
            else:
                self.status.event(f"{name}: stopping")
        elif child is not None:
            # a second one: the script stops at once (its last epoch's state is kept)
            child.send_signal(signal.SIGINT if self.signals == 2 else signal.SIGKILL)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        if self.announce:
            self.status.event(f"worker {self.host}:{self.pid} on study '{self.sweep.name}' "
                              f"({self.sweep.store.label}); runs in {self.run_dir}"
                              + (f"; {self.slot.describe()}" if self.slot is not None else ""))
        try:
            if self.retry_failed:
                self.beats.requeue_failed()
            while self.stop is None:
                if self.limit is not None and self.ran >= self.limit:
                    self.status.event(f"ran {self.ran} trial(s) (--n-trials): stopping")
                    break
                try:
                    self.beats.scan_stale()
                    job = self.claimer.next_job()
                    if job is not None:
                        ran, failed = self.runner.run(job)
                        self.ran += ran
                        self.failed += failed
                        continue
                    view = self.progress.overview()
                except Exception as exc:
                    if not transient(exc):
                        raise
                    self.beats.storage_trouble(exc)
                    continue
                self.beats.storage_answered()
                if view["finished"]:
                    self.status.event(f"study '{self.sweep.name}' is finished: {view['done']} "
                                      f"done, {view['failed']} failed")
                    break
                if not self.wait:
                    if self.announce:
                        self.status.event("no trial to take now (--no-wait): stopping")
                    break
                elsewhere = self.claimer.elsewhere
                if view["running"] == 0 and elsewhere and \
                        view["waiting"] + view["new"] <= elsewhere:
                    self.failed += 1
                    self.status.event(
                        f"{elsewhere} trial(s) need a shared teacher's checkpoint that is not "
                        f"in {os.path.join(self.run_dir, 'saved_pth_model')} (it was trained on "
                        f"another machine): put the sweep folder on a disk all workers share, or "
                        f"run a worker where the teachers ran; stopping")
                    break
                self._idle(view)
        finally:
            self.status.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        if self.stop is not None:
            print(f"stopped ({signal.Signals(self.stop).name}) after {self.ran} trial(s)",
                  file=sys.stderr, flush=True)
            return 128 + self.stop
        return 1 if self.failed else 0

    def _idle(self, view):
        waiting = view["waiting"]
        why = (f"{view['running']} running elsewhere" if view["running"] else
               f"{waiting} waiting for a teacher" if waiting else "")
        self.status.update(self.progress.text(view) + (f" | idle: {why}" if why else ""))
        # many idle workers on one database: look every few seconds, not every --poll
        end = time.monotonic() + max(self.poll, min(5.0, self.beats.heartbeat / 2))
        while self.stop is None and time.monotonic() < end:
            time.sleep(min(0.2, self.poll))


def check_run_dir(run_dir):
    """The sweep folder must be a writable folder (made when missing)."""
    writable_folder(run_dir, "sweep folder")
