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
