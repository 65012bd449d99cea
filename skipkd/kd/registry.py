"""The registry of distillation terms: `--kd skip+logit` names registered terms joined by `+`.

A term is an nn.Module subclass of KDTerm in its own file, registered with @register_term. It
declares what it needs (`needs`: model outputs of the feature contract, models.FEATURES, plus
"logits", "hint", and "index" for the training-set indices of the batch; a term whose options
change what it reads sets `self.needs` on the instance), may learn something
(connectors, embedding heads: their parameters train with the student and are not exported;
buffers such as a memory bank are part of the resumable training state), takes options with
defaults (`options`, set with --kd-opt NAME.KEY=VALUE, checked against `bounds`, `choices` and
the class's own `check_option`), and returns one scalar loss or a dict
of named parts that sum to it (their names declared in `parts`). The loss appears under the term's name (the parts as
name_part) in the console, the arrays, TensorBoard and the JSON.
"""
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

__all__ = ["KDTerm", "TermContext", "KDBatch", "KD_TERMS", "NEEDS", "register_term", "parse_kd",
           "term_options", "term_outputs"]

KD_TERMS: dict[str, type] = {}

# what a term may need: model outputs (both nets) and the batch's sample indices
NEEDS = frozenset({"logits", "hint", "feats", "preact_feats", "embedding", "hint_out",
                   "shortcuts", "index"})


@dataclass
class TermContext:
    """What a term may need to build itself. Shapes are per sample, as skipkd.models.feature_shapes
    gives them ({'logits': (K,), 'hint': (C, H, W), 'feats': [...], 'embedding': (D,)})."""
    temperature: float = 4.0                  # the logit term's (other terms have their own)
    student_shapes: dict = field(default_factory=dict)
    teacher_shapes: dict = field(default_factory=dict)
    num_classes: int | None = None
    num_samples: int | None = None            # training images (a memory bank's size)
    train_labels: torch.Tensor | None = None  # their labels, by sample index
    epochs: int | None = None                 # the stage's length (warm-ups)
    options: dict = field(default_factory=dict)  # this term's options, defaults filled in


@dataclass
class KDBatch:
    """What a term sees of the batch besides the two models' outputs."""
    y: torch.Tensor                      # labels (B,)
    index: torch.Tensor | None = None    # training-set indices (B,), when a term needs "index"
    epoch: float = 0.0                   # epochs done so far, fractional (warm-ups)


class KDTerm(nn.Module):
    """Base class: set `name`, `needs`, `default_weight`, `paper` (and `options`); implement
    forward(student_out, teacher_out, batch) -> scalar tensor or {part: scalar tensor}."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset] = frozenset()
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = ""
    matches: ClassVar[str] = ""   # what it makes the student match, in a few words (docs)
    options: ClassVar[dict] = {}
    parts: ClassVar[tuple] = ()   # the names of the parts forward returns, if it returns a dict
    bounds: ClassVar[dict] = {}   # option -> (lowest, highest) accepted, both inclusive
    choices: ClassVar[dict] = {}  # option -> the values accepted (string options)

    def __init__(self, ctx: TermContext):
        super().__init__()
        self.opts = {**type(self).options, **ctx.options}  # defaults, then what was given

    @classmethod
    def check_option(cls, key: str, value):
        """A hook for what type, bounds and choices cannot say (e.g. a list's format): returns
        the value (normalised) or raises ValueError."""
        return value

    @classmethod
    def check_combination(cls, opts: dict):
        """A hook for options that are valid alone but refused together: `opts` is the full
        option set (defaults, then what was given); raises ValueError. Called by the term
        itself and by `sweep.py create`, so that a search never samples a refused combination."""

    def forward(self, student_out, teacher_out, batch: KDBatch):
        raise NotImplementedError


def register_term(cls):
    """Class decorator: KD_TERMS[cls.name] = cls. Names are identifiers (they become module,
    array and TensorBoard names) and may not be 'none', 'ce' or 'loss'."""
    name = cls.name
    if not name.isidentifier() or name in ("none", "ce", "loss"):
        raise ValueError(f"bad distillation term name {name!r}")
    if not cls.needs <= NEEDS:
        raise ValueError(f"term {name!r} needs {sorted(cls.needs - NEEDS)}; known: "
                         f"{', '.join(sorted(NEEDS))}")
    parts = tuple(getattr(cls, "parts", ()))
    if not all(isinstance(p, str) and p.isidentifier() for p in parts):
        raise ValueError(f"term {name!r}: part names must be identifiers, got {parts}")
    KD_TERMS[name] = cls
    return cls


def term_outputs(name: str) -> tuple:
    """The loss names a registered term logs: its own, then name_part for each part."""
    return (name,) + tuple(f"{name}_{p}" for p in getattr(KD_TERMS[name], "parts", ()))


def parse_kd(spec: str) -> list[str]:
    """'none' -> []; 'skip+logit' -> ['skip', 'logit']; unknown or repeated names: ValueError."""
    spec = str(spec).strip()
    if spec == "none":
        return []
    names = [n.strip() for n in spec.split("+")]
    unknown = [n for n in names if n not in KD_TERMS]
    if unknown or not names:
        raise ValueError(f"unknown distillation term {unknown[0] if unknown else spec!r}; "
                         f"choose none or +-joined names from {', '.join(KD_TERMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a distillation term is repeated in {spec!r}")
    return names


def term_options(name: str, given: dict | None = None) -> dict:
    """A term's options: its defaults updated with `given` ({key: value}), each value cast to
    its default's type and checked against the term's bounds, choices and check_option.
    Unknown keys or values that do not cast or fit: ValueError."""
    cls = KD_TERMS[name]
    defaults = dict(getattr(cls, "options", {}))
    out = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ValueError(f"term {name!r} has no option {key!r} (its options: {known})")
        kind = type(defaults[key])
        try:
            if kind is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = value.lower() in ("1", "true", "yes", "on")
            out[key] = kind(value)
            if kind in (int, float) and not math.isfinite(out[key]):
                raise ValueError(value)
        except (TypeError, ValueError, OverflowError):
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise ValueError(f"option {name}.{key} must be {article} {kind.__name__}, got "
                             f"{value!r}") from None
        lo, hi = getattr(cls, "bounds", {}).get(key, (None, None))
        if lo is not None and not lo <= out[key] <= hi:
            raise ValueError(f"option {name}.{key} must be in [{lo:g}, {hi:g}], got {value!r}")
        allowed = getattr(cls, "choices", {}).get(key)
        if allowed is not None and out[key] not in allowed:
            raise ValueError(f"option {name}.{key} must be one of {', '.join(map(str, allowed))}, "
                             f"got {value!r}")
        check = getattr(cls, "check_option", None)
        if check is not None:
            try:
                out[key] = check(key, out[key])
            except ValueError as exc:
                raise ValueError(f"option {name}.{key}: {exc}") from None
    return out
