"""The search-space table matches the channel constructors, and the config itself is a point."""

from __future__ import annotations

import optuna
import pytest

from llmrecall.config import load_config
from llmrecall.errors import ConfigError
from llmrecall.tune import space
from llmrecall.tune.space import CHANNEL_SPACES, constructor_defaults, current_values, suggest


@pytest.mark.parametrize("kind", sorted(CHANNEL_SPACES))
def test_table_names_constructor_parameters(kind):
    defaults = constructor_defaults(kind)
    for grid in CHANNEL_SPACES[kind]:
        assert grid.param in defaults, f"{kind}.{grid.param} is not a constructor argument"
        # every grid value is accepted by the constructor's own validation
        for value in grid.values:
            load_config().model_validate({"channels": [{"kind": kind,
                                                        "params": {grid.param: value}}]})


@pytest.mark.parametrize("which", ["all", "fusion"])
def test_current_values_reproduce_the_config(which):
    cfg = load_config()
    again = suggest(optuna.trial.FixedTrial(current_values(cfg, which)), cfg, which)
    assert again.config_hash() == cfg.config_hash()


def test_config_value_off_the_grid_joins_the_grid(small_config):
    raw = small_config.model_dump()
    raw["channels"][2]["params"]["regularization"] = 333.0
    cfg = type(small_config).model_validate(raw)
    grids = {g.param: g.values for g in space.channel_grids(cfg.channels[2])}
    assert 333.0 in grids["regularization"]
    assert list(grids["regularization"]) == sorted(grids["regularization"])


def test_fusion_space_leaves_channel_params_alone(small_config):
    values = current_values(small_config, "fusion")
    assert not any(key.endswith(".neighbors") or key.endswith(".regularization") for key in values)
    values["itemcf.weight"] = 2.0
    values["ease.quota"] = 50
    tuned = suggest(optuna.trial.FixedTrial(values), small_config, "fusion")
    assert tuned.channels[1].weight == 2.0
    assert tuned.channels[2].quota == 50
    assert tuned.channels[1].params == small_config.channels[1].params


def test_unknown_parameter_in_table_is_a_clear_error(monkeypatch, small_config):
    monkeypatch.setitem(CHANNEL_SPACES, "ease", (space.Grid("lambda_", (1.0,)),))
    with pytest.raises(ConfigError, match="ease.*lambda_"):
        space.channel_grids(small_config.channels[2])
