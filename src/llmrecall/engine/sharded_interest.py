"""``llm_interest`` from the sharded log: interests generated shard by shard, matched once,
kept per shard.

The channel's state is per user (each user's generated texts and their matches in the
catalog), so it is kept as BPR's user factors are: per shard, each shard's users in that
shard's numbering (:mod:`llmrecall.engine.shard_users`). The fit:

1. **which users, which examples** (one task per shard, then the driver): each shard
   reports its users' first places in the log and training lengths (12 bytes a user, no
   event). From these the driver numbers the users as the loader does (first appearance,
   :func:`~llmrecall.engine.sharded_als.numbers_by_first_place`) and draws, with the
   driver path's own functions on the same lengths, the same users
   (:func:`~llmrecall.channels.interest.sample_users`: ``max_users``, seeded) and the same
   few-shot example users (:func:`~llmrecall.interest.jobs.example_users`); the examples'
   histories are read from their shards. ``users`` (raw ids) are looked up by each shard.
2. **generation, shard after shard**: the driver reads one shard's training histories and
   runs the engine's interest job on that shard's chosen users, with the examples drawn in
   1 (on the Ray engine the job runs on the generator actor pool; the driver holds one
   shard). Same prompts as the driver path (the same histories, examples, settings and
   generator), so the same texts; the channel's store (``store_path``) keeps them as the
   driver path keeps them, so either path finds the other's.
3. **matching**: the shard's texts matched against the catalog by the channel's hybrid
   matcher (built once: the catalog embedded, BM25 indexed) and written under the run
   folder as one part per shard. A rerun skips the shards whose part exists.

Recall then runs in the shards' tasks like every other channel's, each task reading its
shard's part (:func:`~llmrecall.engine.shard_users.for_shard`); ``build`` joins the parts
in its user order. The report's ``generation`` entry sums the parts' job statistics.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from llmrecall.data.dataset import Dataset, Histories
from llmrecall.data.vocab import Vocabulary
from llmrecall.engine.shard_split import catalog_only, read_shard
from llmrecall.engine.sharded_als import first_places, numbers_by_first_place
from llmrecall.engine.stage_files import StageParts, channel_params, digest
from llmrecall.errors import ConfigError

#: channel kinds fitted here
INTEREST_KINDS = ("llm_interest",)


def user_facts(path: str, items: list[str], split: bool,
               wanted: list[str] | None) -> dict[str, Any]:
    """What the driver needs of one shard's users to choose them: ``first`` int64[users]
    (each user's first place in the log), ``lengths`` int64[users] (training events) and,
    with ``wanted`` (raw user ids), ``wanted_rows`` int64 (the shard's users among them)
    and ``wanted_found`` (their raw ids)."""
    shard = read_shard(path, items, split)
    out: dict[str, Any] = {"first": first_places(path),
                           "lengths": np.bincount(shard.train.user, minlength=shard.n_users)}
    if wanted is not None:
        asked = set(wanted)
        raws = pl.read_parquet(path, columns=["user"])["user"].to_list()
        rows = [r for r, raw in enumerate(raws) if raw in asked]
        out["wanted_rows"] = np.asarray(rows, np.int64)
        out["wanted_found"] = [raws[r] for r in rows]
    return out


def train_histories(path: str, items: list[str], split: bool, rows: list[int]) -> list[np.ndarray]:
    """The training items (oldest first) of the users ``rows`` (the shard's numbering) of
    the shard at ``path``."""
    shard = read_shard(path, items, split)
    histories = Histories.from_interactions(shard.train, shard.n_users, len(items))
    return [histories.of(int(r)).copy() for r in rows]


class UserPlaces:
    """Every user of the shards numbered as the loader numbers them, and where each lives.

    ``lengths`` int64[users]: training events per user, by the loader's number;
    :meth:`where` maps loader numbers to (shard, row in the shard)."""

    def __init__(self, facts: list[dict[str, Any]]):
        sizes = [len(f["first"]) for f in facts]
        number = numbers_by_first_place([f["first"] for f in facts])
        self._shard = np.repeat(np.arange(len(facts)), sizes)
        self._row = np.concatenate([np.arange(n) for n in sizes]) if sizes else \
            np.zeros(0, np.int64)
        self._at = np.empty(len(number), np.int64)  # loader number -> place in the shards' order
        self._at[number] = np.arange(len(number))
        self.lengths = np.empty(len(number), np.int64)
        self.lengths[number] = np.concatenate([f["lengths"] for f in facts]) if facts else \
            np.zeros(0, np.int64)

    def where(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of each of ``users`` (the loader's numbers)."""
        at = self._at[np.asarray(users, np.int64)]
        return self._shard[at], self._row[at]


def chosen_rows(channel, facts: list[dict[str, Any]], places: UserPlaces) -> list[np.ndarray]:
    """For each shard, the rows of its users ``channel`` generates for (ascending): the
    ``users`` it names, else every user with a history sampled down to ``max_users`` as
    :func:`~llmrecall.channels.interest.select_users` samples the loaded log's."""
    from llmrecall.channels.interest import sample_users

    if channel.users is not None:
        found = {raw for f in facts for raw in f["wanted_found"]}
        missing = [raw for raw in channel.users if raw not in found]
        if missing:
            raise ConfigError(f"llm_interest: users not in the dataset: {missing[:5]}")
        return [np.unique(f["wanted_rows"]) for f in facts]
    shard, row = places.where(sample_users(places.lengths, channel.max_users, channel.seed))
    return [np.sort(row[shard == s]) for s in range(len(facts))]


def drawn_examples(settings, paths: list[str], items: list[str], split: bool,
                   places: UserPlaces, engine) -> list[tuple[list[int], int]]:
    """The few-shot examples the driver path's job draws from the whole training log
    (:func:`~llmrecall.interest.jobs.job_examples`), drawn from the shards: the same
    users, their histories read from their shards."""
    from llmrecall.interest.jobs import example_of, example_users

    if not settings.wants_examples() or settings.n_examples == 0:
        return []
    users = example_users(places.lengths, settings.n_examples, settings.example_length,
                          settings.seed)
    shard, row = places.where(users)
    wanted = sorted(set(shard.tolist()))
    read = engine.map_tasks(lambda s: train_histories(
        paths[s], items, split, row[shard == s].tolist()), wanted)
    histories: dict[tuple[int, int], np.ndarray] = {}
    for s, got in zip(wanted, read):
        histories.update(zip(((s, int(r)) for r in row[shard == s]), got))
    return [example_of(histories[(int(s), int(r))], settings.example_length)
            for s, r in zip(shard, row)]


def fit_interest(channel, paths: list[str], items: list[str], catalog, engine, run: Path,
                 resumed: dict[str, Any], name: str, split: bool = True) -> None:
    """Fit ``channel`` (an unfitted :class:`~llmrecall.channels.interest.InterestChannel`)
    from the shards ``paths`` (module docstring); ``catalog``: the items'
    :class:`~llmrecall.data.dataset.Catalog`. The matched texts are kept under ``run``,
    one part per shard; ``resumed[f"{name}_texts"]`` says how many were found there."""
    from llmrecall.engine.shard_users import ShardUserRows, no_users
    from llmrecall.interest.jobs import InterestSettings
    from llmrecall.lm.stores import open_cache

    settings = InterestSettings(**channel.settings)
    kept = StageParts(run, "llm_interest", digest(channel_params(channel), split))
    todo = kept.missing(len(paths))
    resumed[f"{name}_texts"] = f"{len(paths) - len(todo)}/{len(paths)}"
    if todo:
        wanted = None if channel.users is None else [str(u) for u in channel.users]
        facts = engine.map_tasks(lambda path: user_facts(path, items, split, wanted), paths)
        places = UserPlaces(facts)
        rows = chosen_rows(channel, facts, places)
        examples = drawn_examples(settings, paths, items, split, places, engine)
        matcher = channel.text_matcher(catalog_only(items, catalog))
        generator = channel.generator_source()
        store = open_cache(channel.store_path or ":memory:")
        try:
            for s in todo:
                texts: dict[int, list[str]] = {}
                stats: dict[str, Any] = {}
                if len(rows[s]):  # a shard with no chosen user is not read again
                    shard = read_shard(paths[s], items, split)
                    raws = pl.read_parquet(paths[s], columns=["user"])["user"].to_list()
                    dataset = Dataset(f"shard {s}", Vocabulary(raws), Vocabulary(items),
                                      shard.train, catalog)
                    texts, job_stats = engine.generate_interests(
                        dataset, generator, settings, rows[s], store,
                        channel.refresh_min_changed, examples)
                    stats = asdict(job_stats)
                kept.save(s, channel.matched_texts(matcher, len(facts[s]["first"]), texts),
                          {"stats": stats})
        finally:
            store.close()
    channel.use_shard_users(no_users(min(int(channel.per_text_k), len(items))))
    channel.job_stats = combined_stats([kept.load_meta(s)["stats"] if s in todo else
                                        found_stats(kept.load_meta(s)["stats"])
                                        for s in range(len(paths))])
    channel.shard_rows_ = ShardUserRows(kept, tuple(paths))


def found_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The job statistics of a shard whose part an earlier run wrote (``stats``, that
    run's): this run generated nothing there, it reused every user's texts."""
    if not stats:
        return stats
    users = int(stats["users"])
    return {**stats, "generated": 0, "reused": users, "cache_hits": 0, "empty": 0,
            "generated_texts": 0, "seconds": 0.0, "per_user_seconds": [], "cost": {}}


def combined_stats(parts: list[dict[str, Any]]):
    """One :class:`~llmrecall.interest.jobs.JobStats` of the shards' jobs (each as
    ``asdict``; an empty dict for a shard with no chosen user): counts and seconds summed,
    a pool's tokens summed and its per-1,000 figures computed again from the sums."""
    from llmrecall.interest.jobs import JobStats

    total = JobStats()
    cost: dict[str, Any] = {}
    for part in parts:
        if not part:
            continue
        for field in ("users", "generated", "reused", "cache_hits", "empty",
                      "generated_texts"):
            setattr(total, field, getattr(total, field) + int(part[field]))
        total.seconds += float(part["seconds"])
        total.per_user_seconds.extend(part["per_user_seconds"])
        for key, value in part["cost"].items():
            if key == "actors":
                cost[key] = max(cost.get(key, 0), value)
            elif not key.startswith(("seconds_per_1000", "tokens_per_1000")):
                cost[key] = cost.get(key, 0) + value
    if cost:
        per = 1000.0 / cost["generated"] if cost.get("generated") else 0.0
        cost["seconds_per_1000_users"] = cost["seconds"] * per
        cost["tokens_per_1000_users"] = (cost.get("prompt_tokens", 0)
                                         + cost.get("completion_tokens", 0)) * per
    total.cost = cost
    return total
