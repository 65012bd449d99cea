"""Models: a registry of names (registry.py) over model families that honour one feature
contract (contract.py): ModelOutput(logits, hint) and, when asked (request_features), stage
features and the pooled embedding. Attention is two registries: its types (attention.py: ECA,
SE, ...) and its placements (placement.py: none, parallel, last, all, ...), which every family
asks block by block."""
from functools import partial

import torch

from .contract import FEATURES, FeatureModel, ModelOutput
from .attention import (ADDITIVE, ATTENTION_LAYERS, ECA, FORMS, MULTIPLICATIVE, SE, ParallelECA,
                        ParallelSE, eca_kernel_size, register_attention)
from .fuse import fold_batchnorm
from .placement import (ECA_PLACEMENTS, PLACEMENTS, BlockSite, attention_form, check_placement,
                        register_placement, unregister_placement)
from .registry import MODELS, ModelSpec, model_spec, register_model
from .resnet import ARCHS, OutputsAsTuple, ResNet, count_parameters

__all__ = ["MODELS", "ModelSpec", "register_model", "model_spec", "default_width",
           "FeatureModel", "ECA_PLACEMENTS", "PLACEMENTS", "register_placement",
           "unregister_placement", "attention_form", "BlockSite", "MULTIPLICATIVE", "ADDITIVE",
           "FORMS", "ATTENTION_LAYERS", "register_attention", "SE",
           "ParallelSE", "ModelOutput", "ResNet", "ECA", "ParallelECA",
           "eca_kernel_size", "create_model", "hint_shape", "hint_shape_of", "feature_shapes",
           "FEATURES", "fold_batchnorm",
           "OutputsAsTuple", "count_parameters"]


def _resnet(name, **kwargs) -> ResNet:
    block, layers = ARCHS[name]
    return ResNet(block, layers, **kwargs)


for _name in ARCHS:  # the 4-stage ResNets of this toolkit (base width 64 = the standard nets)
    register_model(_name, partial(_resnet, _name), default_width=64, family="resnet")


# the KD literature's CIFAR benchmark models (docs/MODELS.md); they register themselves
from . import cifar_resnet, mobilenetv2, shufflenet, vgg, wrn  # noqa: E402,F401  (after the ResNets)
from . import imagenet  # noqa: E402,F401  (torchvision's ImageNet ResNets, after the CIFAR zoo)
from . import torchvision_zoo  # noqa: E402,F401  (every torchvision classifier, logits only)


def default_width(name: str) -> int:
    """The base width a model gets when none is given (its reference network's)."""
    return model_spec(name).default_width


def create_model(name: str, num_classes: int = 10, base_width: int | None = None,
                 in_channels: int = 3, placement: str = "none", eca_k: int | None = None,
                 attn: str = "eca") -> FeatureModel:
    """Build a registered model (base_width None: its default); unknown names, or an ECA
    placement its family does not define (cannot host), raise ValueError listing the valid ones."""
    spec = model_spec(name)
    check_placement(placement, f"{name} ({spec.family})", spec.forms)
    return spec.factory(num_classes=num_classes,
                        base_width=spec.default_width if base_width is None else base_width,
                        in_channels=in_channels, placement=placement, eca_k=eca_k, attn=attn)


@torch.no_grad()
def feature_shapes(model, in_channels: int = 3, image_size: int = 32) -> dict:
    """Per-sample shapes of everything a model can return (the feature contract, FEATURES):
    {'logits': (K,), 'hint': (C, H, W), 'feats': [(C, H, W), ...], 'preact_feats': [...],
    'embedding': (D,), 'hint_out': (C, H, W) or None, 'shortcuts': [(C, H, W), ...] or None}, found by running it once on an image_size x image_size input (on the
    model's device; a meta-device model costs nothing). The model's own request is restored.
    A logit-only network (skipkd/models/torchvision_zoo.py) gives its logits' shape, None for
    every feature, and 'logits_only': True."""
    if getattr(model, "logits_only", False):
        was_training = model.training
        p = next(model.parameters())
        x = torch.zeros(1, in_channels, image_size, image_size, device=p.device, dtype=p.dtype)
        try:
            logits = model.eval()(x).logits
        finally:
            model.train(was_training)
        return {"logits": tuple(logits.shape[1:]), "hint": None, "feats": None,
                "preact_feats": None, "embedding": None, "hint_out": None, "shortcuts": None,
                "logits_only": True}
    was_training, request = model.training, model.feature_request
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(1, in_channels, image_size, image_size, device=p.device, dtype=p.dtype)
    try:
        out = model.request_features(FEATURES)(x)
    finally:
        model.request_features(request).train(was_training)
    return {"logits": tuple(out.logits.shape[1:]),
            "hint": tuple(out.hint.shape[1:]) if out.hint is not None else None,
            "feats": [tuple(f.shape[1:]) for f in out.feats],
            "preact_feats": [tuple(f.shape[1:]) for f in out.preact_feats],
            "embedding": tuple(out.embedding.shape[1:]),
            # the residual families' block features (None where the family has none)
            "hint_out": tuple(out.hint_out.shape[1:]) if out.hint_out is not None else None,
            "shortcuts": ([tuple(s.shape[1:]) for s in out.shortcuts]
                          if out.shortcuts is not None else None)}


def hint_shape_of(model, in_channels: int = 3, image_size: int = 32) -> tuple:
    """(C, H, W) of a model's hint (see feature_shapes)."""
    return feature_shapes(model, in_channels, image_size)["hint"]


def hint_shape(name: str, base_width: int | None = None, image_size: int = 32) -> tuple | None:
    """(C, H, W) of a registered architecture's hint, without allocating the model."""
    with torch.device("meta"):
        model = create_model(name, base_width=base_width)
    return hint_shape_of(model, 3, image_size)
