"""A user-facing error: scripts print its message on one line and exit non-zero."""
import functools
import sys

__all__ = ["UserError", "RunInterrupted", "exit_on_user_error"]


class UserError(Exception):
    """Bad input from the user (flags, paths, files). Printed as one line, exit code 2."""


class RunInterrupted(Exception):
    """Ctrl-C / SIGTERM handled at a step boundary after the state was saved."""

    def __init__(self, message, exit_code=130):
        super().__init__(message)
        self.exit_code = exit_code


def exit_on_user_error(main):
    """Decorator for a script's main(): UserError, ValueError from our own checks and
    KeyboardInterrupt become a one-line message and a non-zero exit instead of a traceback."""

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

    return wrapper
