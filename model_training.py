"""Train one plain model with cross-entropy only: the baseline (no teacher, no distillation).

    python model_training.py --model resnet18 --dataset cifar10 --epochs 100

The flags are built in skipkd.cli (baseline_parser); the run lives in skipkd.train.baseline.
"""
from skipkd.cli import baseline_parser as get_args_parser  # noqa: F401  (docs, tests)
from skipkd.cli import parse_baseline_args as parse_args
from skipkd.errors import exit_on_user_error
from skipkd.train.baseline import train_baseline
from skipkd.train.distributed import cleanup


def main(args):
    """Train the model: -> its result (None when --resume finds the run complete)."""
    return train_baseline(args)


if __name__ == "__main__":
    try:
        exit_on_user_error(main)(parse_args())
    finally:
        cleanup()
