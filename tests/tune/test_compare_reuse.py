"""The test comparison reuses fitted channels and gives exactly the numbers of evaluate()."""

from __future__ import annotations

import pytest

from llmrecall.config import parse_config
from llmrecall.errors import ConfigError
from llmrecall.evaluate.experiment import evaluate
from llmrecall.pipeline import RecallPipeline
from llmrecall.tune.compare import compare_on_test
from llmrecall.tune.store import FittedChannels


def test_a_fusion_only_change_fits_each_channel_once(ml100k, split, small_config, small_raw):
    # other fusion weights only: the same three fitted channels
    for channel, weight in zip(small_raw["channels"], (1.0, 0.2, 2.5)):
        channel["weight"] = weight
    tuned = parse_config(small_raw)
    models = FittedChannels(split.train)
    comparison = compare_on_test(ml100k, "loo", small_config, tuned, "recall@50", split=split,
                                 models=models)
    assert models.fits == 3  # popularity, itemcf, ease: not six
    # sharing changes nothing in the numbers
    alone = evaluate(ml100k, "loo", tuned, ks=comparison["ks"])
    assert comparison["tuned"]["results"] == alone["results"]
    assert comparison["default"]["results"]["fused"] != comparison["tuned"]["results"]["fused"]


def test_a_changed_channel_parameter_is_fitted_again(split, small_config, small_raw):
    models = FittedChannels(split.train)
    RecallPipeline(small_config).fit(split.train, models=models)
    small_raw["channels"][2]["params"] = {"regularization": 50.0}  # ease
    pipeline = RecallPipeline(parse_config(small_raw)).fit(split.train, models=models)
    assert models.fits == 4
    assert pipeline.channels["ease"].regularization == 50.0


def test_fitted_channels_of_another_dataset_are_refused(ml100k, split, small_config):
    models = FittedChannels(split.train)
    with pytest.raises(ConfigError, match="another dataset"):
        RecallPipeline(small_config).fit(ml100k, models=models)
