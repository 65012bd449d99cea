"""The model registry: name -> how to build it. A family registers each of its models with
register_model (a factory taking num_classes, base_width, in_channels, placement, eca_k, attn), the
width a user gets by default, and the attention forms its blocks can host; the placements it
defines follow from those (skipkd/models/placement.py), so a placement registered later is
defined by every family that can host it.

A family whose names come from a library that is slow to import (torchvision's classifiers)
registers a loader instead (register_lazy): it runs the first time a name is asked for that is
not registered yet, or the registry is listed, so a script that names one of the toolkit's own
networks never imports that library."""
from dataclasses import dataclass
from typing import Callable

from .attention import FORMS
from .placement import ECA_PLACEMENTS, hosted_placements

__all__ = ["ModelSpec", "MODELS", "register_model", "register_lazy", "model_spec",
           "ECA_PLACEMENTS"]


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


def _loaded(method):
    """dict's `method`, run once the registry's lazy families are loaded."""
    def run(self):
        self.load()
        return method(self)
    return run


class _Registry(dict):
    """name -> ModelSpec, a dict whose lazy families (register_lazy) register themselves when a
    name not yet there is looked up, or the whole registry is read (listed, counted, iterated)."""

    def __init__(self):
        super().__init__()
        self.loaders, self.loading = [], False

    def load(self):
        if self.loading:  # a loader's own lookups see what is registered so far
            return
        self.loading = True
        try:
            while self.loaders:
                self.loaders[0]()
                self.loaders.pop(0)  # only once it has registered its family
        finally:
            self.loading = False

    def __contains__(self, name):
        if dict.__contains__(self, name):
            return True
        self.load()
        return dict.__contains__(self, name)

    def __getitem__(self, name):
        if not dict.__contains__(self, name):
            self.load()
        return dict.__getitem__(self, name)

    def get(self, name, default=None):
        return self[name] if name in self else default

    # reading the whole registry loads every lazy family first
    __iter__ = _loaded(dict.__iter__)
    __len__ = _loaded(dict.__len__)
    keys = _loaded(dict.keys)
    values = _loaded(dict.values)
    items = _loaded(dict.items)


MODELS: dict[str, ModelSpec] = _Registry()


def register_model(name: str, factory: Callable, *, default_width: int, family: str,
                   forms: tuple = FORMS, aliases: tuple = ()):
    """Register `name` (and its aliases, the same spec under other names)."""
    if not set(forms) <= set(FORMS):
        raise ValueError(f"{name}: attention forms must come from {', '.join(FORMS)}, got {forms}")
    spec = ModelSpec(factory, int(default_width), tuple(forms), family)
    for key in (name, *aliases):
        if dict.__contains__(MODELS, key):  # not `in`: that would run the lazy loaders
            raise ValueError(f"model {key!r} is registered twice")
        MODELS[key] = spec
    return spec


def register_lazy(loader: Callable[[], None]):
    """Register a family later: loader() (which calls register_model) runs the first time a
    name not registered yet is looked up or the registry is listed."""
    MODELS.loaders.append(loader)


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
