"""Turn a :class:`~llmrecall.data.spec.DataSpec` into a :class:`~llmrecall.data.dataset.Dataset`.

Files are read with polars. Every id is read as text (``"007"`` and ``"7"`` stay different
ids); numbers and times are parsed here, with the loader, so that a bad cell is reported with
its file, line and column instead of surfacing later as a NaN. Line numbers are 1-based and
count the header as line 1 in delimited files; JSON-lines files count every physical line;
Parquet files have no lines, so their errors name the 1-based row instead.

``load_dataset`` is a pure function: it reads the files, validates everything, and only then
builds the dataset. On any error it raises :class:`~llmrecall.errors.DataError` and returns
nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from llmrecall.data.dataset import DEFAULT_EVENT, Catalog, Dataset, Interactions, SearchLog
from llmrecall.data.spec import DataSpec, InteractionsSpec, ItemsSpec, SearchesSpec, table_files
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import DataError

_SEPARATORS = {"csv": ",", "tsv": "\t", "recbole": "\t"}
# Tab-separated files are read without quoting: titles such as `"Weird Al" Yankovic` are
# common in them and quote handling would swallow the tabs that follow.
_QUOTED = {"csv": True, "tsv": False, "recbole": False}
_ROW = "__llmrecall_row"  # 0-based data-row index in the file, kept through filters
_BOM = b"\xef\xbb\xbf"
_SHOWN = 80  # characters of a cell value shown in an error message

logger = logging.getLogger("llmrecall.data")


# --- reading one file ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """One file read into a polars frame that still knows where each row came from.

    ``frame`` holds the requested columns plus ``_ROW`` (int, the 0-based data row in the
    file). ``text`` is the decoded file, kept only to turn a row into a line number when an
    error is reported (None for Parquet).
    """

    path: Path
    format: str
    frame: pl.DataFrame
    text: str | None

    def line(self, row: int) -> int | None:
        """1-based physical line where data row ``row`` starts (None for Parquet)."""
        if self.text is None:
            return None
        if self.format == "jsonl":
            # polars skips blank lines in JSON lines, so data row r is the r-th non-blank line
            seen = -1
            for number, text_line in enumerate(self.text.splitlines(), start=1):
                if text_line.strip():
                    seen += 1
                    if seen == row:
                        return number
            return None
        # a quoted cell may span lines: walk the records with the csv module to be exact
        reader = _csv_reader(self.text, self.format)
        next(reader, None)  # header
        start = reader.line_num + 1
        for index, _record in enumerate(reader):
            if index == row:
                return start
            start = reader.line_num + 1
        return None

    def where(self, row: int) -> str:
        """``"line N"`` for text files, ``"row N"`` for Parquet (both 1-based)."""
        return f"row {row + 1}" if self.text is None else f"line {self.line(row)}"

    def error(self, message: str, column: str | None = None, row: int | None = None) -> DataError:
        """A DataError naming this file, the line (or Parquet row) of ``row`` and ``column``."""
        if row is None:
            return DataError(message, path=str(self.path), column=column)
        if self.text is None:
            return DataError(f"{message} ({self.where(row)})", path=str(self.path), column=column)
        return DataError(message, path=str(self.path), line=self.line(row), column=column)

    def first_row(self, mask: pl.Series) -> int:
        """File row of the first True entry of ``mask`` (aligned with ``frame``)."""
        return int(self.frame[_ROW].filter(mask)[0])


def _csv_reader(text: str, fmt: str):
    return csv.reader(io.StringIO(text, newline=""), delimiter=_SEPARATORS[fmt],
                      quoting=csv.QUOTE_MINIMAL if _QUOTED[fmt] else csv.QUOTE_NONE)


def _read_table(path: Path, fmt: str, needed: list[str]) -> _Table:
    """Read ``needed`` columns of one file, or of every file of a folder or glob (see
    :func:`~llmrecall.data.spec.table_files`); every failure becomes a located DataError."""
    files = table_files(path)
    if files is not None:
        return _read_many(path, files, fmt, needed)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    if not path.is_file():
        raise DataError("is not a regular file", path=str(path))
    if fmt == "parquet":
        try:
            frame = pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"cannot read as Parquet: {exc}", path=str(path)) from None
        text = None
        if frame.height == 0:
            raise DataError("file has no rows", path=str(path))
    else:
        raw = path.read_bytes()
        text = _decode_utf8(raw, path, fmt)
        if not text.strip():
            raise DataError("file is empty", path=str(path), line=1)
        body = raw[len(_BOM):] if raw.startswith(_BOM) else raw
        if fmt == "jsonl":
            frame = _parse_jsonl(body, text, path)
        else:
            frame = _parse_delimited(body, text, path, fmt)
    # a JSON key that is null everywhere reads as dtype Null, a Parquet id may be categorical:
    # both are text as far as the loader is concerned
    frame = frame.with_columns(pl.col(pl.Null, pl.Categorical, pl.Enum).cast(pl.String))
    table = _Table(path, fmt, frame.with_row_index(_ROW), text)
    if fmt in _SEPARATORS:
        # a blank line reads as a row of nulls; it carries no data, so it is dropped
        table = _Table(path, fmt, table.frame.filter(
            ~pl.all_horizontal(pl.exclude(_ROW).is_null())), text)
        if table.frame.height == 0:
            raise DataError("file has a header but no data rows", path=str(path), line=2)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        found = list(frame.columns)
        what = "key" if fmt == "jsonl" else "column"
        raise DataError(f"missing {what} {missing[0]!r}; {what}s found: {found}",
                        path=str(path), line=None if fmt == "parquet" else 1, column=missing[0])
    return _Table(path, fmt, table.frame.select([*dict.fromkeys(needed), _ROW]), text)


def _read_many(path: Path, files: list[Path], fmt: str, needed: list[str]) -> _Table:
    """The files of a folder or glob, read one by one and concatenated in name order (the
    order a time-less log is taken to be in). A problem in one file names that file and
    its line; the returned table has no text, so later errors name the row counted over
    all the files together."""
    if not files:
        raise DataError(f"no {fmt} files match", path=str(path))
    tables = [_read_table(f, fmt, needed) for f in files]
    frames = [t.frame.drop(_ROW) for t in tables]
    try:
        frame = pl.concat(frames, how="vertical_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"the files do not share one schema: {exc}", path=str(path)) from None
    return _Table(path, fmt, frame.with_row_index(_ROW), None)


def _decode_utf8(raw: bytes, path: Path, fmt: str) -> str:
    """The file as text; a non-UTF-8 byte is reported with its line and column."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        column = _column_at(raw, line_start, exc.start, fmt)
        hint = (" (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else
                "; re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`")
        raise DataError(f"file is not UTF-8 text: byte {raw[exc.start:exc.start + 1]!r} cannot "
                        f"be decoded{hint}", path=str(path), line=line, column=column) from None
    return text[1:] if text.startswith("\ufeff") else text


def _column_at(raw: bytes, line_start: int, position: int, fmt: str) -> str | None:
    """Best-effort name of the column holding byte ``position`` (None on the header line)."""
    prefix = raw[line_start:position]
    if fmt == "jsonl":
        keys = re.findall(rb'"((?:[^"\\]|\\.)*)"\s*:', prefix)
        return keys[-1].decode("utf-8", "replace") if keys else None
    if line_start == 0 or (line_start == len(_BOM) and raw.startswith(_BOM)):
        return None
    separator = _SEPARATORS[fmt].encode()
    if _QUOTED[fmt]:
        # separators inside quotes do not split cells; an even number of quotes precedes a
        # separator that does
        index, quoted = 0, False
        for byte in prefix:
            if byte == ord('"'):
                quoted = not quoted
            elif byte == separator[0] and not quoted:
                index += 1
    else:
        index = prefix.count(separator)
    header_end = raw.find(b"\n")
    header = raw[:header_end].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
    names = [_strip_type(n) if fmt == "recbole" else n for n in header.split(_SEPARATORS[fmt])]
    names = [n.strip('"') for n in names]
    return names[index] if index < len(names) else f"#{index + 1}"


def _strip_type(name: str) -> str:
    """RecBole header cells are ``name:type``; the spec names columns without the type."""
    return name.rsplit(":", 1)[0] if ":" in name else name


def _parse_delimited(body: bytes, text: str, path: Path, fmt: str) -> pl.DataFrame:
    try:
        frame = pl.read_csv(io.BytesIO(body), separator=_SEPARATORS[fmt], has_header=True,
                            infer_schema=False, quote_char='"' if _QUOTED[fmt] else None)
    except pl.exceptions.NoDataError:
        raise DataError("file is empty", path=str(path), line=1) from None
    except pl.exceptions.PolarsError as exc:
        raise _locate_ragged(text, path, fmt, exc) from None
    if fmt == "recbole":
        frame = frame.rename({c: _strip_type(c) for c in frame.columns})
    return frame


def _locate_ragged(text: str, path: Path, fmt: str, exc: Exception) -> DataError:
    """polars does not say which line broke the parse; find the first over-long record."""
    reader = _csv_reader(text, fmt)
    header: list[str] = next(reader, [])
    start = reader.line_num + 1
    for record in reader:
        if len(record) > len(header):
            return DataError(f"{len(record)} fields where the header has {len(header)}",
                             path=str(path), line=start)
        start = reader.line_num + 1
    return DataError(f"cannot parse as {fmt}: {exc}", path=str(path))


def _parse_jsonl(body: bytes, text: str, path: Path) -> pl.DataFrame:
    try:
        return pl.read_ndjson(io.BytesIO(body), infer_schema_length=None)
    except pl.exceptions.PolarsError as exc:
        for number, text_line in enumerate(text.splitlines(), start=1):
            if not text_line.strip():
                continue
            try:
                record = json.loads(text_line)
            except json.JSONDecodeError as bad:
                raise DataError(f"not valid JSON: {bad.msg} at character {bad.colno}",
                                path=str(path), line=number) from None
            if not isinstance(record, dict):
                raise DataError("each line must be a JSON object", path=str(path),
                                line=number) from None
        raise DataError(f"cannot read as JSON lines: {exc}", path=str(path)) from None


# --- reading typed columns ----------------------------------------------------------------


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def _as_text(table: _Table, column: str) -> pl.Series:
    """The column as strings (numbers and dates become their text; nulls stay null)."""
    series = table.frame[column]
    if series.dtype == pl.String:
        return series
    if series.dtype.is_numeric() or series.dtype.is_temporal() or series.dtype == pl.Boolean:
        return series.cast(pl.String)
    if isinstance(series.dtype, pl.List):
        return series.cast(pl.List(pl.String)).list.join(", ")
    raise table.error(f"holds {series.dtype} values; expected text or numbers", column)


def _blank(series: pl.Series) -> pl.Series:
    """True where a text cell is missing or only whitespace."""
    return (series.is_null() | (series.str.strip_chars() == "")).fill_null(True)


def _ids(table: _Table, column: str, what: str) -> pl.Series:
    ids = _as_text(table, column)
    blank = _blank(ids)
    if blank.any():
        raise table.error(f"missing {what} (empty cell)", column, table.first_row(blank))
    return ids


def _numbers(table: _Table, column: str, what: str, allow_missing: bool) -> np.ndarray:
    """float64[n]; a non-numeric or non-finite cell is an error, a missing one NaN if allowed."""
    series = table.frame[column]
    if series.dtype.is_numeric():
        missing = series.is_null()
        values = series.cast(pl.Float64)
    elif series.dtype == pl.String:
        stripped = series.str.strip_chars()
        missing = _blank(series)
        values = stripped.cast(pl.Float64, strict=False)
    else:
        raise table.error(f"holds {series.dtype} values; expected numbers ({what})", column)
    bad = ~missing & ~values.is_finite().fill_null(False)
    if bad.any():
        row = table.first_row(bad)
        value = series.filter(bad)[0]
        raise table.error(f"{what} {_shown(value)} is not a finite number", column, row)
    if not allow_missing and missing.any():
        raise table.error(f"missing {what} (empty cell)", column, table.first_row(missing))
    return values.fill_null(float("nan")).to_numpy().astype(np.float64)


def _describe_time_format(time_format: str) -> str:
    return {"unix": "unix seconds", "iso8601": "an ISO 8601 time"}.get(
        time_format, f"a time in the format {time_format!r}")


def _epoch_seconds(series: pl.Series) -> pl.Series:
    """Float64 seconds since 1970-01-01 UTC; naive datetimes are taken as UTC."""
    if series.dtype == pl.Date:
        series = series.cast(pl.Datetime("us"))
    return series.dt.epoch("us").cast(pl.Float64) / 1e6


def _parse_iso(text: pl.Series) -> pl.Series:
    """ISO 8601 strings -> epoch seconds (null where unparsable); offsets honoured, naive = UTC.

    polars infers one pattern from the data and parses in bulk; values in another ISO form
    (a date beside datetimes, a different offset style) fall back to ``datetime.fromisoformat``
    once per distinct value.
    """
    try:
        parsed = _epoch_seconds(text.str.to_datetime(time_zone="UTC", strict=False))
    except pl.exceptions.PolarsError:
        parsed = pl.Series(text.name, [None] * len(text), dtype=pl.Float64)
    retry = parsed.is_null() & text.is_not_null()
    if not retry.any():
        return parsed
    fallback: dict[str, float | None] = {}
    for value in text.filter(retry).unique().to_list():
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            fallback[value] = None
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        fallback[value] = moment.timestamp()
    again = text.replace_strict(list(fallback), list(fallback.values()), default=None,
                                return_dtype=pl.Float64)
    return parsed.zip_with(~retry, again)


def _times(table: _Table, column: str, time_format: str) -> np.ndarray:
    """float64[n] seconds since the epoch (or the file's own numbers for unix input)."""
    series = table.frame[column]
    if series.dtype.is_temporal():
        seconds = _epoch_seconds(series)
        missing = series.is_null()
    elif series.dtype.is_numeric():
        if time_format != "unix":
            raise table.error(f"holds numbers but time_format is {time_format!r}; "
                              "use time_format = 'unix'", column, int(table.frame[_ROW][0]))
        seconds = series.cast(pl.Float64)
        missing = series.is_null()
    elif series.dtype == pl.String:
        text = series.str.strip_chars()
        missing = _blank(series)
        if time_format == "unix":
            seconds = text.cast(pl.Float64, strict=False)
        elif time_format == "iso8601":
            seconds = _parse_iso(text)
        else:
            try:
                seconds = _epoch_seconds(text.str.to_datetime(format=time_format, strict=False))
            except pl.exceptions.PolarsError as exc:
                raise table.error(f"cannot use time_format {time_format!r}: {exc}", column) from None
    else:
        raise table.error(f"holds {series.dtype} values; expected times", column)
    if missing.any():
        raise table.error("missing time (empty cell)", column, table.first_row(missing))
    bad = ~seconds.is_finite().fill_null(False)
    if bad.any():
        value = series.filter(bad)[0]
        raise table.error(f"cannot read time {_shown(value)} as "
                          f"{_describe_time_format(time_format)}", column, table.first_row(bad))
    return seconds.to_numpy().astype(np.float64)


# --- the three tables ---------------------------------------------------------------------


@dataclass(frozen=True)
class _RawInteractions:
    """Interactions validated but still in raw ids (vocabularies come later)."""

    users: pl.Series
    items: pl.Series
    time: np.ndarray
    weight: np.ndarray
    event: np.ndarray
    event_names: tuple[str, ...]
    rating: np.ndarray | None


def _read_interactions(spec: InteractionsSpec) -> _RawInteractions:
    needed = [spec.user, spec.item] + [c for c in (spec.time, spec.event, spec.weight, spec.rating)
                                       if c is not None]
    table = _read_table(spec.path, spec.resolved_format, needed)
    n = table.frame.height
    users = _ids(table, spec.user, "user id")
    items = _ids(table, spec.item, "item id")
    time = (_times(table, spec.time, spec.time_format) if spec.time is not None
            else np.arange(n, dtype=np.float64))  # file order is the sequence order
    weight = (_numbers(table, spec.weight, "weight", allow_missing=False)
              if spec.weight is not None else np.ones(n, np.float64))
    rating = (_numbers(table, spec.rating, "rating", allow_missing=True)
              if spec.rating is not None else None)
    if spec.event is not None:
        events = _ids(table, spec.event, "event type")
        event_names = tuple(events.unique(maintain_order=True).to_list())
        if len(event_names) > np.iinfo(np.int16).max:
            raise table.error(f"{len(event_names)} distinct event types; at most "
                              f"{np.iinfo(np.int16).max} are supported", spec.event)
        event = _codes(events, list(event_names)).astype(np.int16)
        if spec.event_weights:
            multiplier = events.replace_strict(list(spec.event_weights),
                                               list(spec.event_weights.values()),
                                               default=1.0, return_dtype=pl.Float64)
            weight = weight * multiplier.to_numpy()
    else:
        event_names = ("rating",) if spec.rating is not None else (DEFAULT_EVENT,)
        event = np.zeros(n, np.int16)
    raw = _RawInteractions(users, items, time, weight, event, event_names, rating)
    if spec.dedupe and spec.time is not None:
        # without a time column every row has its own position: no row can repeat another
        raw = _drop_exact_duplicates(raw, spec)
    return raw


def _drop_exact_duplicates(raw: _RawInteractions, spec: InteractionsSpec) -> _RawInteractions:
    """``raw`` without the rows that repeat an earlier row in every mapped column (user,
    item, time, event, weight, rating: a log exported twice, a retried write); the first of
    each stays, file order is kept. Logs a warning with the count when any were dropped."""
    columns = {"user": raw.users, "item": raw.items, "time": raw.time, "weight": raw.weight,
               "event": raw.event}
    if raw.rating is not None:
        columns["rating"] = raw.rating
    first = pl.DataFrame(columns).select(pl.struct(pl.all()).is_first_distinct())
    keep = first.to_series().to_numpy()
    dropped = int(len(keep) - keep.sum())
    if not dropped:
        return raw
    logger.warning("%s: dropped %d exact duplicate interaction rows (same user, item, time%s as "
                "an earlier row); set dedupe = false in [data.interactions] to keep them",
                spec.path, dropped,
                "".join(f", {c}" for c, on in (("event", spec.event), ("weight", spec.weight),
                                               ("rating", spec.rating)) if on is not None))
    return _RawInteractions(raw.users.filter(keep), raw.items.filter(keep), raw.time[keep],
                            raw.weight[keep], raw.event[keep], raw.event_names,
                            None if raw.rating is None else raw.rating[keep])


def read_item_ids(spec: ItemsSpec) -> list[str]:
    """The item file's ids in the order the loader numbers them (checked as it checks them)."""
    return _read_items(spec)[0].to_list()


def _read_items(spec: ItemsSpec) -> tuple[pl.Series, pl.DataFrame]:
    """Raw item ids (unique, file order) and their catalog rows (same order)."""
    content = list(dict.fromkeys(spec.text_fields + spec.attributes))
    needed = [spec.id] + [c for c in (spec.title, spec.category) if c is not None] + content
    table = _read_table(spec.path, spec.resolved_format, needed)
    ids = _ids(table, spec.id, "item id")
    n = table.frame.height

    def text(column: str) -> pl.Series:
        return _as_text(table, column).fill_null("")

    columns = {
        "title": text(spec.title) if spec.title is not None else pl.Series([""] * n, dtype=pl.String),
        "category": (_categories(table, spec.category, spec.category_separator)
                     if spec.category is not None
                     else pl.Series([[]] * n, dtype=pl.List(pl.String))),
    }
    for column in content:
        columns[column] = text(column)
    frame = pl.DataFrame(columns).with_columns(ids.alias(_ID), table.frame[_ROW])
    return _dedupe_items(table, frame, spec)


_ID = "__llmrecall_id"


def _catalog(spec: ItemsSpec | None, item_rows: pl.DataFrame, n_items: int) -> Catalog:
    """The item file's rows, then an empty row for each of the ``n_items`` items only the
    log names (the vocabulary's order: file items first)."""
    n_missing = n_items - item_rows.height
    empty_rows = pl.DataFrame(
        {c: ([[]] * n_missing if c == "category" else [""] * n_missing) for c in item_rows.columns},
        schema=item_rows.schema)
    return Catalog(pl.concat([item_rows, empty_rows]),
                   text_fields=tuple(spec.text_fields) if spec is not None else ())


def read_catalog(spec: ItemsSpec | None, n_items: int) -> Catalog:
    """The catalog of a vocabulary of ``n_items`` items numbered as the loader numbers
    them (the item file's items, then those only the log names), without reading the log:
    what a job that never loads the log (``engine/sharded.py``) serves from."""
    rows = _read_items(spec)[1] if spec is not None else Catalog.empty(0).frame
    if rows.height > n_items:
        raise DataError(f"the item file has {rows.height} items, more than the "
                        f"vocabulary's {n_items}", path=str(spec.path) if spec else None)
    return _catalog(spec, rows, n_items)


def _categories(table: _Table, column: str, separator: str) -> pl.Series:
    """list[str] per item: split on ``separator`` (or taken as is from a list column)."""
    series = table.frame[column]
    if isinstance(series.dtype, pl.List):
        parts = series.cast(pl.List(pl.String))
    else:
        parts = _as_text(table, column).str.split(separator)
    cleaned = parts.list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
    return cleaned.fill_null([]).alias("category")


def _dedupe_items(table: _Table, frame: pl.DataFrame, spec: ItemsSpec) -> tuple[pl.Series, pl.DataFrame]:
    """Drop exact repeats of an item; an id listed twice with different text is an error."""
    content = [c for c in frame.columns if c not in (_ID, _ROW)]
    distinct = frame.unique(subset=[_ID, *content], keep="first", maintain_order=True)
    clashing = distinct.filter(pl.col(_ID).is_duplicated())
    if clashing.height:
        item = clashing[_ID][0]
        first, second = clashing.filter(pl.col(_ID) == item).head(2).iter_rows(named=True)
        differing = next(c for c in content if first[c] != second[c])
        source = {"title": spec.title, "category": spec.category}.get(differing, differing)
        raise table.error(
            f"item {item!r} is listed twice with different text: {_shown(first[differing])} "
            f"({table.where(first[_ROW])}) and {_shown(second[differing])} "
            f"({table.where(second[_ROW])})", source, second[_ROW])
    return distinct[_ID], distinct.drop(_ID, _ROW)


def _read_searches(spec: SearchesSpec) -> tuple[pl.Series, list[str], np.ndarray]:
    needed = [spec.user, spec.query] + ([spec.time] if spec.time is not None else [])
    table = _read_table(spec.path, spec.resolved_format, needed)
    users = _ids(table, spec.user, "user id")
    queries = _as_text(table, spec.query)
    blank = _blank(queries)
    if blank.any():
        raise table.error("missing query (empty cell)", spec.query, table.first_row(blank))
    time = (_times(table, spec.time, spec.time_format) if spec.time is not None
            else np.arange(table.frame.height, dtype=np.float64))
    return users, queries.to_list(), time


# --- assembling the dataset ---------------------------------------------------------------


def _codes(ids: pl.Series, vocabulary_ids: list[str]) -> np.ndarray:
    """int32[n] dense index of each raw id; every id must be in ``vocabulary_ids``."""
    return ids.replace_strict(vocabulary_ids, np.arange(len(vocabulary_ids), dtype=np.int32),
                              return_dtype=pl.Int32).to_numpy()


def _append_new(known: list[str], candidates: pl.Series) -> list[str]:
    """``known`` followed by the ids of ``candidates`` not in it, in first-seen order."""
    fresh = candidates.unique(maintain_order=True)
    fresh = fresh.filter(~fresh.is_in(pl.Series(known, dtype=pl.String).implode()))
    return known + fresh.to_list()


def load_dataset(spec: DataSpec, name: str | None = None) -> Dataset:
    """Read the files a spec names into a :class:`Dataset` called ``name`` (default: the
    spec's ``name``, else ``"dataset"``).

    Vocabularies: users in order of first appearance in the interactions, then users that
    only appear in the search log; items in item-file order, then items that only appear in
    the interactions (these get an empty catalog row: no title, no categories). Items in the
    item file without any interaction are kept: they are recallable new items.

    Interactions keep file order; ``time`` is seconds since the epoch (``unix`` input is
    taken as is; integer positions work the same way) or, without a time column, the row
    position in the file. Rows repeating an earlier row exactly are dropped unless
    ``spec.interactions.dedupe`` is off (a warning gives the count). ``weight`` is the
    weight column (1 without one) times ``event_weights[event]`` (1 for unlisted events);
    ``rating`` is NaN where the rating cell is empty.

    Raises :class:`DataError` naming the file, line and column of the first problem found;
    nothing is returned or cached on failure.
    """
    raw = _read_interactions(spec.interactions)
    if spec.items is not None:
        file_items, item_rows = _read_items(spec.items)
    else:
        file_items = pl.Series([], dtype=pl.String)
        item_rows = Catalog.empty(0).frame
    searches = _read_searches(spec.searches) if spec.searches is not None else None

    user_ids = raw.users.unique(maintain_order=True).to_list()
    if searches is not None:
        user_ids = _append_new(user_ids, searches[0])
    item_ids = _append_new(file_items.to_list(), raw.items)

    catalog = _catalog(spec.items, item_rows, len(item_ids))

    log = Interactions.build(user=_codes(raw.users, user_ids), item=_codes(raw.items, item_ids),
                             time=raw.time, weight=raw.weight, event=raw.event,
                             event_names=raw.event_names, rating=raw.rating)
    search_log = None
    if searches is not None:
        search_log = SearchLog(user=_codes(searches[0], user_ids), query=searches[1],
                               time=searches[2])
    sources = {"interactions": str(spec.interactions.path)}
    if spec.items is not None:
        sources["items"] = str(spec.items.path)
    if spec.searches is not None:
        sources["searches"] = str(spec.searches.path)
    meta = {"source": sources,
            "time": "file order" if spec.interactions.time is None else "seconds"}
    if spec.searches is not None:
        meta["search_time"] = "file order" if spec.searches.time is None else "seconds"
    return Dataset(name or spec.name or "dataset", Vocabulary(user_ids), Vocabulary(item_ids),
                   log, catalog, searches=search_log, meta=meta)


def load_dataset_toml(path: str | Path, name: str | None = None) -> Dataset:
    """Read the ``[data]`` table of a TOML file and load it; ``name`` defaults to the spec's
    ``name``, else the file stem."""
    path = Path(path)
    spec = DataSpec.from_toml(path)
    return load_dataset(spec, name or spec.name or path.stem)
