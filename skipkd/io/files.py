"""Writing files safely: run keys that stay in their folder, atomic replacement (a crash leaves
the old file or the new one, and a symbolic link at the path is replaced, never written
through), and SHA-256 of what was written (the run record of outputs.py)."""
import hashlib
import os
import re
import tempfile

import numpy as np

from ..errors import UserError

__all__ = ["validate_run_key", "RUN_KEY_MAX", "atomic_write", "atomic_write_text",
           "atomic_save_npy", "write_temporary", "UMASK", "unlink_quietly", "sha256_file", "npy_writer"]

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
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp


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
