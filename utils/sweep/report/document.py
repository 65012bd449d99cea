"""`sweep.py report --update DOC`: keep a study's report inside a hand-written document (e.g.
docs/RESULTS.md), so that the document's tables are always the study's numbers.

The document marks where the report goes with two lines of its own (outside code blocks):

    <!-- sweep.py report STUDY: begin -->
    <!-- sweep.py report STUDY: end -->

Everything between them is replaced by the report (its links to figures and CSV files made
relative to the document); everything outside them (the design, the reading of the numbers,
earlier studies) is kept byte for byte, line endings included. The report's own sections go
one level under the document's heading above the block. A document without exactly one such
pair, or one that cannot be rewritten in place, is refused before anything is written.
"""
import os
import re
import stat

from skipkd.errors import UserError
from skipkd.io.outputs import atomic_write

__all__ = ["markers", "check_document", "embed", "update_document"]

MARKER = re.compile(r"^<!-- sweep.py report \S+: (begin|end) -->$")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


def markers(study: str) -> tuple:
    return (f"<!-- sweep.py report {study}: begin -->", f"<!-- sweep.py report {study}: end -->")


def _outside_fences(lines):
    """(index, line) of the lines outside fenced code blocks (``` or ~~~, any length)."""
    fence = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            yield i, line
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and not line.strip()[len(m.group(1)):]:
            fence = None


def _block(lines, study):
    """(begin, end) line indices of the study's block, outside code blocks; None if not
    exactly one pair in that order."""
    begin, end = markers(study)
    found = [(i, line) for i, line in _outside_fences(lines) if line in (begin, end)]
    if [line for _, line in found] != [begin, end]:
        return None
    return found[0][0], found[1][0]


def _read(path):
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    newline = "\r\n" if "\r\n" in text else "\n"
    return text.replace("\r\n", "\n"), newline


def check_document(path: str, study: str) -> str:
    """The document's real path (a symlink is followed, so the link stays), or a UserError
    when it cannot take the report."""
    return _load(path, study)[0]


def _load(path, study):
    """(real path, text with \n line ends, the document's line end), checked as above."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise UserError(f"--update {path}: not a file (the document must exist and mark where "
                        f"the report goes)")
    folder = os.path.dirname(real)
    if not os.access(real, os.R_OK | os.W_OK) or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--update {path}: the document and its folder must be writable (it "
                        f"is replaced atomically)")
    try:
        text, newline = _read(real)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--update {path}: unreadable as UTF-8 text ({exc})") from None
    if _block(text.split("\n"), study) is None:
        begin, end = markers(study)
        raise UserError(f"--update {path}: the document needs exactly one line '{begin}' "
                        f"followed by one line '{end}', outside code blocks, where the report "
                        f"goes")
    return real, text, newline


def _link_target(rel, name):
    target = f"{rel}/{name}" if rel != "." else name
    return f"<{target}>" if re.search(r"[\s()<>]", target) else target


def embed(text: str, study: str, report_md: str, doc_path: str, out_dir: str,
          files: list) -> str:
    """The document (text with \\n line ends) with the block of `study` replaced by
    `report_md`: its title dropped, its sections one level under the document's heading above
    the block (other studies' blocks and code blocks not counted), links to `files` (written in
    `out_dir`) relative to the document's folder."""
    lines = text.split("\n")
    i, j = _block(lines, study)
    depth, inside = 1, False
    for k, line in _outside_fences(lines[:i]):
        if MARKER.match(line):
            inside = line.endswith("begin -->")
        elif not inside:
            m = re.match(r"^(#{1,6}) ", line)
            if m:
                depth = len(m.group(1))
    level = depth + 1
    body = report_md.replace("\r\n", "\n").split("\n")
    if body and body[0].startswith("# "):
        body = body[1:]
    bad = [line for line in body if MARKER.match(line)]
    if bad:
        raise UserError(f"the report of {study} holds a marker line ({bad[0]}); remove it from "
                        f"the grid's description")
    try:
        rel = os.path.relpath(os.path.abspath(out_dir),
                              os.path.dirname(os.path.abspath(doc_path))).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        raise UserError(f"--update {doc_path}: the report folder {out_dir} must be on the "
                        f"document's drive") from None
    names = "|".join(re.escape(os.path.basename(f)) for f in files)
    link = re.compile(rf"\]\(({names})\)") if names else None
    out = list(body)
    for k, line in _outside_fences(body):  # the report's ## sections start at `level`
        m = re.match(r"^(#+) ", line)
        if m:
            out[k] = "#" * min(6, level + len(m.group(1)) - 2) + line[len(m.group(1)):]
    if link is not None:
        out = [link.sub(lambda g: f"]({_link_target(rel, g.group(1))})", line) for line in out]
    return "\n".join(lines[:i + 1] + out + lines[j:])


def update_document(path: str, study: str, report_md: str, out_dir: str, files: list) -> None:
    real, text, newline = _load(path, study)  # checked again: it may have changed since
    new = embed(text, study, report_md, real, out_dir, files).replace("\n", newline)
    mode = stat.S_IMODE(os.stat(real).st_mode)
    atomic_write(real, lambda f: f.write(new.encode("utf-8")), "wb")
    os.chmod(real, mode)
