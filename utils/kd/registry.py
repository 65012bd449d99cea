"""The registry of distillation terms: `--kd skip+logit` names registered terms joined by `+`.

A term is an nn.Module subclass of KDTerm in its own file, registered with @register_term. It
declares what it needs from the frozen teacher (`needs`: "hint", "logits"), may learn something
(a connector: its parameters train with the student and are not exported), and returns one
scalar loss, which appears under its name in the console, the arrays, TensorBoard and the JSON.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

__all__ = ["KDTerm", "TermContext", "TeacherOutput", "KD_TERMS", "register_term", "parse_kd"]

KD_TERMS: dict[str, type] = {}


@dataclass
class TermContext:
    """What a term may need to build itself."""
    student_hint_shape: tuple | None = None   # (C, H, W)
    teacher_hint_shape: tuple | None = None
    temperature: float = 4.0


@dataclass
class TeacherOutput:
    logits: torch.Tensor | None
    hint: torch.Tensor | None


class KDTerm(nn.Module):
    """Base class: set `name`, `needs`, `default_weight` and `paper`; implement forward."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset] = frozenset()       # teacher outputs: {"hint", "logits"}
    default_weight: ClassVar[float] = 1.0
    paper: ClassVar[str] = ""

    def __init__(self, ctx: TermContext):
        super().__init__()

    def forward(self, student_out, teacher_out: TeacherOutput) -> torch.Tensor:
        raise NotImplementedError


def register_term(cls):
    """Class decorator: KD_TERMS[cls.name] = cls. Names are identifiers (they become module,
    array and TensorBoard names) and may not be 'none', 'ce' or 'loss'."""
    name = cls.name
    if not name.isidentifier() or name in ("none", "ce", "loss"):
        raise ValueError(f"bad distillation term name {name!r}")
    if not cls.needs <= {"hint", "logits"}:
        raise ValueError(f"term {name!r} needs {set(cls.needs)}; known: hint, logits")
    KD_TERMS[name] = cls
    return cls


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
