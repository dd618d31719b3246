"""Small synthetic datasets for the interest tests (real data lives in the slow tests)."""

from __future__ import annotations

import numpy as np
import polars as pl

from llmrecall.data.dataset import Catalog, Dataset, Interactions, SearchLog
from llmrecall.data.vocab import Vocabulary

TITLES = [
    "Star Wars", "Return of the Jedi", "Empire Strikes Back, The", "Toy Story",
    "Godfather, The", "Godfather: Part II, The", "Alien", "Aliens", "Titanic",
    "Sense and Sensibility", "Pride and Prejudice", "Jurassic Park",
]
GENRES = [["Sci-Fi"], ["Sci-Fi"], ["Sci-Fi"], ["Animation"], ["Crime"], ["Crime"],
          ["Horror"], ["Horror"], ["Romance"], ["Romance"], ["Romance"], ["Adventure"]]


def make_dataset(histories: list[list[int]], searches: list[tuple[int, str, float]] | None = None
                 ) -> Dataset:
    users = [u for u, h in enumerate(histories) for _ in h]
    items = [i for h in histories for i in h]
    times = [float(t) for h in histories for t in range(len(h))]
    log = Interactions.build(users, items, times)
    catalog = Catalog(pl.DataFrame({"title": TITLES, "category": GENRES},
                                   schema={"title": pl.Utf8, "category": pl.List(pl.Utf8)}))
    search_log = None
    if searches is not None:
        search_log = SearchLog(np.array([s[0] for s in searches], np.int32),
                               [s[1] for s in searches], np.array([s[2] for s in searches]))
    return Dataset("toy", Vocabulary(str(u) for u in range(len(histories))),
                   Vocabulary(str(i) for i in range(len(TITLES))), log, catalog, search_log)


