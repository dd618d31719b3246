"""Pipeline config: validation with clear messages, TOML round trip, stable hash."""

import pytest

from llmrecall.config import load_config, parse_config
from llmrecall.errors import ConfigError


def test_default_config_loads_and_round_trips(tmp_path):
    cfg = load_config()
    assert cfg.enabled_channels
    path = tmp_path / "c.toml"
    cfg.save(path)
    again = load_config(path)
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()


def test_hash_changes_with_any_parameter():
    base = {"channels": [{"kind": "itemcf"}]}
    a = parse_config(base).config_hash()
    b = parse_config({"channels": [{"kind": "itemcf", "weight": 2.0}]}).config_hash()
    assert a != b


@pytest.mark.parametrize("raw, fragment", [
    ({"channels": [{"kind": "no-such-channel"}]}, "no-such-channel"),
    ({"channels": [{"kind": "itemcf", "params": {"bogus": 1}}]}, "params.bogus"),
    ({"channels": [{"kind": "ease", "params": {"regularization": "lots"}}]}, "params.regularization"),
    ({"channels": [{"kind": "itemcf", "weight": -1}]}, "channels.0.weight"),
    ({"channels": [{"kind": "itemcf"}, {"kind": "itemcf"}]}, "unique"),
    ({"channels": []}, "enabled"),
    ({"channels": [{"kind": "itemcf"}], "fusion": {"k": 0}}, "fusion.k"),
    ({"channels": [{"kind": "itemcf"}], "surprise": 1}, "surprise"),
])
def test_invalid_configs_name_the_field(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="x.toml")
    assert "x.toml" in str(info.value)
    assert fragment in str(info.value)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("channels = [")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_packaged_configs_load_by_name():
    from llmrecall.config import packaged_configs

    assert {"default", "full"} <= set(packaged_configs())
    full = load_config("full")
    kinds = {c.kind for c in full.enabled_channels}
    assert {"sasrec", "textcf", "semantic_i2i", "itemcf"} <= kinds
    assert full.config_hash() != load_config("default").config_hash()
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-config")


def test_channel_parameter_ranges_fail_at_load_naming_file_table_and_field(tmp_path):
    # regression: itemcf neighbors = -3 loaded fine and failed only when the channel was fitted
    path = tmp_path / "bad.toml"
    path.write_text('[[channels]]\nkind = "popularity"\n\n'
                    '[[channels]]\nkind = "itemcf"\nparams = { neighbors = -3 }\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for fragment in (str(path), "[[channels]] #2", "itemcf", "params.neighbors", "-3", ">= 1"):
        assert fragment in message, message


@pytest.mark.parametrize("kind, params", [
    ("itemcf", {"shrink": -1.0}),
    ("itemcf", {"history_length": 0}),
    ("itemcf", {"position_half_life": 0.0}),
    ("swing", {"alpha": 0.0}),
    ("swing", {"max_users_per_item": 1}),
    ("swing", {"neighbors": 0}),
    ("ease", {"regularization": 0.0}),
    ("ease", {"max_items": 0}),
    ("als", {"factors": 0}),
    ("bpr", {"iterations": 0}),
    ("bpr", {"regularization": -0.1}),
    ("popularity", {"half_life": -5.0}),
    ("sasrec", {"patience": -1}),
    ("sasrec", {"holdout_users": 0}),
    ("cf_transfer", {"mapping_weight": 1.5}),
    ("cf_transfer", {"mapping_ridge": 0.0}),
])
def test_out_of_range_channel_parameters_are_config_errors(kind, params):
    with pytest.raises(ConfigError) as info:
        parse_config({"channels": [{"kind": kind, "params": params}]}, source="x.toml")
    (name,) = params
    assert "x.toml" in str(info.value) and f"params.{name}" in str(info.value)


def test_parameter_bounds_keep_the_values_that_mean_off_or_infinite():
    cfg = parse_config({"channels": [
        {"kind": "popularity", "params": {"half_life": float("inf")}},
        {"kind": "itemcf", "params": {"neighbors": 1, "shrink": 0.0,
                                      "position_half_life": float("inf")}},
        {"kind": "ease", "params": {"max_items": None}},
        {"kind": "swing", "params": {"max_users_per_item": 2, "user_power": 0.0}}]})
    assert cfg.channels[1].params["neighbors"] == 1


def test_evaluation_cutoffs_longer_than_the_channel_lists_name_the_field(tmp_path):
    path = tmp_path / "short.toml"
    path.write_text('[fusion]\nchannel_k = 100\n\n[[channels]]\nkind = "popularity"\n\n'
                    '[[channels]]\nkind = "itemcf"\nk = 300\n')
    cfg = load_config(path)
    cfg.check_cutoffs([10, 50, 100])
    with pytest.raises(ConfigError) as info:
        cfg.check_cutoffs([10, 200])
    message = str(info.value)
    for fragment in (str(path), "[fusion] channel_k = 100", "200", "popularity"):
        assert fragment in message, message
    path.write_text('[[channels]]\nkind = "popularity"\nk = 50\n')
    with pytest.raises(ConfigError, match=r"\[\[channels\]\] #1 \(popularity\) k = 50"):
        load_config(path).check_cutoffs([100])


def test_evaluate_checks_cutoffs_before_splitting_or_fitting(tmp_path):
    # regression: "cut-off 200 exceeds the ranked list length 100" came after every channel
    # had been fitted and had recalled
    from llmrecall.data.builtin import load_builtin
    from llmrecall.evaluate.experiment import evaluate

    path = tmp_path / "short.toml"
    path.write_text('[fusion]\nk = 50\nchannel_k = 100\n\n[[channels]]\nkind = "popularity"\n')
    said = []
    with pytest.raises(ConfigError, match="channel_k = 100"):
        evaluate(load_builtin("ml-100k"), "loo", load_config(path), progress=said.append)
    assert said == []


def test_the_old_spelling_neighbours_is_refused_naming_neighbors(tmp_path):
    # regression: llm_knowledge spelt its parameter `neighbours` while itemcf and swing spell
    # `neighbors`; the old key is refused with the new one in the message
    path = tmp_path / "old.toml"
    path.write_text('[[channels]]\nkind = "llm_knowledge"\nparams = { neighbours = 50 }\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for fragment in (str(path), "[[channels]] #1", "params.neighbours", "use `neighbors`"):
        assert fragment in message, message
    cfg = parse_config({"channels": [{"kind": "llm_knowledge", "params": {"neighbors": 50}}]})
    assert cfg.channels[0].params == {"neighbors": 50}


def test_every_config_in_the_repository_loads():
    """The configs the docs run (configs/*.toml) are valid: a renamed parameter fails here,
    not an hour into a benchmark."""
    from pathlib import Path

    paths = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert len(paths) >= 5
    for path in paths:
        assert load_config(path).channels, path
