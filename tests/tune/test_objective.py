"""The validation objective: same numbers as the evaluation runner, cached channels, stages."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from llmrecall.errors import ConfigError
from llmrecall.evaluate.experiment import recall_task, score_lists
from llmrecall.pipeline import RecallPipeline
from llmrecall.tune.objective import ValidationObjective, parse_metric


@pytest.mark.parametrize("bad", ["recall", "recall@0", "precision@10", "recall@x", "@10"])
def test_bad_metric_names_the_problem(bad):
    with pytest.raises(ConfigError, match="NAME@K"):
        parse_metric(bad)


def test_metric_is_normalised():
    assert parse_metric(" Recall@50 ") == ("recall", 50)


@pytest.mark.slow
def test_matches_the_evaluation_runner_on_validation(split, small_config):
    """The tuner's number for a config is the runner's fused validation number."""
    pipeline = RecallPipeline(small_config).fit(split.train)
    lists = recall_task(pipeline, split.valid)
    results, _ = score_lists(pipeline, lists, split.dataset.n_items, ks=(10, 50))
    objective = ValidationObjective(split.train, split.valid, small_config, "recall@50")
    assert objective.evaluate(small_config) == pytest.approx(results["fused"]["recall@50"],
                                                             abs=1e-12)
    ndcg = ValidationObjective(split.train, split.valid, small_config, "ndcg@10",
                               store=objective.store)
    assert ndcg.evaluate(small_config) == pytest.approx(results["fused"]["ndcg@10"], abs=1e-12)


@pytest.mark.slow
def test_fusion_only_changes_reuse_every_channel(split, small_config):
    objective = ValidationObjective(split.train, split.valid, small_config, "recall@50")
    first = objective.evaluate(small_config)
    fits, recalls = objective.store.stats.fits, objective.store.stats.recalls
    assert fits == 3 and recalls == 3 * 3  # three channels, three stages

    raw = small_config.model_dump()
    raw["fusion"]["rrf_k"] = 5.0
    raw["channels"][0]["weight"] = 0.0
    raw["channels"][1]["quota"] = 20
    fused_only = type(small_config).model_validate(raw)
    second = objective.evaluate(fused_only)
    assert (objective.store.stats.fits, objective.store.stats.recalls) == (fits, recalls)
    assert second != first  # the fusion change did change the answer

    raw["channels"][2]["params"]["regularization"] = 1000.0
    objective.evaluate(type(small_config).model_validate(raw))
    assert objective.store.stats.fits == fits + 1  # only EASE was refitted
    assert objective.store.stats.recalls == recalls + 3


@pytest.mark.slow
def test_a_pruned_trial_stops_after_the_first_stage(split, small_config):
    objective = ValidationObjective(split.train, split.valid, small_config, "recall@50",
                                    stages=(0.2, 0.6, 1.0))
    # a threshold nothing reaches prunes every trial at its first report
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1.5))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]
    assert objective.store.stats.recalls == 3  # each channel recalled the first chunk only
    assert objective.bounds == [0, round(0.2 * objective.n_users), round(0.6 * objective.n_users),
                                objective.n_users]


def test_max_users_samples_validation_users(split, small_config):
    objective = ValidationObjective(split.train, split.valid, small_config, "recall@50",
                                    max_users=100, seed=3)
    assert objective.n_users == 100
    assert np.isin(objective.users, split.valid.users).all()
    assert len(np.unique(objective.users)) == 100
