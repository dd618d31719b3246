"""Bad input gives a DataError naming the file, the line (or Parquet row) and the column."""

from __future__ import annotations

import pytest

from llmrecall.data.loaders import load_dataset
from llmrecall.data.spec import DataSpec
from llmrecall.errors import DataError

from .samples import make_sample, sample_spec, write_table


def _events_spec(path, fmt=None, **columns) -> DataSpec:
    mapping = {"user": "u", "item": "i"} | columns
    return DataSpec.model_validate({"interactions": {"path": str(path), "format": fmt, **mapping}})


def _load_error(spec: DataSpec) -> DataError:
    with pytest.raises(DataError) as caught:
        load_dataset(spec, "bad")
    return caught.value


def _assert_located(error: DataError, path, line: int | None, column: str | None):
    message = str(error)
    assert path.name in message
    assert error.path == str(path)
    if line is not None:
        assert f"line {line}" in message and error.line == line
    if column is not None:
        assert f"column {column!r}" in message and error.column == column


def test_missing_file(tmp_path):
    error = _load_error(_events_spec(tmp_path / "nowhere.csv"))
    _assert_located(error, tmp_path / "nowhere.csv", None, None)
    assert "not found" in str(error)


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "recbole"])
def test_empty_file(tmp_path, content, fmt):
    path = tmp_path / "events.txt"
    path.write_bytes(content)
    error = _load_error(_events_spec(path, fmt))
    _assert_located(error, path, 1, None)
    assert "empty" in str(error)


def test_header_without_rows(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("u,i,t\n")
    error = _load_error(_events_spec(path))
    _assert_located(error, path, 2, None)
    assert "no data rows" in str(error)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "recbole", "jsonl"])
def test_missing_column_lists_the_columns_found(tmp_path, fmt):
    path = write_table({"user": ["a"], "item": ["b"]}, tmp_path / f"events.{fmt}", fmt)
    error = _load_error(_events_spec(path, fmt, user="user", item="product"))
    _assert_located(error, path, 1, "product")
    assert "['user', 'item']" in str(error)


def test_missing_column_in_parquet(tmp_path):
    path = write_table({"user": ["a"], "item": ["b"]}, tmp_path / "events.parquet", "parquet")
    error = _load_error(_events_spec(path, user="user", item="product"))
    _assert_located(error, path, None, "product")
    assert "['user', 'item']" in str(error)


def test_unparsable_time_counts_quoted_newlines_and_blank_lines(tmp_path):
    path = tmp_path / "events.csv"
    # line 1 header, line 2-3 one record with a quoted newline, line 4 blank, line 5 bad time
    path.write_text('u,i,note,t\na,x,"two\nlines",100\n\nb,y,,yesterday\nc,z,,300\n')
    error = _load_error(_events_spec(path, time="t"))
    _assert_located(error, path, 5, "t")
    assert "'yesterday'" in str(error) and "unix seconds" in str(error)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "recbole", "jsonl"])
@pytest.mark.parametrize("time_format,bad", [("iso8601", "2021-13-45"), ("%d/%m/%Y", "2021-01-01"),
                                            ("unix", "12:30")])
def test_unparsable_time_shows_the_value(tmp_path, fmt, time_format, bad):
    good = {"iso8601": "2021-01-02T03:04:05", "%d/%m/%Y": "02/01/2021", "unix": "1609556645"}
    path = write_table({"u": ["a", "b", "c"], "i": ["x", "y", "z"],
                        "t": [good[time_format], good[time_format], bad]},
                       tmp_path / f"events.{fmt}", fmt)
    error = _load_error(_events_spec(path, fmt, time="t", time_format=time_format))
    _assert_located(error, path, 4 if fmt != "jsonl" else 3, "t")
    assert repr(bad) in str(error)


def test_missing_time(tmp_path):
    path = write_table({"u": ["a", "b"], "i": ["x", "y"], "t": ["1", None]}, tmp_path / "e.csv", "csv")
    error = _load_error(_events_spec(path, time="t"))
    _assert_located(error, path, 3, "t")


@pytest.mark.parametrize("column,role", [("w", "weight"), ("r", "rating")])
@pytest.mark.parametrize("bad", ["heavy", "inf", "1,5"])
def test_non_numeric_weight_or_rating(tmp_path, column, role, bad):
    path = write_table({"u": ["a", "b", "c"], "i": ["x", "y", "z"], "w": ["1", "2", "3"],
                        "r": ["4", "5", "1"]}, tmp_path / "events.tsv", "tsv")
    text = path.read_text().splitlines()
    cells = text[2].split("\t")
    cells[2 if column == "w" else 3] = bad
    text[2] = "\t".join(cells)
    path.write_text("\n".join(text) + "\n")
    error = _load_error(_events_spec(path, "tsv", **{role: column}))
    _assert_located(error, path, 3, column)
    assert repr(bad) in str(error) and "number" in str(error)


def test_empty_weight_is_an_error_but_empty_rating_is_nan(tmp_path):
    path = write_table({"u": ["a", "b"], "i": ["x", "y"], "w": ["1", None]}, tmp_path / "e.csv", "csv")
    _assert_located(_load_error(_events_spec(path, weight="w")), path, 3, "w")
    ds = load_dataset(_events_spec(path, rating="w"), "ok")
    assert ds.interactions.rating[0] == 1 and ds.interactions.rating[1] != ds.interactions.rating[1]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "recbole", "jsonl"])
@pytest.mark.parametrize("column", ["u", "i"])
def test_null_ids(tmp_path, fmt, column):
    columns = {"u": ["a", "b", "c", "d"], "i": ["w", "x", "y", "z"]}
    columns[column][2] = None
    path = write_table(columns, tmp_path / f"events.{fmt}", fmt)
    error = _load_error(_events_spec(path, fmt))
    _assert_located(error, path, 4 if fmt != "jsonl" else 3, column)
    assert ("user id" if column == "u" else "item id") in str(error)


def test_null_id_in_parquet_names_the_row(tmp_path):
    path = write_table({"u": ["a", None], "i": ["x", "y"]}, tmp_path / "events.parquet", "parquet")
    error = _load_error(_events_spec(path))
    _assert_located(error, path, None, "u")
    assert "(row 2)" in str(error)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "recbole", "jsonl"])
def test_wrong_encoding(tmp_path, fmt):
    sample = make_sample()
    spec = sample_spec(tmp_path, fmt, sample)
    items = spec.items.path
    raw = items.read_bytes()
    # re-encode "Fargo" (item i4) as Latin-1 "Fårgo": one byte no UTF-8 decoder accepts
    assert raw.count(b"Fargo") == 1
    items.write_bytes(raw.replace(b"Fargo", "Fårgo".encode("latin-1")))
    error = _load_error(spec)
    _assert_located(error, items, 5 if fmt != "jsonl" else 4, "name")
    assert "UTF-8" in str(error)


def test_utf16_file_is_recognised(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes("u,i\na,b\n".encode("utf-16"))
    error = _load_error(_events_spec(path))
    _assert_located(error, path, 1, None)
    assert "UTF-16" in str(error)


@pytest.mark.parametrize("fmt", ["csv", "recbole", "jsonl", "parquet"])
def test_item_listed_twice_with_different_text(tmp_path, fmt):
    sample = make_sample()
    sample.items = {key: values + [values[1]] for key, values in sample.items.items()}
    sample.items["blurb"][-1] = "a different blurb"  # i2 again, line 8 (7th data row)
    spec = sample_spec(tmp_path, fmt, sample)
    error = _load_error(spec)
    first, second = {"jsonl": (2, 7), "parquet": (2, 7)}.get(fmt, (3, 8))
    where = "row" if fmt == "parquet" else "line"
    _assert_located(error, spec.items.path, None if fmt == "parquet" else second, "blurb")
    message = str(error)
    assert "'i2'" in message
    assert f"'' ({where} {first}) and 'a different blurb' ({where} {second})" in message


def test_ragged_row(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("u,i\na,b\nc,d,e\n")
    _assert_located(_load_error(_events_spec(path)), path, 3, None)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"u": "a", "i": "b"}\n\n{"u": "c", "i": }\n')
    error = _load_error(_events_spec(path, "jsonl"))
    _assert_located(error, path, 3, None)
    assert "JSON" in str(error)


def test_missing_query_in_search_log(tmp_path):
    sample = make_sample()
    sample.searches["query"][1] = None
    spec = sample_spec(tmp_path, "csv", sample)
    _assert_located(_load_error(spec), spec.searches.path, 3, "query")


def test_error_in_the_last_file_read_leaves_nothing_behind(tmp_path):
    """The loader is pure: a failure returns nothing, and a fixed file then loads in full."""
    sample = make_sample()
    spec = sample_spec(tmp_path, "csv", sample)
    good_searches = spec.searches.path.read_text()
    spec.searches.path.write_text(good_searches.replace("135", "soon"))
    before = spec.model_dump()
    error = _load_error(spec)
    _assert_located(error, spec.searches.path, 3, "ts")
    assert spec.model_dump() == before
    spec.searches.path.write_text(good_searches)
    ds = load_dataset(spec, "ok")
    assert len(ds.searches.query) == 3 and ds.n_users == 6


def test_numbers_where_a_date_format_was_declared(tmp_path):
    path = write_table({"u": ["a"], "i": ["b"], "t": [1609556645]}, tmp_path / "e.parquet", "parquet")
    error = _load_error(_events_spec(path, time="t", time_format="iso8601"))
    _assert_located(error, path, None, "t")
    assert "unix" in str(error)


def test_jsonl_key_null_everywhere(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"u": null, "i": "b"}\n{"u": null, "i": "c"}\n')
    error = _load_error(_events_spec(path, "jsonl"))
    _assert_located(error, path, 1, "u")
    assert "missing user id" in str(error)
