"""Argument parsing for the analysis scripts: the training scripts' one-line-error parser with
help texts that show each default once (and not for on/off switches or unset values)."""
import argparse

from .cli import OneLineParser

__all__ = ["DefaultsFormatter", "tool_parser"]


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append '(default: X)' unless the help already says it, the flag takes no value, or the
    default is None (the help then explains what happens)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def tool_parser(description: str) -> OneLineParser:
    return OneLineParser(description=description, formatter_class=DefaultsFormatter)
