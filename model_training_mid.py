"""Two-stage skip-connection knowledge distillation: train (or load) a teacher, then distil a
student from it with CE + alpha * MSE(student hint, teacher hint) (and/or Hinton's logit KD).

    python model_training_mid.py --teacher resnet34 --student resnet18 --kd skip --eca parallel
"""
import argparse

from skipkd.cli import (EPOCHS, WIDTH, common_parser, finalize_args, float_in, kd_options, kd_spec,
                        kd_weights, merge_kd_options, model_name)
from skipkd.errors import exit_on_user_error
from skipkd.kd import KD_RECIPES, KD_TERMS, parse_kd, resolve_recipe
from skipkd.train.distill import distill
from skipkd.train.distributed import cleanup


def get_args_parser():
    p = common_parser("Train a ResNet teacher, then distil a student from it through the "
                      "teacher's skip-connection (shortcut) features.")
    g = p.add_argument_group("teacher and student")
    g.add_argument("--teacher", "--model", dest="teacher", type=model_name, default=None,
                   help="teacher architecture (default: resnet34, or the one in --teacher-checkpoint)")
    g.add_argument("--student", "--model_kd", dest="student", type=model_name, default="resnet18",
                   help="student architecture (the same as the teacher = self-distillation)")
    g.add_argument("--teacher-checkpoint", default=None,
                   help="reuse this trained teacher (.pth from saved_pth_model/) instead of training one")
    g.add_argument("--teacher-width", type=WIDTH, default=None,
                   help="teacher base width (default: --width)")
    g.add_argument("--student-width", type=WIDTH, default=None,
                   help="student base width (default: --width)")
    g.add_argument("--teacher-epochs", type=EPOCHS, default=None,
                   help="teacher epochs (default: --epochs)")
    g = p.add_argument_group("distillation")
    g.add_argument("--kd", type=kd_spec, default="skip", metavar="TERMS",
                   help=f"distillation terms joined by '+', from {', '.join(KD_TERMS)} "
                        f"(docs/METHODS.md): skip = alpha * hint MSE (this toolkit's method), "
                        f"logit = beta * Hinton KD, skip+logit = both; none = the student alone "
                        f"with the same recipe (the fair baseline)")
    g.add_argument("--kd-weights", type=kd_weights, default=None, metavar="NAME=W,...",
                   help="per-term weights, e.g. skip=0.3,logit=1 (default: --alpha for skip, "
                        "--beta for logit, each other term's own default)")
    g.add_argument("--kd-opt", type=kd_options, action="append", default=None,
                   metavar="TERM.KEY=V,...",
                   help="options of the chosen terms, e.g. dkd.warmup=5 or logit.standardize=1 "
                        "(repeatable; each term's options and defaults: docs/METHODS.md)")
    g.add_argument("--ce-weight", type=float_in(0, 10_000), default=1.0,
                   help="weight of the student's cross-entropy (Hinton KD's CIFAR-100 runs in the "
                        "literature use 0.1 with logit=0.9: docs/BENCHMARK.md)")
    g.add_argument("--alpha", type=float_in(0, 10_000), default=0.3, help="weight of the skip (hint) loss")
    g.add_argument("--beta", type=float_in(0, 10_000), default=1.0, help="weight of the logit KD loss")
    g.add_argument("--temperature", type=float_in(0, 1000, lo_open=True), default=4.0,
                   help="temperature of the logit term (dkd and dist have their own: "
                        "--kd-opt dkd.temperature=T, dist.tau=T)")
    g.add_argument("--kd-recipe", choices=list(KD_RECIPES), default=None,
                   help="a published recipe for the chosen terms: fills --kd-weights, --kd-opt, "
                        "--ce-weight and --temperature where not given (lskd: logit or dkd with "
                        "logit standardisation; dist-cifar: DIST's CIFAR config; hinton: "
                        "RepDistiller's KD split; docs/PRESETS.md)")
    return p


_UNSET = object()
RECIPE_FLAGS = ("ce_weight", "temperature", "alpha", "beta")  # scalar flags a recipe may fill


def apply_kd_recipe(parser, args, argv=None):
    """--kd-recipe: the recipe's values where the command line gave none (a flag given with its
    default value counts as given); refusals are one-line errors."""
    if args.kd_recipe is None:
        return args
    probe = argparse.Namespace(**dict.fromkeys(RECIPE_FLAGS, _UNSET))
    parser.parse_known_args(argv, namespace=probe)  # argparse fills no default over a set attribute
    given = {d for d in RECIPE_FLAGS if getattr(probe, d) is not _UNSET}
    try:
        got = resolve_recipe(args.kd_recipe, parse_kd(args.kd), args.kd_weights, args.kd_opt, given)
    except ValueError as exc:
        parser.error(str(exc))
    args.kd_weights, args.kd_opt = got["kd_weights"] or None, got["kd_opt"]
    args.ce_weight = args.ce_weight if got["ce_weight"] is None else got["ce_weight"]
    args.temperature = args.temperature if got["temperature"] is None else got["temperature"]
    return args


def main(args):
    """Train (or load) the teacher, then distil the student: -> the run's summary (None when
    --resume finds the run complete). The stages live in skipkd.train.distill."""
    return distill(args)


def parse_args(argv=None):
    parser = get_args_parser()
    args = finalize_args(parser, parser.parse_args(argv), default_eca="parallel", argv=argv)
    args.kd_opt = merge_kd_options(parser, args.kd, args.kd_opt, args.kd_weights)
    return apply_kd_recipe(parser, args, argv)


if __name__ == "__main__":
    try:
        exit_on_user_error(main)(parse_args())
    finally:
        cleanup()
