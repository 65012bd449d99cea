"""--teacher-random, the control of the verdict studies (docs/RESULTS.md): the teacher network
at a random initialisation, never trained, with the trained teacher's architecture; the
student's own random draws are those of the same run with the trained teacher."""
import json
import types

import pytest
import torch

from conftest import assert_ok, assert_refused
from skipkd.data import DataDesc
from skipkd.models import create_model
from skipkd.models.init import apply_init_
from skipkd.train.teacher import LoadedTeacher, random_teacher


def _data():
    return DataDesc(dataset="synthetic", mean=(0.5,) * 3, std=(0.25,) * 3,
                    classes=tuple(str(i) for i in range(10)), num_classes=10, in_channels=3,
                    image_size=32, train_size=10, test_size=10, protocol="test-as-val",
                    val_split=0.0, val_size=10)


def test_random_teacher_keeps_the_architecture_and_the_callers_random_state():
    trained = create_model("resnet20", num_classes=10, base_width=8, placement="last")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # "trained": far from any initialisation
    cfg = {"arch": "resnet20", "num_classes": 10, "base_width": 8, "in_channels": 3,
           "placement": "last", "eca_k": None, "attn": "eca", "image_size": 32}
    loaded = LoadedTeacher(trained, cfg, {"acc": 90.0}, ["a warning"], "t.pth")
    args = types.SimpleNamespace(seed=3, teacher=None, teacher_width=None, width=None,
                                 placement="none", channels_last=False, init=None,
                                 zero_init_residual=False)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    got = random_teacher(args, _data(), "cpu", loaded)
    assert torch.equal(torch.get_rng_state(), state)  # the student's draws are unchanged
    assert got.cfg == cfg and not got.model.training
    assert "random initialisation (seed 3)" in got.source and "t.pth" in got.source
    assert got.saved_val == {} and got.warnings == ["a warning"]
    # the same network as a fresh one drawn from seed 3, and unlike the trained weights
    torch.manual_seed(3)
    fresh = create_model("resnet20", num_classes=10, base_width=8, placement="last")
    apply_init_(fresh, "model", False)
    for (name, a), b, c in zip(got.model.state_dict().items(), fresh.state_dict().values(),
                               trained.state_dict().values()):
        assert torch.equal(a, b), name
        if a.is_floating_point() and a.numel() > 1 and name.endswith("weight") and \
                "bn" not in name:
            assert not torch.equal(a, c), name
    # another seed, another draw
    other = random_teacher(types.SimpleNamespace(**{**vars(args), "seed": 4}), _data(), "cpu",
                           loaded)
    assert not torch.equal(next(other.model.parameters()), next(got.model.parameters()))


def test_random_teacher_run_end_to_end(tmp_path, run, fast_flags):
    """A run with --teacher-random distils from the untrained network: the summary says so,
    and its student starts from the same initial weights as the trained-teacher run (the
    first training step's inputs and student are the same; only the teacher differs)."""
    out = tmp_path / "o"
    common = [*fast_flags, "--epochs", "1", "--width", "4", "--output-dir", out]
    assert_ok(run("model_training.py", *common, "--model", "resnet8", "--run-name", "t"))
    ckpt = out / "saved_pth_model" / "t_baseline.pth"
    for name, extra in (("trained", []), ("random", ["--teacher-random"])):
        assert_ok(run("model_training_mid.py", *common, "--student", "resnet8", "--kd", "skip",
                      "--alpha", "0", "--teacher-checkpoint", ckpt, "--run-name", name, *extra))
    summary = json.loads((out / "numpy_outputs" / "summary_random.json").read_text())
    assert summary["teacher"]["checkpoint"].startswith("random initialisation (seed 0)")
    assert summary["teacher"]["arch"] == "resnet8"
    # with the hint's weight 0 the teacher cannot act: the two students are the same network
    a = torch.load(out / "saved_pth_model" / "trained_student_last.pth", weights_only=True)
    b = torch.load(out / "saved_pth_model" / "random_student_last.pth", weights_only=True)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_teacher_random_excludes_pretrained_weights(run, fast_flags):
    proc = run("model_training_mid.py", *fast_flags, "--teacher", "resnet18_imagenet",
               "--teacher-random", "--teacher-weights", "ResNet18_Weights.IMAGENET1K_V1")
    assert_refused(proc, "--teacher-random", "--teacher-weights")


if __name__ == "__main__":
    pytest.main([__file__])
