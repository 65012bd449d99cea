"""The teacher of a distillation run: one loaded from --teacher-checkpoint (checked against this
run's data first) or one trained here, then frozen for the student's stage."""
from typing import NamedTuple

import torch

from ..data import DataDesc
from ..errors import UserError
from ..roles import Role
from ..io.checkpoint import load_checkpoint, model_from_checkpoint
from ..kd import DistillationLoss
from ..models import count_parameters, default_width
from ..models.config import ModelConfig
from .resume import load_state
from .setup import build_model, model_config
from .stage import Stage, train_stage

__all__ = ["LoadedTeacher", "load_teacher", "random_teacher", "teacher_stage"]


class LoadedTeacher(NamedTuple):
    model: torch.nn.Module
    cfg: dict          # the checkpoint's model description (arch, width, placement, ...)
    saved_val: dict    # its validation metrics as saved
    warnings: list     # printed once the run is accepted
    source: str        # where it came from: the checkpoint's path, or the weights


def weights_teacher(args, data: DataDesc, device) -> LoadedTeacher:
    """The --teacher network with --teacher-weights, used as it is (not trained here): its
    classifier must predict this data's classes. Built without attention (pretrained networks
    have none; an attention module would be untrained)."""
    width = args.teacher_width or default_width(args.teacher)
    config = ModelConfig(args.teacher, num_classes=data.num_classes, base_width=width,
                         in_channels=data.in_channels, image_size=data.image_size,
                         weights=args.teacher_weights)
    model = build_model(config, device, args.channels_last, replace_head=False)
    return LoadedTeacher(model, config.to_json(), {}, [], args.teacher_weights)


def random_teacher(args, data: DataDesc, device, loaded=None) -> LoadedTeacher:
    """The control: the teacher network at a random initialisation, never trained. Its
    architecture, width, placement and attention are those of `loaded` (the --teacher-checkpoint
    teacher, whose weights are dropped) or of --teacher/--teacher-width. The draws come from their
    own generator state seeded by --seed, so the student's initialisation and data order are
    those of the same run with the trained teacher."""
    if loaded is not None:
        c = loaded.cfg
        config = ModelConfig(c["arch"], num_classes=c["num_classes"], base_width=c["base_width"],
                             in_channels=c.get("in_channels", 3),
                             image_size=c.get("image_size") or data.image_size,
                             placement=c["placement"], eca_k=c.get("eca_k"),
                             attn=c.get("attn", "eca"), init=args.init or "model",
                             zero_residual=bool(args.zero_init_residual))
        what = f"the architecture of {loaded.source}"
    else:  # the teacher this run would train: the run's attention and initialisation flags
        arch = args.teacher or "resnet34"
        config = model_config(args, arch, args.teacher_width or args.width or default_width(arch),
                              data)
        what = f"{arch} at width {config.base_width}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_model(config, device, args.channels_last)
    model.eval()
    return LoadedTeacher(model, config.to_json(), {}, list(loaded.warnings) if loaded else [],
                         f"random initialisation (seed {args.seed}) of {what}")


def load_teacher(args, data: DataDesc, device):
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
    here = (data.num_classes, data.in_channels, data.image_size)
    there = (cfg["num_classes"], cfg.get("in_channels", 3),
             cfg.get("image_size", t_data.get("image_size")))
    what = ("classes", "input channels", "px images")
    bad = [f"{t} {w} (this run: {h})" for t, h, w in zip(there, here, what)
           if t is not None and t != h]
    if bad:
        raise UserError(f"{path} was trained for {', '.join(bad)} on "
                        f"{t_data.get('dataset') or 'another dataset'}; {data.dataset} "
                        f"needs a teacher of {here[0]} classes x {here[1]} channels x {here[2]} px")
    warnings = []  # printed by main once the run is accepted: a refused run gives one line only
    warn = warnings.append
    if there[2] is None:
        warn(f"{path} does not record its image size; assuming {here[2]} px like this run")
    t_dataset = t_data.get("dataset") or (ckpt.get("args") or {}).get("dataset")
    if t_dataset is None:
        warn(f"{path} does not record its dataset; distilling on {data.dataset} anyway")
    elif t_dataset != data.dataset:
        warn(f"{path} was trained on {t_dataset}, this run is on {data.dataset}: same "
             f"{here[0]} classes x {here[1]} channels x {here[2]} px, so it is used, but its "
             f"classes need not mean this dataset's")
    t_mean, t_std = t_data.get("mean"), t_data.get("std")
    if t_mean is not None and t_std is not None and (
            max(abs(a - b) for a, b in zip(t_mean, data.mean)) > 0.05
            or max(abs(a / b - 1) for a, b in zip(t_std, data.std)) > 0.2):
        warn(f"{path} normalised its inputs with mean {[round(v, 3) for v in t_mean]} / std "
             f"{[round(v, 3) for v in t_std]}; this run feeds it mean "
             f"{[round(v, 3) for v in data.mean]} / std "
             f"{[round(v, 3) for v in data.std]} (--normalize differs?)")
    teacher = model_from_checkpoint(ckpt, path).to(device)
    saved = (ckpt.get("metrics") or {}).get("val") or {}
    return LoadedTeacher(teacher, cfg, saved, warnings, path)


def teacher_stage(args, context, loaded, width, epochs) -> tuple:
    """(the frozen teacher, its result for the summary): the --teacher-checkpoint one, or one
    trained here (then the best checkpoint on disk is the one distilled from)."""
    if loaded is not None:
        teacher, cfg, saved = loaded.model, loaded.cfg, loaded.saved_val
        print(f"teacher: {cfg['arch']} (placement {cfg['placement']}, width {cfg['base_width']}) "
              f"loaded from {loaded.source}")
        return teacher, {"arch": cfg["arch"], "placement": cfg["placement"], "base_width": cfg["base_width"],
                         "params": count_parameters(teacher), "loaded": True,
                         "checkpoint": loaded.source,
                         "best_val_acc": saved.get("acc", float("nan")), "final_val_acc": None}
    config = model_config(args, args.teacher, width, context.data, args.teacher_init_weights)
    teacher = build_model(config, context.device, args.channels_last)
    print(f"teacher: {args.teacher} (placement {args.placement}, width {width}), "
          f"{count_parameters(teacher):,} parameters, {epochs} epochs")
    saved = load_state(context.outputs.checkpoint(Role.TEACHER, state=True)) if args.resume else None
    result = train_stage(Stage(Role.TEACHER, config, teacher, DistillationLoss("none"),
                               epochs), context, saved)
    teacher = model_from_checkpoint(load_checkpoint(result["checkpoint"])).to(context.device)
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher, result
