"""Where a run writes: checkpoints, per-epoch history, a JSON summary and TensorBoard logs.

Names (every one made from the run key by a rule that no other key can reach, so two runs never
share a file; tests/test_run_safety.py checks it over random keys):
- numpy_outputs/history_{key}.json: the run's per-epoch record, every metric of every role
  (the loss's parts included) under its own name; what the tools read back;
- numpy_outputs/{split}_{accuracy|loss}_{role}_{key}.npy (distillation runs) and
  {split}_{accuracy|loss}_{key}.npy (baseline runs): the original project's arrays, for its
  plotting script, written only where the name cannot be another run's: accuracy and loss
  only (a metric name with "_" such as loss_ce would make train_loss_ce_good.npy both run
  'ce_good''s loss and run 'good''s CE part), and no baseline array for a key that starts with
  "teacher_" or "student_" (it would be another key's teacher or student array);
- numpy_outputs/summary_{key}.json, numpy_outputs/manifest_{key}.json, numpy_outputs/.{key}.lock;
- saved_pth_model/{key}_{role}.pth (best), {key}_{role}_last.pth, {key}_{role}_state.pth;
- runs/{key}/ (TensorBoard).

Safety rules (nothing the user did not ask to lose is lost):
- a run key is a plain name (validate_run_key), so every path made from it stays in its folder;
- a run touches exact file names only, never a glob over a shared folder;
- the run's record, numpy_outputs/manifest_{key}.json, lists the files the run wrote, each with
  the SHA-256 of what it wrote (recorded before the file is put in place, so a crash between
  the two leaves the new file recorded); `--overwrite` removes exactly the recorded files whose
  bytes still match, and any other file with one of the key's names (another run's, an edited
  one, a link, or one from before records) stops the run with a one-line error instead;
- one process per key at a time (a lock file held with fcntl while the run lives; the lock is
  opened without following links, and a lock that is not a regular file is refused);
- a planted symbolic link at an output path is never written through: files are replaced
  atomically (the link, not its target, is replaced), and a linked TensorBoard folder or lock
  is refused;
- every check (writable folders, conflicts, locks) happens before anything is removed.
"""
import json
import os
import re

from ..errors import UserError
from ..roles import ROLES, Role
from .history import (history_document, history_lists, history_path, read_history,
                      split_metrics)
from .files import (RUN_KEY_MAX, atomic_save_npy, atomic_write, atomic_write_text, npy_writer,
                    sha256_file, unlink_quietly, validate_run_key, writable_folder,
                    write_temporary)
from .runlock import RunLock

__all__ = ["RunOutputs", "MAKER_ENV", "atomic_write", "atomic_write_text", "atomic_save_npy",
           "validate_run_key", "RUN_KEY_MAX", "LEGACY_METRICS", "sha256_file"]


# the metrics still written as the original's flat arrays (its plotting script reads these)
LEGACY_METRICS = ("accuracy", "loss")
_MANIFEST_FORMAT = 2
_TMP_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part
# who starts a run, recorded in its record as "maker" (a sweep sets it for its trials, so that
# it never takes a run it did not make for its own); unset: a user, no maker recorded
MAKER_ENV = "SKIPKD_RUN_MAKER"


class RunOutputs:
    """The files of the run `key` under `root`; see the module docstring for the rules."""

    def __init__(self, root: str, key: str):
        self.root, self.key = root, validate_run_key(key)
        self.ckpt_dir = os.path.join(root, "saved_pth_model")
        self.numpy_dir = os.path.join(root, "numpy_outputs")
        self.runs_dir = os.path.join(root, "runs")
        self.tb_dir = os.path.join(self.runs_dir, key)
        self._run_lock = RunLock(self.lock_path, key)
        self._claimed = False
        self._files = None  # the run's record while it writes: {relative path: [sha256] | "dir"}
        self._maker = None  # who made the run, as its record says (MAKER_ENV; None: a user)

    # ---------------------------------------------------------------- names
    def checkpoint(self, role, last=False, state=False):
        """{key}_{role}.pth (best), {key}_{role}_last.pth, {key}_{role}_state.pth (full state)."""
        suffix = "_last" if last else "_state" if state else ""
        return os.path.join(self.ckpt_dir, f"{self.key}_{role}{suffix}.pth")

    def array(self, split, metric, role):
        """The original's flat array {split}_{metric}_{role}_{key}.npy ({split}_{metric}_{key}.npy
        for a baseline: Role.array_infix), or None where that name could be another run's (module
        docstring): only accuracy and loss, and no baseline array for a key starting with
        teacher_ or student_."""
        infix = Role(role).array_infix
        if metric not in LEGACY_METRICS or split not in ("train", "val"):
            return None
        if not infix and self.key.startswith(("teacher_", "student_")):
            return None
        mid = f"_{infix}" if infix else ""
        return os.path.join(self.numpy_dir, f"{split}_{metric}{mid}_{self.key}.npy")

    @property
    def history(self):
        return history_path(self.numpy_dir, self.key)

    @property
    def summary(self):
        return os.path.join(self.numpy_dir, f"summary_{self.key}.json")

    @property
    def manifest(self):
        return os.path.join(self.numpy_dir, f"manifest_{self.key}.json")

    @property
    def lock_path(self):
        return os.path.join(self.numpy_dir, f".{self.key}.lock")

    def candidates(self) -> list[str]:
        """Every file path this key can produce (the TensorBoard folder aside)."""
        paths = [self.summary, self.history]
        for role in ROLES:
            paths += [self.checkpoint(role), self.checkpoint(role, last=True),
                      self.checkpoint(role, state=True)]
        for role in ROLES:
            for split in ("train", "val"):
                paths += [p for p in (self.array(split, m, role) for m in LEGACY_METRICS) if p]
        return paths

    def release(self):
        """Give the run key's lock back (also done at exit)."""
        self._run_lock.release()

    def _rel(self, path):
        return os.path.relpath(path, self.root)

    # ---------------------------------------------------------------- the run's record
    def _read_manifest(self) -> dict:
        """{relative path: [sha256, ...] | "dir" | None} of what this key recorded, kept only
        where the path is a name this key can produce: the file is data from disk, and a tampered
        one must not widen what --overwrite removes. None: a record of an earlier version of this
        toolkit, which listed names without hashes."""
        try:
            if os.path.islink(self.manifest):
                raise UserError(f"run record {self.manifest} is a symbolic link; move it away to "
                                f"continue")
            with open(self.manifest, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError):
            raise UserError(f"run record {self.manifest} is unreadable; move it away to continue "
                            f"(the run's files are then treated as not its own)") from None
        maker = data.get("maker") if isinstance(data, dict) else None
        self._maker = maker if isinstance(maker, str) and 0 < len(maker) <= 200 else None
        allowed = {self._rel(p) for p in self.candidates()}
        tb = self._rel(self.tb_dir)
        files = data.get("files") if isinstance(data, dict) and data.get("key") == self.key else None
        if isinstance(files, list):  # earlier record: names only
            return {f: None for f in files if isinstance(f, str) and (f in allowed or f == tb)}
        if not isinstance(files, dict) or data.get("format") != _MANIFEST_FORMAT:
            raise UserError(f"run record {self.manifest} is not a manifest of run '{self.key}'")
        owned = {}
        for name, entry in files.items():
            if name == tb and entry == "dir":
                owned[name] = "dir"
            elif (name in allowed and isinstance(entry, list) and entry
                  and all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in entry)):
                owned[name] = list(entry)
        return owned

    def _write_manifest(self, owned: dict, fresh: bool = False):
        """fresh: a new run under this key (--overwrite): its maker is this process's."""
        if fresh or self._maker is None:
            self._maker = os.environ.get(MAKER_ENV) or None
        files = {k: v for k, v in sorted(owned.items()) if v is not None}
        record = {"key": self.key, "format": _MANIFEST_FORMAT, "files": files}
        if self._maker:
            record["maker"] = self._maker
        atomic_write_text(self.manifest, json.dumps(record, indent=1) + "\n")

    def recorded_maker(self) -> str | None:
        """Who made the run, as its record says (MAKER_ENV when it was started; None: by hand, a
        record from before makers, or no record). Reads only; an unreadable record is a
        UserError."""
        self._read_manifest()
        return self._maker

    def existing(self):
        """The exact paths of this key that exist (files, and the TensorBoard folder)."""
        found = [p for p in self.candidates() if os.path.lexists(p)]
        if os.path.lexists(self.tb_dir):
            found.append(self.tb_dir)
        return found

    def _not_owned(self, path, owned) -> str | None:
        """Why `path` (an existing name of this key) may not be removed by --overwrite, or None."""
        rel = self._rel(path)
        if rel not in owned:
            return (f"{path} has a name of run '{self.key}' but no record of being written by it "
                    f"(another run's file, or one from before run records)")
        entry = owned[rel]
        if path == self.tb_dir:
            return (f"{path} is a symbolic link, not run '{self.key}''s TensorBoard folder"
                    if os.path.islink(path) or not os.path.isdir(path) else None)
        if os.path.islink(path) or not os.path.isfile(path):
            return f"{path} is not the regular file run '{self.key}' wrote (a link, or a folder)"
        if entry is not None and sha256_file(path) not in entry:
            return f"{path} was changed after run '{self.key}' wrote it"
        return None

    # ---------------------------------------------------------------- prepare / claim
    def prepare(self, overwrite: bool, resume: bool = False, roles=None, write: bool = True,
                tensorboard: bool = True):
        """Check, lock, and (with overwrite) remove this key's earlier files.

        Refuses (one-line UserError, nothing changed): outputs of this key without --overwrite or
        --resume; with --overwrite, files with this key's names that its record does not list,
        or whose bytes changed since; --resume without a saved state of one of `roles`;
        unwritable folders; a key in use by another process. write=False (the non-zero ranks of
        a distributed run): checks only."""
        for d in (self.ckpt_dir, self.numpy_dir):
            if os.path.exists(d) and not os.path.isdir(d):
                raise UserError(f"cannot create output folder {d}: it is a file")
        if write:
            for d in (self.ckpt_dir, self.numpy_dir):
                writable_folder(d, "output folder")
            self._run_lock.acquire()  # before looking: a concurrent start of this key is refused here
        existing = self.existing()
        if resume:
            roles = roles or ROLES
            # other outputs without a state (a run that failed in its first epoch, or the other
            # script's run under the same key) would make --resume silently start afresh
            if not any(os.path.isfile(self.checkpoint(r, state=True)) for r in roles):
                raise UserError(f"--resume: run '{self.key}' has no saved {'/'.join(roles)} "
                                f"state in {self.ckpt_dir}")
        elif existing and not overwrite:
            raise UserError(f"run '{self.key}' already has outputs ({existing[0]}, ...): pass "
                            f"--overwrite to replace them or --run-name for a new key")
        if not write:
            return
        if tensorboard:
            self._check_tensorboard_writable()
        owned = self._read_manifest()
        if overwrite:
            for path in existing:
                why = self._not_owned(path, owned)
                if why:
                    raise UserError(f"{why}: --overwrite does not remove it; move it away or "
                                    f"choose another --run-name")
        self._remove_stale_temporaries()
        if overwrite:
            for path in existing:
                self._remove_owned(path)
            self._write_manifest({}, fresh=True)

    def _check_tensorboard_writable(self):
        runs = self.runs_dir
        if os.path.exists(runs) and not os.path.isdir(runs):
            raise UserError(f"cannot write TensorBoard logs: {runs} is a file (or pass "
                            f"--no-tensorboard)")
        for d in [self.tb_dir] + [os.path.join(self.tb_dir, r) for r in ROLES]:
            if os.path.islink(d):
                raise UserError(f"cannot write TensorBoard logs: {d} is a symbolic link (logs "
                                f"are not written through links; or pass --no-tensorboard)")
        probe = runs if os.path.isdir(runs) else os.path.dirname(os.path.abspath(runs))
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UserError(f"cannot write TensorBoard logs: {probe} is not writable (or pass "
                            f"--no-tensorboard)")
        if os.path.isdir(self.tb_dir) and not os.access(self.tb_dir, os.W_OK | os.X_OK):
            raise UserError(f"cannot write TensorBoard logs: {self.tb_dir} is not writable")

    def _remove_owned(self, path):
        """Remove one of this run's files; in its TensorBoard folder, only TensorBoard's event
        files (and folders left empty), whatever else may have been put there."""
        if path != self.tb_dir:
            os.unlink(path)
            return
        for folder, dirs, files in os.walk(path, topdown=False):
            for name in files:
                if name.startswith("events.out.tfevents."):
                    os.unlink(os.path.join(folder, name))
            if not os.listdir(folder):
                os.rmdir(folder)

    def _remove_stale_temporaries(self):
        """Temporary files of this key's atomic writes left by a killed process
        (.{name}.tmp-XXXXXXXX{suffix}, exactly): the lock says no other process of this key is
        writing."""
        for path in self.candidates() + [self.manifest]:
            folder, name = os.path.split(path)
            suffix = os.path.splitext(name)[1] if name.endswith((".npy", ".pth")) else ""
            pattern = re.compile(re.escape(f".{name}.tmp-") + _TMP_RANDOM + re.escape(suffix))
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for entry in entries:
                full = os.path.join(folder, entry)
                if pattern.fullmatch(entry) and os.path.isfile(full) and not os.path.islink(full):
                    os.unlink(full)

    def claim(self):
        """Start the run's record of what it writes (kept from an earlier attempt when resuming),
        just before its first write (so a run refused earlier changes nothing)."""
        if self._claimed:
            return
        self._files = self._read_manifest()
        for rel, entry in self._files.items():  # an earlier version's record: names only
            path = os.path.join(self.root, rel)
            if entry is None and os.path.isfile(path) and not os.path.islink(path):
                self._files[rel] = [sha256_file(path)]
        self._write_manifest(self._files)
        self._claimed = True

    def record_tensorboard(self):
        """The TensorBoard folder is the run's (only its event files are ever removed)."""
        self.claim()
        rel = self._rel(self.tb_dir)
        if self._files.get(rel) != "dir":
            self._files[rel] = "dir"
            self._write_manifest(self._files)

    # ---------------------------------------------------------------- writes
    def write_files(self, items):
        """items: [(path, write(f), suffix)], each a name of this run. Each file is written to a
        temporary one first; the record gets the new files' hashes (beside the old ones) before
        any is put in place, then only the new ones: a crash at any point leaves every file of
        the run recorded with the bytes it has."""
        self.claim()
        allowed = set(self.candidates())
        temps = []
        try:
            for path, write, suffix in items:
                if path not in allowed:
                    raise RuntimeError(f"{path}: not a name of run '{self.key}'")
                temps.append((path, write_temporary(path, write, "wb", suffix)))
            hashes = {self._rel(path): sha256_file(tmp) for path, tmp in temps}
            for rel, h in hashes.items():
                old = self._files.get(rel)
                self._files[rel] = (old[-1:] if isinstance(old, list) else []) + [h]
            self._write_manifest(self._files)
            for path, tmp in temps:
                os.replace(tmp, path)
            temps = []
            for rel, h in hashes.items():
                self._files[rel] = [h]
            self._write_manifest(self._files)
        finally:
            for _, tmp in temps:
                unlink_quietly(tmp)

    def write_file(self, path, write, suffix=""):
        self.write_files([(path, write, suffix)])

    def save_history(self, role, history):
        """history: dict metric -> list per epoch (train_acc, val_acc, train_loss, val_loss,
        train_loss_ce, train_lr, ...). Written to the run's history JSON, every metric by name,
        and accuracy/loss also to the original's flat arrays where their names are safe."""
        by_split = split_metrics(history)
        role = Role(role)
        roles = self._own_history()
        roles[role.value] = by_split
        text = history_document(self.key, roles)
        items = [(self.history, lambda f: f.write(text.encode("utf-8")), "")]
        for split, metrics in by_split.items():
            for metric, values in metrics.items():
                path = self.array(split, metric, role)
                if path is not None:
                    items.append((path, npy_writer(values), ".npy"))
        self.write_files(items)

    def _own_history(self) -> dict:
        """The other roles' series already in this run's history file (a resumed or two-stage
        run), as plain lists; {} when the run has not written one."""
        self.claim()
        if self._rel(self.history) not in self._files or not os.path.isfile(self.history):
            return {}
        return history_lists(read_history(self.history, self.key) or {})

    def write_summary(self, summary: dict):
        text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
        self.write_file(self.summary, lambda f: f.write(text.encode("utf-8")))
