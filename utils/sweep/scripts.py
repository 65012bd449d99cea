"""The training scripts a sweep runs: their names, where their summaries hold the trained
model's result, the flags the sweep sets itself or keeps from a shared teacher, and the scripts'
own parsers (imported on first use).
"""
import importlib
import os

__all__ = ["REPO", "SCRIPTS", "TEACHER_SCRIPT", "SWEEP_OWNED", "STUDENT_ONLY", "Parsers"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# script -> (module, the summary's section that holds the trained model's result)
SCRIPTS = {"model_training_mid.py": ("model_training_mid", "student"),
           "model_training.py": ("model_training", "baseline")}
TEACHER_SCRIPT = "model_training.py"

# the sweep sets these itself (every trial is one run key in the sweep folder)
SWEEP_OWNED = {"run_name", "output_dir", "resume", "overwrite"}
# what a shared teacher does not take from a student's flags (they describe the student or the
# distillation; the teacher's own are set in the spec's `teacher` section)
STUDENT_ONLY = {"eca", "eca_k", "attn", "eca_yes", "eca_block", "student", "student_width", "kd",
                "kd_weights", "kd_opt", "ce_weight", "alpha", "beta", "temperature",
                "teacher_checkpoint", "teacher", "teacher_width", "teacher_epochs"}


class Parsers:
    """The training scripts' own parsers (imported on first use: they import torch)."""

    def __init__(self):
        self._mods, self._dests = {}, {}

    def module(self, script):
        if script not in self._mods:
            self._mods[script] = importlib.import_module(SCRIPTS[script][0])
        return self._mods[script]

    def dest(self, script, flag):
        """The argparse destination of --flag (None: not a flag of the script)."""
        if script not in self._dests:
            actions = self.module(script).get_args_parser()._option_string_actions
            self._dests[script] = {o: a.dest for o, a in actions.items()}
        return self._dests[script].get("--" + flag.partition(".")[0])
