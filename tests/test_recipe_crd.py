"""--preset crd, the KD literature's CIFAR-100 recipe: its values, the step-decay schedule against
torch's MultiStepLR, the per-model learning rate, and the cross-entropy weight."""
import types

import pytest
import torch

import model_training_mid
from skipkd.kd import DistillationLoss
from skipkd.train.optim import OptimRecipe, base_lr, build_scheduler, lr_milestones


def test_the_preset_holds_the_published_recipe():
    args = model_training_mid.parse_args(["--preset", "crd", "--dataset", "synthetic"])
    recipe = OptimRecipe.from_args(args)
    assert (args.epochs, args.batch_size, args.momentum, args.nesterov, args.weight_decay) == \
        (240, 64, 0.9, False, 5e-4)
    assert (args.schedule, args.lr_decay, args.warmup_epochs) == ("multistep", 0.1, 0.0)
    assert (args.crop_padding, args.hflip, args.vflip, args.normalize) == (4, True, False, True)
    assert args.val_split == 0.0  # the tables report the best test-set epoch
    assert lr_milestones(recipe, 240) == [150, 180, 210]
    assert lr_milestones(recipe, 24) == [15, 18, 21]  # scaled to a shorter run
    assert base_lr(recipe, "resnet8x4") == 0.05
    assert base_lr(recipe, "ShuffleV2") == base_lr(recipe, "MobileNetV2") == 0.01
    assert base_lr(recipe, "shufflev1") == 0.01  # an alias is the same model
    given = model_training_mid.parse_args(["--preset", "crd", "--lr", "0.2", "--lr-milestones",
                                           "5,2"])
    given = OptimRecipe.from_args(given)
    assert base_lr(given, "ShuffleV1") == 0.2 and lr_milestones(given, 240) == [2, 5]


@pytest.mark.parametrize("milestones", [None, [2, 5]])
def test_multistep_matches_torch_multisteplr(milestones):
    """Stepped once per batch, the rate changes only at epoch boundaries and equals
    MultiStepLR stepped once per epoch."""
    steps, epochs = 3, 8
    args = OptimRecipe(schedule="multistep", warmup_epochs=0.0, t_max=None,
                  lr_milestones=milestones, lr_decay=0.1)
    ours = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    sched = build_scheduler(ours, args, steps, epochs)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, lr_milestones(args, epochs), gamma=0.1)
    for _ in range(epochs):
        want = ref_opt.param_groups[0]["lr"]
        for _ in range(steps):
            assert ours.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
            ours.step()
            sched.step()
        ref_opt.step()
        ref.step()


def test_bad_milestones_are_one_line_errors(capsys):
    for bad in ("0,5", "a,b", ""):
        with pytest.raises(SystemExit) as info:
            model_training_mid.parse_args(["--preset", "crd", "--lr-milestones", bad])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--lr-milestones" in err


def test_the_cross_entropy_weight_scales_only_the_cross_entropy():
    torch.manual_seed(0)
    x, y = torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out = types.SimpleNamespace(logits=torch.randn(4, 10))
    plain, parts = DistillationLoss("none")(x, out, y)
    weighted, parts_w = DistillationLoss("none", ce_weight=0.1)(x, out, y)
    # one float32 product by fl(0.1): at most EPS32 from the exact product
    assert weighted.item() == pytest.approx(0.1 * plain.item(),
                                            rel=2 * torch.finfo(torch.float32).eps)
    assert parts_w["ce"].item() == pytest.approx(parts["ce"].item())  # the part is plain CE
    with pytest.raises(ValueError):
        DistillationLoss("none", ce_weight=-1)


def test_resnet32x4_to_resnet8x4_on_tiny_cifar100_end_to_end(tmp_path):
    """The benchmark's flagship pair under --preset crd on a tiny CIFAR-100-format folder (the
    real python batches), one epoch, reduced width; read back from the files it wrote."""
    from conftest import run_script
    from test_untrusted import write_cifar100
    from skipkd.data import make_synthetic
    from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
    write_cifar100(str(tmp_path / "data"), make_synthetic(120, seed=3), make_synthetic(40, seed=4))
    out = tmp_path / "out"
    proc = run_script("model_training_mid.py", "--preset", "crd", "--dataset", "cifar100",
                      "--data-dir", tmp_path / "data", "--teacher", "resnet32x4", "--student",
                      "resnet8x4", "--width", "8", "--eca", "none", "--epochs", "1",
                      "--batch-size", "40", "--kd", "logit", "--ce-weight", "0.1",
                      "--kd-weights", "logit=0.9", "--device", "cpu", "--no-progress",
                      "--no-tensorboard", "--output-dir", out, "--run-name", "r32x4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    summary = json.loads((out / "numpy_outputs" / "summary_r32x4.json").read_text())
    assert summary["dataset"]["dataset"] == "cifar100" and summary["dataset"]["num_classes"] == 100
    assert summary["dataset"]["protocol"] == "test-as-val"
    st, te = summary["student"], summary["teacher"]
    assert (te["arch"], st["arch"]) == ("resnet32x4", "resnet8x4")
    assert st["ce_weight"] == 0.1 and st["kd_weights"] == {"logit": 0.9}
    assert st["effective_lr"] == 0.05 and summary["args"]["schedule"] == "multistep"
    ckpt = load_checkpoint(str(out / "saved_pth_model" / "r32x4_student.pth"))
    model = model_from_checkpoint(ckpt)
    assert ckpt["model"]["arch"] == "resnet8x4" and model.fc.out_features == 100


def test_the_models_doc_is_written_from_the_registry():
    """docs/MODELS.md is what experiments/models_doc.py writes from the models now."""
    from conftest import run_script
    proc = run_script("experiments/models_doc.py", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
