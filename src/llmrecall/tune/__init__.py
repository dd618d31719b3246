"""Recall optimisation: tune fusion and channel parameters, and interest-prompt variants,
on validation data only."""

from llmrecall.tune.objective import ValidationObjective, parse_metric
from llmrecall.tune.space import CHANNEL_SPACES, Grid
from llmrecall.tune.study import tune, tune_validation

__all__ = ["CHANNEL_SPACES", "Grid", "ValidationObjective", "parse_metric", "tune",
           "tune_validation"]
