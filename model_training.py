"""Train one plain model with cross-entropy only: the baseline (no teacher, no distillation).

    python model_training.py --model resnet18 --dataset cifar10 --epochs 100
"""
import time

import torch

from skipkd.models import ECA_PLACEMENTS, default_width
from skipkd.io.report import results_table
from skipkd.cli import common_parser, finalize_args, model_name
from skipkd.errors import exit_on_user_error
from skipkd.kd import DistillationLoss
from skipkd.train.distributed import barrier, cleanup, init_distributed, is_main
from skipkd.io.outputs import RunOutputs
from skipkd.train.resume import finished_stages, load_state
from skipkd.train.setup import (build_model, environment, init_options, make_loaders,
                               prepare_data, resolve_device, seed_everything)
from skipkd.train.stage import RunContext, Stage, train_stage


def get_args_parser():
    p = common_parser("Train a baseline ResNet with cross-entropy only (no distillation).")
    g = p.add_argument_group("model")
    g.add_argument("--model", "--arch", dest="model", type=model_name, default="resnet18",
                   help="architecture")
    g.add_argument("--eca", "--eca-placement", dest="eca", choices=ECA_PLACEMENTS, default=None,
                   help="ECA placement: none, parallel (additive on stage-1 shortcuts), last "
                        "(hint block), all (every block) (default: none)")
    return p


def main(args):
    init_distributed(args.device)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    train, test, data_cfg = prepare_data(args)
    width = args.width or default_width(args.model)
    key = args.run_name or (f"{args.model}_{args.attn}-{args.eca}_w{width}_"
                            f"{data_cfg['dataset']}_s{args.seed}")
    with torch.device("meta"):  # a width or placement the family lacks: refused before any file
        build_model(args.model, data_cfg, width, args.eca, args.eca_k, torch.device("meta"),
                    attn=args.attn, **init_options(args))
    outputs = RunOutputs(args.output_dir, key)
    outputs.prepare(args.overwrite, args.resume, roles=("baseline",), write=is_main(),
                    tensorboard=args.tensorboard)
    if args.resume and finished_stages(outputs, ("baseline",), args):
        print(f"run '{key}' is complete: nothing to resume (its outputs are unchanged)")
        return None
    barrier()
    run = RunContext(args, device, make_loaders(train, test, data_cfg, args, device), data_cfg,
                     outputs)
    model, model_cfg = build_model(args.model, data_cfg, width, args.eca, args.eca_k, device,
                                   args.channels_last, attn=args.attn, **init_options(args))
    print(f"baseline {args.model} (eca {args.eca}, width {width}) on {data_cfg['dataset']} "
          f"[{data_cfg['train_size']} train / {data_cfg['test_size']} test, {data_cfg['protocol']}] "
          f"device {device}; run '{key}'")
    start = time.perf_counter()
    stage = Stage("baseline", args.model, model, model_cfg, DistillationLoss("none"), args.epochs,
                  array_role="")
    saved = load_state(outputs.checkpoint("baseline", state=True)) if args.resume else None
    result = train_stage(stage, run, saved)
    if is_main():
        outputs.write_summary({"run_key": key, "script": "model_training.py", "dataset": data_cfg,
                           "args": vars(args), "baseline": result, "environment": environment(device),
                           "wall_time_s": round(time.perf_counter() - start, 2)})
    print()
    print(results_table([("baseline", result)]))
    print(f"\ncheckpoint: {result['checkpoint']}\nsummary:    {outputs.summary}")
    return result


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
