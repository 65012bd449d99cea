"""--kd-recipe: each published recipe's resolved weights, options, temperature and CE weight; the
user's own flags win; refusals in one line; the lskd loss on a fixed batch against an
independent float64 computation; and a run's summary records the recipe."""
import numpy as np
import pytest
import torch

import model_training_mid
from skipkd.kd import KD_RECIPES, DistillationLoss, KDBatch, TermContext
from skipkd.models import create_model


def _args(*argv):
    return model_training_mid.parse_args(list(argv))


def _resolved(args):
    return args.kd_weights, args.kd_opt, args.ce_weight, args.temperature


@pytest.mark.parametrize("kd, recipe, weights, opts, ce, temperature", [
    ("logit", "lskd", {"logit": 9.0}, {"logit": {"standardize": True}}, 0.1, 2.0),
    ("dkd", "lskd", None, {"dkd": {"alpha": 9.0, "beta": 72.0, "temperature": 2.0,
                                   "standardize": True}}, 1.0, 4.0),
    ("dist", "dist-cifar", {"dist": 2.0}, {"dist": {"beta": 1.0, "gamma": 1.0, "tau": 4.0}},
     1.0, 4.0),
    ("logit", "hinton", {"logit": 0.9}, {}, 0.1, 4.0),
    # ImageNet's (mdistiller configs/imagenet/r34_r18/, the DIST authors' resnet_dist.yaml)
    ("logit", "hinton-imagenet", {"logit": 0.5}, {}, 0.5, 1.0),
    ("dkd", "dkd-imagenet", None, {"dkd": {"alpha": 1.0, "beta": 0.5, "temperature": 1.0,
                                           "warmup": 1.0}}, 1.0, 4.0),
    ("dist", "dist-imagenet", {"dist": 2.0}, {"dist": {"beta": 1.0, "gamma": 1.0, "tau": 1.0}},
     1.0, 4.0),
    # a term the recipe does not cover keeps its settings
    ("skip+logit", "hinton", {"logit": 0.9}, {}, 0.1, 4.0),
])
def test_each_recipe_resolves_to_its_published_values(kd, recipe, weights, opts, ce, temperature):
    args = _args("--kd", kd, "--kd-recipe", recipe)
    assert _resolved(args) == (weights, opts, ce, temperature)
    assert args.kd_recipe == recipe and vars(args)["kd_recipe"] == recipe  # recorded in args
    assert args.alpha == 0.3 and args.beta == 1.0  # the flags themselves are left alone


def test_the_recipes_and_their_terms():
    assert set(KD_RECIPES) == {"lskd", "dist-cifar", "hinton", "hinton-imagenet", "dkd-imagenet",
                               "dist-imagenet"}
    assert set(KD_RECIPES["lskd"].terms) == {"logit", "dkd"}
    assert set(KD_RECIPES["dist-cifar"].terms) == {"dist"}
    assert set(KD_RECIPES["hinton"].terms) == {"logit"}


def test_what_the_user_gives_wins_over_the_recipe():
    args = _args("--kd", "logit", "--kd-recipe", "lskd", "--kd-weights", "logit=3",
                 "--kd-opt", "logit.standardize=0", "--ce-weight", "1", "--temperature", "5")
    assert _resolved(args) == ({"logit": 3.0}, {"logit": {"standardize": False}}, 1.0, 5.0)
    # a flag given with its default value is still given; --beta is the logit term's weight
    args = _args("--kd", "logit", "--kd-recipe", "hinton", "--beta", "1", "--temperature", "4",
                 "--ce-weight", "1")
    assert _resolved(args) == (None, {}, 1.0, 4.0)
    args = _args("--kd", "dkd", "--kd-recipe", "lskd", "--kd-opt", "dkd.beta=81")
    assert args.kd_opt["dkd"]["beta"] == 81.0 and args.kd_opt["dkd"]["alpha"] == 9.0
    # two terms of one recipe with different published CE weights: settled by --ce-weight
    args = _args("--kd", "logit+dkd", "--kd-recipe", "lskd", "--ce-weight", "0.5")
    assert args.ce_weight == 0.5 and args.kd_weights == {"logit": 9.0}


@pytest.mark.parametrize("argv, words", [
    (["--kd", "skip", "--kd-recipe", "lskd"], "sets up logit or dkd"),
    (["--kd", "skip+dist", "--kd-recipe", "hinton"], "sets up logit"),
    (["--kd", "none", "--kd-recipe", "dist-cifar"], "--kd none does not choose"),
    (["--kd", "logit+dkd", "--kd-recipe", "lskd"], "give --ce-weight"),
    (["--kd", "logit", "--kd-recipe", "fitnets"], "invalid choice"),
])
def test_a_recipe_for_terms_not_chosen_is_refused_in_one_line(argv, words, capsys):
    with pytest.raises(SystemExit):
        _args(*argv)
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def _lskd_expected(s, t, y, T=2.0, ce_weight=0.1, weight=9.0, ddof=1):
    """0.1 * CE + 9 * T^2 * KL(softmax(z_t'/T) || softmax(z_s'/T)), z' = (z - mean) / (std + 1e-7)
    per sample, in float64 numpy (std with Bessel's correction, as the authors' code)."""
    def zscore(z):
        return (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=ddof, keepdims=True) + 1e-7)

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ls = log_softmax(s)
    ce = -np.mean(ls[np.arange(len(y)), y])
    lps, lpt = log_softmax(zscore(s) / T), log_softmax(zscore(t) / T)
    kl = np.mean(np.sum(np.exp(lpt) * (lpt - lps), axis=1))
    return ce_weight * ce + weight * T * T * kl


def test_lskd_logit_loss_on_a_fixed_batch_matches_an_independent_computation():
    args = _args("--kd", "logit", "--kd-recipe", "lskd")
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10, base_width=4).eval()
    student = create_model("resnet8", num_classes=10, base_width=4).eval()
    loss = DistillationLoss(args.kd, teacher, weights=args.term_weights,
                            context=TermContext(temperature=args.temperature),
                            options=args.kd_opt, ce_weight=args.ce_weight, fast_teacher=False)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)
    with torch.no_grad():
        out = student(x)
        s, t = out.logits.double().numpy(), teacher(x).logits.double().numpy()
        total, parts = loss(x, out, y)
    expected = _lskd_expected(s, t, y.numpy())
    assert float(total) == pytest.approx(expected, rel=1e-5)
    # the estimator matters: the biased std gives another value, beyond the tolerance
    assert abs(_lskd_expected(s, t, y.numpy(), ddof=0) - expected) > 1e-3 * abs(expected)
    assert loss.ce_weight == 0.1 and loss.weights == {"logit": 9.0}


def test_lskd_dkd_builds_the_term_with_the_recipe_values():
    args = _args("--kd", "dkd", "--kd-recipe", "lskd")
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10, base_width=4).eval()
    loss = DistillationLoss(args.kd, teacher, options=args.kd_opt, ce_weight=args.ce_weight,
                            context=TermContext(epochs=1))
    term = loss.terms["dkd"]
    assert (term.alpha, term.beta, term.temperature, term.standardize) == (9.0, 72.0, 2.0, True)
    s, t = torch.randn(4, 10), torch.randn(4, 10) * 5
    from skipkd.models import ModelOutput
    a = term(ModelOutput(s, None), ModelOutput(t, None), KDBatch(y=torch.arange(4), epoch=100))
    b = term(ModelOutput(3 * s + 1, None), ModelOutput(t, None), KDBatch(y=torch.arange(4), epoch=100))
    for part in a:  # standardised: the student's logit scale and shift do not matter
        assert float(a[part]) == pytest.approx(float(b[part]), rel=1e-4)


def test_a_run_records_its_recipe(tmp_path):
    out = str(tmp_path / "out")
    args = _args("--dataset", "synthetic", "--synthetic-train-size", "64",
                 "--synthetic-test-size", "32", "--teacher", "resnet8", "--student", "resnet8",
                 "--width", "4", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                 "--eca", "none", "--kd", "logit", "--kd-recipe", "hinton", "--no-progress",
                 "--no-tensorboard", "--output-dir", out, "--run-name", "recipe_run")
    summary = model_training_mid.main(args)
    assert summary["args"]["kd_recipe"] == "hinton"
    student = summary["student"]
    assert student["ce_weight"] == 0.1 and student["kd_weights"] == {"logit": 0.9}
    assert student["temperature"] == 4.0
