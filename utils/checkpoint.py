"""Self-describing checkpoints: architecture, ECA placement, width, classes, normalisation, args
and metrics travel with the weights, and everything loads with torch.load(weights_only=True)."""
import os

import torch

from models import MODELS, create_model

from .errors import UserError
from .outputs import atomic_write

__all__ = ["FORMAT", "atomic_save", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "to_plain"]

FORMAT = "skipkd-eca/checkpoint"
VERSION = 1


def to_plain(obj):
    """Reduce args/metrics to types that weights_only loading accepts."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    return str(obj)


def atomic_save(obj, path: str):
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a crash
    leaves either the old file or the new one, never a truncated one."""
    atomic_write(path, lambda f: torch.save(obj, f), "wb", suffix=".pth")


def save_checkpoint(path, model, *, arch, role, model_cfg, data_cfg, args=None, metrics=None,
                    epoch=None, extra=None):
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "role": role,
        "model": to_plain({"arch": arch, **model_cfg}),
        "data": to_plain(data_cfg),
        "state_dict": state,
        "args": to_plain(args or {}),
        "metrics": to_plain(metrics or {}),
        "epoch": epoch,
    }
    if extra:  # training state (optimizer, scheduler, RNG): torch-native, kept as it is
        ckpt.update(extra)
    atomic_save(ckpt, path)
    return path


def _unwrap(model):
    model = getattr(model, "module", model)        # DDP
    return getattr(model, "_orig_mod", model)      # torch.compile


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load and validate; any problem becomes a one-line UserError naming the file."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"checkpoint path is a directory: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, random bytes: all one message
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load checkpoint {path}: not a readable checkpoint ({msg})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (no '{FORMAT}' header)")
    model_cfg = ckpt.get("model") or {}
    if model_cfg.get("arch") not in MODELS:
        raise UserError(f"{path}: unknown architecture {model_cfg.get('arch')!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint"):
    """Rebuild the model from the checkpoint alone and load its weights."""
    cfg = ckpt["model"]
    model = create_model(cfg["arch"], num_classes=cfg["num_classes"], base_width=cfg["base_width"],
                         in_channels=cfg.get("in_channels", 3), eca=cfg.get("eca", "none"),
                         eca_k=cfg.get("eca_k"))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match its {cfg['arch']} description ({first})") from None
    return model
