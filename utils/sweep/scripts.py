"""The training scripts a sweep runs: their names, where their summaries hold the trained
model's result, the flags the sweep sets itself or keeps from a shared teacher, and the scripts'
own parsers (imported on first use).
"""
import importlib
import os

__all__ = ["REPO", "SCRIPTS", "TEACHER_SCRIPT", "SWEEP_OWNED", "ATTENTION_GROUP",
           "STUDENT_GROUPS", "Parsers"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# script -> (module, the summary's section that holds the trained model's result)
SCRIPTS = {"model_training_mid.py": ("model_training_mid", "student"),
           "model_training.py": ("model_training", "baseline")}
TEACHER_SCRIPT = "model_training.py"

# the sweep sets these itself (every trial is one run key in the sweep folder)
SWEEP_OWNED = {"run_name", "output_dir", "resume", "overwrite"}
# the distillation script's argument groups whose flags a shared teacher never takes from a
# student's: the attention group (the teacher script has it too; the teacher's own placement is
# set in the spec's `teacher` section), the networks' and the distillation terms' groups
ATTENTION_GROUP = "attention"
STUDENT_GROUPS = (ATTENTION_GROUP, "teacher and student", "distillation")


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
        read from the parsers (a new distillation flag needs no edit here): the distillation
        script's flags that the teacher's script lacks, and every flag of its STUDENT_GROUPS
        (both networks' attention placement; the networks and the distillation terms, kept out
        even if the teacher's script ever shares one of their names)."""
        if self._student_only is None:
            student = self.module("model_training_mid.py").get_args_parser()
            teacher = self.module(TEACHER_SCRIPT).get_args_parser()
            teacher_dests = {a.dest for a in teacher._actions}
            groups = {g.title: {a.dest for a in g._group_actions}
                      for g in student._action_groups}
            missing = [title for title in STUDENT_GROUPS if not groups.get(title)]
            if missing:
                raise RuntimeError(f"model_training_mid.py's parser has no argument group "
                                   f"{', '.join(map(repr, missing))} (utils/sweep/scripts.py "
                                   f"STUDENT_GROUPS)")
            self._student_only = frozenset(
                {a.dest for a in student._actions if a.dest not in teacher_dests}
                .union(*(groups[title] for title in STUDENT_GROUPS)))
        return self._student_only
