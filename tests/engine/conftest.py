"""Fixtures shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from llmrecall.data.builtin import load_builtin
from llmrecall.data.spec import DataSpec


def _write_ml100k_files(folder) -> DataSpec:
    """ml-100k's log as three Parquet files and the spec reading the folder (no catalog)."""
    ds = load_builtin("ml-100k")
    log = ds.interactions
    frame = pl.DataFrame({"user": [ds.users.ids[u] for u in log.user],
                          "item": [ds.items.ids[i] for i in log.item],
                          "ts": log.time.astype(np.int64)})
    (folder / "log").mkdir(parents=True)
    n = frame.height
    for k in range(3):
        frame[k * n // 3:(k + 1) * n // 3].write_parquet(folder / "log" / f"part-{k}.parquet")
    (folder / "data.toml").write_text('[data]\nname = "ml100k-files"\n\n[data.interactions]\n'
                                      'path = "log"\nuser = "user"\nitem = "item"\ntime = "ts"\n')
    return DataSpec.from_toml(folder / "data.toml")


@pytest.fixture(scope="module")
def ml100k_files(tmp_path_factory):
    """(folder, spec): ml-100k's log as three Parquet files under folder/log, read by
    folder/data.toml (user, item, time; no catalog)."""
    folder = tmp_path_factory.mktemp("ml100k")
    return folder, _write_ml100k_files(folder)



@pytest.fixture(scope="module")
def ml100k_catalog_files(tmp_path_factory):
    """(folder, spec): :func:`ml100k_files`'s log with ml-100k's catalog beside it
    (folder/items.parquet: id, title, year and genres), what the text channels read."""
    folder = tmp_path_factory.mktemp("ml100k-catalog")
    _write_ml100k_files(folder)
    ds = load_builtin("ml-100k")
    catalog = ds.catalog.frame
    pl.DataFrame({"id": list(ds.items.ids), "title": catalog["title"],
                  "year": catalog["year"],
                  "genres": ["|".join(c) for c in catalog["category"].to_list()]},
                 ).write_parquet(folder / "items.parquet")
    with open(folder / "data.toml", "a") as toml:
        toml.write('\n[data.items]\npath = "items.parquet"\nid = "id"\ntitle = "title"\n'
                   'text_fields = ["year"]\ncategory = "genres"\n')
    return folder, DataSpec.from_toml(folder / "data.toml")


#: the mark of the queries :func:`write_search_log` types after a user's last item
AFTER = "typed after the target: "


def write_search_log(folder: Path, log_folder: Path, spec_path: Path,
                     only_searched: bool = True) -> None:
    """A search log for ml-100k in two CSV files under ``folder``, and the spec
    ``spec_path`` reading it beside :func:`ml100k_catalog_files`'s log and catalog (from
    ``log_folder``). Each of 400 users typed the titles of 4 of their items, each just
    before watching it (ties in time included), and one query after their last item
    (marked :data:`AFTER`: no ``loo`` fit may see it) and one at the same second as that
    item; with ``only_searched`` one more user only searched (no interaction)."""
    ds = load_builtin("ml-100k")
    log, titles = ds.interactions, ds.catalog.titles
    rng = np.random.default_rng(0)
    rows = []
    for u in range(400):
        mine = np.flatnonzero(log.user == u)
        for r in rng.choice(mine, size=min(4, len(mine)), replace=False):
            rows.append((ds.users.ids[u], f"  {titles[log.item[r]]} ", int(log.time[r]) - 1))
        last = mine[np.argmax(log.time[mine])]
        rows.append((ds.users.ids[u], AFTER + titles[log.item[last]], int(log.time[last]) + 60))
        rows.append((ds.users.ids[u], "a query tied with the target", int(log.time[last])))
    if only_searched:
        rows.append(("only-searched", "toy story", 1))
    frame = pl.DataFrame(rows, schema={"who": pl.String, "text": pl.String, "at": pl.Int64},
                         orient="row").sample(fraction=1.0, shuffle=True, seed=1)
    folder.mkdir()
    half = frame.height // 2
    frame[:half].write_csv(folder / "a.csv")
    frame[half:].write_csv(folder / "b.csv")
    spec_path.write_text(
        f'[data]\nname = "ml100k-searches"\n[data.interactions]\npath = "{log_folder}/log"\n'
        'user = "user"\nitem = "item"\ntime = "ts"\n'
        f'[data.items]\npath = "{log_folder}/items.parquet"\nid = "id"\ntitle = "title"\n'
        'text_fields = ["year"]\ncategory = "genres"\n'
        f'[data.searches]\npath = "{folder}"\nformat = "csv"\nuser = "who"\n'
        'query = "text"\ntime = "at"\n')
