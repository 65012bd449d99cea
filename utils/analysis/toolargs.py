"""Argument parsing for the analysis scripts: the training scripts' one-line-error parser with
help texts that show each default once (and not for on/off switches or unset values), and the
checks every tool runs on the paths it will write before it does any work."""
import argparse
import os

from skipkd.cli import OneLineParser
from skipkd.errors import UserError

__all__ = ["DefaultsFormatter", "tool_parser", "check_output_path", "check_output_dir",
           "check_distinct_outputs", "same_path"]


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


# ---------------------------------------------------------------- output paths
def same_path(a, b) -> bool:
    """True when a and b name the same file: the same real path (symlinks resolved) or, for
    files that exist, the same inode (hard links, bind mounts)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them missing, or a path with a NUL byte
        return False


def _nearest_existing(path):
    """`path` itself when it exists, else its closest existing ancestor."""
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _check_text(path, what):
    if not isinstance(path, str) or not path:
        raise UserError(f"{what}: an empty path")
    if "\0" in path:
        raise UserError(f"{what} {path!r}: a path cannot contain a NUL character")


def _check_folder_writable(folder, path, what, create):
    """`folder` will hold `path`: it must be a writable folder, or (create) its closest existing
    ancestor must be one so that it can be made."""
    if not os.path.isdir(folder):
        anchor = _nearest_existing(folder)
        if os.path.lexists(anchor) and not os.path.isdir(anchor):
            raise UserError(f"cannot write {what} {path}: {anchor} is a file, not a folder")
        if not create:
            raise UserError(f"{what} {path}: output folder does not exist: {folder}")
        folder = anchor
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: folder {folder} is not writable")


def check_output_path(path, inputs=(), what="--output", create=False) -> str:
    """Refuse, with a one-line UserError, a FILE a tool is about to write when it is one of the
    tool's `inputs` (compared by real path and inode), an existing folder or other non-regular
    file (a device, a FIFO), or a location that cannot be written: its folder is missing
    (unless `create`: then the closest existing ancestor must be a writable folder), is a file,
    or is not writable. Call it before any work; it changes nothing. -> the absolute path."""
    _check_text(path, what)
    for source in inputs:
        if source and same_path(path, source):
            raise UserError(f"{what} {path} is an input of this tool ({source}); refusing to "
                            f"overwrite it: choose another output path")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is an existing folder; give a file name")
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"{what} {path} exists and is not a regular file")
    _check_folder_writable(os.path.dirname(os.path.abspath(path)), path, what, create)
    return os.path.abspath(path)


def check_output_dir(path, inputs=(), what="--out-dir") -> str:
    """A FOLDER a tool will write files into (made when missing): it must not be an input nor an
    existing non-folder, and it (or its closest existing ancestor) must be writable."""
    _check_text(path, what)
    for source in inputs:
        if source and same_path(path, source):
            raise UserError(f"{what} {path} is an input of this tool ({source})")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} exists and is not a folder")
    _check_folder_writable(os.path.abspath(path), path, what, create=True)
    return os.path.abspath(path)


def check_distinct_outputs(named):
    """named: [(flag, path)]: two outputs of one run must not be the same file."""
    for i, (what_a, a) in enumerate(named):
        for what_b, b in named[i + 1:]:
            if a and b and same_path(a, b):
                raise UserError(f"{what_a} and {what_b} name the same file {a}: give two paths")
