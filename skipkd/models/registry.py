"""The model registry: name -> how to build it. A family registers each of its models with
register_model (a factory taking num_classes, base_width, in_channels, placement, eca_k, attn), the
width a user gets by default, and the attention forms its blocks can host; the placements it
defines follow from those (skipkd/models/placement.py), so a placement registered later is
defined by every family that can host it."""
from dataclasses import dataclass
from typing import Callable

from .attention import FORMS
from .placement import ECA_PLACEMENTS, hosted_placements

__all__ = ["ModelSpec", "MODELS", "register_model", "model_spec", "ECA_PLACEMENTS"]


@dataclass(frozen=True)
class ModelSpec:
    factory: Callable          # factory(num_classes=, base_width=, in_channels=, placement=, eca_k=, attn=)
    default_width: int         # the reference network's base width (what --width means: its docs)
    forms: tuple               # the attention forms its blocks can host (attention.FORMS)
    family: str                # for docs and messages ("resnet", "wrn", "vgg", ...)

    @property
    def placements(self) -> tuple:
        """The ECA placements this family defines (those whose forms it hosts), in order."""
        return hosted_placements(self.forms)


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, factory: Callable, *, default_width: int, family: str,
                   forms: tuple = FORMS, aliases: tuple = ()):
    """Register `name` (and its aliases, the same spec under other names)."""
    if not set(forms) <= set(FORMS):
        raise ValueError(f"{name}: attention forms must come from {', '.join(FORMS)}, got {forms}")
    spec = ModelSpec(factory, int(default_width), tuple(forms), family)
    for key in (name, *aliases):
        if key in MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        MODELS[key] = spec
    return spec


def known_models() -> str:
    """The registered names for a message: every one, except that a family registered wholesale
    (torchvision's classifiers, tv_<name>) is named once."""
    own = [n for n, s in MODELS.items() if s.family != "torchvision"]
    wholesale = any(s.family == "torchvision" for s in MODELS.values())
    return ", ".join(own) + (", or tv_<name> for any torchvision classification model"
                             if wholesale else "")


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {known_models()}")
    return MODELS[name]
