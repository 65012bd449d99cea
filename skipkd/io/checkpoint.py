"""Self-describing checkpoints: architecture, ECA placement, width, classes, normalisation, args
and metrics travel with the weights, and everything loads with torch.load(weights_only=True)."""
import math
import os
import warnings

import torch

from ..models import ATTENTION_LAYERS, ECA_PLACEMENTS, MODELS, create_model
from ..models.registry import known_models

from ..errors import UserError
from .outputs import atomic_write

__all__ = ["FORMAT", "atomic_save", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "to_plain", "validate_checkpoint"]

FORMAT = "skipkd-eca/checkpoint"
VERSION = 1


def to_plain(obj):
    """Reduce args/metrics to types that weights_only loading accepts."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, str):
        return str.__str__(obj)  # a str subclass (an enum such as Role) as a plain str
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    return str(obj)


def atomic_save(obj, path: str):
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a crash
    leaves either the old file or the new one, never a truncated one."""
    atomic_write(path, lambda f: torch.save(obj, f), "wb", suffix=".pth")


def save_checkpoint(path, model, *, arch, role, model_cfg, data_cfg, args=None, metrics=None,
                    epoch=None, extra=None, writer=None):
    """writer(path, write(f), suffix): how the file is written (a run's RunOutputs.write_file,
    which records it); default: atomic_save."""
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "role": to_plain(role),
        "model": to_plain({"arch": arch, **model_cfg}),
        "data": to_plain(data_cfg),
        "state_dict": state,
        "args": to_plain(args or {}),
        "metrics": to_plain(metrics or {}),
        "epoch": epoch,
    }
    if extra:  # training state (optimizer, scheduler, RNG): torch-native, kept as it is
        ckpt.update(extra)
    if writer is None:
        atomic_save(ckpt, path)
    else:
        writer(path, lambda f: torch.save(ckpt, f), ".pth")
    return path


def _unwrap(model):
    model = getattr(model, "module", model)        # DDP
    return getattr(model, "_orig_mod", model)      # torch.compile


# sane bounds for the numbers a checkpoint describes its model with: anything outside is a
# damaged or crafted file, never a model worth building (and never a huge allocation: the
# tools build inputs of image_size x image_size, bounded like --image-size)
LIMITS = {"num_classes": (1, 100_000), "base_width": (1, 4096), "in_channels": (1, 64),
          "image_size": (1, 1024)}
MAX_ECA_K = 255


def _kind(value):
    return type(value).__name__


def _int_field(value, field, lo, hi, path, odd=False):
    """An int (not a bool, not a float, not a str) in lo..hi, else a one-line UserError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{path}: checkpoint field {field} must be an integer, got "
                        f"{_shown(value)} ({_kind(value)})")
    if not lo <= value <= hi:
        raise UserError(f"{path}: checkpoint field {field} must be in {lo}..{hi}, got {value}")
    if odd and value % 2 == 0:
        raise UserError(f"{path}: checkpoint field {field} must be odd, got {value}")
    return value


def _shown(value, limit=60):
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _float_list(value, field, length, path, positive=False):
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{path}: checkpoint field {field} must be a list of {length} numbers, got "
                        f"{_shown(value)} ({_kind(value)})")
    if len(value) != length:
        raise UserError(f"{path}: checkpoint field {field} must have {length} values (one per "
                        f"input channel), got {len(value)}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{path}: checkpoint field {field} must hold numbers, got "
                            f"{_shown(v)} ({_kind(v)})")
        if not math.isfinite(v):
            raise UserError(f"{path}: checkpoint field {field} must hold finite numbers, got {v}")
        if positive and v <= 0:
            raise UserError(f"{path}: checkpoint field {field} must be > 0, got {v}")
    return value


# Long on purpose: one check after another over untrusted metadata, read top to bottom, each
# ending in its own one-line error.
def validate_checkpoint(ckpt, path="checkpoint"):
    """Check everything a checkpoint says about itself before anything is built from it: the
    file comes from outside. Raises a one-line UserError naming the field and the file. Old
    names are read as today's (model.eca and args.eca as placement): -> the checkpoint."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (no '{FORMAT}' header)")
    cfg = ckpt.get("model")
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: checkpoint field model must be a dict, got {_kind(cfg)}")
    arch = cfg.get("arch")
    if not isinstance(arch, str) or arch not in MODELS:
        raise UserError(f"{path}: checkpoint field model.arch: unknown architecture "
                        f"{_shown(arch)}; known: {known_models()}")
    for key in ("num_classes", "base_width"):
        if key not in cfg:
            raise UserError(f"{path}: checkpoint field model.{key} is missing")
    for key, (lo, hi) in LIMITS.items():
        if key in cfg or key in ("num_classes", "base_width"):
            _int_field(cfg[key], f"model.{key}", lo, hi, path)
    # the placement was called "eca" until the attention types became a registry: both are read
    if "eca" in cfg and "placement" in cfg and cfg["eca"] != cfg["placement"]:
        raise UserError(f"{path}: checkpoint fields model.placement and its old name model.eca "
                        f"disagree ({_shown(cfg['placement'])} vs {_shown(cfg['eca'])})")
    field = "placement" if "placement" in cfg or "eca" not in cfg else "eca"
    placement = cfg.get(field, "none")
    if not isinstance(placement, str) or placement not in ECA_PLACEMENTS:
        raise UserError(f"{path}: checkpoint field model.{field} must be one of "
                        f"{', '.join(ECA_PLACEMENTS)}, got {_shown(placement)}")
    cfg.pop("eca", None)
    cfg["placement"] = placement  # readers see one name
    attn = cfg.get("attn", "eca")  # checkpoints from before the attention registry: ECA
    if not isinstance(attn, str) or attn not in ATTENTION_LAYERS:
        raise UserError(f"{path}: checkpoint field model.attn must be one of "
                        f"{', '.join(ATTENTION_LAYERS)}, got {_shown(attn)}")
    if cfg.get("eca_k") is not None:
        _int_field(cfg["eca_k"], "model.eca_k", 1, MAX_ECA_K, path, odd=True)
    channels = cfg.get("in_channels", 3)

    data = ckpt.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise UserError(f"{path}: checkpoint field data must be a dict, got {_kind(data)}")
        for key, (lo, hi) in LIMITS.items():
            if key in data and key != "base_width":
                _int_field(data[key], f"data.{key}", lo, hi, path)
        for key in ("num_classes", "in_channels", "image_size"):
            if key in data and key in cfg and data[key] != cfg[key]:
                raise UserError(f"{path}: checkpoint field data.{key} ({data[key]}) contradicts "
                                f"model.{key} ({cfg[key]})")
        if data.get("in_channels", channels) != channels:
            raise UserError(f"{path}: checkpoint field data.in_channels ({data['in_channels']}) "
                            f"contradicts the model's {channels} input channels")
        if data.get("mean") is not None:
            _float_list(data["mean"], "data.mean", channels, path)
        if data.get("std") is not None:
            _float_list(data["std"], "data.std", channels, path, positive=True)
        if data.get("dataset") is not None and not isinstance(data["dataset"], str):
            raise UserError(f"{path}: checkpoint field data.dataset must be a name, got "
                            f"{_shown(data['dataset'])} ({_kind(data['dataset'])})")
        classes = data.get("classes")
        if classes is not None and (not isinstance(classes, (list, tuple))
                                    or not all(isinstance(c, str) for c in classes)):
            raise UserError(f"{path}: checkpoint field data.classes must be a list of names")
        split = data.get("val_split")
        if split is not None and (isinstance(split, bool) or not isinstance(split, (int, float))
                                  or not 0 <= split < 1):
            raise UserError(f"{path}: checkpoint field data.val_split must be a number in [0, 1), "
                            f"got {_shown(split)}")
    for key in ("args", "metrics"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise UserError(f"{path}: checkpoint field {key} must be a dict, got {_kind(ckpt[key])}")
    saved_args = ckpt.get("args") or {}
    if "eca" in saved_args and "placement" not in saved_args:  # the flag's old destination
        saved_args["placement"] = saved_args.pop("eca")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: checkpoint field state_dict must map parameter names to tensors")
    return ckpt


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load and validate; any problem becomes a one-line UserError naming the file."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"checkpoint path is a directory: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols of damaged
            warnings.simplefilter("ignore", UserWarning)  # files: the error below says it all
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, random bytes: all one message
        text = str(exc).strip()
        if text.startswith("Weights only load failed"):  # torch's advice to unpickle: never
            why = "not a PyTorch file, or it holds objects that a weights-only load refuses"
        elif "central directory" in text or "zip archive" in text:
            why = "truncated or damaged (its zip archive is incomplete)"
        else:
            why = text.splitlines()[0][:160] if text else type(exc).__name__
        raise UserError(f"cannot load checkpoint {path}: not a readable checkpoint ({why})") from None
    return validate_checkpoint(ckpt, path)


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint"):
    """Rebuild the model from the checkpoint alone and load its weights. The description is
    validated first and the model is laid out on the meta device (no memory) to compare its
    parameter names and shapes with the saved weights before anything real is allocated."""
    validate_checkpoint(ckpt, path)
    cfg = ckpt["model"]
    kwargs = dict(num_classes=cfg["num_classes"], base_width=cfg["base_width"],
                  in_channels=cfg.get("in_channels", 3), placement=cfg["placement"],
                  eca_k=cfg.get("eca_k"), attn=cfg.get("attn", "eca"))
    state = ckpt["state_dict"]
    try:
        with torch.device("meta"):
            layout = create_model(cfg["arch"], **kwargs).state_dict()
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: cannot build its {cfg['arch']} ({exc})") from None
    missing = [k for k in layout if k not in state]
    unexpected = [k for k in state if k not in layout]
    wrong = [k for k in layout if k in state and tuple(layout[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        first = (f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, expected "
                 f"{tuple(layout[wrong[0]].shape)}" if wrong else
                 f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise UserError(f"{path}: weights do not match its {cfg['arch']} description "
                        f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} "
                        f"of another shape; e.g. {first})")
    model = create_model(cfg["arch"], **kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match its {cfg['arch']} description ({first})") from None
    return model
