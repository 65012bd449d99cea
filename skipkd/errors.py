"""A user-facing error: scripts print its message on one line and exit non-zero."""
import errno
import functools
import sys

__all__ = ["UserError", "RunInterrupted", "exit_on_user_error"]


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                       errno.EPERM}


class UserError(Exception):
    """Bad input from the user (flags, paths, files). Printed as one line, exit code 2."""


class RunInterrupted(Exception):
    """Ctrl-C / SIGTERM handled at a step boundary after the state was saved."""

    def __init__(self, message, exit_code=130):
        super().__init__(message)
        self.exit_code = exit_code


def exit_on_user_error(main):
    """Decorator for a script's main(): UserError, KeyboardInterrupt, and OSErrors of the
    machine (no space left, read-only or unwritable folder) become a one-line message and a
    non-zero exit instead of a traceback. Other exceptions (ValueError included) are bugs and
    keep their traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except RunInterrupted as exc:
            print(str(exc), file=sys.stderr)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except OSError as exc:
            # the machine, not the code: a full disk, a read-only or unwritable folder. Atomic
            # writes leave the previous files in place, so the earlier state is kept.
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            print(f"error: cannot write{where}: {exc.strerror}; earlier files are unchanged",
                  file=sys.stderr)
            sys.exit(2)

    return wrapper
