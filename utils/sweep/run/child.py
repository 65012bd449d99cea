"""Running one trial: the training script as a child process, a fork of the worker's preloaded
interpreter (utils/preload) or started through BOOTSTRAP (either way it dies with its worker),
resumed or restarted from the run's files, and watched until it ends
(heartbeats, per-epoch validation accuracy, pruning, the status line).
"""
import os
import signal
import subprocess
import sys
import time

from skipkd.errors import UserError
from skipkd.io.files import make_folder, open_append
from skipkd.io.outputs import MAKER_ENV, RunOutputs
from utils.preload import ServedProcess, start_server, supported
from utils.sweep.run.heartbeat import now_text, transient
from utils.sweep.run.progress import stored_key, trials_of
from utils.sweep.run.results import val_curve
from utils.sweep.spec.scripts import REPO, SCRIPTS
from utils.sweep.spec.stored import check_stored_trial

__all__ = ["BOOTSTRAP", "ChildRunner", "sweep_maker", "foreign_run", "check_no_foreign_runs"]

# A trial's process dies with its worker (SIGTERM, Linux): started from the preloaded interpreter
# (utils/preload; the default for CPU trials), the trial dies with that interpreter, which dies
# with the worker; else it runs as `python -c BOOTSTRAP WORKER_PID PYTHON SCRIPT ARGS...`:
# SIGTERM when the worker dies, then exec the training script in this same process.
BOOTSTRAP = (
    "import os, signal, sys\n"
    "try:\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(143)  # the worker died before the request took effect\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


LAUNCHER_START_S = 300.0  # a preloaded interpreter not ready by then is given up
# this worker's preloaded interpreter, and whether it was given up (it failed: trials start fresh)
_LAUNCHER = {"server": None, "given_up": False}


def _launcher(env, cwd, status, beat, stop):
    """The preloaded interpreter (utils/preload) that starts trials with environment env, one per
    worker process (a tune's stages share it), started in folder cwd with the first trial
    (beat() is called while it imports, so that the claimed trial keeps its heartbeat; stop()
    gives it up); None where it cannot run (each trial then starts a fresh interpreter)."""
    if _LAUNCHER["given_up"]:
        return None  # it failed once: not again for every trial
    srv = _LAUNCHER["server"]
    if srv is not None and srv.serves(env):
        return srv
    if srv is not None:  # ended, or started for another environment
        srv.close()
    srv = start_server(env, die_with_parent=True, wait=False, cwd=cwd)
    deadline = time.monotonic() + LAUNCHER_START_S
    try:
        while srv is not None and srv.ready(timeout=0.5) is None:
            if time.monotonic() > deadline or stop() is not None:
                srv.close()
                break
            beat()  # the storage's lasting trouble propagates, as it does for the run
    except BaseException:
        srv.close()
        raise
    if srv is not None and not srv.ready():
        srv = None
    _LAUNCHER["server"], _LAUNCHER["given_up"] = srv, srv is None
    if srv is None:
        status.event("the preloaded interpreter did not start: each trial starts a fresh one")
    return srv


def _on_cpu(cmd) -> bool:
    """Whether the trial's command runs on the CPU (--device cpu). Only those start preloaded: a
    process forked from one that has touched CUDA (a device count is enough) cannot use it, so
    a trial that may use a GPU starts as a fresh interpreter."""
    devices = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--device"]
    devices += [a.split("=", 1)[1] for a in cmd if a.startswith("--device=")]
    return bool(devices) and set(devices) == {"cpu"}


def sweep_maker(study: str) -> str:
    """The maker recorded in the runs the sweep `study` starts (skipkd.io.outputs.MAKER_ENV)."""
    return f"sweep.py study {study}"


def foreign_run(key, run_dir, maker) -> str:
    return (f"run '{key}' in {run_dir} was not made by this sweep (its record "
            f"{'names ' + repr(maker) if maker else 'names no sweep'}); move its files away "
            f"or give the sweep another --dir")


def check_no_foreign_runs(run_dir, keys):
    """`create`: none of the sweep's run keys may already have files in its folder (a run there
    is the user's or another sweep's: the sweep never takes it for its own)."""
    for key in keys:
        outputs = RunOutputs(run_dir, key)
        if outputs.existing() or os.path.lexists(outputs.manifest):
            raise UserError(foreign_run(key, os.path.abspath(run_dir), None).replace(
                " (its record names no sweep)", ""))


def _tail(path, size=4096) -> list:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]


class ChildRunner:
    """Runs a claimed trial: the training script as a child process (preloaded or through
    BOOTSTRAP), its heartbeats and per-epoch values while it runs, then its end handed to the
    recorder.
    `child` and `current` are the running process and Job (the worker's signal handler reads
    them); `stop()` says whether (with which signal) the worker is stopping."""

    def __init__(self, sweep, run_dir, options, beats, recorder, progress, status, stop):
        self.sweep, self.spec, self.storage = sweep, sweep.spec, sweep.store.storage
        self.run_dir = run_dir
        self.data_dir, self.device = options.data_dir, options.device
        self.threads, self.poll = options.threads, options.poll
        self.slot = getattr(options, "slot", None)  # a GPU slot: free memory checked per trial
        self.beats, self.recorder, self.progress, self.status = beats, recorder, progress, status
        self.stop = stop
        self.host, self.pid = beats.host, beats.pid
        self.child = None
        self.current = None       # the running Job
        self.preload = options.preload  # trials start from the preloaded interpreter
        self.last_beat = 0.0  # while that interpreter starts: the claimed trial's last beat
        self.maker = sweep_maker(sweep.name)  # recorded in each run it starts (RunOutputs)

    def run(self, job) -> tuple:
        """Run `job` to its end -> (ran, failed): ran is False when the trial was refused
        without running (a duplicate, a failed teacher)."""
        self.current = job
        try:
            return self._run(job)
        finally:
            self.current = None
            self.child = None

    def _command(self, job) -> list:
        argv = list(job.attrs["argv"])

        def set_flag(flag, value):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv.extend([flag, value])

        # the child runs in the sweep folder: paths are the worker's, relative to its cwd
        i = argv.index("--data-dir") if "--data-dir" in argv else -1
        given = argv[i + 1] if i >= 0 else "data"  # the scripts' default: ./data
        set_flag("--data-dir", os.path.abspath(self.data_dir or given))
        if "--teacher-checkpoint" in argv and not job.attrs.get("teacher_key"):
            i = argv.index("--teacher-checkpoint")
            argv[i + 1] = os.path.abspath(argv[i + 1])
        if self.device:
            set_flag("--device", self.device)
        script = os.path.join(REPO, job.attrs["script"])
        return [sys.executable, script] + argv + ["--run-name", job.key, "--output-dir", "."]

    def _start_mode(self, job):
        """('start' | 'resume' | 'restart', extra flags), or (None, reason) when the run key
        has outputs that this sweep did not make (their record names another maker, or none)."""
        key, script = job.key, job.attrs["script"]
        roles = ("teacher", "student") if SCRIPTS[script] == "student" else ("baseline",)
        outputs = RunOutputs(self.run_dir, key)
        if outputs.existing() or os.path.lexists(outputs.manifest):
            try:
                maker = outputs.recorded_maker()
            except UserError as exc:
                return None, str(exc)
            # a record from before makers were: this sweep's own only where an earlier trial of
            # this study started a run under the key (its "worker" attribute says so)
            legacy = maker is None and any(
                stored_key(t) == key and t.number != job.number and "worker" in t.user_attrs
                for t in trials_of(job.study))
            if maker != self.maker and not legacy:
                return None, foreign_run(key, self.run_dir, maker)
        if any(os.path.isfile(outputs.checkpoint(r, state=True)) for r in roles):
            return "resume", ["--resume"]
        if os.path.exists(outputs.manifest):
            # this sweep started the run but it saved no state yet: --overwrite removes only
            # the files that the run recorded as its own
            return "restart", ["--overwrite"]
        return "start", []

    def _refused(self, job) -> bool:
        """Fail the trial without running it when its run key is done or running as another
        trial, or its shared teacher failed; True when it was."""
        from optuna.trial import TrialState
        for t in trials_of(job.study, (TrialState.COMPLETE, TrialState.RUNNING)):
            if t.user_attrs.get("key") == job.key and t.number != job.number:
                self.beats.finish(job, TrialState.FAIL, reason="duplicate",
                             error=f"duplicate of trial {t.number}")
                return True
        if job.teacher_failed:
            self.beats.finish(job, TrialState.FAIL, reason="error",
                         error=f"its teacher run {job.attrs['teacher_key']} failed")
            self.status.event(f"{job.name()}: failed: its teacher run failed")
            return True
        return False

    def _memory_ok(self, job) -> bool:
        """Whether the slot's GPU has the free memory a trial needs; if not, the trial goes back
        to the queue (a new attempt, not a failure) and this worker waits before it claims again."""
        from optuna.trial import TrialState
        enough, free = self.slot.memory()
        if enough:
            return True
        why = (f"{self.slot.describe()} has {free} MiB free, below --min-free-mib "
               f"{self.slot.min_free_mib}")
        if self.beats.finish(job, TrialState.FAIL, reason="memory", error=why):
            self.beats.requeue(job.study, self.storage.get_trial(job.trial_id), "memory")
        self.status.event(f"{job.name()}: not started: {why}; queued again")
        self._wait(min(30.0, max(2.0, 10 * self.poll)))
        return False

    def _wait(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.stop() is None:
            time.sleep(min(0.2, self.poll))

    def _start_child(self, job, log, mode, flags):
        """Start the training script on the trial, its output going to log."""
        cmd = self._command(job) + flags
        self.beats.set_attr(job, "worker", {
            "host": self.host, "pid": self.pid, "mode": mode,
            "log": os.path.relpath(log, self.run_dir), "started": now_text(),
            **({"gpu": self.slot.gpu, "slot": self.slot.index} if self.slot else {})})
        shown = os.path.relpath(log) if not os.path.relpath(log).startswith("..") else log
        self.status.event(f"{job.name()}: {'resuming' if mode == 'resume' else 'starting'} "
                          f"(attempt {job.attrs.get('attempt', 1)}) -> {shown}")
        with open_append(log, "trial log") as f:
            f.write(f"# {now_text()} {self.host}:{self.pid} trial {job.number}: "
                    f"{' '.join(cmd[1:])}\n")
            f.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1", **{MAKER_ENV: self.maker})
            if self.threads:
                env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            self.child = self._launch(job, cmd, f, env)
        self.beats.set_attr(job, "child_pid", self.child.pid)
        self.beats.set_attr(job, "child_preloaded", isinstance(self.child, ServedProcess))
        if self.stop() is not None:  # a signal came while it started
            self.child.send_signal(self.stop())

    def _launch(self, job, cmd, log, env):
        """The trial's process, its output going to the open file log: a fork of the preloaded
        interpreter, or a fresh one (--no-preload, or where none can start)."""
        launcher = None
        if self.preload and _on_cpu(cmd) and supported():
            try:
                launcher = _launcher(env, self.run_dir, self.status, lambda: self._beat(job),
                                     self.stop)
            except OSError as exc:  # the trial runs all the same: in a fresh interpreter
                _LAUNCHER["given_up"] = True
                self.status.event(f"the preloaded interpreter failed ({exc}): each trial "
                                  f"starts a fresh one")
        if launcher is not None:
            try:
                return ServedProcess(launcher, cmd, env, self.run_dir, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     die_with_server=True)
            except OSError as exc:  # it was killed: this trial, and the next ones, start fresh
                launcher.close()
                _LAUNCHER["given_up"] = True
                self.status.event(f"the preloaded interpreter is gone ({exc}): the trial starts "
                                  f"a fresh one")
        return subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(os.getpid())] + cmd, cwd=self.run_dir,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)

    def _beat(self, job):
        """A heartbeat for the claimed trial, at most one per heartbeat period."""
        now = time.monotonic()
        if now - self.last_beat >= self.beats.heartbeat:
            self.last_beat = now
            try:
                self.beats.beat(job.trial_id)
            except Exception as exc:
                if not transient(exc):
                    raise
                self.beats.trouble_while_running(exc)

    def _fail(self, job, message) -> tuple:
        """The trial failed before its run started, for `message`: -> (ran, failed)."""
        from optuna.trial import TrialState
        self.beats.finish(job, TrialState.FAIL, reason="error", error=message)
        self.status.event(f"trial {job.number}: failed: {message}")
        return True, True

    def _run(self, job):
        try:  # its record read back from the storage: checked like a user's flags
            check_stored_trial(job.attrs, f"trial {job.number}")
        except UserError as exc:
            return self._fail(job, str(exc))
        if self._refused(job):
            return False, bool(job.teacher_failed)
        if self.slot is not None and not self._memory_ok(job):
            return False, False
        try:
            logs = make_folder(os.path.join(self.run_dir, "logs"), self.run_dir, "trial log folder")
        except UserError as exc:
            return self._fail(job, str(exc))
        log = os.path.join(logs, f"{job.key}.trial{job.number}.log")
        start = time.monotonic()
        while True:
            mode, flags = self._start_mode(job)
            if mode is None:
                return self._fail(job, flags)
            try:
                self._start_child(job, log, mode, flags)
            except UserError as exc:  # a planted link or foreign file at the trial's log
                return self._fail(job, str(exc))
            rc = self._monitor(job, log)
            lines = _tail(log)
            if rc == 2 and lines and "is in use by process" in lines[-1] and not job.lost \
                    and self.stop() is None:
                # the previous attempt's child still holds the run (it saves its state on
                # the way out): wait for it
                self.status.event(f"{job.name()}: the run is still held by another process; "
                                  f"waiting")
                self._wait_beating(job, max(2.0, self.poll))
                if self.stop() is None:
                    continue
            break
        elapsed = time.monotonic() - start
        # a preloaded trial whose interpreter was killed under it got SIGTERM (it saved its
        # state): interrupted, queued again, as if this worker had been stopped
        stop = self.stop() or (signal.SIGTERM if getattr(self.child, "lost", False) else None)
        while True:  # the run is over: its result is recorded once the storage answers
            try:
                return True, self.recorder.ended(job, rc, lines, elapsed, stop)
            except Exception as exc:
                if not transient(exc) or self.stop() is not None:
                    raise
                self.beats.storage_trouble(exc)

    def _wait_beating(self, job, seconds):
        end = time.monotonic() + seconds
        last = time.monotonic()
        while time.monotonic() < end and self.stop() is None:
            time.sleep(min(0.2, self.poll))
            if time.monotonic() - last >= self.beats.heartbeat:
                self.beats.beat(job.trial_id)
                last = time.monotonic()

    def _monitor(self, job, log) -> int:
        """Wait for the child: heartbeats, per-epoch validation accuracy (intermediate values;
        pruning in searches), the status line, other workers' stale trials."""
        from optuna.trial import TrialState
        last_beat = last_status = time.monotonic()
        prune = self.spec["search"] is not None and self.spec["search"]["pruner"] != "none" \
            and job.study is self.sweep.study
        while True:
            rc = self.child.poll()
            self._report_epochs(job)
            if prune and not job.pruned and rc is None and self.stop() is None and job.reported \
                    and self._should_prune(job):
                job.pruned = True
                self.child.send_signal(signal.SIGINT)  # saves its state and stops
                self.status.event(f"{job.name()}: pruned at epoch {max(job.reported)} "
                                  f"(validation accuracy {job.reported[max(job.reported)]:.2f}%)")
            if rc is not None:
                return rc
            now = time.monotonic()
            try:  # the storage's trouble must not stop the run: it goes on, and so do we
                if now - last_beat >= self.beats.heartbeat:
                    last_beat = now
                    self.beats.beat(job.trial_id)
                    state = self.storage.get_trial(job.trial_id).state
                    self.beats.storage_answered()
                    if state != TrialState.RUNNING:
                        taken = self.beats.take_over(job)
                        if taken is False and not job.lost:
                            job.lost = True
                            self.child.send_signal(signal.SIGTERM)
                            self.status.event(f"{job.name()}: marked dead and taken by another "
                                              f"worker: stopping this copy (its state is saved)")
                self.beats.scan_stale(job.trial_id)
                if self.status.tty and now - last_status >= 1:
                    last_status = now
                    lines = _tail(log, 512)
                    self.status.update(self.progress.text()
                                       + f" | {job.number} {job.key}: "
                                       + (lines[-1] if lines else ""))
            except Exception as exc:
                if not transient(exc):
                    raise
                self.beats.trouble_while_running(exc)
            time.sleep(min(0.5, self.poll))

    def _report_epochs(self, job):
        """Each new epoch's validation accuracy as the trial's intermediate value."""
        from optuna.exceptions import UpdateFinishedTrialError
        curve = val_curve(self.run_dir, job.key, job.attrs["script"])
        for epoch, acc in enumerate(curve, start=1):
            if epoch in job.reported:
                continue
            try:
                job.trial.report(acc, epoch)
            except UpdateFinishedTrialError:
                pass  # marked dead by another worker: a takeover reports it again
            except Exception as exc:
                if not transient(exc):
                    raise
                return  # the storage is away: the next look reports it
            job.reported[epoch] = acc

    def _should_prune(self, job) -> bool:
        try:
            return job.trial.should_prune()
        except Exception as exc:
            if not transient(exc):
                raise
            return False
