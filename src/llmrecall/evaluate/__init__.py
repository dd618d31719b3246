"""Evaluation: protocols (splits), ranking metrics, and running channels on a split."""

from llmrecall.evaluate.baselines import RandomRanking
from llmrecall.evaluate.metrics import DEFAULT_KS, ranking_metrics
from llmrecall.evaluate.protocols import (
                                          PROTOCOLS,
                                          EvalTask,
                                          Split,
                                          compact,
                                          make_split,
                                          recbole_general_filter,
                                          recbole_split_counts,
)
from llmrecall.evaluate.runner import evaluate_channel, rank_task

__all__ = ["DEFAULT_KS", "PROTOCOLS", "EvalTask", "RandomRanking", "Split", "compact",
           "evaluate_channel", "make_split", "rank_task", "ranking_metrics",
           "recbole_general_filter", "recbole_split_counts"]
