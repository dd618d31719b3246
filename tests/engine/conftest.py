"""Fixtures shared by the engine tests."""

from __future__ import annotations

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
