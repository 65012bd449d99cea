"""The worker's progress line: the study's trials counted by run key, the estimated time left,
and one status line rewritten in place on a terminal (plain lines otherwise).
"""
import os
import sys

__all__ = ["Status", "key_states", "trials_of", "stored_key", "Progress"]


def stored_key(trial, name="key"):
    """A run key a trial holds (its own, or its teacher's: name='teacher_key'), as read back
    from the storage: a string, else None (an edited record is checked in full when claimed:
    spec/check.py)."""
    value = trial.user_attrs.get(name)
    return value if isinstance(value, str) else None


def trials_of(study, states=None):
    """A study's trials (Optuna's own objects, not copies), of the given states."""
    return study.get_trials(deepcopy=False, states=states)


def key_states(trials) -> dict:
    """run key -> 'done' (a COMPLETE or PRUNED trial), else 'running', else 'waiting', else
    'failed' (every trial of the key failed)."""
    from optuna.trial import TrialState
    rank = {"failed": 0, "waiting": 1, "running": 2, "done": 3}
    out = {}
    for t in trials:
        s = ("done" if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else
             "running" if t.state == TrialState.RUNNING else
             "waiting" if t.state == TrialState.WAITING else "failed")
        k = stored_key(t)
        if k is None:  # queued by enqueue_trial, or being asked: not a run yet
            continue
        if k not in out or rank[s] > rank[out[k]]:
            out[k] = s
    return out


def _fmt_duration(seconds):
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Status:
    """One status line rewritten in place on a terminal; plain lines otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.shown = False

    def _clear(self):
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False

    def event(self, message):
        self._clear()
        print(message, flush=True)

    def update(self, text):
        if not self.tty:
            return
        try:
            cols = os.get_terminal_size(sys.stderr.fileno()).columns or 100
        except OSError:
            cols = 100
        sys.stderr.write("\r\x1b[K" + text[:max(20, cols - 1)])
        sys.stderr.flush()
        self.shown = True

    def progress(self, text):
        """A progress summary: the status line on a terminal, a plain line otherwise."""
        if self.tty:
            self.update(text)
        else:
            print(text, flush=True)

    def close(self):
        self._clear()


class Progress:
    """The study's trials counted for the progress line (read-only: it writes nothing)."""

    def __init__(self, sweep):
        self.sweep, self.spec = sweep, sweep.spec

    def overview(self) -> dict:
        """Counts by run key (its latest trial), and whether the study is finished."""
        from optuna.trial import TrialState
        counts = {"done": 0, "running": 0, "failed": 0, "waiting": 0}
        durations = []
        for study in self.sweep.studies:
            for s in key_states(trials_of(study)).values():
                counts[s] += 1
            for t in trials_of(study, (TrialState.COMPLETE,)):
                if t.datetime_start and t.datetime_complete:
                    durations.append((t.datetime_complete - t.datetime_start).total_seconds())
        total = sum(counts.values())
        new = 0
        if self.spec["search"] is not None:
            keys = {t.user_attrs.get("key") for t in trials_of(self.sweep.study)} - {None}
            new = max(0, self.spec["search"]["n_trials"] - len(keys))
            total += new
        left = counts["waiting"] + counts["running"] + new
        eta = None
        if durations and left:
            eta = sum(durations) / len(durations) * left / max(1, counts["running"])
        return dict(counts, total=total, eta=eta, new=new,
                    finished=counts["running"] == 0 and counts["waiting"] == 0 and new == 0)

    def text(self, v=None) -> str:
        """The progress line of an overview (a fresh one by default)."""
        v = self.overview() if v is None else v
        eta = "?" if v["eta"] is None else _fmt_duration(v["eta"])
        return (f"[{self.sweep.name}] {v['done']}/{v['total']} done, {v['running']} running, "
                f"{v['failed']} failed, {v['waiting']} waiting; ETA {eta}")
