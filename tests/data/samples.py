"""A small synthetic dataset written by the tests in every supported file format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from llmrecall.data.spec import DataSpec


@dataclass
class Sample:
    """Rows of a tiny shop: interactions, an item catalog and a search log (raw values)."""

    interactions: dict[str, list]
    items: dict[str, list]
    searches: dict[str, list]


def make_sample() -> Sample:
    # "007" and "7" are different users; i6 has events but no catalog row; i9 has a catalog
    # row but no events (a new item); u3's two events at t=300 tie and must keep file order.
    interactions = {
        "user":   ["u1", "u2", "u1", "007", "7",  "u3", "u3", "u2", "u1", "u3", "007", "u2"],
        "item":   ["i1", "i2", "i3", "i1",  "i4", "i5", "i2", "i6", "i2", "i1", "i6",  "i3"],
        "ts":     [100,  110,  120,  130,   140,  300,  300,  150,  160,  310,  170,   180],
        "event":  ["view", "view", "purchase", "click", "view", "view", "click", "view",
                   "purchase", "view", "click", "view"],
        "weight": [1.0, 1.0, 2.0, 1.5, 1.0, 1.0, 1.5, 1.0, 2.0, 1.0, 1.5, 0.5],
        "rating": [4.0, None, 5.0, 3.0, None, 2.0, 1.0, None, 4.5, 3.0, None, 2.0],
    }
    items = {
        "id": ["i1", "i2", "i3", "i4", "i5", "i9"],
        "name": ['Toy, "Story"', "GoldenEye", "Heat", "Fargo", "Alien", "Brand New"],
        "blurb": ["toys come alive", "", "cops and robbers", "snow", "in space", "not yet seen"],
        "genres": ["Animation|Comedy", "Action", "Crime|Drama", "Crime", "Horror|Sci-Fi", ""],
        "price": ["9.99", "5", "7.5", "3", "4", "20"],
    }
    searches = {
        "user": ["u1", "u9", "007"],
        "query": ["space horror", "snowy crime", "spy films"],
        "ts": [125, 135, 145],
    }
    return Sample(interactions, items, searches)


SUFFIX = {"csv": ".csv", "tsv": ".tsv", "parquet": ".parquet", "jsonl": ".jsonl",
          "recbole": ".inter"}


def write_table(columns: dict[str, list], path: Path, fmt: str,
                types: dict[str, str] | None = None) -> Path:
    """Write ``columns`` to ``path`` in ``fmt``; ``types`` gives RecBole header types."""
    frame = pl.DataFrame(columns, strict=False)
    if fmt == "csv":
        frame.write_csv(path)
    elif fmt == "parquet":
        frame.write_parquet(path)
    elif fmt == "jsonl":
        with path.open("w", encoding="utf-8") as out:
            for row in frame.iter_rows(named=True):
                out.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
    elif fmt in ("tsv", "recbole"):
        names = list(columns)
        if fmt == "recbole":
            types = types or {}
            header = [f"{n}:{types.get(n, 'token')}" for n in names]
        else:
            header = names
        lines = ["\t".join(header)]
        for row in frame.iter_rows():
            lines.append("\t".join("" if v is None else str(v) for v in row))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        raise ValueError(fmt)
    return path


def sample_spec(folder: Path, fmt: str, sample: Sample | None = None) -> DataSpec:
    """Write the sample in ``fmt`` under ``folder`` and return the spec that reads it."""
    sample = sample or make_sample()
    types = {"ts": "float", "weight": "float", "rating": "float", "price": "float",
             "genres": "token_seq", "name": "token_seq", "blurb": "token_seq",
             "query": "token_seq"}
    suffix = SUFFIX[fmt]
    inter = write_table(sample.interactions, folder / f"events{suffix}", fmt, types)
    items = write_table(sample.items, folder / f"items{suffix.replace('.inter', '.item')}", fmt, types)
    searches = write_table(sample.searches, folder / f"searches{suffix.replace('.inter', '.search')}",
                           fmt, types)
    return DataSpec.model_validate({
        "interactions": {"path": str(inter), "format": fmt, "user": "user", "item": "item",
                         "time": "ts", "event": "event", "weight": "weight",
                         "rating": "rating"},
        "items": {"path": str(items), "format": fmt, "id": "id", "title": "name",
                  "text_fields": ["blurb"], "category": "genres", "attributes": ["price"]},
        "searches": {"path": str(searches), "format": fmt, "user": "user", "query": "query",
                     "time": "ts"},
    })
