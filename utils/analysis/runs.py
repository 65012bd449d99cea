"""Finding finished runs on disk: run keys, per-epoch arrays, JSON summaries and checkpoints.

A run key names every file of one training run (see utils/train/outputs.py):
    numpy_outputs/history_{key}.json                  every per-epoch metric of every role
    numpy_outputs/summary_{key}.json
    numpy_outputs/manifest_{key}.json                 what the run wrote
    saved_pth_model/{key}_{role}.pth                  role teacher/student/baseline (best epoch)
Runs are found from those records (a name of the form prefix_{key}.json gives its key without
ambiguity). Folders of earlier versions, whose runs have only the flat arrays
{split}_{metric}[_{role}]_{key}.npy, are still read: their keys are recovered from the accuracy
and loss arrays' names, the loss parts' arrays (train_loss_ce_..., train_loss_dkd_...) not
taken for keys. The analysis scripts select runs by key; an unknown key is a one-line UserError
listing the keys that exist.
"""
import glob
import json
import os
import re

import numpy as np

from ..errors import UserError
from ..history import history_path, read_history

__all__ = ["ROLES", "SPLITS", "METRICS", "list_run_keys", "check_run_keys", "load_history",
           "load_summary", "load_summaries", "run_checkpoints", "unknown_key_message"]

ROLES = ("teacher", "student")        # roles with an infix in the array names
SPLITS = ("train", "val")
METRICS = ("accuracy", "loss")


def _loss_parts() -> tuple:
    """The loss parts a run records (loss_ce and each registered term's outputs)."""
    from ..kd.registry import KD_TERMS, term_outputs
    return ("ce",) + tuple(n for name in KD_TERMS for n in term_outputs(name))


def _keys_from_arrays(numpy_dir):
    """Run keys of earlier versions' folders, from the names of their accuracy/loss arrays;
    train_loss_{part}_... (a loss part's array) is not a key of its own."""
    parts = tuple(f"{p}_" for p in _loss_parts())
    keys = set()
    for split in SPLITS:
        for metric in METRICS:
            prefix = f"{split}_{metric}_"
            for path in glob.glob(os.path.join(glob.escape(numpy_dir), prefix + "*.npy")):
                rest = os.path.basename(path)[len(prefix):-len(".npy")]
                role = rest.split("_", 1)[0]
                if role in ROLES and "_" in rest:
                    keys.add(rest.split("_", 1)[1])
                elif not (metric == "loss" and rest.startswith(parts)):
                    keys.add(rest)
    return keys


def _keys_of(numpy_dir, prefix):
    return {os.path.basename(p)[len(prefix):-len(".json")]
            for p in glob.glob(os.path.join(glob.escape(numpy_dir), f"{prefix}*.json"))}


def list_run_keys(numpy_dir: str) -> list[str]:
    """Sorted keys of the runs with a history or summary in `numpy_dir`, and of earlier
    versions' runs known by their accuracy/loss arrays only."""
    keys = _keys_of(numpy_dir, "summary_") | _keys_of(numpy_dir, "history_")
    return sorted(keys | _keys_from_arrays(numpy_dir))


def unknown_key_message(key: str, available: list[str], where: str) -> str:
    if not available:
        return f"unknown run key {key!r}: no runs found in {where}"
    shown = ", ".join(available[:20])
    if len(available) > 20:
        shown += f", ... ({len(available)} in all)"
    return f"unknown run key {key!r} in {where}; available: {shown}"


def check_run_keys(numpy_dir: str, keys) -> list[str]:
    """Raise a one-line UserError for the first key with no files in `numpy_dir`."""
    if not os.path.isdir(numpy_dir):
        raise UserError(f"folder not found: {numpy_dir}")
    available = list_run_keys(numpy_dir)
    for key in keys:
        if key not in available:
            raise UserError(unknown_key_message(key, available, numpy_dir))
    return available


def _load_npy(path):
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0][:120]}") from None
    return np.asarray(arr, dtype=np.float64).reshape(-1)  # one value per epoch


def load_history(numpy_dir: str, key: str) -> dict:
    """-> {role: {(split, metric): 1-D float array per epoch}} for the roles found.

    Roles are 'teacher' and 'student' for distillation runs and 'baseline' for model_training.py
    runs. Accuracy is in percent, loss is the mean per-sample loss of that epoch (training: the
    total; ('train', 'loss_ce') and ('train', 'loss_<term>') its parts; validation: CE).
    Read from the run's history JSON (validated); a run of an earlier version without one is
    read from its flat arrays.
    """
    found = read_history(history_path(numpy_dir, key), key)
    if found is not None:
        return found
    history = {}
    for role in ROLES + ("baseline",):
        infix = "" if role == "baseline" else f"_{role}"
        series = {}
        wanted = [(split, metric) for split in SPLITS for metric in METRICS]
        wanted += [("train", f"loss_{part}") for part in _loss_parts()]
        for split, metric in wanted:
            path = os.path.join(numpy_dir, f"{split}_{metric}{infix}_{key}.npy")
            if os.path.exists(path):
                series[(split, metric)] = _load_npy(path)
        if series:
            history[role] = series
    return history


def load_summary(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read run summary {path}: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a run summary (expected a JSON object)")
    return data


def load_summaries(numpy_dir: str) -> dict:
    """-> {run key: summary dict} for every summary_*.json in `numpy_dir`."""
    out = {}
    for path in sorted(glob.glob(os.path.join(numpy_dir, "summary_*.json"))):
        data = load_summary(path)
        key = data.get("run_key") or os.path.basename(path)[len("summary_"):-len(".json")]
        out[key] = data
    return out


def run_checkpoints(ckpt_dir: str, key: str) -> dict:
    """-> {role: path} of the best-epoch checkpoints {key}_{role}.pth that exist.

    Raises a one-line UserError listing the keys found when the run has none."""
    found = {role: os.path.join(ckpt_dir, f"{key}_{role}.pth")
             for role in ("teacher", "student", "baseline")}
    found = {role: p for role, p in found.items() if os.path.exists(p)}
    if not found:
        # best checkpoints only: not {key}_{role}_last.pth nor {key}_{role}_state.pth
        names = (re.fullmatch(r"(.+)_(teacher|student|baseline)\.pth", os.path.basename(p))
                 for p in glob.glob(os.path.join(ckpt_dir, "*.pth")))
        keys = sorted({m.group(1) for m in names if m})
        raise UserError(unknown_key_message(key, keys, ckpt_dir))
    return found
