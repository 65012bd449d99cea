"""Writing files safely, the one way every writer of the toolkit writes (tests/test_writers.py
walks the source tree and fails on any other):

- atomic_write / atomic_write_text / atomic_save_npy: a whole file replaced atomically (a crash
  leaves the old file or the new one; a symbolic link at the path is replaced, never written
  through); a full disk is the OSError it is (ENOSPC), also when a writer such as torch.save
  wraps it in its own error;
- open_append: a log appended to, opened without following a link, regular files only;
- open_lock: a lock file (read-write, created when missing), opened the same way;
- make_folder: a folder made below a root, none of whose parts may be a link;
- run keys that stay in their folder (validate_run_key) and SHA-256 of what was written (the run
  record of outputs.py).
"""
import errno
import hashlib
import os
import re
import stat
import tempfile

import numpy as np

from ..errors import UserError

__all__ = ["validate_run_key", "RUN_KEY_MAX", "atomic_write", "atomic_write_text",
           "atomic_save_npy", "write_temporary", "UMASK", "unlink_quietly", "sha256_file",
           "npy_writer", "open_append", "open_lock", "make_folder", "writable_folder"]

# the longest name made from a key ("train_accuracy_student_{key}.npy", a temporary copy of it
# ".{name}.tmp-XXXXXXXX.npy") must fit the usual 255-byte file-name limit
RUN_KEY_MAX = 180
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


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


UMASK = _umask()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_temporary(path, write, mode, suffix="") -> str:
    """write(f) into a new temporary file beside `path` (.{basename}.tmp-*), fsynced; returns
    its path (removed again on failure). Permissions of a plainly created file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, mode) as f:
            sink = _WriteErrors(f, path)
            try:
                write(sink)
            except RuntimeError:
                # torch.save (its zip writer) turns the file's OSError into a RuntimeError: the
                # OSError it swallowed is the error (a full disk reads as one)
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp


class _WriteErrors:
    """A file object that remembers the OSError its write() raised (see write_temporary)."""

    def __init__(self, f, path):
        self._f, self._path, self.error = f, path, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as exc:
            if not isinstance(exc.filename, str):
                exc.filename = str(self._path)
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(path, write, mode, suffix=""):
    """write(f) into a temporary file beside `path` (named .{basename}.tmp-*), fsync, os.replace;
    on any failure the old file stays and the temporary one is removed. The new file gets the
    permissions of a plainly created one (0666 less the umask). A symbolic link at `path` is
    replaced, never written through."""
    tmp = write_temporary(path, write, mode, suffix)
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def atomic_write_text(path, text):
    """UTF-8 whatever the locale, line ends as given."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), "wb")


def atomic_save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb", suffix=".npy")


def npy_writer(values):
    return lambda f: np.save(f, np.asarray(values, dtype=np.float64))


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_regular(path, flags, what) -> int:
    """os.open without following a link at `path` (O_NOFOLLOW); a link, or anything but a
    regular file, is a one-line UserError and nothing is written."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), 0o666 & ~UMASK)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise UserError(f"{what} {path} is a symbolic link: it is never written through; "
                            f"move the link away") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise UserError(f"{what} {path} is not a regular file; move it away") from None
        raise UserError(f"cannot open {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{what} {path} is not a regular file; move it away")
    os.set_blocking(fd, True)
    return fd


def open_append(path, what="log"):
    """A text file (UTF-8) opened for appending, created when missing: a link at `path`, or
    anything but a regular file, is a one-line UserError (nothing written). Line-buffered."""
    fd = _open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)


def open_lock(path, what="lock file") -> int:
    """A lock file opened read-write (created when missing) as a raw descriptor, under the same
    rule as open_append."""
    return _open_regular(path, os.O_RDWR | os.O_CREAT, what)


def writable_folder(path, what="folder") -> str:
    """Make `path` when missing; a file there, a folder that cannot be made, or one that is not
    writable is a one-line UserError. Returns path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"cannot create {what} {path}: it is a file")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable")
    return path


def make_folder(path, root, what="folder") -> str:
    """Make `path` (a folder at or below the existing folder `root`) and any missing parts in
    between; a part that is a link, or not a folder, is a one-line UserError. Returns path."""
    root, path = os.path.abspath(root), os.path.abspath(path)
    rel = os.path.relpath(path, root)
    if rel == os.curdir:
        return path
    if rel.startswith(os.pardir):
        raise UserError(f"{what} {path} is not inside {root}")
    here = root
    for part in rel.split(os.sep):
        here = os.path.join(here, part)
        if os.path.islink(here):
            raise UserError(f"{what} {here} is a symbolic link: nothing is written through it; "
                            f"move the link away")
        try:
            os.mkdir(here)
        except FileExistsError:
            if os.path.islink(here) or not os.path.isdir(here):
                raise UserError(f"{what} {here} is not a folder; move it away") from None
        except OSError as exc:
            raise UserError(f"cannot create {what} {here}: {exc.strerror}") from None
    return path
