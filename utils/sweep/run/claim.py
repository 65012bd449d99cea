"""Choosing and claiming the next trial: queued trials (retries first, students only once
their shared teacher's checkpoint is here), else a new search trial asked from the sampler.
"""
import os

from utils.sweep.run.heartbeat import claim_trial
from utils.sweep.run.progress import stored_key, trials_of
from utils.sweep.run.storage import trial_attrs
from utils.sweep.spec.expand import search_distributions, search_trial

__all__ = ["Job", "Claimer", "search_sampler"]


class Job:
    """A claimed trial (RUNNING, ours) and what this attempt wrote to it."""

    def __init__(self, study, frozen, trial=None, teacher_failed=False):
        import optuna
        self.study, self.frozen = study, frozen
        self.trial = trial or optuna.trial.Trial(study, frozen._trial_id)
        self.attrs = dict(frozen.user_attrs)
        self.teacher_failed = teacher_failed
        self.written = {}    # user attributes of this attempt (written again on a takeover)
        self.reported = {}   # epoch -> validation accuracy
        self.pruned = self.lost = False

    @property
    def trial_id(self):
        return self.trial._trial_id

    @property
    def number(self):
        return self.trial.number

    @property
    def key(self):
        return self.attrs["key"]

    def name(self):
        return f"trial {self.number} {self.key}"


class Claimer:
    """Which trial a worker runs next, and claiming it; `elsewhere` counts, after each
    next_job(), the students whose shared teacher's checkpoint is on another machine's disk."""

    def __init__(self, sweep, run_dir, beats):
        self.sweep, self.spec, self.storage = sweep, sweep.spec, sweep.store.storage
        self.run_dir, self.beats = run_dir, beats
        self.elsewhere = 0

    def _teacher_states(self) -> dict:
        """teacher run key -> 'complete' / 'pending' / 'failed'."""
        out = {}
        if self.sweep.teachers is None:
            return out
        rank = {"failed": 0, "pending": 1, "complete": 2}
        from optuna.trial import TrialState
        for t in trials_of(self.sweep.teachers):
            s = ("complete" if t.state == TrialState.COMPLETE else
                 "pending" if t.state in (TrialState.WAITING, TrialState.RUNNING) else "failed")
            k = stored_key(t)
            if rank[s] > rank.get(out.get(k), -1):
                out[k] = s
        return out

    def _teacher_here(self, tkey) -> bool:
        return os.path.isfile(os.path.join(self.run_dir, "saved_pth_model", f"{tkey}_baseline.pth"))

    def next_job(self):
        """The next trial, claimed (a Job), or None when none can be run here now."""
        from optuna.trial import TrialState
        teachers = self._teacher_states()
        self.elsewhere = 0  # students whose teacher checkpoint is on another machine's disk
        for study in self.sweep.studies:
            waiting = trials_of(study, (TrialState.WAITING,))
            waiting.sort(key=lambda t: (t.user_attrs.get("attempt", 1) == 1, t.number))
            for t in waiting:
                if t.user_attrs.get("key") is None:  # a queued start setting: ask() gives it out
                    continue
                tkey = stored_key(t, "teacher_key") if study is self.sweep.study else None
                state = teachers.get(tkey, "failed") if tkey else None
                if state == "complete" and not self._teacher_here(tkey):
                    self.elsewhere += 1
                    continue
                if state == "pending":
                    continue
                if claim_trial(self.storage, t):
                    return self._start_job(study, t, teacher_failed=state == "failed")
        left = self._search_budget_left() if self.spec["search"] is not None else 0
        if left:
            tkey = self.sweep.search_teacher
            if tkey is None or (teachers.get(tkey) == "complete" and self._teacher_here(tkey)):
                return self._ask_new()
            if teachers.get(tkey) == "complete":
                self.elsewhere += left
        return None

    def _search_budget_left(self) -> int:
        """How many search trials are still to be asked for (workers that ask at the same
        moment may together run a few more than n_trials)."""
        keys = {stored_key(t) for t in trials_of(self.sweep.study)} - {None}
        return max(0, self.spec["search"]["n_trials"] - len(keys))

    def _ask_new(self):
        study = self.sweep.study
        trial = study.ask()
        frozen = self.storage.get_trial(trial._trial_id)
        if frozen.user_attrs.get("key"):  # a queued retry that ask() popped
            return self._start_job(study, frozen, trial=trial)
        if self.spec["search"]["seed"] is not None:  # the draws of this trial number
            study.sampler = search_sampler(self.spec["search"], trial.number)
        params = {}
        for flag, dist in search_distributions(self.spec).items():
            rule = self.spec["search"]["params"][flag]
            if "choices" in rule:
                params[flag] = trial.suggest_categorical(flag, rule["choices"])
            elif rule["type"] == "int":
                params[flag] = trial.suggest_int(flag, rule["low"], rule["high"], log=rule["log"],
                                                 step=rule["step"] or 1)
            else:
                params[flag] = trial.suggest_float(flag, rule["low"], rule["high"],
                                                   log=rule["log"], step=rule["step"])
        record = search_trial(self.spec, self.sweep.name, trial.number, params,
                              self.sweep.search_teacher)
        for k, v in trial_attrs(record).items():
            trial.set_user_attr(k, v)
        self.beats.beat(trial._trial_id)
        return self._start_job(study, self.storage.get_trial(trial._trial_id), trial=trial)

    def _start_job(self, study, frozen, trial=None, teacher_failed=False):
        self.beats.forget(frozen._trial_id)
        self.beats.beat(frozen._trial_id)
        return Job(study, frozen, trial=trial, teacher_failed=teacher_failed)


def search_sampler(search: dict, number: int = 0):
    """The search's sampler, seeded for trial `number` when the search has a seed: every
    worker's samplers start from the same seed, so one seeded once would give two workers the
    same draws; seeded by the trial's number, the draws differ and stay repeatable."""
    import optuna
    seed = None if search["seed"] is None else (search["seed"] * 100_003 + number) % 2**32
    if search["sampler"] == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)
