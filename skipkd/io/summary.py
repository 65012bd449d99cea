"""A run's JSON summary, numpy_outputs/summary_{key}.json, read back as untrusted data.

The training scripts write it (skipkd/io/outputs.py); compare_runs.py, the sweep's workers
and the analysis helpers read it. A summary can be edited, truncated or made by hand, so
read_summary checks the type and range of every field a tool reads before any tool indexes it,
and fails with a one-line UserError naming the file and the field:

    {"run_key": KEY, "script": ..., "wall_time_s": seconds,
     "dataset": {"dataset": name, "train_size": n, "test_size": n, "protocol": text, ...},
     "args": {"kd": text, "seed": int, ...}, "environment": {...},
     ROLE: {"arch": name, "base_width": int, "placement": name, "params": int, "epochs": int,
            "best_val_acc": percent, "test_acc_best": percent, ..., "kd_weights": {term: w}}}

ROLE is teacher, student (model_training_mid.py) or baseline (model_training.py). Accuracies
are percentages in [0, 100] or NaN (not measured, e.g. a reused teacher's test accuracy).
Fields no tool reads are left as they are. A summary from before the placement had its name
says "eca" where today's says "placement" (in each role and in "args"): it is read as today's. Needs the standard library only (the sweep worker
reads summaries without torch).
"""
import json
import math
import os
import re
import dataclasses

from ..errors import UserError
from ..roles import ROLES

__all__ = ["SUMMARY_ROLES", "SUMMARY_VERSION", "RunSummary", "read_summary"]

SUMMARY_ROLES = ROLES
SUMMARY_VERSION = 1  # the schema of RunSummary.to_json
MAX_BYTES = 64 * 1024 * 1024
MAX_COUNT = 10 ** 12                  # parameters, images, epochs: far beyond any real run
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}")  # outputs.validate_run_key's shape
_PERCENT = ("best_val_acc", "final_val_acc", "final_train_acc", "test_acc_best",
            "test_acc_last")
_NONNEG = ("best_val_loss", "test_loss_best", "test_loss_last", "wall_time_s",
           "train_images_per_s")
_COUNTS = ("params", "best_epoch", "epochs", "test_size")
_NAMES = ("placement", "kd", "protocol", "checkpoint")


def _fail(path, field, what):
    raise UserError(f"run summary {path}: {field} {what}")


def _shown(value, limit=40):
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(path, field, value, kind):
    """One field (None is 'not recorded' and always passes); kind: 'name', 'count', 'width',
    'percent', 'nonneg', 'dict'."""
    if value is None:
        return
    if kind == "name":
        if not isinstance(value, str):
            _fail(path, field, f"is not a text but {_shown(value)}")
    elif kind == "dict":
        if not isinstance(value, dict):
            _fail(path, field, f"is not an object but {_shown(value)}")
    elif kind in ("count", "width"):
        hi = 4096 if kind == "width" else MAX_COUNT
        lo = 1 if kind == "width" else 0
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(path, field, f"is not an integer but {_shown(value)}")
        if not lo <= value <= hi:
            _fail(path, field, f"is {_shown(value)}, outside {lo}..{hi:,}")
    else:  # numbers: NaN means "not measured"; infinities and out-of-range values are damage
        if not _is_number(value):
            _fail(path, field, f"is not a number but {_shown(value)}")
        if isinstance(value, float) and math.isnan(value):
            return
        hi = 100 if kind == "percent" else MAX_COUNT  # ints compared exactly (400 digits too)
        if not 0 <= value <= hi:
            _fail(path, field, f"is {_shown(value)}, outside " + (
                "0..100 %" if kind == "percent" else f"0..{MAX_COUNT:,}"))


def _renamed(section: dict):
    """A summary written before the rename: its "eca" read as "placement"."""
    if "eca" in section and "placement" not in section:
        section["placement"] = section.pop("eca")


def _check_role(path, role, section):
    if not isinstance(section, dict):
        _fail(path, f"\"{role}\"", f"is not an object but {_shown(section)}")
    _renamed(section)
    for field in ("arch", "base_width"):  # what names the model in every table
        if section.get(field) is None:
            _fail(path, f"{role}.{field}", "is missing")
    _check(path, f"{role}.arch", section["arch"], "name")
    _check(path, f"{role}.base_width", section["base_width"], "width")
    for names, kind in ((_NAMES, "name"), (_COUNTS, "count"), (_PERCENT, "percent"),
                        (_NONNEG, "nonneg")):
        for field in names:
            _check(path, f"{role}.{field}", section.get(field), kind)
    for field, kind in (("kd_weights", "nonneg"), ("kd_learned_params", "count")):
        terms = section.get(field)
        _check(path, f"{role}.{field}", terms, "dict")
        for term, value in (terms or {}).items():
            if value is None:
                _fail(path, f"{role}.{field}.{term}", "is not a number but None")
            _check(path, f"{role}.{field}.{term}", value, kind)


@dataclasses.dataclass
class RunSummary:
    """A run's summary as one record: what the run wrote (Run.close) and what every tool reads
    (read_summary), one schema. `to_json()` is the file's content; `from_json(doc)` checks a
    document from outside (every field a tool reads: type and range) and reads old names as
    today's. `version` is the schema's: a summary from a newer one is refused, not misread."""
    run_key: str
    script: str
    dataset: dict                     # DataDesc.to_json()
    args: dict                        # the run's arguments, as parsed
    environment: dict                 # torch, python, device, threads, ...
    roles: dict = dataclasses.field(default_factory=dict)  # {Role: that network's result}
    wall_time_s: float | None = None
    version: int = SUMMARY_VERSION

    def to_json(self) -> dict:
        return {"version": self.version, "run_key": self.run_key, "script": self.script,
                "dataset": self.dataset, "args": self.args, "environment": self.environment,
                **{str.__str__(role): section for role, section in self.roles.items()},
                "wall_time_s": self.wall_time_s}

    @classmethod
    def from_json(cls, doc, path: str = "run summary", key: str | None = None,
                  need=()) -> "RunSummary":
        """doc: a parsed summary file (untrusted). key: the run it must belong to (its file
        name's); need: fields that must hold a finite number ("student.test_acc_best").
        Problems: one-line UserError naming `path` and the field."""
        if not isinstance(doc, dict):
            _fail(path, "the file", "is not a run summary (expected a JSON object)")
        version = doc.get("version", 1)  # summaries before the field were version 1
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            _fail(path, "\"version\"", f"is not a schema version but {_shown(version)}")
        if version > SUMMARY_VERSION:
            _fail(path, "\"version\"", f"is {version}: written by a newer version of this "
                                       f"toolkit (this one reads up to {SUMMARY_VERSION})")
        run_key = doc.get("run_key")
        if run_key is not None and (not isinstance(run_key, str) or not _KEY_RE.fullmatch(run_key)):
            _fail(path, "\"run_key\"", f"is not a run key but {_shown(run_key)}")
        if key is not None and run_key is not None and run_key != key:
            _fail(path, "\"run_key\"", f"is {run_key!r}, not the file's run {key!r}")
        _check(path, "\"script\"", doc.get("script"), "name")
        _check(path, "\"wall_time_s\"", doc.get("wall_time_s"), "nonneg")
        for section in ("dataset", "args", "environment"):
            _check(path, f"\"{section}\"", doc.get(section), "dict")
        dataset = doc.get("dataset") or {}
        for name, kind in (("dataset", "name"), ("protocol", "name"), ("train_size", "count"),
                           ("test_size", "count")):
            _check(path, f"dataset.{name}", dataset.get(name), kind)
        args = doc.get("args") or {}
        _renamed(args)
        _check(path, "args.kd", args.get("kd"), "name")
        _check(path, "args.seed", args.get("seed"), "count")
        for role in SUMMARY_ROLES:
            if role in doc:
                _check_role(path, role, doc[role])
        for wanted in need:
            section, _, name = wanted.partition(".")
            if not isinstance(doc.get(section), dict):
                _fail(path, f"\"{section}\"", "is missing")
            value = doc[section].get(name)
            if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
                _fail(path, wanted, "is missing" if value is None else
                      f"is {_shown(value)}, not a finite number")
        return cls(run_key=key if key is not None else run_key, script=doc.get("script"),
                   dataset=dataset, args=args, environment=doc.get("environment") or {},
                   roles={role: doc[role] for role in SUMMARY_ROLES if role in doc},
                   wall_time_s=doc.get("wall_time_s"), version=version)


def read_summary(path: str, key: str | None = None, need=()) -> dict:
    """-> the summary file's content, checked by RunSummary.from_json and written back in
    today's form (RunSummary.to_json: old names read as today's, "run_key" filled in from `key`).

    key: the run key the file belongs to (its name summary_{key}.json); need: fields that must
    hold a finite number ("student.test_acc_best"), for a tool that cannot do without them."""
    try:
        if os.path.getsize(path) > MAX_BYTES:
            _fail(path, "the file", f"is larger than {MAX_BYTES // 2**20} MiB")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"cannot read run summary {path}: {why}") from None
    return RunSummary.from_json(doc, path, key, need).to_json()
