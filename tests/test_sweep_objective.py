"""A sweep trial is scored on validation, never on the test set: the quick suite pins it (the
end-to-end sweep tests that also show it are slow)."""
import json
import types

from utils.sweep.run.results import ResultRecorder


class _Beats:
    def __init__(self):
        self.attrs, self.finished = {}, []

    def set_attr(self, job, key, value):
        self.attrs[key] = value

    def finish(self, job, state, value=None, **kwargs):
        self.finished.append((state, value))
        return True


def test_a_trials_objective_is_its_best_validation_accuracy(tmp_path):
    key = "t_seed=0"
    summary = {"run_key": key, "script": "model_training_mid.py", "wall_time_s": 3.0,
               "dataset": {"dataset": "synthetic", "protocol": "held-out-val"},
               "args": {"kd": "skip", "seed": 0}, "environment": {},
               "student": {"arch": "resnet18", "base_width": 4, "best_val_acc": 61.0,
                           "final_val_acc": 60.0, "test_acc_best": 77.0, "test_acc_last": 79.0,
                           "params": 1000, "epochs": 2, "best_epoch": 1}}
    (tmp_path / "numpy_outputs").mkdir()
    (tmp_path / "numpy_outputs" / f"summary_{key}.json").write_text(json.dumps(summary))
    beats = _Beats()
    events = []
    recorder = ResultRecorder(str(tmp_path), beats, types.SimpleNamespace(event=events.append, tty=True),
                              None)
    job = types.SimpleNamespace(lost=False, pruned=False, key=key, name=lambda: "trial 0",
                                attrs={"script": "model_training_mid.py", "argv": []})
    assert recorder.ended(job, 0, [], 1.0, None) is False
    (state, value), = beats.finished
    assert state.name == "COMPLETE" and value == 61.0  # validation, not the test's 77 or 79
    assert beats.attrs["test_acc_best"] == 77.0 and "test 77.00%" in events[-1]
