"""``tune`` from a sharded log (``[engine] log = "sharded"``): the objective scored shard by
shard equals the one-process objective, the lists are kept and reused, and the command
writes the tuned config and the test comparison."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from llmrecall.cli import app
from llmrecall.config import PipelineConfig
from llmrecall.data.loaders import load_dataset_toml
from llmrecall.engine.local import Engine
from llmrecall.engine.sharded import open_sharded_log
from llmrecall.engine.sharded_tune import ShardedLog, ShardedObjective, tune_sharded
from llmrecall.errors import ConfigError
from llmrecall.evaluate.protocols import make_split
from llmrecall.tune.objective import ValidationObjective

CONFIG = {"fusion": {"k": 100, "channel_k": 150},
          "channels": [{"kind": "popularity", "weight": 0.3},
                       {"kind": "itemcf", "params": {"neighbors": 100}},
                       {"kind": "swing", "weight": 0.7, "params": {"max_users_per_item": 40}}]}


@contextmanager
def both_objectives(files, tmp_path, config: PipelineConfig, engine):
    """``(driver, sharded, log)``: the one-process validation objective of ``config``
    (recall@100) on the loaded log ``files``, and the sharded one on its shards (about
    30,000 events each) in ``tmp_path``, with the open sharded log."""
    folder, spec = files
    split = make_split(load_dataset_toml(folder / "data.toml"), "loo", 0)
    driver = ValidationObjective(split.train, split.valid, config, "recall@100")
    with open_sharded_log(spec, engine, tmp_path, shard_events=30_000) as log:
        yield driver, ShardedObjective(ShardedLog(log.shards.paths, log.items, engine,
                                                  log.run, 2**20), config, "recall@100"), log


def test_the_sharded_objective_scores_what_the_one_process_objective_scores(
        ml100k_files, tmp_path):
    """ml-100k as three Parquet files, 4 shards: the validation recall@100 of the config
    and of two other fusions equals the one-process tuner's to one user (a near-tie in a
    co-occurrence may swap a neighbour); the lists are fitted and recalled once per
    channel, every trial after reads them."""
    config = PipelineConfig.model_validate(CONFIG)
    engine = Engine()
    with both_objectives(ml100k_files, tmp_path, config, engine) as (driver, sharded, log):
        assert len(log.shards.paths) == 4 and sharded.n_users == driver.n_users == 943
        others = [config.model_copy(update={"channels": [
            c.model_copy(update={"weight": w}) for c, w in zip(config.channels, weights)]})
            for weights in ((1.0, 0.0, 0.0), (0.0, 2.0, 0.1))]
        for cfg in (config, *others):
            assert sharded.evaluate(cfg) == pytest.approx(driver.evaluate(cfg), abs=1.5 / 943)
        assert sharded.store.stats.fits == 3 and sharded.store.stats.recalls == 12
        # 10 asks (the first channel at the start, 3 channels x 3 fusions), 3 of them fits
        assert sharded.store.stats.list_hits == 10 - 3

        # a new objective on the same work folder finds every list kept
        again = ShardedObjective(ShardedLog(log.shards.paths, log.items, engine, log.run,
                                            2**20), config, "recall@100")
        again.evaluate(config)
        assert again.store.stats.fits == 0 and again.store.stats.list_hits == 4
        with pytest.raises(ConfigError, match="coverage"):
            ShardedObjective(ShardedLog(log.shards.paths, log.items, engine, log.run, 2**20),
                             config, "coverage@100")


def test_the_sharded_objective_reads_each_shards_bpr_user_factors(ml100k_files, tmp_path):
    """BPR's per-user factors are kept per shard: each shard's validation lists are
    recalled with its own users' factors, so the sharded objective is the one-process
    one exactly (BPR trains on one thread with one seed)."""
    config = PipelineConfig.model_validate({"fusion": {"k": 100, "channel_k": 150},
                                            "channels": [{"kind": "bpr", "params": {
                                                "factors": 16, "iterations": 20}}]})
    with both_objectives(ml100k_files, tmp_path, config, Engine()) as (driver, sharded, _log):
        value = driver.evaluate(config)
        assert value > 0.1 and sharded.evaluate(config) == pytest.approx(value, abs=1e-12)


def test_tune_sharded_runs_the_study_and_compares_on_test(ml100k_files, tmp_path):
    """The study and its test comparison, with EDLAE and ALS fitted from the shards too."""
    _folder, spec = ml100k_files
    config = PipelineConfig.model_validate({**CONFIG, "channels": [
        *CONFIG["channels"], {"kind": "edlae", "params": {"max_items": 800}},
        {"kind": "als", "params": {"factors": 16, "iterations": 5}}]})
    tuned, report, comparison = tune_sharded(
        spec, config, 6, "recall@100", engine=Engine(), work_dir=tmp_path, space="fusion",
        shard_events=30_000, progress=False)
    assert report["trials"]["complete"] + report["trials"]["pruned"] == 6
    assert report["validation_users"] == 943 and report["engine"]["shards"] == 4
    assert report["best_value"] >= report["baseline_value"]
    assert report["this_process"]["fits"] == 5  # one fit per channel, for all trials
    rows = comparison["rows"]
    assert list(rows)[-1] == "fused"
    assert set(rows) == {"popularity", "itemcf", "swing", "edlae", "als", "fused"}
    cell = rows["fused"]["recall@100"]
    assert cell["default"] == pytest.approx(comparison["default"]["results"]["fused"]["recall@100"])
    assert comparison["tuned"]["config_hash"] == tuned.config_hash()


def test_cli_tune_with_the_sharded_log(ml100k_files, tmp_path):
    folder, _spec = ml100k_files
    toml = ("[fusion]\nk = 100\nchannel_k = 150\n\n[[channels]]\nkind = \"popularity\"\n"
            "weight = 0.3\n\n[[channels]]\nkind = \"itemcf\"\n"
            f'\n[engine]\nlog = "sharded"\nwork_dir = "{tmp_path / "work"}"\n')
    (tmp_path / "sharded.toml").write_text(toml)
    runner = CliRunner()
    args = ["tune", "--data", str(folder / "data.toml"), "-c", str(tmp_path / "sharded.toml"),
            "-n", "3", "--space", "fusion", "-o", str(tmp_path / "tuned.toml")]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "tuned.toml").exists()
    side = json.loads((tmp_path / "tuned.comparison.json").read_text())
    assert side["tuning"]["engine"]["log"] == "sharded" and "fused" in side["rows"]
    refused = runner.invoke(app, [*args[:-2], "-o", str(tmp_path / "t2.toml"),
                                  "--max-users", "100"])
    assert refused.exit_code == 2 and "--max-users" in refused.output
    refused = runner.invoke(app, [*args[:-2], "-o", str(tmp_path / "t3.toml"),
                                  "--protocol", "recbole-general"])
    assert refused.exit_code == 2 and "loo" in refused.output
