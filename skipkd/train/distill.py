"""A distillation run (model_training_mid.py): train or load the teacher, then distil the
student from it with CE plus the --kd terms; or, with --kd none, the student alone under the same
recipe (the fair baseline).

    summary = distill(args)     # args: model_training_mid.parse_args(argv)
"""
import argparse
import copy

import torch

from ..errors import UserError
from ..roles import Role
from ..kd import DistillationLoss, TermContext
from ..models import count_parameters, default_width, feature_shapes, hint_shape_of
from .resume import load_state
from .run import Run
from .setup import build_model, model_config, seed_everything
from .stage import Stage, train_stage
from .teacher import load_teacher, random_teacher, teacher_stage, weights_teacher

__all__ = ["distill", "build_loss", "check_networks", "student_stage"]


def build_loss(args, context, student, teacher) -> DistillationLoss:
    """The student's loss: CE plus the --kd terms, built from both networks' feature shapes and
    the training set (size, labels). A term that cannot be built for these networks or options
    is a UserError."""
    data = context.data
    shape_of = lambda m: feature_shapes(m, data.in_channels, data.image_size)  # noqa: E731
    terms = TermContext(student_shapes=shape_of(student),
                        teacher_shapes=shape_of(teacher) if teacher is not None else {},
                        num_classes=data.num_classes, epochs=args.epochs,
                        num_samples=len(context.loaders.train.labels),
                        train_labels=context.loaders.train.labels, temperature=args.temperature)
    try:
        return DistillationLoss(args.kd, teacher, weights=args.term_weights, context=terms,
                                options=args.kd_opt, ce_weight=args.ce_weight,
                                compile_teacher=args.compile and args.compile_mode
                                ).to(context.device)
    except ValueError as exc:
        raise UserError(f"--kd {args.kd}: {exc}") from None
    except (RuntimeError, MemoryError) as exc:  # e.g. a memory bank that does not fit
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"--kd {args.kd}: cannot build the terms on this machine ({first})") from None


def check_networks(args, context, loaded, teacher_width, student_width):
    """Build both networks on the meta device (nothing is allocated or computed) and the
    distillation terms over them, so a model or term that does not fit (a width or placement
    the family lacks, an option out of range, a stage the networks do not have) is refused
    before any output is touched or any epoch trained."""
    # the terms' own parameters draw random numbers: this check must not move the generators
    # that the teacher's initialisation draws from next (same seed, same teacher, any --kd)
    devices = [context.device.index or 0] if context.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        meta = torch.device("meta")
        with meta:
            student = build_model(model_config(args, args.student, student_width, context.data,
                                               args.student_init_weights), meta)
            if args.kd == "none":
                return
            teacher = (copy.deepcopy(loaded.model).to(meta) if loaded is not None else
                       build_model(model_config(args, args.teacher, teacher_width, context.data,
                                                args.teacher_init_weights), meta))
        build_loss(args, context, student, teacher)


def student_stage(args, context, teacher, width) -> dict:
    """Distil the student from the frozen teacher (or train it alone with --kd none)."""
    seed_everything(args.seed + 1)
    config = model_config(args, args.student, width, context.data, args.student_init_weights)
    student = build_model(config, context.device, args.channels_last)
    loss_fn = build_loss(args, context, student, teacher)
    student.request_features(loss_fn.features)  # what the terms read besides logits and hint
    conn = loss_fn.connector
    s_hint = hint_shape_of(student, context.data.in_channels, context.data.image_size)
    t_hint = (hint_shape_of(teacher, context.data.in_channels, context.data.image_size)
              if teacher is not None else None)
    learned = {n: c for n, c in loss_fn.learned_parameters().items() if c}
    print(f"student: {args.student} (placement {args.placement}, width {width}), "
          f"{count_parameters(student):,} parameters, kd {args.kd}"
          + (f", connector {s_hint} -> {t_hint}" if conn is not None else "")
          + (f"; learned for distillation, not exported: "
             f"{', '.join(f'{n} {c:,}' for n, c in learned.items())} params" if learned else ""))
    saved = load_state(context.outputs.checkpoint(Role.STUDENT, state=True)) if args.resume else None
    result = train_stage(Stage(Role.STUDENT, config, student, loss_fn, args.epochs), context,
                         saved)
    result.update({"kd": args.kd, "ce_weight": loss_fn.ce_weight, "kd_weights": loss_fn.weights,
                   "kd_options": loss_fn.options,
                   "kd_learned_params": loss_fn.learned_parameters(), "alpha": args.alpha,
                   "beta": args.beta, "temperature": args.temperature,
                   "hint_shape": list(s_hint) if s_hint else None,
                   "teacher_hint_shape": list(t_hint) if t_hint else None,
                   "connector_params": count_parameters(conn) if conn is not None else 0})
    return result




def run_key(args, teacher_width, student_width, dataset) -> str:
    """--run-name, or the key made from what defines the run (seed included)."""
    return args.run_name or (f"{args.teacher}-{args.student}_kd-{args.kd}_{args.attn}-{args.placement}_"
                             f"w{teacher_width}-{student_width}_{dataset}_s{args.seed}"
                             + ("_teacher-random" if args.teacher_random else ""))


def distill(args):
    """The whole run: -> its summary, or None when --resume finds it complete. The caller's
    `args` are left as they are: the run records its own copy, with the teacher's architecture
    resolved (the checkpoint's, or the default resnet34)."""
    args = argparse.Namespace(**vars(args))
    run = Run(args, "model_training_mid.py")
    loaded = None  # a teacher from --teacher-checkpoint
    if args.teacher_checkpoint and args.kd != "none":
        loaded = load_teacher(args, run.data, run.device)
    elif args.teacher_weights and args.kd != "none":
        loaded = weights_teacher(args, run.data, run.device)
        args.teacher = loaded.cfg["arch"]
    if args.teacher_random and args.kd != "none":
        loaded = random_teacher(args, run.data, run.device, loaded)
        args.teacher = loaded.cfg["arch"]
    args.teacher = args.teacher or "resnet34"
    teacher_width = (loaded.cfg["base_width"] if loaded is not None else
                     args.teacher_width or args.width or default_width(args.teacher))
    student_width = args.student_width or args.width or default_width(args.student)
    trained = ((Role.STUDENT,) if loaded is not None or args.kd == "none" else
               (Role.TEACHER, Role.STUDENT))
    key = run_key(args, teacher_width, student_width, run.data.dataset)
    check = lambda context: check_networks(args, context, loaded, teacher_width,  # noqa: E731
                                           student_width)
    if not run.open(key, (Role.TEACHER, Role.STUDENT), trained, check,
                    warnings=loaded.warnings if loaded is not None else ()):
        return None
    print(f"run '{key}': {run.describe_data()}, device {run.device}, preset {args.preset}")
    teacher = None
    if args.kd != "none":
        teacher, run.results[Role.TEACHER] = teacher_stage(args, run.context, loaded, teacher_width,
                                                        args.teacher_epochs or args.epochs)
    run.results[Role.STUDENT] = student_stage(args, run.context, teacher, student_width)
    return run.close(Role.STUDENT, "student checkpoint:")
