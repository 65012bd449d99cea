"""Pretrained weights for a network: a torchvision weights name or a local file, checked key by
key and shape by shape before anything is loaded.

    report = load_weights(model, "ResNet34_Weights.IMAGENET1K_V1", "resnet34_imagenet")
    report = load_weights(model, "resnet50-11ad3fa6.pth", "resnet50_imagenet")

A weights name (torchvision's `<Model>_Weights.<NAME>`) is fetched through torchvision's own API
into its cache (torch.hub.get_dir()/checkpoints); offline, the error says which file to put
there. A file is read with weights_only=True: a plain state_dict (torchvision's names are
mapped, skipkd/models/imagenet.py), {"state_dict": ...}, or a checkpoint of this toolkit.
A classifier head of another number of classes is left at its initialisation (replaced, to be
fine-tuned); an attention module the weights do not have (a placement the pretrained network
lacked) too. Any other missing, extra or differently shaped tensor is a ValueError naming the
first one.
"""
import hashlib
import os
import re
import urllib.error
import warnings

import torch

from .imagenet import IMAGENET_RESNETS, from_torchvision, looks_like_torchvision
from .torchvision_zoo import tv_name

__all__ = ["WEIGHTS_NAME", "is_weights_name", "torchvision_weights", "read_weights",
           "load_weights", "hub_file"]

WEIGHTS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*_Weights\.[A-Za-z0-9_]+$")


def is_weights_name(spec: str) -> bool:
    return bool(WEIGHTS_NAME.match(spec)) and not os.path.exists(spec)


def hub_file(weights) -> str:
    """Where torchvision's cache keeps a weights enum's file."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def torchvision_weights(spec: str):
    """torchvision's weights enum of a name like ResNet34_Weights.IMAGENET1K_V1 (ValueError)."""
    import torchvision  # here, not at the top: a second to import, needed only for weights names
    try:
        return torchvision.models.get_weight(spec)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"unknown torchvision weights {spec!r} (e.g. "
                         f"ResNet34_Weights.IMAGENET1K_V1)") from None


def _torchvision_weights(spec: str, arch: str | None) -> dict:
    weights = torchvision_weights(spec)
    owner = type(weights).__name__[:-len("_Weights")].lower()  # ResNet34_Weights -> resnet34
    name = tv_name(arch) if arch is not None else None
    if name is not None:  # a tv_<name> network: the weights must be its model's
        import torchvision
        if torchvision.models.get_model_weights(name) is not type(weights):
            raise ValueError(f"{spec} are not weights of torchvision's {name}")
    elif arch is not None and IMAGENET_RESNETS.get(arch) != owner:
        wanted = [f"{ours}" for ours, tv in IMAGENET_RESNETS.items() if tv == owner]
        raise ValueError(f"{spec} are {owner}'s weights, not {arch}'s"
                         + (f" (use --model {wanted[0]})" if wanted else ""))
    path = hub_file(weights)
    found = torch.hub.HASH_REGEX.search(os.path.basename(path))  # torchvision names its files
    prefix = found.group(1) if found else None                    # name-<sha256 prefix>.pth
    if not os.path.isfile(path):  # fetched once into torchvision's cache, checked on the way
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(weights.url, path, hash_prefix=prefix,
                                           progress=False)
        except (urllib.error.URLError, OSError, ConnectionError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise ValueError(f"cannot download {spec} ({why}); offline, put {weights.url} as "
                             f"{path}") from None
        except RuntimeError as exc:  # the hash of what arrived differs
            raise ValueError(f"downloading {spec}: {str(exc).splitlines()[0][:120]}") from None
    if prefix and not _sha256(path).startswith(prefix):  # the cache is read like any file
        raise ValueError(f"{path} is not {spec}'s file (its SHA-256 does not start with "
                         f"{prefix}); remove it and fetch it again")
    return _file_weights(path)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_weights(path: str) -> dict:
    if os.path.isdir(path):
        raise ValueError(f"weights file {path} is a directory")
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        if first.startswith("Weights only load failed"):
            first = "it holds objects that a weights-only load refuses"
        elif len(first) < 12 or "magic number" in first or "zip" in first:
            first = f"not a PyTorch file ({type(exc).__name__}: {first})"
        raise ValueError(f"cannot read weights file {path}: {first}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a checkpoint of this toolkit, or {"state_dict": ...}
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"{path} is not a state_dict (parameter names to tensors)")
    for key, value in obj.items():  # plain dense real numbers only
        if value.is_meta or value.layout != torch.strided or value.is_complex():
            raise ValueError(f"{path}: {key!r} is not a dense real tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: {key!r} holds non-finite values")
    return obj


def read_weights(spec: str, arch: str | None = None) -> dict:
    """The state_dict a weights name or a file holds, under this toolkit's names."""
    state = _torchvision_weights(spec, arch) if is_weights_name(spec) else _file_weights(spec)
    if arch is not None and tv_name(arch) is not None:  # a torchvision classifier, wrapped
        return state if all(k.startswith("net.") for k in state) else \
            {f"net.{k}": v for k, v in state.items()}
    if looks_like_torchvision(state):
        if arch is not None and arch not in IMAGENET_RESNETS:
            raise ValueError(f"{spec} holds a torchvision ResNet, which loads into the "
                             f"ImageNet-layout nets ({', '.join(IMAGENET_RESNETS)}), not {arch}")
        try:
            state = from_torchvision(state)
        except ValueError as exc:
            raise ValueError(f"{spec}: {exc}") from None
    return state


def _head(model: torch.nn.Module) -> tuple:
    """The classifier's parameter names: its last Linear layer's (fc of the ResNets)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return (f"{names[-1]}.weight", f"{names[-1]}.bias") if names else ()


def _is_attention(key: str) -> bool:
    return ".attn." in key or ".shortcut_attn." in key


def load_weights(model: torch.nn.Module, spec: str, arch: str, replace_head: bool = True) -> str:
    """Load `spec` (a torchvision weights name or a file) into `model` (a registered `arch`),
    checked first; -> one line saying what was loaded and what was left at its start.
    replace_head=False: a classifier head of another class count is an error (a teacher used as
    it is must predict this data's classes)."""
    given = read_weights(spec, arch)
    expected = model.state_dict()
    head = _head(model)
    extra = [k for k in given if k not in expected]
    if extra:
        ours = any(_is_attention(k) for k in extra) and not replace_head
        raise ValueError(f"{spec} has {extra[0]!r}, which {arch} does not"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                         + ("; a checkpoint of this toolkit is a teacher through "
                            "--teacher-checkpoint" if ours else ""))
    head_replaced = any(k in given and tuple(given[k].shape) != tuple(expected[k].shape)
                        for k in head)
    if head_replaced and not replace_head:
        raise ValueError(f"{spec} predict {given[head[0]].shape[0]} classes, this data has "
                         f"{expected[head[0]].shape[0]}: fine-tune them first "
                         f"(model_training.py --init-weights) and use that checkpoint")
    kept = {}
    for key, want in expected.items():
        if key not in given:
            if (_is_attention(key) or (key in head and head_replaced)
                    or key.endswith(".num_batches_tracked")):  # older files lack the counters
                continue
            raise ValueError(f"{spec} lacks {key!r} of {arch}")
        got = given[key]
        if key in head and head_replaced:
            continue
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"{spec}: {key!r} has shape {tuple(got.shape)}, {arch} needs "
                             f"{tuple(want.shape)}")
        kept[key] = got
    if next(model.parameters()).device.type != "meta":  # a meta model: checked only
        model.load_state_dict(kept, strict=False)
    left = [k for k in expected if k not in kept and _is_attention(k)]
    notes = []
    if head_replaced:
        notes.append(f"classifier head replaced: {given[head[0]].shape[0]} -> "
                     f"{expected[head[0]].shape[0]} classes, to be trained")
    if left:
        notes.append(f"{len(left)} attention tensors left at their start")
    return f"weights {spec} loaded into {arch}" + (f" ({'; '.join(notes)})" if notes else "")
