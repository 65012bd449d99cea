"""Train one plain model with cross-entropy only: the baseline (no teacher, no distillation).

    python model_training.py --model resnet18 --dataset cifar10 --epochs 100
"""
from skipkd.cli import common_parser, finalize_args, model_name
from skipkd.errors import exit_on_user_error
from skipkd.train.baseline import train_baseline
from skipkd.train.distributed import cleanup


def get_args_parser():
    p = common_parser("Train a baseline ResNet with cross-entropy only (no distillation).")
    g = p.add_argument_group("model")
    g.add_argument("--model", "--arch", dest="model", type=model_name, default="resnet18",
                   help="architecture")
    return p


def main(args):
    """Train the model: -> its result (None when --resume finds the run complete). The run lives
    in skipkd.train.baseline."""
    return train_baseline(args)


def parse_args(argv=None):
    parser = get_args_parser()
    # the original baseline ran 200 epochs (the distillation script 300)
    return finalize_args(parser, parser.parse_args(argv), default_eca="none",
                         preset_overrides={"original": {"epochs": 200}}, argv=argv)


if __name__ == "__main__":
    try:
        exit_on_user_error(main)(parse_args())
    finally:
        cleanup()
