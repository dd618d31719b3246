"""DataSpec: validation and the TOML [data] table round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrecall.data.spec import DataSpec
from llmrecall.errors import ConfigError

FULL = """
[data.interactions]
path = "events.csv"
format = "csv"
user = "customer"
item = "sku"
time = "ts"
time_format = "%Y-%m-%d %H:%M:%S"
event = "action"
weight = "qty"
rating = "stars"

[data.interactions.event_weights]
view = 1.0
purchase = 5.0

[data.items]
path = "items.parquet"
id = "sku"
title = "name"
text_fields = ["description", "brand"]
category = "path"
category_separator = " > "
attributes = ["price"]

[data.searches]
path = "searches.jsonl"
user = "customer"
query = "q"
time = "at"
time_format = "iso8601"
"""


def test_toml_round_trip():
    spec = DataSpec.from_toml_text(FULL)
    assert spec.interactions.event_weights == {"view": 1.0, "purchase": 5.0}
    assert spec.items.text_fields == ["description", "brand"]
    assert spec.items.resolved_format == "parquet" and spec.searches.resolved_format == "jsonl"
    again = DataSpec.from_toml_text(spec.to_toml())
    assert again == spec
    assert again.to_toml() == spec.to_toml()


def test_minimal_spec_defaults():
    spec = DataSpec.from_toml_text('[data.interactions]\npath = "a.inter"\nuser = "u"\nitem = "i"\n')
    assert spec.items is None and spec.searches is None
    assert spec.interactions.time is None and spec.interactions.time_format == "unix"
    assert spec.interactions.resolved_format == "recbole"
    assert "items" not in spec.to_table()  # None tables are left out of the TOML


def test_relative_paths_follow_the_toml_file(tmp_path):
    (tmp_path / "conf").mkdir()
    toml = tmp_path / "conf" / "data.toml"
    toml.write_text(FULL)
    spec = DataSpec.from_toml(toml)
    assert spec.interactions.path == tmp_path / "conf" / "events.csv"
    assert spec.items.path == tmp_path / "conf" / "items.parquet"
    absolute = spec.resolve_paths("/elsewhere")
    assert absolute == spec  # absolute paths are left alone


@pytest.mark.parametrize("change,words", [
    (("time_format = \"%Y-%m-%d %H:%M:%S\"", "time_format = \"yyyy-mm-dd\""), "strftime"),
    (("format = \"csv\"", "format = \"xlsx\""), "format"),
    (("user = \"customer\"\nitem", "item"), "interactions.user"),
    (("attributes = [\"price\"]", "attributes = [\"title\"]"), "title"),
    (("rating = \"stars\"", "rating = \"stars\"\nratings = \"x\""), "ratings"),
])
def test_invalid_values_are_config_errors(change, words):
    with pytest.raises(ConfigError) as caught:
        DataSpec.from_toml_text(FULL.replace(*change), source="shop.toml")
    assert "shop.toml" in str(caught.value) and words in str(caught.value)


def test_event_weights_need_an_event_column():
    text = FULL.replace('event = "action"\n', "")
    with pytest.raises(ConfigError, match="event_weights needs an event column"):
        DataSpec.from_toml_text(text)


def test_unknown_suffix_without_format():
    spec = DataSpec.from_toml_text('[data.interactions]\npath = "a.xlsx"\nuser = "u"\nitem = "i"\n')
    with pytest.raises(ConfigError, match="format"):
        _ = spec.interactions.resolved_format


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        DataSpec.from_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        DataSpec.from_toml(tmp_path / "bad.toml")
    (tmp_path / "other.toml").write_text("[model]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"no \[data\] table"):
        DataSpec.from_toml(Path(tmp_path / "other.toml"))


def test_the_documented_example_is_a_valid_spec():
    docs = Path(__file__).resolve().parents[2] / "docs" / "data.md"
    block = docs.read_text(encoding="utf-8").split("```toml\n", 1)[1].split("```", 1)[0]
    spec = DataSpec.from_toml_text(block, source=str(docs))
    assert spec.interactions.event_weights["purchase"] == 5.0
    assert spec.items.category_separator == " > " and spec.searches.time_format == "iso8601"
    assert DataSpec.from_toml_text(spec.to_toml()) == spec
