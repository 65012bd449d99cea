"""Extending the toolkit from outside it: a distillation term registered by a test (one place,
no edit of the library) trains through the real script's main(), and its parts come back by name
from the run's history and summary; the analysis tools see one run, not one per part."""
import math

import pytest
import torch.nn.functional as F

import model_training_mid
from skipkd.io.history import history_path, read_history
from skipkd.io.summary import read_summary
from skipkd.kd import KD_TERMS, KDTerm, register_term
from utils.analysis.runs import list_run_keys


@pytest.fixture
def probe_term():
    """A term with two named parts and one option, registered for the test only."""
    calls = []

    class ProbeTerm(KDTerm):
        """Test-only: scale * MSE of the logits plus MSE of the hints."""
        name, needs, default_weight = "probe", frozenset({"logits", "hint"}), 0.5
        paper = "none (a test's term)"
        options, parts = {"scale": 1.0}, ("logits", "hint")
        bounds = {"scale": (0.0, 10.0)}

        def forward(self, student_out, teacher_out, batch):
            parts = {"logits": self.opts["scale"] * F.mse_loss(student_out.logits.float(),
                                                               teacher_out.logits.float()),
                     "hint": F.mse_loss(student_out.hint.float(), teacher_out.hint.float())}
            calls.append({k: float(v.detach()) for k, v in parts.items()})
            return parts

    register_term(ProbeTerm)
    try:
        yield calls
    finally:
        KD_TERMS.pop("probe", None)


def test_a_term_registered_outside_the_library_trains_through_main(probe_term, tmp_path):
    out = str(tmp_path / "out")
    args = model_training_mid.parse_args([
        "--dataset", "synthetic", "--synthetic-train-size", "96", "--synthetic-test-size", "32",
        "--teacher", "resnet8", "--student", "resnet8", "--width", "8", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", "--eca", "none", "--kd", "probe",
        "--kd-opt", "probe.scale=2", "--output-dir", out, "--run-name", "probe_run"])
    summary = model_training_mid.main(args)
    assert probe_term, "the registered term was never called"
    student = summary["student"]
    assert student["kd"] == "probe"
    assert student["kd_weights"] == {"probe": 0.5}
    assert student["kd_options"]["probe"]["scale"] == 2.0
    # the run's history holds the term and each of its parts, by name, for the student
    history = read_history(history_path(f"{out}/numpy_outputs", "probe_run"), "probe_run")
    student_history = history["student"]
    for part in ("probe", "probe_logits", "probe_hint"):
        assert ("train", f"loss_{part}") in student_history, sorted(student_history)
    recorded = student_history[("train", "loss_probe_logits")]
    logits_parts = [c["logits"] for c in probe_term]
    assert len(recorded) == 1 and math.isfinite(recorded[0])
    assert min(logits_parts) - 1e-6 <= recorded[0] <= max(logits_parts) + 1e-6
    # the summary reads back, and the tools see one run: the parts' arrays are not run keys
    assert read_summary(f"{out}/numpy_outputs/summary_probe_run.json")["run_key"] == "probe_run"
    assert list_run_keys(f"{out}/numpy_outputs") == ["probe_run"]


def test_an_unregistered_term_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        model_training_mid.parse_args(["--kd", "probe", "--output-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "probe" not in KD_TERMS
    err = capsys.readouterr().err
    assert "unknown distillation term 'probe'" in err and "skip" in err  # names the known ones


def test_attn_placement_is_the_flag_and_eca_its_alias(tmp_path):
    import model_training
    for script in (model_training, model_training_mid):
        for flag in ("--attn-placement", "--eca", "--eca-placement"):
            args = script.parse_args([flag, "last", "--output-dir", str(tmp_path)])
            assert args.placement == "last", (script.__name__, flag)
