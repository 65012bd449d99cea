"""The model registry: name -> how to build it. A family registers each of its models with
register_model (a factory taking num_classes, base_width, in_channels, eca, eca_k, attn), the
width a user gets by default, and the ECA placements the family defines."""
from dataclasses import dataclass
from typing import Callable

__all__ = ["ModelSpec", "MODELS", "register_model", "model_spec"]

ECA_PLACEMENTS = ("none", "parallel", "last", "all")


@dataclass(frozen=True)
class ModelSpec:
    factory: Callable          # factory(num_classes=, base_width=, in_channels=, eca=, eca_k=, attn=)
    default_width: int         # the reference network's base width (what --width means: its docs)
    placements: tuple          # the ECA placements this family defines
    family: str                # for docs and messages ("resnet", "wrn", "vgg", ...)


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, factory: Callable, *, default_width: int, family: str,
                   placements: tuple = ECA_PLACEMENTS, aliases: tuple = ()):
    """Register `name` (and its aliases, the same spec under other names)."""
    bad = [p for p in placements if p not in ECA_PLACEMENTS]
    if bad or "none" not in placements:
        raise ValueError(f"{name}: placements must include 'none' and come from {ECA_PLACEMENTS}")
    spec = ModelSpec(factory, int(default_width), tuple(placements), family)
    for key in (name, *aliases):
        if key in MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        MODELS[key] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]
