"""--preset crd, the KD literature's CIFAR-100 recipe: its values, the step-decay schedule against
torch's MultiStepLR, the per-model learning rate, and the cross-entropy weight."""
import types

import pytest
import torch

import model_training_mid
from utils.kd import DistillationLoss
from utils.train.optim import base_lr, build_scheduler, lr_milestones


def test_the_preset_holds_the_published_recipe():
    args = model_training_mid.parse_args(["--preset", "crd", "--dataset", "synthetic"])
    assert (args.epochs, args.batch_size, args.momentum, args.nesterov, args.weight_decay) == \
        (240, 64, 0.9, False, 5e-4)
    assert (args.schedule, args.lr_decay, args.warmup_epochs) == ("multistep", 0.1, 0.0)
    assert (args.crop_padding, args.hflip, args.vflip, args.normalize) == (4, True, False, True)
    assert args.val_split == 0.0  # the tables report the best test-set epoch
    assert lr_milestones(args, 240) == [150, 180, 210]
    assert lr_milestones(args, 24) == [15, 18, 21]  # scaled to a shorter run
    assert base_lr(args, "resnet8x4") == 0.05
    assert base_lr(args, "ShuffleV2") == base_lr(args, "MobileNetV2") == 0.01
    given = model_training_mid.parse_args(["--preset", "crd", "--lr", "0.2", "--lr-milestones",
                                           "5,2"])
    assert base_lr(given, "ShuffleV1") == 0.2 and lr_milestones(given, 240) == [2, 5]


@pytest.mark.parametrize("milestones", [None, [2, 5]])
def test_multistep_matches_torch_multisteplr(milestones):
    """Stepped once per batch, the rate changes only at epoch boundaries and equals
    MultiStepLR stepped once per epoch."""
    steps, epochs = 3, 8
    args = types.SimpleNamespace(schedule="multistep", warmup_epochs=0.0, t_max=None,
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
    assert weighted.item() == pytest.approx(0.1 * plain.item(), rel=1e-6)
    assert parts_w["ce"].item() == pytest.approx(parts["ce"].item())  # the part is plain CE
    with pytest.raises(ValueError):
        DistillationLoss("none", ce_weight=-1)
