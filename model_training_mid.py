"""Two-stage skip-connection knowledge distillation: train (or load) a teacher, then distil a
student from it with CE + alpha * MSE(student hint, teacher hint) (and/or Hinton's logit KD).

    python model_training_mid.py --teacher resnet34 --student resnet18 --kd skip --eca parallel

The flags (and --kd-recipe) are built in skipkd.cli (distill_parser); the stages live in
skipkd.train.distill.
"""
from skipkd.cli import distill_parser as get_args_parser  # noqa: F401  (docs, tests)
from skipkd.cli import parse_distill_args as parse_args
from skipkd.errors import exit_on_user_error
from skipkd.train.distill import distill
from skipkd.train.distributed import cleanup


def main(args):
    """Train (or load) the teacher, then distil the student: -> the run's summary (None when
    --resume finds the run complete)."""
    return distill(args)


if __name__ == "__main__":
    try:
        exit_on_user_error(main)(parse_args())
    finally:
        cleanup()
