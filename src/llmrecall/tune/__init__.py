"""Recall optimisation on validation data: fusion and channel parameters (Optuna), and
interest-prompt variants scored by validation recall."""

from llmrecall.tune.objective import ValidationObjective, parse_metric
from llmrecall.tune.prompts import (
                                    GeneratorProposer,
                                    PromptVariant,
                                    channel_scorer,
                                    load_saved,
                                    optimise_prompts,
)
from llmrecall.tune.space import CHANNEL_SPACES, Grid
from llmrecall.tune.study import tune, tune_validation

__all__ = ["CHANNEL_SPACES", "GeneratorProposer", "Grid", "PromptVariant",
           "ValidationObjective", "channel_scorer", "load_saved", "optimise_prompts",
           "parse_metric", "tune", "tune_validation"]
