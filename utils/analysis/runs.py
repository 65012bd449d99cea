"""Finding finished runs on disk: run keys, per-epoch arrays, JSON summaries and checkpoints.

A run key names every file of one training run (see skipkd/io/outputs.py):
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
import os
import re
import zipfile

import numpy as np

from skipkd.errors import UserError
from skipkd.io.history import history_path, read_history
from skipkd.io.summary import read_summary
from skipkd.kd.registry import KD_TERMS, term_outputs

__all__ = ["ROLES", "SPLITS", "METRICS", "list_run_keys", "check_run_keys", "load_history",
           "load_summary", "load_summaries", "run_checkpoints", "unknown_key_message"]

ROLES = ("teacher", "student")        # roles with an infix in the array names
SPLITS = ("train", "val")
METRICS = ("accuracy", "loss")


def _loss_parts() -> tuple:
    """The loss parts a run records (loss_ce and each registered term's outputs)."""
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


MAX_EPOCHS = 1_000_000  # as skipkd/io/history.py: one value per epoch


def _load_npy(path):
    """A per-epoch array of an earlier version's run folder, checked before use: one plain
    numeric array (no objects, strings or records), at most 1-D once squeezed, at most
    MAX_EPOCHS values, no infinities. Memory-mapped first, so a huge or crafted header is
    refused before anything is allocated."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # PK...: read as a zip
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        if "Python objects" in why or "allow_pickle" in why:
            why = "it holds Python objects, which are never unpickled"
        elif isinstance(exc, zipfile.BadZipFile):
            why = "not an array (it starts like a zip archive but is not one)"
        elif "mmap length" in why:
            why = "truncated (its header describes more values than the file holds)"
        raise UserError(f"cannot read {path}: {why}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under an .npy name
        arr.close()
        raise UserError(f"cannot read {path}: not a single array (an archive of several)")
    if arr.dtype.kind not in "iuf":
        raise UserError(f"{path} holds {arr.dtype} values, not numbers (one per epoch)")
    if sum(n > 1 for n in arr.shape) > 1:
        raise UserError(f"{path} is a {'x'.join(map(str, arr.shape))} array, not one value "
                        f"per epoch")
    if arr.size > MAX_EPOCHS:
        raise UserError(f"{path} holds {arr.size:,} values, more than {MAX_EPOCHS:,} epochs")
    values = np.array(arr, dtype=np.float64).reshape(-1)  # a copy: the map is closed with arr
    if np.isinf(values).any():
        raise UserError(f"{path} holds an infinite value")
    return values


def load_history(numpy_dir: str, key: str) -> dict:
    """-> {role: {(split, metric): 1-D float array per epoch}} for the roles found.

    Roles are 'teacher' and 'student' for distillation runs and 'baseline' for model_training.py
    runs. Accuracy is in percent, loss is the mean per-sample loss of that epoch (training: the
    total; ('train', 'loss_ce') and ('train', 'loss_<term>') its parts; validation: CE).
    Read from the run's history JSON (validated); a run of an earlier version without one is
    read from its flat arrays.
    """
    path = history_path(numpy_dir, key)
    try:
        found = read_history(path, key)
    except RecursionError:  # JSON nested thousands deep: json's parser gives up
        raise UserError(f"cannot read run history {path}: nested too deeply") from None
    except OverflowError:  # an integer of hundreds of digits: no float holds it
        raise UserError(f"run history {path}: holds a number too large for a float") from None
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


def _key_of(path):
    return os.path.basename(path)[len("summary_"):-len(".json")]


def load_summary(path: str, need=()) -> dict:
    """One run summary, validated (skipkd/io/summary.py): a one-line UserError naming the file and
    the field when it is damaged."""
    return read_summary(path, _key_of(path), need)


def load_summaries(numpy_dir: str) -> tuple[dict, dict]:
    """-> ({run key: summary} of every readable summary_*.json in `numpy_dir`, {run key: why}
    of the damaged ones). The caller decides: skip a damaged run with a warning, or refuse it
    when the user asked for it by name."""
    good, damaged = {}, {}
    for path in sorted(glob.glob(os.path.join(glob.escape(numpy_dir), "summary_*.json"))):
        try:
            good[_key_of(path)] = load_summary(path)
        except UserError as exc:
            damaged[_key_of(path)] = str(exc)
    return good, damaged


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
