"""One process per run key: an exclusive fcntl lock on numpy_outputs/.{key}.lock, opened without
following a symbolic link (a planted link is refused, its target untouched), held while the
process lives and removed at its exit."""
import atexit
import errno
import os

from ..errors import UserError
from .files import open_lock

__all__ = ["RunLock"]

_HELD_LOCKS = set()  # lock files this process holds (a script may prepare one key twice)


class RunLock:
    def __init__(self, lock_path: str, key: str):
        self.lock_path, self.key = lock_path, key
        self._lock_fd = None

    def acquire(self):
        """One process per key: an exclusive fcntl lock on numpy_outputs/.{key}.lock, held while
        this process lives and removed at its exit. A second start is refused at once. The lock
        is opened without following a symbolic link and must be a regular file."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        if os.path.realpath(self.lock_path) in _HELD_LOCKS:  # this process already runs the key
            return
        while True:
            fd = open_lock(self.lock_path, "lock")
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
                same = os.fstat(fd).st_ino == os.lstat(self.lock_path).st_ino
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
        try:  # while still holding it (no one can hold a removed file); only our own file
            if os.lstat(self.lock_path).st_ino == os.fstat(self._lock_fd).st_ino:
                os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None
