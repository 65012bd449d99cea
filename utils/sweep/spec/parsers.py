"""What the training scripts' parsers (built by skipkd.cli, never by loading a script) say a
flag is: its argparse destination, the flags a shared teacher does not take from a student's,
and a command line parsed as the script parses it. Imports PyTorch (the parsers check model and
term names): `create` uses it, a worker does not.
"""
from skipkd import cli
from skipkd.kd import KD_TERMS
from utils.sweep.spec.scripts import STUDENT_GROUPS, TEACHER_SCRIPT

__all__ = ["Parsers"]


class Parsers:
    """The training scripts' parsers (skipkd.cli), built once each."""

    def __init__(self):
        self._parsers, self._dests = {}, {}
        self._student_only = None

    def parser(self, script):
        if script not in self._parsers:
            self._parsers[script] = cli.SCRIPTS[script][0](cli.RaisingParser)
        return self._parsers[script]

    def parse(self, script, argv):
        """The script's own parsing of `argv` -> its arguments; a refusal is a UserError."""
        return cli.parse_script_args(script, argv)

    def dest(self, script, flag):
        """The argparse destination of --flag (None: not a flag of the script)."""
        if script not in self._dests:
            self._dests[script] = cli.option_dests(self.parser(script))
        return self._dests[script].get("--" + flag.partition(".")[0])

    def student_only(self) -> frozenset:
        """The argparse destinations a shared teacher does not take from a student's flags,
        read from the parsers (a new distillation flag needs no edit here): the distillation
        script's flags that the teacher's script lacks, and every flag of its STUDENT_GROUPS
        (both networks' attention placement; the networks and the distillation terms, kept out
        even if the teacher's script ever shares one of their names)."""
        if self._student_only is None:
            student = set(self.dests("model_training_mid.py"))
            teacher = set(self.dests(TEACHER_SCRIPT))
            groups = cli.group_dests(self.parser("model_training_mid.py"))
            missing = [title for title in STUDENT_GROUPS if not groups.get(title)]
            if missing:
                raise RuntimeError(f"skipkd.cli.distill_parser has no argument group "
                                   f"{', '.join(map(repr, missing))} "
                                   f"(utils/sweep/spec/scripts.py STUDENT_GROUPS)")
            self._student_only = frozenset(
                (student - teacher).union(*(groups[title] for title in STUDENT_GROUPS)))
        return self._student_only

    def kd_terms(self) -> dict:
        """The distillation terms' registry (their defaults and rules: spec/breadth.py)."""
        return KD_TERMS

    def dests(self, script) -> set:
        """Every argparse destination of the script's flags."""
        return set(cli.option_dests(self.parser(script)).values())
