"""Files written before the placement had its name (tests/fixtures/pre_placement/README.md):
their "eca" fields are read as today's "placement", and nothing else about them changes."""
import os
import shutil

import pytest
import torch

from skipkd.cli import parse_baseline_args
from skipkd.errors import UserError
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from skipkd.io.summary import SUMMARY_VERSION, RunSummary, read_summary
from skipkd.models import create_model
from skipkd.train.resume import check_resume_args, load_state

OLD = os.path.join(os.path.dirname(__file__), "fixtures", "pre_placement")
FLAGS = ["--dataset", "synthetic", "--synthetic-train-size", "40", "--synthetic-test-size", "20",
         "--model", "resnet8", "--width", "4", "--epochs", "1", "--batch-size", "20",
         "--device", "cpu", "--no-progress", "--no-tensorboard", "--run-name", "pre_placement"]


def test_an_old_checkpoint_loads_with_its_placement():
    raw = torch.load(os.path.join(OLD, "pre_placement_baseline.pth"), weights_only=True)
    assert raw["model"]["eca"] == "last" and "placement" not in raw["model"]  # truly old
    ckpt = load_checkpoint(os.path.join(OLD, "pre_placement_baseline.pth"))
    assert ckpt["model"]["placement"] == "last" and "eca" not in ckpt["model"]
    model = model_from_checkpoint(ckpt)
    assert model.placement == "last"
    # the same network as today's code builds for that placement, with the saved weights
    today = create_model("resnet8", num_classes=10, base_width=4, placement="last")
    today.load_state_dict(raw["state_dict"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, today.eval()(x).logits)


def test_an_old_training_state_resumes_under_todays_flags():
    state = load_state(os.path.join(OLD, "pre_placement_baseline_state.pth"))
    assert state["args"]["placement"] == "last" and "eca" not in state["args"]
    for spelling in ("--placement", "--eca"):
        check_resume_args(state, parse_baseline_args(FLAGS + [spelling, "last"]), "state")
    with pytest.raises(UserError, match="--placement 'last' \\(now 'all'\\)"):
        check_resume_args(state, parse_baseline_args(FLAGS + ["--placement", "all"]), "state")


def test_an_old_summary_reads_as_todays(tmp_path):
    path = tmp_path / "summary_pre_placement.json"
    shutil.copy(os.path.join(OLD, "summary_pre_placement.json"), path)
    doc = read_summary(str(path), "pre_placement")
    assert doc["baseline"]["placement"] == "last" and "eca" not in doc["baseline"]
    assert doc["args"]["placement"] == "last" and doc["version"] == 1
    # a summary of a newer schema is refused rather than misread
    with pytest.raises(UserError, match="newer version"):
        RunSummary.from_json({**doc, "version": SUMMARY_VERSION + 1}, "s.json")


def test_a_checkpoint_whose_two_names_disagree_is_refused(tmp_path):
    ckpt = torch.load(os.path.join(OLD, "pre_placement_baseline.pth"), weights_only=True)
    ckpt["model"]["placement"] = "all"
    path = tmp_path / "both.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="model.placement and its old name model.eca disagree"):
        load_checkpoint(str(path))
