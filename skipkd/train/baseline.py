"""A baseline run (model_training.py): one model trained with cross-entropy only, no teacher.

    summary = train_baseline(args)     # args: model_training.parse_args(argv)
"""
import torch

from ..kd import DistillationLoss
from ..models import default_width
from ..roles import Role
from .resume import load_state
from .run import Run
from .setup import build_model, model_config
from .stage import Stage, train_stage

__all__ = ["train_baseline"]


def train_baseline(args):
    """The whole run: -> the model's result (train_stage's), or None when --resume finds the run
    complete."""
    run = Run(args, "model_training.py")
    width = args.width or default_width(args.model)
    key = args.run_name or (f"{args.model}_{args.attn}-{args.placement}_w{width}_"
                            f"{run.data.dataset}_s{args.seed}")

    def check(context):  # a width or placement the family lacks: refused before any file
        with torch.device("meta"):
            build_model(model_config(args, args.model, width, context.data, args.init_weights),
                        torch.device("meta"))

    if not run.open(key, (Role.BASELINE,), (Role.BASELINE,), check):
        return None
    config = model_config(args, args.model, width, run.data, args.init_weights)
    model = build_model(config, run.device, args.channels_last)
    print(f"baseline {args.model} (placement {args.placement}, width {width}) on {run.describe_data()} "
          f"device {run.device}; run '{key}'")
    stage = Stage(Role.BASELINE, config, model, DistillationLoss("none"), args.epochs)
    saved = load_state(run.outputs.checkpoint(Role.BASELINE, state=True)) if args.resume else None
    run.results[Role.BASELINE] = train_stage(stage, run.context, saved)
    run.close(Role.BASELINE, "checkpoint:")
    return run.results[Role.BASELINE]
