"""Heartbeats and retries: a running trial's heartbeat, other workers' stale trials failed and
queued again, a trial marked dead taken back over, how a trial ends recorded (whoever holds it
now), and the storage's passing trouble (a database restarting, a shared disk away) waited out.
"""
import json
import time
from datetime import datetime, timezone

from utils.sweep.run.progress import key_states, trials_of

__all__ = ["HB_ATTR", "END_ATTR", "IDENTITY", "Heartbeats", "claim_trial", "transient",
           "root_message", "now_text"]

HB_ATTR = "sweep:heartbeat"
END_ATTR = "sweep:end"   # why a trial ended FAIL: stale / interrupted / error / duplicate / memory
IDENTITY = ("key", "script", "argv", "role", "axes", "config", "seed", "teacher_key")


_CONNECTION_ERRORS = {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"}


def transient(exc) -> bool:
    """An error of the storage's connection (a database restarting, a network blip, a shared
    disk away for a moment) rather than of this code: the worker waits and tries again."""
    seen = 0
    while exc is not None and seen < 10:  # Optuna wraps the driver's error in its own
        if isinstance(exc, OSError) or (type(exc).__module__.startswith("sqlalchemy") and
                                        type(exc).__name__ in _CONNECTION_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def root_message(exc) -> str:
    """The first line of the innermost cause (the driver's words, not Optuna's wrapper)."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def now_text():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def claim_trial(storage, frozen) -> bool:
    """Claim a WAITING trial (WAITING -> RUNNING is atomic in the storage): True when it is
    ours."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    try:
        return bool(storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING))
    except UpdateFinishedTrialError:
        return False


class Heartbeats:
    """A worker's side of the trials' lives: its heartbeat in the trial it runs, other workers'
    stale trials failed and queued again, the retry of its own trial taken over when another
    worker marked it dead, how a trial ended (whoever holds it now), and the storage's passing
    trouble waited out. `stop()` says whether (with which signal) the worker is stopping."""

    def __init__(self, sweep, status, host, pid, poll, stop):
        self.sweep, self.spec, self.storage = sweep, sweep.spec, sweep.store.storage
        self.status, self.host, self.pid, self.poll, self.stop = status, host, pid, poll, stop
        self.heartbeat, self.grace = self.spec["heartbeat"], self.spec["grace"]
        self.beats = 0
        self.seen = {}             # trial id -> (heartbeat value, monotonic time first seen)
        self.last_scan = 0.0
        self.trouble_since = None  # when the storage became unreachable

    def storage_answered(self):
        self.trouble_since = None

    def trouble_while_running(self, exc):
        """Say once that the storage is unreachable while a run goes on (it is not waited for)."""
        if self.trouble_since is None:
            self.trouble_since = time.monotonic()
            self.status.event(f"warning: the storage is unreachable ({root_message(exc)}); "
                              f"the run goes on")

    def forget(self, trial_id):
        """Stop watching a trial's heartbeat (this worker has just claimed it)."""
        self.seen.pop(trial_id, None)

    def beat(self, trial_id):
        """A heartbeat: a new value in the trial (others compare it, not the time in it)."""
        from optuna.exceptions import UpdateFinishedTrialError
        self.beats += 1
        try:
            self.storage.set_trial_system_attr(trial_id, HB_ATTR, {
                "n": self.beats, "at": now_text(), "host": self.host, "pid": self.pid})
        except UpdateFinishedTrialError:
            pass  # marked dead by another worker: the monitor finds out and takes it over

    def scan_stale(self, mine=None):
        """Mark running trials whose heartbeat has not moved for `grace` seconds (watched on
        this worker's clock) as failed, and queue each again; `mine`: the id of the trial this
        worker runs."""
        now = time.monotonic()
        if now - self.last_scan < self.heartbeat / 2:
            return
        self.last_scan = now
        from optuna.trial import TrialState
        running = set()
        for study in self.sweep.studies:
            for t in trials_of(study, (TrialState.RUNNING,)):
                running.add(t._trial_id)
                if t._trial_id == mine:
                    continue
                beat = json.dumps(t.system_attrs.get(HB_ATTR), sort_keys=True)
                seen = self.seen.get(t._trial_id)
                if seen is None or seen[0] != beat:
                    self.seen[t._trial_id] = (beat, now)
                elif now - seen[1] >= self.grace:
                    self.fail_stale(study, t, now - seen[1])
        self.seen = {k: v for k, v in self.seen.items() if k in running}

    def fail_stale(self, study, frozen, silent_for):
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState
        try:
            self.storage.set_trial_system_attr(frozen._trial_id, END_ATTR, "stale")
            self.storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return  # finished meanwhile, or another worker got there first
        self.seen.pop(frozen._trial_id, None)
        key = frozen.user_attrs.get("key")
        queued = self.requeue(study, frozen, "stale")
        self.status.event(f"trial {frozen.number} {key}: no heartbeat for {silent_for:.0f}s "
                          f"(its worker died?): "
                          + ("queued again" if queued else
                             f"not retried (killed {self.spec['max_retries'] + 1} times)"))

    def requeue(self, study, frozen, reason) -> bool:
        """Queue a failed trial again (same run key, parameters and command line)."""
        from optuna.trial import TrialState, create_trial
        attrs = {k: frozen.user_attrs.get(k) for k in IDENTITY}
        kills = frozen.user_attrs.get("kills", 0) + (reason == "stale")
        if reason == "stale" and kills > self.spec["max_retries"]:
            return False
        attrs.update(attempt=frozen.user_attrs.get("attempt", 1) + 1, retry_of=frozen.number,
                     kills=kills)
        study.add_trial(create_trial(state=TrialState.WAITING, params=frozen.params,
                                     distributions=frozen.distributions, user_attrs=attrs))
        return True

    def requeue_failed(self):
        """--retry-failed: queue again every run key whose trials all failed."""
        for study in self.sweep.studies:
            trials = trials_of(study)
            for key, state in key_states(trials).items():
                if state == "failed":
                    last = [t for t in trials if t.user_attrs.get("key") == key][-1]
                    self.requeue(study, last, "retry-failed")
                    self.status.event(f"trial {last.number} {key}: queued again (--retry-failed)")

    def take_over(self, job) -> bool:
        """Our trial was marked dead by another worker: claim the retry it queued and go on
        there. False when another worker has it (or it is finished)."""
        from optuna.trial import TrialState
        for t in trials_of(job.study):
            if t.user_attrs.get("retry_of") != job.number:
                continue
            if t.state != TrialState.WAITING or not claim_trial(self.storage, t):
                return False
            old = job.number
            import optuna
            job.trial = optuna.trial.Trial(job.study, t._trial_id)
            job.attrs = dict(t.user_attrs)
            self.beat(t._trial_id)
            for k, v in job.written.items():
                job.trial.set_user_attr(k, v)
            for step, v in job.reported.items():
                job.trial.report(v, step)
            self.status.event(f"trial {old} {job.key} was marked dead by another worker (no "
                              f"heartbeat reached the storage); continuing as trial {job.number}")
            return True
        return None  # the retry is not queued yet: look again at the next heartbeat

    def set_attr(self, job, key, value):
        """A user attribute of this attempt; kept for a takeover when the trial was finished
        meanwhile by another worker (then finish finds out and takes the retry over)."""
        from optuna.exceptions import UpdateFinishedTrialError
        job.written[key] = value
        try:
            job.trial.set_user_attr(key, value)
        except UpdateFinishedTrialError:
            pass

    def finish(self, job, state, value=None, reason=None, error=None):
        """Record how the trial ended. If another worker marked it dead meanwhile, take over its
        retry and record the result there."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState
        for _ in range(10):
            try:
                if error is not None:
                    self.set_attr(job, "error", error)
                if reason is not None:
                    self.storage.set_trial_system_attr(job.trial_id, END_ATTR, reason)
                if state == TrialState.PRUNED and job.reported:
                    value = job.reported[max(job.reported)]
                self.storage.set_trial_state_values(
                    job.trial_id, state, None if value is None else [float(value)])
                return True
            except UpdateFinishedTrialError:
                taken = self.take_over(job)
                if taken is None:  # the retry is being queued: look again in a moment
                    time.sleep(0.5)
                elif not taken:
                    break
        self.status.event(f"{job.name()}: another worker took it over; its result here is not "
                          f"recorded")
        return False

    def storage_trouble(self, exc):
        """Say once that the storage is unreachable, then wait (longer each time, up to 30 s)."""
        now = time.monotonic()
        if self.trouble_since is None:
            self.trouble_since = now
            self.status.event(f"warning: the storage is unreachable ({root_message(exc)}); "
                              f"trying again")
        end = now + min(30.0, max(self.poll, (now - self.trouble_since) / 2))
        while self.stop() is None and time.monotonic() < end:
            time.sleep(0.2)
