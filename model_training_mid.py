"""Two-stage skip-connection knowledge distillation: train (or load) a teacher, then distil a
student from it with CE + alpha * MSE(student hint, teacher hint) (and/or Hinton's logit KD).

    python model_training_mid.py --teacher resnet34 --student resnet18 --kd skip --eca parallel
"""
import copy
import sys
import time
from typing import NamedTuple

import torch

from skipkd.models import ECA_PLACEMENTS, count_parameters, default_width, feature_shapes, hint_shape_of
from skipkd.io.report import results_table
from skipkd.cli import (EPOCHS, WIDTH, common_parser, finalize_args, float_in, kd_options, kd_spec,
                       kd_weights, merge_kd_options, model_name)
from skipkd.errors import UserError, exit_on_user_error
from skipkd.kd import KD_TERMS, DistillationLoss, TermContext
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from skipkd.train.distributed import barrier, cleanup, init_distributed, is_main
from skipkd.io.outputs import RunOutputs
from skipkd.train.resume import finished_stages, load_state
from skipkd.train.setup import (build_model, describe_machine, environment, init_options,
                               make_loaders, prepare_data, resolve_device, seed_everything)
from skipkd.train.stage import RunContext, Stage, train_stage

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
    g.add_argument("--eca", "--eca-placement", dest="eca", choices=ECA_PLACEMENTS, default=None,
                   help="ECA placement in both nets: none, parallel (additive on stage-1 "
                        "shortcuts, the original idea), last (hint block), all (every block) "
                        "(default: parallel)")
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
    return p


class LoadedTeacher(NamedTuple):
    model: torch.nn.Module
    cfg: dict          # the checkpoint's model description (arch, width, eca, ...)
    saved_val: dict    # its validation metrics as saved
    warnings: list     # printed once the run is accepted


def load_teacher(args, data_cfg, device):
    """Rebuild a teacher from --teacher-checkpoint and check it fits this run."""
    path = args.teacher_checkpoint
    ckpt = load_checkpoint(path)
    cfg = ckpt["model"]
    if args.teacher is not None and cfg["arch"] != args.teacher:
        raise UserError(f"{path} holds a {cfg['arch']}, not the requested --teacher {args.teacher}")
    if args.teacher_width is not None and cfg["base_width"] != args.teacher_width:
        raise UserError(f"{path} has base width {cfg['base_width']}, not --teacher-width "
                        f"{args.teacher_width}")
    # a teacher of another class count, channel count or image size cannot teach this student
    # (logits, hints and inputs would not line up): refuse; another dataset of the same shapes
    # can (transfer), so it is only a warning
    t_data = ckpt.get("data") or {}
    here = (data_cfg["num_classes"], data_cfg["in_channels"], data_cfg["image_size"])
    there = (cfg["num_classes"], cfg.get("in_channels", 3),
             cfg.get("image_size", t_data.get("image_size")))
    what = ("classes", "input channels", "px images")
    bad = [f"{t} {w} (this run: {h})" for t, h, w in zip(there, here, what)
           if t is not None and t != h]
    if bad:
        raise UserError(f"{path} was trained for {', '.join(bad)} on "
                        f"{t_data.get('dataset') or 'another dataset'}; {data_cfg['dataset']} "
                        f"needs a teacher of {here[0]} classes x {here[1]} channels x {here[2]} px")
    warnings = []  # printed by main once the run is accepted: a refused run gives one line only
    warn = warnings.append
    if there[2] is None:
        warn(f"{path} does not record its image size; assuming {here[2]} px like this run")
    t_dataset = t_data.get("dataset") or (ckpt.get("args") or {}).get("dataset")
    if t_dataset is None:
        warn(f"{path} does not record its dataset; distilling on {data_cfg['dataset']} anyway")
    elif t_dataset != data_cfg["dataset"]:
        warn(f"{path} was trained on {t_dataset}, this run is on {data_cfg['dataset']}: same "
             f"{here[0]} classes x {here[1]} channels x {here[2]} px, so it is used, but its "
             f"classes need not mean this dataset's")
    t_mean, t_std = t_data.get("mean"), t_data.get("std")
    if t_mean is not None and t_std is not None and (
            max(abs(a - b) for a, b in zip(t_mean, data_cfg["mean"])) > 0.05
            or max(abs(a / b - 1) for a, b in zip(t_std, data_cfg["std"])) > 0.2):
        warn(f"{path} normalised its inputs with mean {[round(v, 3) for v in t_mean]} / std "
             f"{[round(v, 3) for v in t_std]}; this run feeds it mean "
             f"{[round(v, 3) for v in data_cfg['mean']]} / std "
             f"{[round(v, 3) for v in data_cfg['std']]} (--normalize differs?)")
    teacher = model_from_checkpoint(ckpt, path).to(device)
    saved = (ckpt.get("metrics") or {}).get("val") or {}
    return LoadedTeacher(teacher, cfg, saved, warnings)


def build_loss(args, run, student, teacher) -> DistillationLoss:
    """The student's loss: CE plus the --kd terms, built from both networks' feature shapes and
    the training set (size, labels). A term that cannot be built for these networks or options
    is a UserError."""
    cfg = run.data_cfg
    shape_of = lambda m: feature_shapes(m, cfg["in_channels"], cfg["image_size"])  # noqa: E731
    context = TermContext(student_shapes=shape_of(student),
                          teacher_shapes=shape_of(teacher) if teacher is not None else {},
                          num_classes=cfg["num_classes"], epochs=args.epochs,
                          num_samples=len(run.loaders.train.labels),
                          train_labels=run.loaders.train.labels)
    try:
        return DistillationLoss(args.kd, teacher, alpha=args.alpha, beta=args.beta,
                                temperature=args.temperature, compile_teacher=args.compile,
                                weights=args.kd_weights, context=context,
                                options=args.kd_opt, ce_weight=args.ce_weight).to(run.device)
    except ValueError as exc:
        raise UserError(f"--kd {args.kd}: {exc}") from None
    except (RuntimeError, MemoryError) as exc:  # e.g. a memory bank that does not fit
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"--kd {args.kd}: cannot build the terms on this machine ({first})") from None


def check_run(args, run, loaded, teacher_width, student_width):
    """Build both networks on the meta device (nothing is allocated or computed) and the
    distillation terms over them, so a model or term that does not fit (a width or placement
    the family lacks, an option out of range, a stage the networks do not have) is refused
    before any output is touched or any epoch trained."""
    # the terms' own parameters draw random numbers: this check must not move the generators
    # that the teacher's initialisation draws from next (same seed, same teacher, any --kd)
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        meta = dict(device=torch.device("meta"), channels_last=False, attn=args.attn,
                    **init_options(args))
        with torch.device("meta"):
            student = build_model(args.student, run.data_cfg, student_width, args.eca,
                                  args.eca_k, **meta)[0]
            if args.kd == "none":
                return
            teacher = (copy.deepcopy(loaded.model).to("meta") if loaded is not None else
                       build_model(args.teacher, run.data_cfg, teacher_width, args.eca,
                                   args.eca_k, **meta)[0])
        build_loss(args, run, student, teacher)


def teacher_stage(args, run, loaded, width, epochs) -> tuple:
    """(the frozen teacher, its result for the summary): the --teacher-checkpoint one, or one
    trained here (then the best checkpoint on disk is the one distilled from)."""
    if loaded is not None:
        teacher, cfg, saved = loaded.model, loaded.cfg, loaded.saved_val
        print(f"teacher: {cfg['arch']} (eca {cfg['eca']}, width {cfg['base_width']}) "
              f"loaded from {args.teacher_checkpoint}")
        return teacher, {"arch": cfg["arch"], "eca": cfg["eca"], "base_width": cfg["base_width"],
                         "params": count_parameters(teacher), "loaded": True,
                         "checkpoint": args.teacher_checkpoint,
                         "best_val_acc": saved.get("acc", float("nan")), "final_val_acc": None}
    teacher, cfg = build_model(args.teacher, run.data_cfg, width, args.eca, args.eca_k,
                               run.device, args.channels_last, attn=args.attn,
                               **init_options(args))
    print(f"teacher: {args.teacher} (eca {args.eca}, width {width}), "
          f"{count_parameters(teacher):,} parameters, {epochs} epochs")
    saved = load_state(run.outputs.checkpoint("teacher", state=True)) if args.resume else None
    result = train_stage(Stage("teacher", args.teacher, teacher, cfg, DistillationLoss("none"),
                               epochs), run, saved)
    teacher = model_from_checkpoint(load_checkpoint(result["checkpoint"])).to(run.device)
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher, result


def student_stage(args, run, teacher, width) -> dict:
    """Distil the student from the frozen teacher (or train it alone with --kd none)."""
    seed_everything(args.seed + 1)
    student, cfg = build_model(args.student, run.data_cfg, width, args.eca, args.eca_k,
                               run.device, args.channels_last, attn=args.attn,
                               **init_options(args))
    loss_fn = build_loss(args, run, student, teacher)
    student.request_features(loss_fn.features)  # what the terms read besides logits and hint
    conn = loss_fn.connector
    s_hint = hint_shape_of(student, run.data_cfg["in_channels"], run.data_cfg["image_size"])
    t_hint = (hint_shape_of(teacher, run.data_cfg["in_channels"], run.data_cfg["image_size"])
              if teacher is not None else None)
    learned = {n: c for n, c in loss_fn.learned_parameters().items() if c}
    print(f"student: {args.student} (eca {args.eca}, width {width}), "
          f"{count_parameters(student):,} parameters, kd {args.kd}"
          + (f", connector {s_hint} -> {t_hint}" if conn is not None else "")
          + (f"; learned for distillation, not exported: "
             f"{', '.join(f'{n} {c:,}' for n, c in learned.items())} params" if learned else ""))
    saved = load_state(run.outputs.checkpoint("student", state=True)) if args.resume else None
    result = train_stage(Stage("student", args.student, student, cfg, loss_fn, args.epochs), run,
                         saved)
    result.update({"kd": args.kd, "ce_weight": loss_fn.ce_weight, "kd_weights": loss_fn.weights,
                   "kd_options": loss_fn.options,
                   "kd_learned_params": loss_fn.learned_parameters(), "alpha": args.alpha,
                   "beta": args.beta, "temperature": args.temperature,
                   "hint_shape": list(s_hint) if s_hint else None,
                   "teacher_hint_shape": list(t_hint) if t_hint else None,
                   "connector_params": count_parameters(conn) if conn is not None else 0})
    return result


def main(args):
    init_distributed(args.device)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    train, test, data_cfg = prepare_data(args)
    loaded = None  # a teacher from --teacher-checkpoint
    if args.teacher_checkpoint and args.kd != "none":
        loaded = load_teacher(args, data_cfg, device)
        args.teacher = loaded.cfg["arch"]
    args.teacher = args.teacher or "resnet34"
    teacher_width = (loaded.cfg["base_width"] if loaded is not None else
                     args.teacher_width or args.width or default_width(args.teacher))
    student_width = args.student_width or args.width or default_width(args.student)
    key = args.run_name or (f"{args.teacher}-{args.student}_kd-{args.kd}_{args.attn}-{args.eca}_"
                            f"w{teacher_width}-{student_width}_{data_cfg['dataset']}_s{args.seed}")
    outputs = RunOutputs(args.output_dir, key)
    run = RunContext(args, device, make_loaders(train, test, data_cfg, args, device), data_cfg,
                     outputs)
    check_run(args, run, loaded, teacher_width, student_width)
    outputs.prepare(args.overwrite, args.resume, roles=("teacher", "student"), write=is_main(),
                    tensorboard=args.tensorboard)
    for msg in (loaded.warnings if loaded is not None and is_main() else ()):
        print(f"warning: {msg}", file=sys.stderr, flush=True)
    trained = ("student",) if loaded is not None or args.kd == "none" else ("teacher", "student")
    if args.resume and finished_stages(outputs, trained, args):
        print(f"run '{key}' is complete: nothing to resume (its outputs are unchanged)")
        return None
    barrier()
    print(f"run '{key}': {data_cfg['dataset']} [{data_cfg['train_size']} train / "
          f"{data_cfg['test_size']} test, {data_cfg['protocol']}], device {device}, "
          f"preset {args.preset}")
    start = time.perf_counter()
    summary = {"run_key": key, "script": "model_training_mid.py", "dataset": data_cfg,
               "args": vars(args), "environment": environment(device)}
    teacher = None
    if args.kd != "none":
        teacher, summary["teacher"] = teacher_stage(args, run, loaded, teacher_width,
                                                    args.teacher_epochs or args.epochs)
    summary["student"] = student_stage(args, run, teacher, student_width)
    summary["wall_time_s"] = round(time.perf_counter() - start, 2)
    if is_main():
        outputs.write_summary(summary)
    print()
    print(results_table([(role, summary[role]) for role in ("teacher", "student")
                         if role in summary]))
    print(f"\nstudent checkpoint: {summary['student']['checkpoint']}\nsummary:            "
          f"{outputs.summary}\nran on:             {data_cfg['dataset']} "
          f"({data_cfg['train_size']} train / {data_cfg['test_size']} test), "
          f"{describe_machine(device, args.precision)}\n"
          f"wall time:          {summary['wall_time_s']:.1f}s")
    return summary


def parse_args(argv=None):
    parser = get_args_parser()
    args = finalize_args(parser, parser.parse_args(argv), default_eca="parallel", argv=argv)
    args.kd_opt = merge_kd_options(parser, args.kd, args.kd_opt, args.kd_weights)
    return args


if __name__ == "__main__":
    try:
        exit_on_user_error(main)(parse_args())
    finally:
        cleanup()
