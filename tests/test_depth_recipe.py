"""The recipe settings behind "a teacher that teaches" (docs/RESULTS.md): --init,
--zero-init-residual and --bn-weight-decay do what they say, on the real models and optimiser."""

import pytest
import torch
from torch import nn

from skipkd.models import create_model
from skipkd.models.init import apply_init_, residual_tail_norms
from skipkd.train.optim import OptimRecipe, build_optimizer


def _branch_tails(model):
    """The last module of every residual branch, found independently of models/init.py."""
    tails = []
    for name, m in model.named_modules():
        if name.endswith(".residual") and isinstance(m, nn.Sequential):
            tails.append(m[-1])
    return tails


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet20"])
def test_zero_init_residual_zeroes_exactly_each_branchs_last_batchnorm(arch):
    model = create_model(arch, base_width=4)
    tails = _branch_tails(model)
    blocks = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet20": 9}[arch]
    assert len(tails) == blocks and all(isinstance(t, nn.BatchNorm2d) for t in tails)
    assert {id(t) for t in residual_tail_norms(model)} == {id(t) for t in tails}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_init_(model, "model", zero_residual=True)
    zeroed = {id(t.weight) for t in tails}
    for name, p in model.named_parameters():
        if id(p) in zeroed:
            assert torch.count_nonzero(p) == 0, name
        else:
            assert torch.equal(p, before[name]), name  # nothing else moved, no numbers drawn


def test_a_zero_initialised_block_starts_as_its_shortcut():
    """With the branch's last BN at 0, a block's output is relu(shortcut(x)) in training mode."""
    model = create_model("resnet18", base_width=4)
    apply_init_(model, "model", zero_residual=True)
    block = model.stages[1][0]  # a projection block
    x = torch.randn(4, 4, 8, 8)
    out, shortcut = block.forward_with_shortcut(x)
    torch.testing.assert_close(out, torch.relu(shortcut), rtol=0, atol=0)


def test_init_schemes_redraw_and_model_keeps():
    torch.manual_seed(0)
    a = create_model("resnet18", base_width=4)
    keep = {n: p.detach().clone() for n, p in a.named_parameters()}
    apply_init_(a, "model")
    assert all(torch.equal(p, keep[n]) for n, p in a.named_parameters())
    apply_init_(a, "kaiming")
    conv = a.stages[0][0].residual[0].weight
    assert not torch.equal(conv, keep["stages.0.0.residual.0.weight"])
    # kaiming (fan_out, ReLU gain): std sqrt(2 / (3 * 3 * out_channels)), measured on a conv
    # wide enough (64 x 64 x 3 x 3 = 36,864 draws) for the sample std to be within ~1% of it
    wide = apply_init_(create_model("resnet18", base_width=64), "kaiming")
    conv = wide.stages[0][0].residual[0].weight
    assert conv.std().item() == pytest.approx((2 / (9 * conv.shape[0])) ** 0.5, rel=0.03)
    with pytest.raises(ValueError):
        apply_init_(a, "xavier")


@pytest.mark.parametrize("bn_decay", [True, False])
def test_bn_weight_decay_flag_sets_the_groups(bn_decay):
    model = create_model("resnet18", base_width=4)
    args = OptimRecipe(lr=0.1, lr_scaling="none", batch_size=128, momentum=0.9, nesterov=True,
                  weight_decay=5e-4, bn_weight_decay=bn_decay, preset="default")
    opt = build_optimizer(list(model.parameters()), args, "resnet18")
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        want = 5e-4 if (bn_decay or p.ndim > 1) else 0.0
        assert decay[id(p)] == want, name


def test_the_flags_parse_and_presets_fill_them():
    """The script's own parser takes the flags; the original work's preset keeps its init."""
    import model_training
    args = model_training.parse_args(["--dataset", "synthetic", "--zero-init-residual",
                                      "--init", "kaiming", "--no-bn-weight-decay"])
    assert args.zero_init_residual is True and args.init == "kaiming"
    assert args.bn_weight_decay is False
    default = model_training.parse_args(["--dataset", "synthetic"])
    original = model_training.parse_args(["--dataset", "synthetic", "--preset", "original"])
    assert original.zero_init_residual is False and original.init == "model"
    assert original.bn_weight_decay is True
    assert default.init == "model" and default.bn_weight_decay is True
