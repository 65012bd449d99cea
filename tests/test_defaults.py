"""Defaults a reviewer would accept: a held-out validation split unless the original recipe is
asked for, a learning-rate schedule that obeys --t-max (checked against torch's schedulers), the
logged rate of an epoch being its last step's, BatchNorm recalibration, the help text, the
original flags' notice and the ECA convolution's initialisation."""
import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import run_script
from skipkd.models import create_model
from skipkd.train.engine import recalibrate_bn, train_one_epoch
from skipkd.kd import DistillationLoss
from skipkd.train.optim import OptimRecipe, build_scheduler

SPE = 5  # steps per epoch in the schedule tests
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
# learning rates are Python floats (float64) on both sides: torch's recursive forms and the
# closed forms agree to ~steps * 1e-16 relative on any CPU; abs for rates that reach 0
F64 = dict(rel=1e-10, abs=1e-12)


def _rates(epochs, t_max=None, warmup=0.0, schedule="step", steps=None):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    args = OptimRecipe(t_max=t_max, warmup_epochs=warmup, schedule=schedule)
    sched = build_scheduler(opt, args, SPE, epochs)
    out = []
    for _ in range(steps or epochs * SPE):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _torch_rates(scheduler_fn, steps):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = scheduler_fn(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("t_max", [2, 4, 8])
def test_step_schedule_is_cosine_annealing_over_t_max_epochs(t_max):
    epochs = 8
    steps = min(epochs, t_max) * SPE
    want = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max * SPE),
                        steps)
    assert _rates(epochs, t_max)[:steps] == pytest.approx(want, **F64)


def test_t_max_changes_the_step_schedule():
    seqs = [tuple(_rates(8, t)) for t in (None, 2, 5)]  # None: the 8 epochs
    assert len(set(seqs)) == 3
    assert _rates(8)[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (8 * SPE - 1) / (8 * SPE))),
                                          **F64)


def test_warm_up_then_cosine_is_torchs_sequential_schedule():
    epochs, warm = 6, 1.0
    w = int(warm * SPE)
    t_max = epochs - warm  # the default: the rate ends at 0

    def torch_sched(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / w, end_factor=1.0,
                                                total_iters=w - 1)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=int(t_max * SPE))
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[w])

    want = _torch_rates(torch_sched, epochs * SPE)
    assert _rates(epochs, None, warm) == pytest.approx(want, **F64)


@pytest.mark.parametrize("t_max", [3, 10])
def test_epoch_schedule_is_cosine_annealing_stepped_per_epoch(t_max):
    epochs = 6
    per_epoch = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max),
                             epochs)
    got = _rates(epochs, t_max, schedule="epoch")
    for e in range(epochs):
        assert got[e * SPE:(e + 1) * SPE] == pytest.approx([per_epoch[e]] * SPE, **F64)


def test_logged_rate_of_a_warm_up_epoch_is_its_last_steps():
    torch.manual_seed(0)
    model = create_model("resnet18", base_width=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = OptimRecipe(t_max=None, warmup_epochs=1.0, schedule="step")
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(SPE)]
    sched = build_scheduler(opt, args, SPE, 3)
    used = []

    class Record:  # the optimiser's rate when each step runs
        def __iter__(self):
            for b in batches:
                used.append(opt.param_groups[0]["lr"])
                yield b

        def __len__(self):
            return SPE

    m = train_one_epoch(model, DistillationLoss("none"), Record(), opt, sched, show_progress=False)
    assert used[0] == pytest.approx(0.1 / SPE, **F64) and used[-1] == pytest.approx(0.1, **F64)
    assert m["lr"] == used[-1] and m["lr_start"] == used[0]


def test_bn_recalibration_is_the_average_of_batch_statistics():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net[1].running_mean.fill_(100.0)  # stale statistics
    net[1].running_var.fill_(1e4)
    batches = [(torch.randn(8, 3, 8, 8) * (i + 1) + i, None) for i in range(4)]
    with torch.no_grad():
        feats = [net[0](x) for x, _ in batches[:3]]
    want_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    want_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    net.eval()
    assert recalibrate_bn(net, batches, 3) == 3
    # float32, BN's kernel sums the 3 x 288 values in another order: ~log2(864) = 10 EPS32 times
    # their size (up to ~5 here)
    torch.testing.assert_close(net[1].running_mean, want_mean, rtol=64 * EPS32, atol=64 * EPS32)
    torch.testing.assert_close(net[1].running_var, want_var, rtol=64 * EPS32, atol=64 * EPS32)
    assert not net.training and net[1].momentum == 0.1
    w = net[0].weight.clone()
    recalibrate_bn(net, batches, 3)
    assert torch.equal(w, net[0].weight)


def test_eca_convolutions_are_orthogonally_initialised():
    """SPEC: orthogonal init for conv weights; for ECA's 1 x k kernel that is a unit vector."""
    for eca in ("parallel", "all"):
        model = create_model("resnet18", base_width=8, placement=eca)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
        assert convs
        for c in convs:  # a unit vector, up to float32 rounding of its k entries
            assert c.weight.norm().item() == pytest.approx(1.0, abs=4 * c.weight.numel() * EPS32)


@pytest.mark.parametrize("script", ["model_training.py", "model_training_mid.py"])
def test_help_gives_one_default_per_flag(script):
    import importlib
    mod = importlib.import_module(script[:-3])
    parser = mod.get_args_parser()
    fmt = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = fmt._get_help_string(action)
        assert text.count("(default:") <= 1, (action.option_strings, text)
        assert "(default: None)" not in text, action.option_strings


def test_original_flags_without_the_original_preset_say_how_they_are_read(capsys):
    import model_training
    args = model_training.parse_args(["--batch", "32", "--lr", "0.001"])
    out = capsys.readouterr().out
    assert "original flags (--batch)" in out and "0.00025" in out and "--preset original" in out
    assert args.val_split == 0.1
    model_training.parse_args(["--preset", "original", "--batch", "32", "--lr", "0.001"])
    assert capsys.readouterr().out == ""


SMALL = ["--dataset", "synthetic", "--synthetic-train-size", "200", "--synthetic-test-size", "60",
         "--width", "4", "--batch-size", "50", "--eval-batch-size", "60", "--epochs", "2",
         "--device", "cpu", "--no-progress", "--no-tensorboard"]


@pytest.mark.parametrize("preset,protocol", [("default", "held-out-val"),
                                             ("original", "test-as-val")])
def test_protocol_of_each_preset_is_in_the_summary(tmp_path, preset, protocol):
    proc = run_script("model_training.py", *SMALL, "--preset", preset, "--output-dir", tmp_path,
                      "--run-name", "p", "--bn-recalibrate", "2")
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "numpy_outputs" / "summary_p.json").read_text())
    r = s["baseline"]
    assert r["protocol"].startswith(protocol) and s["dataset"]["protocol"].startswith(protocol)
    assert 0 <= r["test_acc_best"] <= 100 and 0 <= r["test_acc_last"] <= 100
    if preset == "default":
        assert s["dataset"]["val_size"] == 20 and s["dataset"]["train_size"] == 180
        assert r["test_size"] == 60
    else:
        assert r["test_acc_best"] == r["best_val_acc"]
    assert "train ce" in proc.stdout and "val ce" in proc.stdout


def test_bn_recalibration_averages_the_batches_it_is_given():
    """recalibrate_bn (--bn-recalibrate N): each BatchNorm's running statistics become the plain
    average of the per-batch statistics of N train-mode batches, computed here independently
    for the stem's BatchNorm from its convolution's output."""
    torch.manual_seed(0)
    model = create_model("resnet18", base_width=4).eval()
    bn = model.stem[1]
    bn.running_mean.fill_(100.0)  # stale statistics, far from the data's
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 3, 16, 16, generator=g), None) for _ in range(3)]
    assert recalibrate_bn(model, iter(batches), 2) == 2  # only the first two are used
    with torch.no_grad():
        outs = [F.conv2d(x, model.stem[0].weight, padding=1) for x, _ in batches[:2]]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).flatten(1).var(dim=1) for o in outs]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-6)
    assert not model.training and bn.momentum == 0.1  # put back as it was


def test_the_bn_recalibrate_flag_acts_on_the_saved_model(tmp_path):
    """The same run with and without --bn-recalibrate: the same weights, other BN statistics."""
    states = {}
    for n in ("0", "3"):
        out = tmp_path / n
        proc = run_script("model_training.py", *SMALL, "--epochs", "1", "--output-dir", out,
                          "--run-name", "r", "--bn-recalibrate", n)
        assert proc.returncode == 0, proc.stderr
        states[n] = torch.load(out / "saved_pth_model" / "r_baseline_last.pth",
                               weights_only=True)["state_dict"]
    same = [k for k in states["0"]
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(states["0"][k], states["3"][k]) for k in same)
    assert not torch.equal(states["0"]["stem.1.running_mean"], states["3"]["stem.1.running_mean"])
