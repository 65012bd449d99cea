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
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
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


def test_any_torchvision_classifier_is_a_logit_only_network(tmp_path):
    from skipkd.kd import DistillationLoss, TermContext
    assert "tv_convnext_tiny" in MODELS and MODELS["tv_convnext_tiny"].placements == ("none",)
    with torch.device("meta"):
        teacher = create_model("tv_convnext_tiny", num_classes=10)
    shapes = feature_shapes(teacher, 3, 32)
    assert shapes["logits"] == (10,) and shapes["logits_only"] and shapes["hint"] is None
    student = create_model("resnet18", num_classes=10, base_width=4)
    context = TermContext(student_shapes=feature_shapes(student), teacher_shapes=shapes)
    with pytest.raises(ValueError, match="fitnet needs the teacher's feats, and the teacher is a "
                                         "logit-only network: choose terms that read logits"):
        DistillationLoss("logit+fitnet", teacher, context=context)
    assert DistillationLoss("logit+dkd+dist", teacher, context=context).names == \
        ["logit", "dkd", "dist"]
    with pytest.raises(ValueError, match="placement"):
        create_model("tv_convnext_tiny", num_classes=10, placement="parallel")
    # its weights: torchvision's names for it, its head replaced for other classes
    torch.manual_seed(0)
    path = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.get_model("mobilenet_v3_small").state_dict(), path)
    model = create_model("tv_mobilenet_v3_small", num_classes=3)
    assert "1000 -> 3 classes" in load_weights(model, str(path), "tv_mobilenet_v3_small")
    with pytest.raises(ValueError, match="not weights of torchvision's mobilenet_v3_small"):
        load_weights(model, "ResNet18_Weights.IMAGENET1K_V1", "tv_mobilenet_v3_small")


def test_a_pretrained_classifier_teaches_through_its_logits_alone(tmp_path):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "out"
    weights = tmp_path / "mnv3_3.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("mobilenet_v3_small", num_classes=3).state_dict(),
               weights)
    common = (*FLAGS, "--data-dir", photos, "--image-size", "32", "--output-dir", out,
              "--teacher", "tv_mobilenet_v3_small", "--teacher-weights", weights,
              "--student", "resnet18_imagenet", "--width", "8", "--placement", "none")
    proc = run_script("model_training_mid.py", *common, "--kd", "skip")
    assert proc.returncode == 2 and "skip needs the teacher's hint" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    proc = run_script("model_training_mid.py", *common, "--kd", "logit+dist", "--run-name", "tv")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "numpy_outputs" / "summary_tv.json").read_text())
    assert summary["teacher"]["arch"] == "tv_mobilenet_v3_small" and summary["teacher"]["loaded"]


def test_what_a_review_tried(monkeypatch, tmp_path, weights):
    """Hostile inputs a review found: each a one-line error, or handled."""
    model = create_model("resnet18_imagenet", num_classes=3)
    # a file in torchvision's cache is read like any other: a planted pickle never runs
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    planted = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    planted.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), planted)  # not the real file
    with pytest.raises(ValueError, match="SHA-256 does not start with f37072fd"):
        load_weights(model, "ResNet18_Weights.IMAGENET1K_V1", "resnet18_imagenet")
    # older files without the BatchNorm counters load
    state = {k: v for k, v in torch.load(weights["resnet18"], weights_only=True).items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "no_counters.pth")
    assert "loaded" in load_weights(model, str(tmp_path / "no_counters.pth"), "resnet18_imagenet")
    # non-finite values, a directory, a text file: one line each
    bad = dict(state, **{"conv1.weight": torch.full_like(state["conv1.weight"], float("nan"))})
    torch.save(bad, tmp_path / "nan.pth")
    (tmp_path / "text.pth").write_text("hello")
    for path, message in ((tmp_path / "nan.pth", "holds non-finite values"),
                          (tmp_path, "is a directory"),
                          (tmp_path / "text.pth", "not a PyTorch file")):
        with pytest.raises(ValueError, match=message):
            load_weights(model, str(path), "resnet18_imagenet")


def test_flags_that_cannot_work_are_refused_before_any_data_is_read(tmp_path):
    for flags, message in (
            (["--dataset", "cifar10", "--pipeline", "stream"], "--pipeline stream reads image files"),
            (["--init-weights", "ResNet18_Weights.IMAGENET1K_V9"], "unknown torchvision weights")):
        proc = run_script("model_training.py", *flags, "--data-dir", tmp_path / "nowhere",
                          "--output-dir", tmp_path / "out")
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_link_loop_in_a_class_folder_is_read_once(tmp_path, capsys):
    from skipkd.data.stream import scan_files
    root = _photos(tmp_path / "photos", train=2, test=1)
    os.symlink("../../train", root / "train" / "dog" / "up")
    os.symlink(".", root / "train" / "cat" / "self")
    train, _ = scan_files(str(root), "folder", ("test",))
    assert len(train) == 6 and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert "a link to a folder already read" in capsys.readouterr().err


def test_a_split_without_one_readable_image_is_one_line(tmp_path):
    from skipkd.data.stream import StreamLoader, scan_files
    from skipkd.errors import UserError
    root = _photos(tmp_path / "photos", train=1, test=1)
    for path in (root / "test").rglob("*.jpg"):
        path.write_bytes(b"not a jpeg")
    _, test = scan_files(str(root), "folder", ("test",))
    with pytest.raises(UserError, match="none of the 3 images could be decoded"):
        list(StreamLoader(test, 2, image_size=16).iterate(0))
