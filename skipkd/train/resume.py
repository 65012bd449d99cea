"""--resume: the random-number state, the per-epoch training state, and the check that a state
continues the run that wrote it."""
import os
import random
import shlex
import sys

import numpy as np
import torch

from ..errors import UserError
from ..io.checkpoint import load_checkpoint, to_plain

__all__ = ["rng_state", "set_rng_state", "resume_command", "finished_stages", "load_state",
           "check_resume_args", "RESUME_FREE_ARGS"]


def rng_state():
    st = {"torch": torch.get_rng_state(), "python": _plain_py_state(random.getstate())}
    np_state = np.random.get_state()
    st["numpy"] = {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                   "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                   "gauss": float(np_state[4])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st

def _plain_py_state(state):
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}

def set_rng_state(st):
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])

def resume_command():
    argv = [a for a in sys.argv if a not in ("--overwrite",)]
    cmd = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + argv)
    return cmd if "--resume" in argv else cmd + " --resume"

def finished_stages(outputs, roles, args) -> bool:
    """True when every role's saved state says its stage is complete (nothing to resume); a
    state written with other training settings is refused as by --resume itself."""
    for role in roles:
        path = outputs.checkpoint(role, state=True)
        if not os.path.isfile(path):
            return False
        state = load_state(path)
        check_resume_args(state, args, path)
        if not state.get("stage_complete"):
            return False
    return True

def load_state(path):
    """The per-epoch full training state of a stage, or None when there is none."""
    if not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "state":
        raise UserError(f"{path} is not a training-state file")
    return ckpt

# flags that do not change what is trained: they may differ between a run and its --resume
RESUME_FREE_ARGS = frozenset({"resume", "overwrite", "progress", "tensorboard", "output_dir",
                              "data_dir", "download", "device", "eval_batch_size", "channels_last",
                              "run_name", "compile_mode", "workers"})

def check_resume_args(state, args, path):
    """A state continues only the run that wrote it: a changed architecture, width, batch size,
    learning rate, epoch count, ... would fail to load or (worse) silently train something else
    (the optimizer and scheduler states bring back the saved learning rate)."""
    saved, now = state.get("args") or {}, to_plain(vars(args))
    diff = [k for k in sorted(saved)
            if k in now and k not in RESUME_FREE_ARGS and saved[k] != now[k]]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} (now {now[k]!r})"
                          for k in diff[:4])
        raise UserError(f"--resume: {path} was written with other settings: {shown}"
                        f"{' ...' if len(diff) > 4 else ''}; resume with the original flags, or "
                        f"start again with --overwrite")
