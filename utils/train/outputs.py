"""Where a run writes: checkpoints, per-epoch numpy arrays, a JSON summary and TensorBoard logs.

File names follow the original project: numpy_outputs/{train,val}_{accuracy,loss}_{role}_{key}.npy
and saved_pth_model/{key}_{role}.pth (best) beside {key}_{role}_last.pth.

Safety rules (nothing the user did not ask to lose is lost):
- a run key is a plain name (validate_run_key), so every path made from it stays in its folder;
- a run touches exact file names only, never a glob over a shared folder;
- a run records the names it owns in numpy_outputs/manifest_{key}.json; `--overwrite` removes
  only files that are both in that record and among the names this key can produce, and any
  other existing file with one of those names (another run's, or one from before manifests)
  stops the run with a one-line error instead of being replaced;
- one process per key at a time (a lock file held with fcntl while the run lives);
- every check (writable folders, conflicts, locks) happens before anything is removed.
"""
import atexit
import errno
import json
import os
import re
import tempfile

import numpy as np

from ..errors import UserError

__all__ = ["RunOutputs", "atomic_write", "atomic_write_text", "atomic_save_npy",
           "validate_run_key", "RUN_KEY_MAX", "HISTORY_METRICS"]

# the longest name made from a key ("train_accuracy_student_{key}.npy", a temporary copy of it
# ".{name}.tmp-XXXXXXXX.npy") must fit the usual 255-byte file-name limit
RUN_KEY_MAX = 180
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")

# the per-epoch arrays a run can write besides one loss_{term} per registered distillation term
HISTORY_METRICS = ("accuracy", "loss", "loss_ce", "lr", "lr_start")


def history_metrics() -> tuple:
    from ..kd.registry import KD_TERMS, term_outputs
    return HISTORY_METRICS + tuple(f"loss_{n}" for name in KD_TERMS for n in term_outputs(name))
_ROLES = ("teacher", "student", "baseline")


def validate_run_key(key: str) -> str:
    """A run key: letters, digits and . _ + = -, starting with a letter or digit (so not . or ..),
    no path separators, at most RUN_KEY_MAX characters. Raises a one-line UserError."""
    if not isinstance(key, str) or not key:
        raise UserError("the run key (--run-name) must not be empty")
    if len(key) > RUN_KEY_MAX:
        raise UserError(f"the run key (--run-name) has {len(key)} characters; at most "
                        f"{RUN_KEY_MAX} fit every file name made from it")
    if not _KEY_RE.fullmatch(key):
        bad = sorted({c for c in key if not re.fullmatch(r"[A-Za-z0-9._+=-]", c)})
        why = (f"characters {''.join(bad)!r} are not allowed" if bad
               else "it must start with a letter or a digit")
        raise UserError(f"bad run key (--run-name) {key!r}: {why} (use letters, digits and "
                        f". _ + = -)")
    return key


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
_HELD_LOCKS = set()  # lock files this process holds (a script may prepare one key twice)


def atomic_write(path, write, mode, suffix=""):
    """write(f) into a temporary file beside `path` (named .{basename}.tmp-*), fsync, os.replace;
    on any failure the old file stays and the temporary one is removed. The new file gets the
    permissions of a plainly created one (0666 less the umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
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
    """UTF-8 whatever the locale, line ends as given."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), "wb")


def atomic_save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb", suffix=".npy")


class RunOutputs:
    """The files of the run `key` under `root`; see the module docstring for the rules."""

    def __init__(self, root: str, key: str):
        self.root, self.key = root, validate_run_key(key)
        self.ckpt_dir = os.path.join(root, "saved_pth_model")
        self.numpy_dir = os.path.join(root, "numpy_outputs")
        self.runs_dir = os.path.join(root, "runs")
        self.tb_dir = os.path.join(self.runs_dir, key)
        self._lock_fd = None
        self._claimed = False

    # ---------------------------------------------------------------- names
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

    @property
    def manifest(self):
        return os.path.join(self.numpy_dir, f"manifest_{self.key}.json")

    @property
    def lock_path(self):
        return os.path.join(self.numpy_dir, f".{self.key}.lock")

    def candidates(self) -> list[str]:
        """Every file path this key can produce (the TensorBoard folder aside)."""
        paths = [self.summary]
        for role in _ROLES:
            paths += [self.checkpoint(role), self.checkpoint(role, last=True),
                      self.checkpoint(role, state=True)]
        for role in ("teacher", "student", ""):
            for split in ("train", "val"):
                paths += [self.array(split, metric, role) for metric in history_metrics()]
        return paths

    def _rel(self, path):
        return os.path.relpath(path, self.root)

    def _read_manifest(self) -> set:
        """The names this key recorded, kept only where they are names this key can produce:
        the file is data from disk, and a tampered one must not widen what --overwrite removes."""
        try:
            with open(self.manifest) as f:
                data = json.load(f)
        except FileNotFoundError:
            return set()
        except (OSError, ValueError):
            raise UserError(f"run record {self.manifest} is unreadable; move it away to continue "
                            f"(the run's files are then treated as not its own)") from None
        allowed = {self._rel(p) for p in self.candidates()} | {self._rel(self.tb_dir)}
        files = data.get("files") if isinstance(data, dict) and data.get("key") == self.key else None
        if not isinstance(files, list):
            raise UserError(f"run record {self.manifest} is not a manifest of run '{self.key}'")
        return {f for f in files if isinstance(f, str) and f in allowed}

    def _write_manifest(self, owned: set):
        text = json.dumps({"key": self.key, "files": sorted(owned)}, indent=1) + "\n"
        try:
            with open(self.manifest) as f:
                if f.read() == text:
                    return
        except OSError:
            pass
        atomic_write_text(self.manifest, text)

    def existing(self):
        """The exact paths of this key that exist (files, and the TensorBoard folder)."""
        found = [p for p in self.candidates() if os.path.lexists(p)]
        if os.path.lexists(self.tb_dir):
            found.append(self.tb_dir)
        return found

    # ---------------------------------------------------------------- lock
    def _lock(self):
        """One process per key: an exclusive fcntl lock on numpy_outputs/.{key}.lock, held while
        this process lives and removed at its exit. A second start is refused at once."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        if os.path.realpath(self.lock_path) in _HELD_LOCKS:  # this process already runs the key
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UserError(f"run '{self.key}' is in use by process {holder} (lock "
                                    f"{self.lock_path}); wait for it or choose another "
                                    f"--run-name") from None
                raise UserError(f"cannot lock {self.lock_path}: {exc.strerror}") from None
            try:  # the holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        _HELD_LOCKS.add(os.path.realpath(self.lock_path))
        atexit.register(self.release)

    def release(self):
        if self._lock_fd is None:
            return
        _HELD_LOCKS.discard(os.path.realpath(self.lock_path))
        try:
            os.unlink(self.lock_path)  # while still holding it: no one can hold a removed file
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None

    # ---------------------------------------------------------------- prepare / claim
    def prepare(self, overwrite: bool, resume: bool = False, roles=None, write: bool = True,
                tensorboard: bool = True):
        """Check, lock, and (with overwrite) remove this key's earlier files.

        Refuses (one-line UserError, nothing changed): outputs of this key without --overwrite or
        --resume; files with this key's names that the key's record does not own; --resume
        without a saved state of one of `roles`; unwritable folders; a key in use by another
        process. write=False (the non-zero ranks of a distributed run): checks only."""
        for d in (self.ckpt_dir, self.numpy_dir):
            if os.path.exists(d) and not os.path.isdir(d):
                raise UserError(f"cannot create output folder {d}: it is a file")
        if write:
            for d in (self.ckpt_dir, self.numpy_dir):
                try:
                    os.makedirs(d, exist_ok=True)
                except OSError as exc:
                    raise UserError(f"cannot create output folder {d}: {exc.strerror}") from None
                if not os.access(d, os.W_OK | os.X_OK):
                    raise UserError(f"output folder {d} is not writable")
            self._lock()  # before looking: a concurrent start of this key is refused here
        existing = self.existing()
        if resume:
            roles = roles or _ROLES
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
        foreign = [p for p in existing if self._rel(p) not in owned]
        if foreign and overwrite:
            raise UserError(f"{foreign[0]} has a name of run '{self.key}' but no record of being "
                            f"written by it (another run's file, or one from before run records): "
                            f"--overwrite does not remove it; move it away or choose another "
                            f"--run-name")
        self._remove_stale_temporaries()
        if overwrite:
            for path in existing:
                self._remove_owned(path)
            self._write_manifest(set())

    def _check_tensorboard_writable(self):
        runs = self.runs_dir
        if os.path.exists(runs) and not os.path.isdir(runs):
            raise UserError(f"cannot write TensorBoard logs: {runs} is a file (or pass "
                            f"--no-tensorboard)")
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
        """Temporary files of this key's atomic writes left by a killed process (.{name}.tmp-*):
        the lock says no other process of this key is writing."""
        for path in self.candidates() + [self.manifest]:
            folder, name = os.path.split(path)
            prefix = f".{name}.tmp-"
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for entry in entries:
                if entry.startswith(prefix) and os.path.isfile(os.path.join(folder, entry)):
                    os.unlink(os.path.join(folder, entry))

    def claim(self):
        """Record every name this key can produce as the run's own, just before its first write
        (so a run refused earlier, or a --resume refused by its checks, changes nothing)."""
        if self._claimed:
            return
        owned = self._read_manifest()
        owned |= {self._rel(p) for p in self.candidates()} | {self._rel(self.tb_dir)}
        self._write_manifest(owned)
        self._claimed = True

    # ---------------------------------------------------------------- writes
    def save_history(self, role, history):
        """history: dict metric -> list per epoch. Names: accuracy/loss (original) + extras."""
        self.claim()
        names = {"train_acc": ("train", "accuracy"), "val_acc": ("val", "accuracy"),
                 "train_loss": ("train", "loss"), "val_loss": ("val", "loss")}
        for k, values in history.items():
            split, metric = names.get(k, (k.split("_", 1)[0], k.split("_", 1)[1]))
            path = self.array(split, metric, role)
            if path not in self.candidates():
                raise RuntimeError(f"{path}: not a name of run '{self.key}' (add its metric to "
                                   f"utils.train.outputs.HISTORY_METRICS or register it as a term)")
            atomic_save_npy(path, np.asarray(values, dtype=np.float64))

    def write_summary(self, summary: dict):
        self.claim()
        atomic_write_text(self.summary, json.dumps(summary, indent=2, sort_keys=False) + "\n")
