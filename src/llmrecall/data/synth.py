"""A seeded synthetic interaction log with the shape of a real one, for scale tests.

``synthesize(out, users=N, items=M, events=E, seed=S)`` writes::

    out/interactions/part-00000.parquet ...   user, item, ts (one file per block of users)
    out/items.parquet                           item, title, category
    out/searches/part-00000.parquet ...         user, query, ts (with ``search_share`` > 0)
    out/data.toml                               the [data] spec reading them

Shape (what a recommender log looks like, so scale numbers mean something):

* item popularity is a power law (Zipf, exponent ``item_power``): a few items take most
  events, a long tail is rarely seen;
* user activity is a power law too (Pareto, ``user_power``): every user has at least one
  event, a few users have thousands;
* events come in sessions (geometric length, mean ``session_length``): seconds to minutes
  apart inside a session, days between sessions; a session keeps to one category with
  probability ``focus`` per event (otherwise a globally popular item), so co-occurrence
  channels find structure;
* items have titles and categories drawn from a small template vocabulary, so text
  channels have something to read;
* optionally (``search_share``), that share of sessions starts with a search typed 5 to 120
  seconds before its first event: two words of the first item's title and, half the
  time, its genre (``search_query`` has queries that point at what came next, without
  naming it whole).

Deterministic: the same arguments write the same files (each block of users draws from its
own ``numpy`` generator seeded with ``(seed, block)``, so blocks may be written in any
order or in parallel; the searches from another, so a log with searches has the same
events as one without).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from llmrecall.errors import ConfigError

_GENRES = ("Action", "Adventure", "Puzzle", "Strategy", "Racing", "Sports", "Horror",
           "Comedy", "Drama", "Science", "History", "Cooking", "Travel", "Music", "Fantasy",
           "Mystery", "Romance", "Crafts", "Garden", "Fitness")
_FORMS = ("Classic", "Deluxe", "Pocket", "Collector's", "Starter", "Family", "Pro",
          "Limited", "Travel", "Complete")
_ADJECTIVES = ("Silent", "Golden", "Hidden", "Broken", "Electric", "Lost", "Crimson",
               "Northern", "Last", "Wild", "Quiet", "Iron", "Paper", "Endless", "Bright",
               "Secret", "Little", "Final", "Frozen", "Burning")
_NOUNS = {
    "Action": ("Strike", "Siege", "Outpost", "Pursuit"), "Adventure": ("Voyage", "Map", "Island", "Quest"),
    "Puzzle": ("Cube", "Maze", "Riddle", "Tiles"), "Strategy": ("Empire", "Frontier", "Council", "Campaign"),
    "Racing": ("Circuit", "Rally", "Speedway", "Drift"), "Sports": ("League", "Cup", "Season", "Match"),
    "Horror": ("Manor", "Whisper", "Cellar", "Fog"), "Comedy": ("Mixup", "Caper", "Party", "Blunder"),
    "Drama": ("Letters", "Harbor", "Promise", "Winter"), "Science": ("Atlas", "Orbit", "Lab", "Atom"),
    "History": ("Dynasty", "Chronicle", "Legion", "Crown"),
    "Cooking": ("Kitchen", "Recipes", "Spice", "Bakery"),
    "Travel": ("Guide", "Road", "Passport", "Coast"), "Music": ("Anthem", "Chords", "Rhythm", "Ballad"),
    "Fantasy": ("Dragon", "Realm", "Wand", "Citadel"), "Mystery": ("Clue", "Alibi", "Cipher", "Witness"),
    "Romance": ("Summer", "Heart", "Letters", "Dance"), "Crafts": ("Loom", "Stitch", "Workshop", "Clay"),
    "Garden": ("Seeds", "Orchard", "Bloom", "Greenhouse"), "Fitness": ("Pulse", "Core", "Stride", "Summit"),
}

#: events per written file (one block of users is cut at about this many events)
BLOCK_EVENTS = 2_000_000
START_TIME = 1_700_000_000  # 2023-11-14, unix seconds


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote: counts and the paths."""

    users: int
    items: int
    events: int
    files: int
    spec: Path


def _item_table(items: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[str]]:
    """Per item: genre index int64[items], title, category text ("Genre|Form")."""
    genre = rng.integers(0, len(_GENRES), items)
    form = rng.integers(0, len(_FORMS), items)
    adjective = rng.integers(0, len(_ADJECTIVES), items)
    noun = rng.integers(0, 4, items)
    titles, categories = [], []
    for i in range(items):
        g = _GENRES[genre[i]]
        titles.append(f"The {_ADJECTIVES[adjective[i]]} {_NOUNS[g][noun[i]]} "
                      f"({_FORMS[form[i]]} Edition {i % 97 + 1})")
        categories.append(f"{g}|{_FORMS[form[i]]}")
    return genre, titles, categories


def _user_counts(users: int, events: int, power: float, rng: np.random.Generator) -> np.ndarray:
    """int64[users] events per user, each >= 1, summing to ``events`` (power-law spread)."""
    weight = rng.pareto(power, users) + 1.0
    extra = rng.multinomial(events - users, weight / weight.sum())
    return extra.astype(np.int64) + 1


def synthesize(out: str | Path, *, users: int, items: int, events: int, seed: int = 0,
               item_power: float = 1.0, user_power: float = 1.2, session_length: float = 6.0,
               focus: float = 0.7, block_events: int = BLOCK_EVENTS,
               search_share: float = 0.0) -> SynthSummary:
    """Write a synthetic log under ``out`` (see the module docstring); returns the summary.

    Peak memory is one block of ``block_events`` events plus the item arrays, whatever
    ``events`` is.
    """
    if users < 1 or items < 2:
        raise ConfigError(f"synth needs at least 1 user and 2 items, got {users} and {items}")
    if events < users:
        raise ConfigError(f"synth needs at least one event per user: {events} events for "
                          f"{users} users")
    if not 0.0 <= search_share <= 1.0:
        raise ConfigError(f"synth: the search share must be in [0, 1], got {search_share}")
    out = Path(out)
    folder, search_folder = out / "interactions", out / "searches"
    for f in (folder, search_folder):
        f.mkdir(parents=True, exist_ok=True)
        for old in f.glob("part-*.parquet"):  # a rerun with fewer blocks leaves none behind
            old.unlink()
    if not search_share:
        search_folder.rmdir()
    rng = np.random.default_rng([seed, 0])
    genre, titles, categories = _item_table(items, rng)
    # popularity: Zipf over a random permutation of the items
    rank = rng.permutation(items)
    popularity = 1.0 / (rank + 1.0) ** item_power
    popularity /= popularity.sum()
    global_cdf = np.cumsum(popularity)
    # within each genre, items by popularity: segment g of ``genre_cdf`` spans [g, g + 1)
    by_genre = np.lexsort((np.arange(items), genre))
    genre_items = by_genre
    genre_of = genre[by_genre]
    within = popularity[by_genre]
    totals = np.bincount(genre_of, weights=within, minlength=len(_GENRES))
    starts = np.searchsorted(genre_of, np.arange(len(_GENRES)))
    cum = np.cumsum(within)
    before = np.concatenate([[0.0], cum])[starts]
    genre_cdf = genre_of + (cum - before[genre_of]) / np.maximum(totals[genre_of], 1e-300)
    genre_share = totals / totals.sum()
    counts = _user_counts(users, events, user_power, rng)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    files = 0
    user_start = 0
    while user_start < users:
        user_end = int(np.searchsorted(bounds, bounds[user_start] + block_events, "right")) - 1
        user_end = min(max(user_end, user_start + 1), users)
        sessions = _write_block(folder / f"part-{files:05d}.parquet", user_start, user_end,
                                counts, np.random.default_rng([seed, 1, files]), global_cdf,
                                genre_cdf, genre_items, genre_share, session_length, focus)
        if search_share:
            _write_searches(search_folder / f"part-{files:05d}.parquet", sessions, titles,
                            genre, search_share, np.random.default_rng([seed, 2, files]))
        files += 1
        user_start = user_end
    pl.DataFrame({"item": [f"i{i}" for i in range(items)], "title": titles,
                  "category": categories}).write_parquet(out / "items.parquet")
    spec = out / "data.toml"
    spec.write_text(
        f'[data]\nname = "synth-{users}u-{items}i-{events}e-s{seed}"\n\n'
        '[data.interactions]\npath = "interactions"\nformat = "parquet"\n'
        'user = "user"\nitem = "item"\ntime = "ts"\n\n'
        '[data.items]\npath = "items.parquet"\nid = "item"\ntitle = "title"\n'
        'category = "category"\n'
        + ('\n[data.searches]\npath = "searches"\nformat = "parquet"\nuser = "user"\n'
           'query = "query"\ntime = "ts"\n' if search_share else ""), encoding="utf-8")
    return SynthSummary(users, items, events, files, spec)


def _write_block(path: Path, first: int, last: int, counts: np.ndarray,
                 rng: np.random.Generator, global_cdf: np.ndarray, genre_cdf: np.ndarray,
                 genre_items: np.ndarray, genre_share: np.ndarray, session_length: float,
                 focus: float) -> dict[str, np.ndarray]:
    """Users ``first..last-1``: their events, sessions and times, into one Parquet file.
    Returns each session's ``user``, first event time ``ts`` and first ``item``."""
    n_users = last - first
    per_user = counts[first:last]
    m = int(per_user.sum())
    user = np.repeat(np.arange(first, last, dtype=np.int64), per_user)
    user_start = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    is_first = np.zeros(m, bool)
    is_first[user_start] = True
    # a new session at a user's first event, else with probability 1 / session_length
    new_session = is_first | (rng.random(m) < 1.0 / session_length)
    session = np.cumsum(new_session) - 1
    n_sessions = int(session[-1]) + 1
    session_genre = rng.choice(len(genre_share), n_sessions, p=genre_share)
    # times: a start in the first 30 days, then minutes inside a session, days between
    gap = np.where(new_session, rng.exponential(2.0 * 86_400, m), rng.exponential(120.0, m))
    gap[user_start] = rng.uniform(0, 30 * 86_400, n_users)
    cum = np.cumsum(gap)
    offset = np.repeat(cum[user_start] - gap[user_start], per_user)
    ts = (START_TIME + cum - offset).astype(np.int64)
    # items: the session's genre with probability ``focus``, else global popularity
    u = rng.random(m)
    in_genre = rng.random(m) < focus
    item = np.empty(m, np.int64)
    g = session_genre[session[in_genre]]
    pos = np.searchsorted(genre_cdf, g + u[in_genre], "right")
    item[in_genre] = genre_items[np.minimum(pos, len(genre_items) - 1)]
    item[~in_genre] = np.minimum(np.searchsorted(global_cdf, u[~in_genre], "right"),
                                 len(global_cdf) - 1)
    pl.DataFrame({"user": user, "item": item, "ts": ts}).select(
        pl.format("u{}", "user").alias("user"), pl.format("i{}", "item").alias("item"),
        pl.col("ts")).write_parquet(path)
    return {"user": user[new_session], "ts": ts[new_session], "item": item[new_session]}


def _write_searches(path: Path, sessions: dict[str, np.ndarray], titles: list[str],
                    genre: np.ndarray, share: float, rng: np.random.Generator) -> None:
    """A search before a ``share`` of ``sessions``: two words of the session's first
    item's title (its adjective and noun) and, half the time, the item's genre."""
    searched = np.flatnonzero(rng.random(len(sessions["user"])) < share)
    with_genre = rng.random(len(searched)) < 0.5
    before = rng.integers(5, 121, len(searched))
    queries = []
    for s, g in zip(searched.tolist(), with_genre.tolist()):
        item = int(sessions["item"][s])
        words = titles[item].split()[1:3]  # "The <adjective> <noun> (...)"
        queries.append(" ".join(words + ([_GENRES[genre[item]].lower()] if g else [])).lower())
    pl.DataFrame({"user": [f"u{u}" for u in sessions["user"][searched].tolist()],
                  "query": queries,
                  "ts": sessions["ts"][searched] - before}).write_parquet(path)
