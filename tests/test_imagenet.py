"""The ImageNet-layout ResNets (skipkd/models/imagenet.py) and pretrained weights
(skipkd/models/pretrained.py). Nothing is downloaded: the weights are torchvision's own
randomly initialised models, saved here."""
import json
import os
import re
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from conftest import run_script
from skipkd.kd import KD_TERMS
from skipkd.models import (ATTENTION_LAYERS, MODELS, count_parameters, create_model,
                           feature_shapes)
from skipkd.models.imagenet import IMAGENET_RESNETS, from_torchvision, to_torchvision
from skipkd.models.pretrained import load_weights

# torchvision's parameter counts at 1000 classes (its weights' meta["num_params"])
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}


@pytest.mark.parametrize("ours,tv", sorted(IMAGENET_RESNETS.items()))
def test_parameter_counts_are_torchvisions(ours, tv):
    with torch.device("meta"):
        assert count_parameters(create_model(ours, num_classes=1000)) == TORCHVISION_PARAMS[tv]


@pytest.mark.parametrize("ours,tv", sorted(IMAGENET_RESNETS.items()))
def test_with_torchvisions_weights_the_logits_are_torchvisions(ours, tv):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, tv)().double().eval()
    for m in reference.modules():  # BN statistics away from 0/1, so the mapping is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model = create_model(ours, num_classes=1000).double().eval()
    model.load_state_dict(from_torchvision(reference.state_dict()))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours_out, theirs = model(x), reference(x)
    assert torch.allclose(ours_out.logits, theirs, rtol=1e-10, atol=1e-12)
    # and back: our state_dict under torchvision's names loads into torchvision's model
    back = getattr(torchvision.models, tv)().double().eval()
    back.load_state_dict(to_torchvision(model.state_dict()))
    with torch.no_grad():
        assert torch.equal(back(x), theirs)


def test_the_hint_follows_todays_rule_at_224_pixels():
    shapes = {name: feature_shapes(create_model(name, num_classes=1000).to("meta"), 3, 224)
              for name in ("resnet18_imagenet", "resnet50_imagenet")}
    assert shapes["resnet18_imagenet"]["hint"] == (512, 7, 7)     # stage 4's first block
    assert shapes["resnet50_imagenet"]["hint"] == (1024, 14, 14)  # stage 3's, for bottlenecks


def test_every_placement_and_attention_builds():
    for name in IMAGENET_RESNETS:
        spec = MODELS[name]
        for placement in spec.placements:
            for attn in ATTENTION_LAYERS:
                with torch.device("meta"):
                    model = create_model(name, num_classes=10, base_width=8,
                                         placement=placement, attn=attn)
                assert model.placement == placement


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """torchvision's resnet18 and resnet50, random, saved as plain state_dict files."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    paths = {}
    for name in ("resnet18", "resnet50"):
        paths[name] = str(folder / f"{name}.pth")
        torch.save(getattr(torchvision.models, name)().state_dict(), paths[name])
    return paths


def test_a_weights_file_loads_and_its_head_is_replaced(weights):
    model = create_model("resnet18_imagenet", num_classes=3, placement="last")
    note = load_weights(model, weights["resnet18"], "resnet18_imagenet")
    assert "1000 -> 3 classes" in note and "attention" in note
    saved = torch.load(weights["resnet18"], weights_only=True)
    assert torch.equal(model.state_dict()["stem.0.weight"], saved["conv1.weight"])
    assert model.fc.weight.shape == (3, 512)


def test_weights_that_do_not_fit_are_one_line_errors(weights, tmp_path):
    state = torch.load(weights["resnet18"], weights_only=True)
    cases = {
        "extra key": ({**state, "layer9.0.conv1.weight": torch.zeros(1)},
                      "has 'stages.8.0.residual.0.weight', which resnet18_imagenet does not"),
        "unmapped key": ({**state, "avgpool.weight": torch.zeros(1)}, "no counterpart"),
        "wrong shape": ({**state, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)},
                        "'stages.0.0.residual.0.weight' has shape (64, 64, 1, 1)"),
        "missing key": ({k: v for k, v in state.items() if k != "bn1.bias"}, "lacks 'stem.1.bias'"),
        "not a state_dict": ([1, 2, 3], "is not a state_dict"),
    }
    for what, (content, message) in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.pth"
        torch.save(content, path)
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            load_weights(create_model("resnet18_imagenet", num_classes=3), str(path),
                         "resnet18_imagenet")
        assert "\n" not in str(err.value), what
    # another network's weights
    with pytest.raises(ValueError, match="lacks|has shape|has '"):
        load_weights(create_model("resnet34_imagenet", num_classes=3), weights["resnet18"],
                     "resnet34_imagenet")
    with pytest.raises(ValueError, match="ImageNet-layout nets"):
        load_weights(create_model("resnet18", num_classes=3), weights["resnet18"], "resnet18")


def test_a_weights_name_offline_says_which_file_to_put_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    import torchvision.models._api as tv_api  # where torchvision's weights fetch their file
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    model = create_model("resnet34_imagenet", num_classes=10)
    with pytest.raises(ValueError) as err:
        load_weights(model, "ResNet34_Weights.IMAGENET1K_V1", "resnet34_imagenet")
    text = str(err.value)
    assert "cannot download ResNet34_Weights.IMAGENET1K_V1 (no network)" in text
    assert "resnet34-b627a593.pth as " + str(tmp_path / "hub" / "checkpoints") in text
    with pytest.raises(ValueError, match="resnet34's weights, not resnet18_imagenet's"):
        load_weights(model, "ResNet34_Weights.IMAGENET1K_V1", "resnet18_imagenet")
    with pytest.raises(ValueError, match="unknown torchvision weights"):
        load_weights(model, "ResNet34_Weights.NO_SUCH", "resnet34_imagenet")


def _photos(root, size=40, train=8, test=4):
    """A practitioner's folder of photos: three classes told apart by their colour."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, (name, hue) in enumerate((("cat", 0), ("dog", 1), ("fox", 2))):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 120, (size, size + 8, 3), dtype=np.uint8)
                a[..., hue] += 120
                Image.fromarray(a).save(root / split / name / f"{i}.jpg", quality=90)
    return root


FLAGS = ("--dataset", "folder", "--epochs", "1", "--batch-size", "12", "--no-progress",
         "--no-tensorboard", "--device", "cpu", "--val-split", "0")


@pytest.mark.slow
def test_fine_tune_a_pretrained_resnet50_then_distil_it_into_a_resnet18(tmp_path, weights):
    """The README's walk-through: a pretrained resnet50 (weights from a local file) fine-tuned on
    a folder of photos, then distilled into a resnet18 that starts from its own weights."""
    photos, out = _photos(tmp_path / "photos"), tmp_path / "out"
    common = (*FLAGS, "--data-dir", photos, "--image-size", "32", "--output-dir", out)
    proc = run_script("model_training.py", *common, "--model", "resnet50_imagenet",
                      "--init-weights", weights["resnet50"], "--run-name", "teacher")
    assert proc.returncode == 0, proc.stderr
    assert "classifier head replaced: 1000 -> 3 classes" in proc.stdout
    teacher = out / "saved_pth_model" / "teacher_baseline.pth"
    proc = run_script("model_training_mid.py", *common, "--teacher-checkpoint", teacher,
                      "--student", "resnet18_imagenet", "--student-init-weights",
                      weights["resnet18"], "--kd", "skip", "--placement", "none",
                      "--run-name", "student")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "numpy_outputs" / "summary_student.json").read_text())
    assert summary["teacher"]["arch"] == "resnet50_imagenet" and summary["teacher"]["loaded"]
    assert summary["student"]["arch"] == "resnet18_imagenet"
    assert summary["student"]["hint_shape"] == [512, 1, 1]           # 32 px / 32
    assert summary["student"]["teacher_hint_shape"] == [1024, 2, 2]  # stage 3 of a bottleneck


@pytest.mark.slow
def test_every_term_trains_on_the_imagenet_layout(tmp_path):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "out"
    proc = run_script("model_training_mid.py", *FLAGS, "--data-dir", photos, "--image-size", "32",
                      "--output-dir", out, "--teacher", "resnet34_imagenet", "--student",
                      "resnet18_imagenet", "--width", "8", "--kd", "+".join(KD_TERMS),
                      "--kd-opt", "crd.nce_k=8", "--run-name", "all")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "numpy_outputs" / "summary_all.json").read_text())
    assert set(summary["student"]["kd_weights"]) == set(KD_TERMS)


def test_a_teacher_from_weights_must_predict_this_datas_classes(tmp_path, weights):
    photos = _photos(tmp_path / "photos")
    proc = run_script("model_training_mid.py", *FLAGS, "--data-dir", photos, "--image-size", "32",
                      "--output-dir", tmp_path / "out", "--teacher", "resnet18_imagenet",
                      "--teacher-weights", weights["resnet18"], "--student", "resnet18_imagenet",
                      "--width", "8")
    assert proc.returncode == 2
    assert "predict 1000 classes, this data has 3: fine-tune them first" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    # weights of three classes: the teacher as it is, never trained here
    three = tmp_path / "three.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), three)
    proc = run_script("model_training_mid.py", *FLAGS, "--data-dir", photos, "--image-size", "32",
                      "--output-dir", tmp_path / "out", "--teacher", "resnet18_imagenet",
                      "--teacher-weights", three, "--student", "resnet18_imagenet", "--width", "8",
                      "--kd", "logit", "--run-name", "w")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "numpy_outputs" / "summary_w.json").read_text())
    assert summary["teacher"]["loaded"] and summary["teacher"]["checkpoint"] == str(three)
    assert summary["teacher"]["placement"] == "none" and summary["teacher"]["base_width"] == 64
    assert not (tmp_path / "out" / "saved_pth_model" / "w_teacher.pth").exists()
