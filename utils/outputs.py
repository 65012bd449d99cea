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

__all__ = ["RunOutputs", "atomic_write_text", "atomic_save_npy"]


def atomic_write_text(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_npy(path, array):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=folder)
    with os.fdopen(fd, "wb") as f:
        np.save(f, np.asarray(array))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    def prepare(self, overwrite: bool, resume: bool = False):
        """Refuse to reuse a key that has outputs unless overwrite (or resume); check the root
        is writable."""
        existing = self.existing()
        if resume:
            if not existing:
                raise UserError(f"--resume: run '{self.key}' has no saved state in {self.ckpt_dir}")
        elif existing and not overwrite:
            raise UserError(f"run '{self.key}' already has outputs ({existing[0]}, ...): pass "
                            f"--overwrite to replace them or --run-name for a new key")
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
