"""What a finished run recorded: its JSON summary and per-epoch validation accuracy, the
metrics a trial keeps from them, and how the trial ends (complete, pruned, interrupted and
queued again, or failed).

The summary is read back as untrusted data (skipkd/io/summary.py): a damaged one fails its trial
with a one-line reason naming the file and the field. What a trial kept is checked again by
the report (`result_problem`): a journal can be edited too.
"""
import math
import os
import signal

from skipkd.errors import UserError
from skipkd.io.history import history_path, read_history
from skipkd.io.summary import read_summary
from utils.sweep.spec.scripts import SCRIPTS

__all__ = ["summary_path", "reads_test", "read_run_summary", "val_curve", "run_metrics", "result_problem",
           "ResultRecorder"]

# what a trial's objective and status line need from its section of the summary
NEEDED = ("test_acc_best", "test_acc_last", "best_val_acc")
# the numbers a trial keeps (None: not recorded)
NUMBERS = ("test_acc_best", "test_acc_last", "best_val_acc", "final_val_acc", "best_epoch",
           "epochs", "params", "teacher_params", "kd_learned_params", "wall_time_s",
           "stage_wall_time_s", "train_images_per_s", "trial_wall_time_s")


def summary_path(run_dir, key):
    return os.path.join(run_dir, "numpy_outputs", f"summary_{key}.json")


def reads_test(argv) -> bool:
    """False for a command line with --no-report-test (or --report-test false)."""
    argv = list(argv)
    if "--no-report-test" in argv:
        return False
    return not any(a == "--report-test" and i + 1 < len(argv) and argv[i + 1] == "false"
                   for i, a in enumerate(argv))


def read_run_summary(run_dir, key, script, test=True) -> dict:
    """The run's summary, validated, with the fields a trial records present and finite
    (test=False: a run told never to read the test split, whose test accuracy is missing; the
    trial's own command line says so, not the file)."""
    role = SCRIPTS[script]
    need = [f"{role}.{f}" for f in NEEDED if test or not f.startswith("test_")]
    return read_summary(summary_path(run_dir, key), key, need=need)


def val_curve(run_dir, key, script):
    """Per-epoch validation accuracy of the trained model (the student of a distillation run),
    from the run's own history; [] while there is none (or it cannot be read)."""
    try:
        found = read_history(history_path(os.path.join(run_dir, "numpy_outputs"), key), key)
    except (UserError, RecursionError, OverflowError):  # nested too deeply, a 400-digit number
        return []
    series = (found or {}).get(SCRIPTS[script], {}).get(("val", "accuracy"))
    return [] if series is None else [float(v) for v in series]


def run_metrics(summary: dict, script: str) -> dict:
    """What a trial records, from the run's own JSON summary (as read_run_summary returns it)."""
    section = summary[SCRIPTS[script]]
    teacher = summary.get("teacher") or {}
    return {"run_key": summary.get("run_key"),
            "test_acc_best": section.get("test_acc_best"),
            "test_acc_last": section.get("test_acc_last"),
            "best_val_acc": section.get("best_val_acc"),
            "final_val_acc": section.get("final_val_acc"),
            "best_epoch": section.get("best_epoch"), "epochs": section.get("epochs"),
            "protocol": section.get("protocol"), "params": section.get("params"),
            "teacher_params": teacher.get("params"),
            "kd_learned_params": _learned(section.get("kd_learned_params")),
            "wall_time_s": summary.get("wall_time_s"),
            "stage_wall_time_s": section.get("wall_time_s"),
            "train_images_per_s": section.get("train_images_per_s"),
            "environment": summary.get("environment")}


def result_problem(result: dict) -> str | None:
    """What is wrong with a trial's recorded result (None: nothing), field by field."""
    for field in NUMBERS:
        v = result.get(field)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or (isinstance(v, float) and math.isinf(v))
                              or (isinstance(v, int) and abs(v) > 10 ** 15)):
            return f"result field {field} is {str(v)[:40]!r}, not a number"
    for field, kind in (("protocol", str), ("environment", dict), ("val_acc", list),
                        ("run_key", str)):
        if result.get(field) is not None and not isinstance(result[field], kind):
            return f"result field {field} is not a {kind.__name__}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for v in result.get("val_acc") or []):
        return "result field val_acc holds something other than numbers"
    return None


def _learned(counts):
    """The parameters the distillation terms learn (trained with the student, never exported),
    summed over the terms; None when the run does not say (a run of model_training.py)."""
    if not isinstance(counts, dict):
        return None
    values = [v for v in counts.values() if isinstance(v, int) and not isinstance(v, bool)]
    return sum(values) if len(values) == len(counts) else None


class ResultRecorder:
    """Records how a trial's run ended: its metrics (read from the run's own summary) and the
    trial's final state; an interrupted run's trial is queued again."""

    def __init__(self, run_dir, beats, status, progress):
        self.run_dir, self.beats, self.status, self.progress = run_dir, beats, status, progress

    def ended(self, job, rc, lines, elapsed, stop) -> bool:
        """Record the end of `job`'s run (exit code rc, its last log lines); stop: the signal
        that is stopping the worker, or None. -> True when the trial failed."""
        from optuna.trial import TrialState

        if job.lost:
            return False
        name, failed = job.name(), False
        if rc == 0:
            try:
                metrics = run_metrics(read_run_summary(self.run_dir, job.key,
                                                       job.attrs["script"],
                                                       reads_test(job.attrs["argv"])),
                                      job.attrs["script"])
            except UserError as exc:
                self.beats.finish(job, TrialState.FAIL, reason="error",
                                  error=f"the run ended but its summary is unusable: {exc}")
                self.status.event(f"{name}: failed: {exc}")
                return True
            metrics["val_acc"] = val_curve(self.run_dir, job.key, job.attrs["script"])
            metrics["trial_wall_time_s"] = round(elapsed, 2)
            for k in ("run_key", "test_acc_best", "test_acc_last", "best_val_acc",
                      "wall_time_s", "train_images_per_s", "params"):
                self.beats.set_attr(job, k, metrics[k])
            self.beats.set_attr(job, "result", metrics)
            value = metrics["best_val_acc"]
            if self.beats.finish(job, TrialState.COMPLETE, value=value):
                nothing = lines and "nothing to resume" in " ".join(lines[-8:])
                before = " (it had finished before)" if nothing else ""
                score = (f"test {metrics['test_acc_best']:.2f}% (best-val checkpoint), "
                         f"{metrics['test_acc_last']:.2f}% (last epoch)"
                         if metrics["test_acc_best"] is not None else
                         f"validation {value:.2f}% (test split not read)")
                self.status.event(f"{name}: done in {elapsed:.0f}s{before}: {score}")
        elif job.pruned:
            self.beats.finish(job, TrialState.PRUNED)
        elif stop is not None:
            # stopped by Ctrl-C / SIGTERM: the run saved its state; the next worker resumes it
            if self.beats.finish(job, TrialState.FAIL, reason="interrupted",
                                 error=f"interrupted ({signal.Signals(stop).name})"):
                self.beats.requeue(job.study, self.beats.storage.get_trial(job.trial_id),
                                   "interrupted")
                self.status.event(f"{name}: interrupted; queued again (it resumes from its saved "
                                  f"state)")
        else:
            failed = True
            error = (lines[-1] if lines else "no output")[:500]
            self.beats.finish(job, TrialState.FAIL, reason="error", error=f"exit {rc}: {error}")
            self.status.event(f"{name}: failed (exit {rc}): {error}")
        if not self.status.tty:
            self.status.progress(self.progress.text())
        return failed
