"""The training scripts a sweep runs: their names, where their summaries hold the trained
model's result, and the flags the sweep sets itself or keeps from a shared teacher. Torch-free,
so that a worker stays light (about 45 MB, not 570 with PyTorch): what the scripts' parsers say
a flag is lives in parsers.py, which `create` uses; tests/test_sweep_safety.py checks these
tables against the parsers.
"""
import os

__all__ = ["REPO", "SCRIPTS", "TEACHER_SCRIPT", "SWEEP_OWNED", "WORKER_ONLY_OPTIONS",
           "ATTENTION_GROUP", "STUDENT_GROUPS"]

# the repository's root (utils/sweep/spec/scripts.py is three folders below it)
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir))

# script -> the summary's section that holds the trained model's result (skipkd.cli.SCRIPTS)
SCRIPTS = {"model_training_mid.py": "student", "model_training.py": "baseline"}
TEACHER_SCRIPT = "model_training.py"

# the sweep sets these itself (every trial is one run key in the sweep folder)
SWEEP_OWNED = {"run_name", "output_dir", "resume", "overwrite"}
# the option strings that only a worker may give a run (it decides resume and restart; a run
# never fetches data into a folder that the storage names): a trial read back from the storage
# with one of these, or an abbreviation argparse would take for one, is refused
WORKER_ONLY_OPTIONS = ("--resume", "--overwrite", "--download")
# the distillation script's argument groups whose flags a shared teacher never takes from a
# student's: the attention group (the teacher script has it too; the teacher's own placement is
# set in the spec's `teacher` section), the networks' and the distillation terms' groups
ATTENTION_GROUP = "attention"
STUDENT_GROUPS = (ATTENTION_GROUP, "teacher and student", "distillation")
