"""A trial's record as read back from the storage, checked like a user's flags before a worker
writes anything for it (torch-free: a worker never imports PyTorch)."""
from skipkd.errors import UserError
from skipkd.io.files import validate_run_key
from utils.sweep.spec.scripts import SCRIPTS, WORKER_ONLY_OPTIONS

# flags whose value the worker reads and rewrites (run/child.py: _command)
REWRITTEN_FLAGS = ("--data-dir", "--teacher-checkpoint", "--device")

__all__ = ["check_stored_trial"]


def check_stored_trial(attrs: dict, what: str):
    """A trial's record as read back from the storage (a journal or database anyone may have
    edited) checked like a user's flags before the worker writes anything for it: its run key
    and its shared teacher's are plain names, its script is one of SCRIPTS, and its flags are
    strings none of which is (or abbreviates, as argparse would take it) an option that only the
    worker gives (WORKER_ONLY_OPTIONS). A one-line UserError otherwise. Torch-free: the run's
    own parser checks the rest and fails the trial with its one line; --run-name and
    --output-dir are the worker's, given last."""
    def bad(why):
        return UserError(f"{what}: its stored record is not one this sweep wrote ({why})")

    try:
        validate_run_key(attrs.get("key"))
        if attrs.get("teacher_key") is not None:
            validate_run_key(attrs.get("teacher_key"))
    except UserError as exc:
        raise bad(str(exc).replace(" (--run-name)", "")) from None
    script = attrs.get("script")
    if not isinstance(script, str) or script not in SCRIPTS:
        raise bad(f"script {str(script)[:60]!r} is not one of {', '.join(SCRIPTS)}")
    argv = attrs.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise bad("its flags are not a list of strings")
    attempt = attrs.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise bad(f"attempt {str(attempt)[:20]!r} is not a positive whole number")
    for flag in REWRITTEN_FLAGS:  # the worker rewrites the value after each of these
        if flag in argv and argv.index(flag) == len(argv) - 1:
            raise bad(f"its flags end in {flag} without a value")
    for token in argv:
        name = token.partition("=")[0]
        if len(name) > 2 and name.startswith("--") and \
                any(o.startswith(name) for o in WORKER_ONLY_OPTIONS):
            meant = " or ".join(o for o in WORKER_ONLY_OPTIONS if o.startswith(name))
            raise bad(f"its flags give {name} ({meant}), which only the worker sets: it "
                      f"decides resume and restart, and a sweep never fetches data into a "
                      f"folder named in the storage")
