"""Distillation: one file per loss term, registered by name (registry.py), combined with
cross-entropy by DistillationLoss (loss.py)."""
# registration order is the order of --help, the docs and the benchmark: ours, Hinton's, the rest
from .skip import SkipHintLoss, SkipTerm  # isort: skip
from .logit import LogitKDLoss, LogitTerm  # isort: skip
from .connector import Connector, build_connector
from .loss import KD_MODES, DistillationLoss
from .registry import (KD_TERMS, NEEDS, KDBatch, KDTerm, TermContext, parse_kd, register_term,
                       term_options, term_outputs)

__all__ = ["Connector", "build_connector", "LogitKDLoss", "LogitTerm", "SkipHintLoss",
           "SkipTerm", "DistillationLoss", "KD_MODES", "KD_TERMS", "KDTerm", "KDBatch", "NEEDS",
           "TermContext", "parse_kd", "register_term", "term_options", "term_outputs"]
