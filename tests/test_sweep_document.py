"""sweep.py report --update's document rules (utils/sweep/report/document.py): where the block is, what
is kept, how the report is fitted in, and what is refused before anything is written."""
import os

import pytest

from skipkd.errors import UserError
from utils.sweep.report.document import check_document, embed, update_document

B, E = "<!-- sweep.py report s1: begin -->", "<!-- sweep.py report s1: end -->"
REPORT = "# Sweep `s1`\n\nAbout.\n\n## Results\n\n| configuration |\n\n![acc](accuracy.png)\n"


def _doc(tmp_path, text, name="RESULTS.md"):
    path = tmp_path / "docs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_block_is_replaced_and_the_rest_kept_byte_for_byte(tmp_path):
    head, tail = "# R\r\n\r\n## Study é ±\r\n", "\r\nReading.\r\n"
    path = _doc(tmp_path, f"{head}{B}\r\nold\r\n{E}{tail}")
    out = str(tmp_path / "docs" / "s1")
    for _ in range(2):
        update_document(path, "s1", REPORT, out, [os.path.join(out, "accuracy.png")])
    raw = open(path, "rb").read().decode("utf-8")
    assert raw.startswith(head + B + "\r\n") and raw.endswith(E + tail)
    assert "old" not in raw and "\n" not in raw.replace("\r\n", "")  # CRLF kept throughout
    assert "\r\n### Results\r\n" in raw and "](s1/accuracy.png)" in raw
    assert raw.count("| configuration |") == 1


def test_markers_in_code_blocks_do_not_count(tmp_path):
    fenced = f"# R\n\n```markdown\n{B}\n{E}\n```\n\n~~~\n# not a heading\n~~~\n"
    with pytest.raises(UserError, match="exactly one line"):
        check_document(_doc(tmp_path, fenced), "s1")
    path = _doc(tmp_path, fenced + f"## Study\n{B}\n{E}\n")
    check_document(path, "s1")
    text = embed(open(path).read(), "s1", REPORT, path, str(tmp_path / "docs"), [])
    assert text.startswith(fenced)  # the fenced example is untouched
    assert "\n### Results\n" in text  # under "## Study", not under the fenced "# not ..."


@pytest.mark.parametrize("text", [f"{E}\n{B}\n", f"{B}\n{E}\n{B}\n{E}\n", f"{B}\n", "none\n",
                                  f"<!-- sweep.py report s10: begin -->\n{E}\n"])
def test_documents_without_one_ordered_pair_are_refused(tmp_path, text):
    path = _doc(tmp_path, text)
    with pytest.raises(UserError, match="exactly one line"):
        check_document(path, "s1")
    assert open(path).read() == text


def test_heading_level_ignores_other_blocks_and_stops_at_six(tmp_path):
    other = "<!-- sweep.py report s0: begin -->\n#### Results\n<!-- sweep.py report s0: end -->"
    text = f"# R\n\n## Two\n\n{other}\n\n{B}\n{E}\n"
    assert "\n### Results\n" in embed(text, "s1", REPORT, "d/R.md", "d/x", [])
    deep = f"###### Six\n{B}\n{E}\n"
    assert "\n###### Results\n" in embed(deep, "s1", REPORT, "d/R.md", "d/x", [])


def test_links_are_relative_to_the_document(tmp_path):
    text = f"{B}\n{E}\n"
    got = embed(text, "s1", REPORT, "docs/R.md", "docs/my report", ["docs/my report/accuracy.png"])
    assert "](<my report/accuracy.png>)" in got
    got = embed(text, "s1", REPORT, "docs/R.md", "sweeps/s1/report", ["accuracy.png"])
    assert "](../sweeps/s1/report/accuracy.png)" in got


def test_a_report_holding_a_marker_line_is_refused():
    with pytest.raises(UserError, match="marker line"):
        embed(f"{B}\n{E}\n", "s1", REPORT + "<!-- sweep.py report s2: end -->\n", "R.md", ".", [])


def test_a_symlinked_document_stays_a_link(tmp_path):
    target = _doc(tmp_path, f"{B}\n{E}\n", "real.md")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    update_document(str(link), "s1", REPORT, str(tmp_path / "docs"), [])
    assert link.is_symlink() and "| configuration |" in open(target).read()


def test_missing_and_undecodable_documents_are_refused(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        check_document(str(tmp_path / "nope.md"), "s1")
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"\xff\xfe" + B.encode())
    with pytest.raises(UserError, match="UTF-8"):
        check_document(str(bad), "s1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_refused(tmp_path):
    path = _doc(tmp_path, f"{B}\n{E}\n")
    os.chmod(os.path.dirname(path), 0o555)
    try:
        with pytest.raises(UserError, match="writable"):
            check_document(path, "s1")
    finally:
        os.chmod(os.path.dirname(path), 0o755)
