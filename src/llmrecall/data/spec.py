"""DataSpec: where a user's data lives and how its columns map onto the dataset model.

A spec is the ``[data]`` table of a TOML file::

    [data]
    name = "shop"                # optional: the dataset's name in reports and studies

    [data.interactions]
    path = "events.csv"
    format = "csv"
    user = "customer"
    item = "sku"
    time = "ts"
    time_format = "iso8601"

Relative paths are resolved against the folder of the TOML file that names them, so a
project folder can be moved as a whole. ``load_dataset`` (in ``loaders``) turns a spec into a
:class:`~llmrecall.data.dataset.Dataset`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmrecall.errors import ConfigError

Format = Literal["csv", "tsv", "parquet", "jsonl", "recbole"]

#: File suffix -> format, used when a table's ``format`` is left out.
SUFFIX_FORMATS: dict[str, str] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".inter": "recbole", ".item": "recbole",
    ".user": "recbole",
}

# Column names the catalog itself uses; a text field or attribute may not take them.
_RESERVED_CATALOG_COLUMNS = ("title", "category")


def table_files(path: Path) -> list[Path] | None:
    """The files a table path names when it names several, in name order: every file of a
    folder (hidden files and names starting with ``_`` left out, as Spark and Hive write
    ``_SUCCESS`` markers), or the matches of a glob (``*``, ``?`` or ``[`` in the path).
    None for a plain file path."""
    text = str(path)
    if any(c in text for c in "*?["):
        anchor = Path(path.anchor) if path.is_absolute() else Path(".")
        pattern = str(path.relative_to(anchor)) if path.is_absolute() else text
        return sorted(p for p in anchor.glob(pattern) if p.is_file())
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.is_file() and not any(part.startswith((".", "_"))
                                                 for part in p.relative_to(path).parts))
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TableSpec(_Strict):
    """Fields shared by every table: its file and that file's format."""

    path: Path = Field(description="the file; relative paths are resolved against the TOML file")
    format: Format | None = Field(
        None, description="csv, tsv, parquet, jsonl or recbole; inferred from the suffix if left out")

    @property
    def resolved_format(self) -> str:
        """The declared format, else the one the file suffix implies (for a folder or a
        glob: the suffix of its first file)."""
        if self.format is not None:
            return self.format
        files = table_files(self.path)
        suffix_of = files[0] if files else self.path
        fmt = SUFFIX_FORMATS.get(suffix_of.suffix.lower())
        if fmt is None:
            raise ConfigError(f"{self.path}: cannot tell the format from the suffix "
                              f"{self.path.suffix!r}; set format to one of "
                              f"csv, tsv, parquet, jsonl, recbole")
        return fmt

    def _with_base(self, base_dir: Path) -> _TableSpec:
        if self.path.is_absolute():
            return self
        return self.model_copy(update={"path": base_dir / self.path})


def _check_time_format(value: str) -> str:
    if value in ("unix", "iso8601") or "%" in value:
        return value
    raise ValueError("time_format must be 'unix', 'iso8601' or a strftime pattern "
                     f"such as '%Y-%m-%d %H:%M:%S'; got {value!r}")


class InteractionsSpec(_TableSpec):
    """The interaction log: one row per event (user, item, and optionally time/event/weight)."""

    user: str = Field(description="column holding the user id")
    item: str = Field(description="column holding the item id")
    time: str | None = Field(None, description="timestamp column; absent: file order is time order")
    time_format: str = Field("unix", description="'unix' seconds, 'iso8601', or a strftime pattern")
    event: str | None = Field(None, description="event-type column (view, click, purchase, ...)")
    weight: str | None = Field(None, description="numeric signal-strength column")
    rating: str | None = Field(None, description="explicit-rating column; empty cells are NaN")
    event_weights: dict[str, float] = Field(
        default_factory=dict, description="event name -> weight multiplier; unlisted events: 1")
    dedupe: bool = Field(
        True, description="drop rows that repeat an earlier row exactly (same user, item, time "
        "and, where mapped, event, weight and rating), with a warning giving the count; "
        "false keeps them")

    @field_validator("time_format")
    @classmethod
    def _valid_time_format(cls, value: str) -> str:
        return _check_time_format(value)

    @model_validator(mode="after")
    def _event_weights_need_events(self) -> InteractionsSpec:
        if self.event_weights and self.event is None:
            raise ValueError("event_weights needs an event column (set 'event')")
        return self


class ItemsSpec(_TableSpec):
    """The item catalog: one row per item with its text."""

    id: str = Field(description="column holding the item id (same ids as the interactions)")
    title: str | None = Field(None, description="title column; absent: empty titles")
    text_fields: list[str] = Field(default_factory=list,
                                   description="further text columns used in item texts")
    category: str | None = Field(None, description="column listing the item's categories")
    category_separator: str = Field("|", min_length=1, description="separator between categories")
    attributes: list[str] = Field(default_factory=list,
                                  description="other columns kept in the catalog as strings")

    @model_validator(mode="after")
    def _no_reserved_names(self) -> ItemsSpec:
        for group in ("text_fields", "attributes"):
            clash = [c for c in getattr(self, group) if c in _RESERVED_CATALOG_COLUMNS]
            if clash:
                raise ValueError(f"{group} may not name {clash}: the catalog uses 'title' and "
                                 "'category' itself (map them with 'title' and 'category')")
        return self


class SearchesSpec(_TableSpec):
    """An optional search log: what users typed, and when."""

    user: str = Field(description="column holding the user id")
    query: str = Field(description="column holding the query text")
    time: str | None = Field(None, description="timestamp column; absent: file order")
    time_format: str = Field("unix", description="'unix' seconds, 'iso8601', or a strftime pattern")

    @field_validator("time_format")
    @classmethod
    def _valid_time_format(cls, value: str) -> str:
        return _check_time_format(value)


class DataSpec(_Strict):
    """Where a dataset's files are and how their columns map (the ``[data]`` TOML table)."""

    name: str | None = Field(None, min_length=1, description=(
        "the dataset's name in reports, artifacts and tuning studies; default: the TOML "
        "file's stem"))
    interactions: InteractionsSpec
    items: ItemsSpec | None = None
    searches: SearchesSpec | None = None

    def resolve_paths(self, base_dir: str | Path) -> DataSpec:
        """A copy whose relative paths are taken relative to ``base_dir``."""
        base = Path(base_dir)
        return DataSpec(
            name=self.name,
            interactions=self.interactions._with_base(base),
            items=None if self.items is None else self.items._with_base(base),
            searches=None if self.searches is None else self.searches._with_base(base))

    # --- TOML -------------------------------------------------------------------------

    def to_table(self) -> dict[str, Any]:
        """The ``[data]`` table as TOML-ready plain values (None fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def to_toml(self) -> str:
        """A TOML document with a single ``[data]`` table."""
        return tomli_w.dumps({"data": self.to_table()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    @classmethod
    def from_table(cls, table: dict[str, Any], source: str = "<data>",
                   base_dir: str | Path | None = None) -> DataSpec:
        """Validate a ``[data]`` table (already parsed); relative paths join ``base_dir``."""
        try:
            spec = cls.model_validate(table)
        except ValidationError as exc:
            problems = "; ".join(
                f"data.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{source}: invalid [data] table: {problems}") from None
        return spec if base_dir is None else spec.resolve_paths(base_dir)

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<toml>",
                       base_dir: str | Path | None = None) -> DataSpec:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        if "data" not in document:
            raise ConfigError(f"{source}: no [data] table; found {sorted(document)}")
        return cls.from_table(document["data"], source=source, base_dir=base_dir)

    @classmethod
    def from_toml(cls, path: str | Path) -> DataSpec:
        """Read the ``[data]`` table of a TOML file; relative paths are relative to that file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        return cls.from_toml_text(text, source=str(path), base_dir=path.parent)
