"""`sweep.py report --update DOC`: keep a study's report inside a hand-written document (e.g.
docs/RESULTS.md), so that the document's tables are always the study's numbers.

The document marks where the report goes with two lines of its own:

    <!-- sweep.py report STUDY: begin -->
    <!-- sweep.py report STUDY: end -->

Everything between them is replaced by the report (its headings moved under the document's
level, its links to figures and CSV files made relative to the document); everything outside
them (the design, the reading of the numbers, earlier studies) is kept as it is. The report's
own sections go one level under the document's heading above the block. A document without
exactly one such pair is refused before anything is written.
"""
import os
import re

from ..errors import UserError
from ..train.outputs import atomic_write_text

__all__ = ["markers", "check_document", "embed"]


def markers(study: str) -> tuple:
    return (f"<!-- sweep.py report {study}: begin -->", f"<!-- sweep.py report {study}: end -->")


def check_document(path: str, study: str) -> str:
    """The document's text, or a UserError when it cannot take the report."""
    if not os.path.isfile(path):
        raise UserError(f"--update {path}: not a file (the document must exist and mark where "
                        f"the report goes)")
    if not os.access(path, os.W_OK):
        raise UserError(f"--update {path}: not writable")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--update {path}: unreadable ({exc})") from None
    begin, end = markers(study)
    lines = text.split("\n")
    nb, ne = lines.count(begin), lines.count(end)
    if nb != 1 or ne != 1 or lines.index(begin) > lines.index(end):
        raise UserError(f"--update {path}: the document needs exactly one line '{begin}' "
                        f"followed by one line '{end}' where the report goes (found {nb} and "
                        f"{ne})")
    return text


def _headings(lines):
    """(index, depth) of every markdown heading outside fenced code blocks."""
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            m = re.match(r"^(#+) ", line)
            if m:
                yield i, len(m.group(1))


def embed(text: str, study: str, report_md: str, doc_path: str, out_dir: str,
          files: list) -> str:
    """The document with the block of `study` replaced by `report_md`: its title dropped, its
    sections one level under the document's heading above the block, links to `files`
    (written in `out_dir`) relative to the document's folder."""
    begin, end = markers(study)
    lines = text.split("\n")
    i, j = lines.index(begin), lines.index(end)
    above = [d for k, d in _headings(lines[:i])]
    level = (above[-1] if above else 1) + 1
    body = report_md.split("\n")
    if body and body[0].startswith("# "):
        body = body[1:]
    rel = os.path.relpath(os.path.abspath(out_dir),
                          os.path.dirname(os.path.abspath(doc_path))).replace(os.sep, "/")
    names = "|".join(re.escape(os.path.basename(f)) for f in files)
    link = re.compile(rf"\]\(({names})\)") if names else None
    out = list(body)
    for k, depth in _headings(body):  # the report's ## sections start at `level`
        out[k] = "#" * (level + depth - 2) + body[k][depth:]
    if link is not None:
        out = [link.sub(lambda g: f"]({rel}/{g.group(1)})", line) for line in out]
    return "\n".join(lines[:i + 1] + out + lines[j:])


def update_document(path: str, study: str, report_md: str, out_dir: str, files: list) -> None:
    text = check_document(path, study)
    atomic_write_text(path, embed(text, study, report_md, path, out_dir, files))
