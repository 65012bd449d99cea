"""Where a run writes: checkpoints, per-epoch numpy arrays, a JSON summary and TensorBoard logs.

File names follow the original project: numpy_outputs/{train,val}_{accuracy,loss}_{role}_{key}.npy
and saved_pth_model/{key}_{role}.pth (best) beside {key}_{role}_last.pth.
"""
import glob
import json
import os
import tempfile

import numpy as np

from .errors import UserError

__all__ = ["RunOutputs", "atomic_write", "atomic_write_text", "atomic_save_npy"]


def atomic_write(path, write, mode, suffix=""):
    """write(f) into a temporary file beside `path`, fsync, os.replace; on any failure the old
    file stays and the temporary one is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text), "w")


def atomic_save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb", suffix=".npy")


class RunOutputs:
    def __init__(self, root: str, key: str):
        self.root, self.key = root, key
        self.ckpt_dir = os.path.join(root, "saved_pth_model")
        self.numpy_dir = os.path.join(root, "numpy_outputs")
        self.tb_dir = os.path.join(root, "runs", key)

    def checkpoint(self, role, last=False, state=False):
        """{key}_{role}.pth (best), {key}_{role}_last.pth, {key}_{role}_state.pth (full state)."""
        suffix = "_last" if last else "_state" if state else ""
        return os.path.join(self.ckpt_dir, f"{self.key}_{role}{suffix}.pth")

    def array(self, split, metric, role):
        # baseline runs use the original's {split}_{metric}_{model}.npy: role '' -> no infix
        mid = f"_{role}" if role else ""
        return os.path.join(self.numpy_dir, f"{split}_{metric}{mid}_{self.key}.npy")

    @property
    def summary(self):
        return os.path.join(self.numpy_dir, f"summary_{self.key}.json")

    def existing(self):
        found = []
        for pattern in (os.path.join(self.ckpt_dir, f"{self.key}_*.pth"),
                        os.path.join(self.numpy_dir, f"*_{self.key}.npy"), self.summary):
            found += glob.glob(pattern)
        if os.path.isdir(self.tb_dir):
            found.append(self.tb_dir)
        return sorted(found)

    def prepare(self, overwrite: bool, resume: bool = False, roles=None, write: bool = True):
        """Refuse to reuse a key that has outputs unless overwrite (or resume); check the root
        is writable. resume: one of the `roles`' (default: any) states must exist.
        write=False (the non-zero ranks of a distributed run): checks only, changes nothing."""
        existing = self.existing()
        if resume:
            # other outputs without a state (e.g. a run that failed in its first epoch, or the
            # other script's run under the same key) would make --resume silently start afresh
            if roles:
                states = [r for r in roles if os.path.exists(self.checkpoint(r, state=True))]
            else:
                states = glob.glob(os.path.join(glob.escape(self.ckpt_dir),
                                                f"{glob.escape(self.key)}_*_state.pth"))
            if not states:
                which = f"{'/'.join(roles)} " if roles else ""
                raise UserError(f"--resume: run '{self.key}' has no saved {which}state in "
                                f"{self.ckpt_dir}")
        elif existing and not overwrite:
            raise UserError(f"run '{self.key}' already has outputs ({existing[0]}, ...): pass "
                            f"--overwrite to replace them or --run-name for a new key")
        if not write:
            return
        for d in (self.ckpt_dir, self.numpy_dir):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create output folder {d}: {exc.strerror}") from None
            if not os.access(d, os.W_OK):
                raise UserError(f"output folder {d} is not writable")
        if overwrite and not resume:
            import shutil
            for path in existing:  # stale states must not leak into a later --resume
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)

    def save_history(self, role, history):
        """history: dict metric -> list per epoch. Names: accuracy/loss (original) + extras."""
        names = {"train_acc": ("train", "accuracy"), "val_acc": ("val", "accuracy"),
                 "train_loss": ("train", "loss"), "val_loss": ("val", "loss")}
        for k, values in history.items():
            split, metric = names.get(k, (k.split("_", 1)[0], k.split("_", 1)[1]))
            atomic_save_npy(self.array(split, metric, role), np.asarray(values, dtype=np.float64))

    def write_summary(self, summary: dict):
        atomic_write_text(self.summary, json.dumps(summary, indent=2, sort_keys=False) + "\n")
