"""Model registry: name -> factory. Every model returns ModelOutput(logits, hint) and,
when asked (request_features), its stage features and pooled embedding."""
from functools import partial

import torch

from .eca import ATTENTION_LAYERS, ECA, SE, ParallelECA, ParallelSE, eca_kernel_size, register_attention
from .fuse import fold_batchnorm
from .resnet import ARCHS, ECA_PLACEMENTS, FEATURES, ModelOutput, OutputsAsTuple, ResNet, count_parameters

__all__ = ["MODELS", "ECA_PLACEMENTS", "ATTENTION_LAYERS", "register_attention", "SE",
           "ParallelSE", "ModelOutput", "ResNet", "ECA", "ParallelECA",
           "eca_kernel_size", "create_model", "hint_shape", "hint_shape_of", "feature_shapes",
           "FEATURES", "fold_batchnorm",
           "OutputsAsTuple", "count_parameters"]


def _resnet(name, **kwargs) -> ResNet:
    block, layers = ARCHS[name]
    return ResNet(block, layers, **kwargs)


MODELS = {name: partial(_resnet, name) for name in ARCHS}


def create_model(name: str, num_classes: int = 10, base_width: int = 64, in_channels: int = 3,
                 eca: str = "none", eca_k: int | None = None, attn: str = "eca") -> ResNet:
    """Build a registered model; unknown names raise ValueError listing the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, base_width=base_width, in_channels=in_channels,
                        eca=eca, eca_k=eca_k, attn=attn)


@torch.no_grad()
def feature_shapes(model, in_channels: int = 3, image_size: int = 32) -> dict:
    """Per-sample shapes of everything a model can return (the feature contract, FEATURES):
    {'logits': (K,), 'hint': (C, H, W), 'feats': [(C, H, W), ...], 'preact_feats': [...],
    'embedding': (D,)}, found by running it once on an image_size x image_size input (on the
    model's device; a meta-device model costs nothing). The model's own request is restored."""
    was_training, request = model.training, model.feature_request
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(1, in_channels, image_size, image_size, device=p.device, dtype=p.dtype)
    try:
        out = model.request_features(FEATURES)(x)
    finally:
        model.request_features(request).train(was_training)
    return {"logits": tuple(out.logits.shape[1:]), "hint": tuple(out.hint.shape[1:]),
            "feats": [tuple(f.shape[1:]) for f in out.feats],
            "preact_feats": [tuple(f.shape[1:]) for f in out.preact_feats],
            "embedding": tuple(out.embedding.shape[1:])}


def hint_shape_of(model, in_channels: int = 3, image_size: int = 32) -> tuple:
    """(C, H, W) of a model's hint (see feature_shapes)."""
    return feature_shapes(model, in_channels, image_size)["hint"]


def hint_shape(name: str, base_width: int = 64, image_size: int = 32) -> tuple[int, int, int]:
    """(C, H, W) of a registered architecture's hint, without allocating the model."""
    with torch.device("meta"):
        model = create_model(name, base_width=base_width)
    return hint_shape_of(model, 3, image_size)
