"""The training scripts a sweep runs: their names, where their summaries hold the trained
model's result, the flags the sweep sets itself or keeps from a shared teacher, and the scripts'
own parsers (imported on first use).
"""
import importlib
import os

__all__ = ["REPO", "SCRIPTS", "TEACHER_SCRIPT", "SWEEP_OWNED", "ATTENTION_GROUP", "Parsers"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# script -> (module, the summary's section that holds the trained model's result)
SCRIPTS = {"model_training_mid.py": ("model_training_mid", "student"),
           "model_training.py": ("model_training", "baseline")}
TEACHER_SCRIPT = "model_training.py"

# the sweep sets these itself (every trial is one run key in the sweep folder)
SWEEP_OWNED = {"run_name", "output_dir", "resume", "overwrite"}
# the training scripts' argument group whose flags a shared teacher does not take from a
# student's (the teacher's own placement is set in the spec's `teacher` section)
ATTENTION_GROUP = "attention"


class Parsers:
    """The training scripts' own parsers (imported on first use: they import torch)."""

    def __init__(self):
        self._mods, self._dests = {}, {}
        self._student_only = None

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

    def student_only(self) -> frozenset:
        """The argparse destinations a shared teacher does not take from a student's flags,
        read from the parsers: the distillation script's flags that the teacher's script lacks
        (the student, the distillation terms, the teacher's own settings) and its attention
        group (both networks' placement)."""
        if self._student_only is None:
            student = self.module("model_training_mid.py").get_args_parser()
            teacher = self.module(TEACHER_SCRIPT).get_args_parser()
            teacher_dests = {a.dest for a in teacher._actions}
            attention = {a.dest for g in student._action_groups if g.title == ATTENTION_GROUP
                         for a in g._group_actions}
            if not attention:
                raise RuntimeError(f"the training scripts have no {ATTENTION_GROUP!r} group")
            self._student_only = frozenset(
                {a.dest for a in student._actions if a.dest not in teacher_dests} | attention)
        return self._student_only
