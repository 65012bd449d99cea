"""The command-line style every script shares, without torch (so a light process such as a
sweep worker can use it): one-line errors with exit code 2, '(default: ...)' only where the help
does not say it, and booleans that accept --flag, --no-flag and --flag true|false|yes|no|1|0."""
import argparse
import sys

__all__ = ["HelpFormatter", "OneLineParser", "str2bool", "add_bool"]


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
