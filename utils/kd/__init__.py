"""Distillation losses, one file per method, combined by DistillationLoss."""
from .connector import Connector, build_connector
from .logit import LogitKDLoss
from .loss import KD_MODES, DistillationLoss
from .skip import SkipHintLoss

__all__ = ["Connector", "build_connector", "LogitKDLoss", "SkipHintLoss",
           "DistillationLoss", "KD_MODES"]
