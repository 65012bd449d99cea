"""A run's per-epoch record, numpy_outputs/history_{key}.json: one file per run key, every metric
of every role under its own name, so no tool has to recover runs or metrics from file names.

    {"format": "skipkd-eca/history", "version": 1, "key": KEY,
     "roles": {ROLE: {SPLIT: {METRIC: [one number per epoch, ...]}}}}

ROLE is teacher, student (model_training_mid.py) or baseline (model_training.py); SPLIT is train
or val; METRIC is accuracy, loss, loss_ce, loss_<term part>, lr, lr_start. The file is read back
as untrusted data: read_history validates every level and fails with a one-line UserError that
names the file and the field. Needs numpy only (the sweep worker reads it without torch).
"""
import json
import os
import re

import numpy as np

from ..errors import UserError
from ..roles import ROLES

__all__ = ["HISTORY_FORMAT", "HISTORY_ROLES", "history_path", "history_document", "read_history",
           "split_metrics", "history_lists"]

HISTORY_FORMAT = "skipkd-eca/history"
HISTORY_ROLES = ROLES
_SPLITS = ("train", "val")
_METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_EPOCHS = 1_000_000
MAX_BYTES = 256 * 1024 * 1024


def history_path(numpy_dir: str, key: str) -> str:
    return os.path.join(numpy_dir, f"history_{key}.json")


_FLAT_NAMES = {"train_acc": ("train", "accuracy"), "val_acc": ("val", "accuracy"),
               "train_loss": ("train", "loss"), "val_loss": ("val", "loss")}


def split_metrics(history: dict) -> dict:
    """A stage's history (train_acc, val_loss, train_loss_ce, train_lr, ...: lists per epoch)
    -> {split: {metric: [float, ...]}} as the history file holds it."""
    by_split = {}
    for k, values in history.items():
        split, metric = _FLAT_NAMES.get(k, tuple(k.split("_", 1)))
        by_split.setdefault(split, {})[metric] = [float(v) for v in values]
    return by_split


def history_lists(found: dict) -> dict:
    """read_history's {role: {(split, metric): array}} -> {role: {split: {metric: list}}}."""
    roles = {}
    for role, series in found.items():
        for (split, metric), arr in series.items():
            roles.setdefault(role, {}).setdefault(split, {})[metric] = arr.tolist()
    return roles


def history_document(key: str, roles: dict) -> str:
    """The JSON text of a history; roles: {role: {split: {metric: [float, ...]}}}."""
    doc = {"format": HISTORY_FORMAT, "version": 1, "key": key,
           "roles": {r: {s: {m: [float(v) for v in vals] for m, vals in sorted(metrics.items())}
                         for s, metrics in sorted(splits.items())}
                     for r, splits in sorted(roles.items())}}
    return json.dumps(doc, allow_nan=True) + "\n"


def _fail(path, field, what):
    raise UserError(f"run history {path}: {field} {what}")


def read_history(path: str, key: str | None = None) -> dict:
    """-> {role: {(split, metric): 1-D float64 array per epoch}}, validated; None when the
    file does not exist. key: the run key the file must belong to."""
    try:
        if os.path.getsize(path) > MAX_BYTES:
            _fail(path, "the file", f"is larger than {MAX_BYTES // 2**20} MiB")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except RecursionError:
        raise UserError(f"cannot read run history {path}: nested too deeply") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read run history {path}: "
                        f"{(str(exc).splitlines() or [type(exc).__name__])[0][:120]}") from None
    if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
        _fail(path, "the file", f"is not a run history (no \"format\": \"{HISTORY_FORMAT}\")")
    if doc.get("version") != 1:
        _fail(path, "\"version\"", f"is {doc.get('version')!r}; this toolkit reads version 1")
    if key is not None and doc.get("key") != key:
        _fail(path, "\"key\"", f"is {doc.get('key')!r}, not run {key!r}")
    roles = doc.get("roles")
    if not isinstance(roles, dict):
        _fail(path, "\"roles\"", "is not an object")
    out = {}
    for role, splits in roles.items():
        if role not in HISTORY_ROLES:
            _fail(path, f"role {role!r}", f"is not one of {', '.join(HISTORY_ROLES)}")
        if not isinstance(splits, dict):
            _fail(path, f"roles.{role}", "is not an object")
        series = {}
        for split, metrics in splits.items():
            if split not in _SPLITS or not isinstance(metrics, dict):
                _fail(path, f"roles.{role}.{split}", "is not a train/val object of metrics")
            for metric, values in metrics.items():
                field = f"roles.{role}.{split}.{metric}"
                if not isinstance(metric, str) or not _METRIC_RE.fullmatch(metric):
                    _fail(path, field, "is not a metric name")
                if not isinstance(values, list) or len(values) > MAX_EPOCHS:
                    _fail(path, field, "is not a list of per-epoch numbers")
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in values):
                    _fail(path, field, "holds something other than numbers")
                try:
                    arr = np.asarray(values, dtype=np.float64)
                except OverflowError:
                    _fail(path, field, "holds a number too large for a float")
                if np.isinf(arr).any():
                    _fail(path, field, "holds an infinite value")
                series[(split, metric)] = arr
        if series:
            out[role] = series
    return out
