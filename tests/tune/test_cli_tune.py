"""``llmrecall tune``: writes the tuned TOML and a test comparison next to it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llmrecall.cli import app
from llmrecall.config import load_config


@pytest.mark.slow
def test_tune_command_writes_config_and_comparison(small_config, tmp_path):
    cfg = tmp_path / "small.toml"
    small_config.save(cfg)
    out = tmp_path / "out" / "tuned.toml"
    db = tmp_path / "study.sqlite"
    args = ["tune", "--dataset", "ml-100k", "--config", str(cfg), "--trials", "3",
            "--output", str(out), "--metric", "recall@50", "--storage", str(db)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    tuned = load_config(out)
    assert [c.kind for c in tuned.channels] == [c.kind for c in small_config.channels]
    side = json.loads((out.parent / "tuned.comparison.json").read_text())
    assert side["metric"] == "recall@50"
    assert set(side["rows"]) == {"popularity", "itemcf", "ease", "fused"}
    assert side["tuned"]["config_hash"] == tuned.config_hash()
    assert side["default"]["config_hash"] == small_config.config_hash()
    assert side["tuning"]["best_value"] >= side["tuning"]["baseline_value"]
    assert side["default"]["split"] == side["tuned"]["split"] == "test"
    # rerunning resumes the same study
    again = CliRunner().invoke(app, args[:-4] + ["--metric", "recall@50", "--storage", str(db)])
    assert again.exit_code == 0, again.output
    side = json.loads((out.parent / "tuned.comparison.json").read_text())
    assert side["tuning"]["trials"]["complete"] + side["tuning"]["trials"]["pruned"] == 6


def test_bad_metric_is_reported_cleanly(tmp_path):
    result = CliRunner().invoke(app, ["tune", "--dataset", "ml-100k", "--trials", "1",
                                      "--output", str(tmp_path / "t.toml"),
                                      "--metric", "precision@5"])
    assert result.exit_code == 2
    assert "NAME@K" in result.output
