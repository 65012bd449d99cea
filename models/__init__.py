"""Model registry: name -> factory. Every model returns ModelOutput(logits, hint)."""
from functools import partial

from .eca import ATTENTION_LAYERS, ECA, SE, ParallelECA, ParallelSE, eca_kernel_size, register_attention
from .fuse import fold_batchnorm
from .resnet import ARCHS, ECA_PLACEMENTS, ModelOutput, ResNet

__all__ = ["MODELS", "ECA_PLACEMENTS", "ATTENTION_LAYERS", "register_attention", "SE",
           "ParallelSE", "ModelOutput", "ResNet", "ECA", "ParallelECA",
           "eca_kernel_size", "create_model", "hint_shape", "fold_batchnorm"]


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


def hint_shape(name: str, base_width: int = 64, image_size: int = 32) -> tuple[int, int, int]:
    """(C, H, W) of the hint for an image_size x image_size input, without building the model."""
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    block, _ = ARCHS[name]
    if block == "basic":   # first block of stage 4: stride 8 overall
        return (8 * base_width, -(-image_size // 8), -(-image_size // 8))
    return (16 * base_width, -(-image_size // 4), -(-image_size // 4))
