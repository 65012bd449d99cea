"""What a finished run recorded: its JSON summary and per-epoch validation accuracy, the
metrics a trial keeps from them, and how the trial ends (complete, pruned, interrupted and
queued again, or failed).
"""
import json
import os
import signal

from .scripts import SCRIPTS

__all__ = ["summary_path", "val_curve", "run_metrics", "ResultMixin"]


def summary_path(run_dir, key):
    return os.path.join(run_dir, "numpy_outputs", f"summary_{key}.json")


def val_curve(run_dir, key, script):
    """Per-epoch validation accuracy of the trained model (the student of a distillation run),
    from the run's own history; [] while there is none (or it cannot be read)."""
    from ..errors import UserError
    from ..history import history_path, read_history
    try:
        found = read_history(history_path(os.path.join(run_dir, "numpy_outputs"), key), key)
    except UserError:
        return []
    series = (found or {}).get(SCRIPTS[script][1], {}).get(("val", "accuracy"))
    return [] if series is None else [float(v) for v in series]


def run_metrics(summary: dict, script: str) -> dict:
    """What a trial records, from the run's own JSON summary."""
    section = summary[SCRIPTS[script][1]]
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


def _learned(counts):
    """The parameters the distillation terms learn (trained with the student, never exported),
    summed over the terms; None when the run does not say (a run of model_training.py)."""
    if not isinstance(counts, dict):
        return None
    values = [v for v in counts.values() if isinstance(v, int) and not isinstance(v, bool)]
    return sum(values) if len(values) == len(counts) else None


class ResultMixin:
    """Part of Worker (worker.py): record the end of a trial's run."""

    def _ended(self, job, rc, lines, elapsed):
        from optuna.trial import TrialState
        if job.lost:
            return
        name = job.name()
        if rc == 0:
            try:
                with open(summary_path(self.run_dir, job.key)) as f:
                    summary = json.load(f)
                metrics = run_metrics(summary, job.attrs["script"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.failed += 1
                self._finish(job, TrialState.FAIL, reason="error",
                             error=f"the run ended but its summary is unreadable ({exc})")
                self.status.event(f"{name}: failed: no readable summary")
                return
            metrics["val_acc"] = val_curve(self.run_dir, job.key, job.attrs["script"])
            metrics["trial_wall_time_s"] = round(elapsed, 2)
            for k in ("run_key", "test_acc_best", "test_acc_last", "best_val_acc",
                      "wall_time_s", "train_images_per_s", "params"):
                self._set_attr(job, k, metrics[k])
            self._set_attr(job, "result", metrics)
            value = metrics["best_val_acc"]
            if self._finish(job, TrialState.COMPLETE, value=value):
                nothing = lines and "nothing to resume" in " ".join(lines[-8:])
                before = " (it had finished before)" if nothing else ""
                self.status.event(
                    f"{name}: done in {elapsed:.0f}s{before}: "
                    f"test {metrics['test_acc_best']:.2f}% (best-val checkpoint), "
                    f"{metrics['test_acc_last']:.2f}% (last epoch)")
        elif job.pruned:
            self._finish(job, TrialState.PRUNED)
        elif self.stop is not None:
            # stopped by Ctrl-C / SIGTERM: the run saved its state; the next worker resumes it
            if self._finish(job, TrialState.FAIL, reason="interrupted",
                            error=f"interrupted ({signal.Signals(self.stop).name})"):
                self._requeue(job.study, self.storage.get_trial(job.trial_id), "interrupted")
                self.status.event(f"{name}: interrupted; queued again (it resumes from its saved "
                                  f"state)")
        else:
            self.failed += 1
            error = (lines[-1] if lines else "no output")[:500]
            self._finish(job, TrialState.FAIL, reason="error", error=f"exit {rc}: {error}")
            self.status.event(f"{name}: failed (exit {rc}): {error}")
        if not self.status.tty:
            self.status.progress(self._progress_text(self._overview()))
