"""Distillation: one file per loss term, registered by name (registry.py), combined with
cross-entropy by DistillationLoss (loss.py); published recipes of the terms' settings
(--kd-recipe) in recipes.py. Every module of this package other than those four and connector.py
is a term's and is imported here, so a new term is one new file."""
import importlib
import pkgutil

# registration order is the order of --help, the docs and the benchmark: ours, Hinton's, the rest
from .skip import SkipHintLoss, SkipTerm  # isort: skip
from .logit import LogitKDLoss, LogitTerm  # isort: skip
from .connector import Connector, build_connector
from .loss import KD_MODES, DistillationLoss
from .recipes import KD_RECIPES, resolve_recipe
from .registry import (KD_TERMS, NEEDS, KDBatch, KDTerm, TermContext, parse_kd, register_term,
                       term_options, term_outputs)

# the other terms, in name order (their modules register them)
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("connector", "loss", "recipes", "registry"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Connector", "build_connector", "LogitKDLoss", "LogitTerm", "SkipHintLoss",
           "SkipTerm", "DistillationLoss", "KD_MODES", "KD_TERMS", "KDTerm", "KDBatch", "NEEDS",
           "TermContext", "parse_kd", "register_term", "term_options", "term_outputs",
           "KD_RECIPES", "resolve_recipe"]
