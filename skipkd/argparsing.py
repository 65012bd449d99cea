"""The command-line style every script shares, without torch (so a light process such as a
sweep worker can use it): one-line errors with exit code 2, '(default: ...)' only where the help
does not say it, and booleans that accept --flag, --no-flag and --flag true|false|yes|no|1|0."""
import argparse
import sys

__all__ = ["HelpFormatter", "OneLineParser", "str2bool", "add_bool", "int_in", "float_in",
           "positive_int", "nonneg_int", "positive_float", "nonneg_float", "fraction", "SEED",
           "EPOCHS", "BATCH", "WIDTH"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds '(default: ...)' only where the help does not already say what the default is."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or action.default is None:
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line ('prog: error: ...') and exit code 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def str2bool(value) -> bool:
    """'yes/no', 'true/false', '1/0', 'on/off' (any case) -> bool; anything else is an error.
    (The original's type=bool made '--shuffle False' true.)"""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


def add_bool(parser, name, default, help, aliases=()):
    """--name, --name true|false and --no-name all work."""
    dest = name.lstrip("-").replace("-", "_")
    parser.add_argument(name, *aliases, dest=dest, nargs="?", const=True, default=default,
                        type=str2bool, metavar="BOOL",
                        help=help if "(default:" in help else f"{help} (default: %(default)s)")
    parser.add_argument("--no-" + name.lstrip("-"), dest=dest, action="store_false",
                        help=argparse.SUPPRESS)


def _number_type(cast, what, ok, rule):
    """An argparse type: cast the text, then check it; errors say what was expected."""
    def parse(v):
        try:
            x = cast(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}") from None
        if not ok(x):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {v}")
        return x
    return parse


positive_int = _number_type(int, "an integer", lambda x: x >= 1, "at least 1")
nonneg_int = _number_type(int, "an integer", lambda x: x >= 0, ">= 0")
# `not x > 0` also rejects nan; inf is rejected explicitly
positive_float = _number_type(float, "a number", lambda x: x > 0 and x != float("inf"),
                              "a positive finite number")
nonneg_float = _number_type(float, "a number", lambda x: x >= 0 and x != float("inf"),
                            "a finite number >= 0")
fraction = _number_type(float, "a fraction", lambda x: 0 <= x < 1, "a fraction in [0, 1)")


def int_in(lo, hi):
    """An integer flag type with bounds that fit the machine (and what the code can take)."""
    return _number_type(int, "an integer", lambda x: lo <= x <= hi, f"in {lo}..{hi:,}")


def float_in(lo, hi, lo_open=False):
    """A finite float flag type in [lo, hi] (or (lo, hi] with lo_open); nan is rejected."""
    ok = (lambda x: lo < x <= hi) if lo_open else (lambda x: lo <= x <= hi)
    return _number_type(float, "a number", ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]")


SEED = int_in(0, 2**32 - 1)          # numpy's seed range
EPOCHS = int_in(1, 100_000)
BATCH = int_in(1, 65_536)
WIDTH = int_in(1, 1024)              # 16x the standard nets' 64
