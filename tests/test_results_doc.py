"""docs/RESULTS.md holds the studies' reports as `sweep.py report --update` wrote them: every
block between its marker lines is exactly what regenerating it from the committed report folder
(docs/STUDY/) gives, and every figure and table it links exists."""
import json
import os
import re

import pytest

from utils.sweep.report.document import embed, markers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "RESULTS.md")
BEGIN = re.compile(r"^<!-- sweep.py report (\S+): begin -->$", re.M)


def _text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


STUDIES = BEGIN.findall(_text())


def test_results_has_study_blocks():
    assert STUDIES, "docs/RESULTS.md has no sweep.py report block"
    assert len(STUDIES) == len(set(STUDIES))


@pytest.mark.parametrize("study", STUDIES)
def test_block_is_the_committed_report(study):
    text = _text()
    begin, end = markers(study)
    block = text.split(begin + "\n", 1)[1].split(end, 1)[0]
    out = os.path.join(REPO, "docs", study)
    if not block.strip() and not os.path.isdir(out):
        pytest.skip(f"the block of {study} is empty: the study has not been reported yet")
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        report = f.read()
    with open(os.path.join(out, ".sweep-report.json")) as f:
        files = json.load(f)["files"]
    assert embed(text, study, report, DOC, out, files) == text, \
        f"the block of {study} differs from docs/{study}/report.md: run sweep.py report --update"
    assert "| configuration |" in block  # the results table is there
    for link in re.findall(r"\]\(([^)#]+)\)", block):
        if "://" not in link:
            assert os.path.isfile(os.path.join(REPO, "docs", link)), link
