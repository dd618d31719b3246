"""Request and response bodies of the HTTP API (pydantic; they also make the OpenAPI docs).

Request bodies are strict: a JSON number is not a string, ``true`` is not 1, ``5.0`` is not
the integer 5 (JSON integers are still valid floats). Every string must be valid Unicode;
ids follow :data:`ID_RULE` (docs/serving.md, Limits)."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

#: longest raw user or item id, in characters (code points)
MAX_ID_LENGTH = 256

#: the id rule, as the API documents it
ID_RULE = (f"1 to {MAX_ID_LENGTH} characters of valid Unicode without control characters "
           "(U+0000-U+001F, U+007F-U+009F); anything else is allowed, '/', '%', spaces and "
           "'..' included. In a URL path an id is one percent-encoded segment")

# lone surrogates: JSON can carry them (``"\ud800"``) but they are not Unicode text; stored
# or echoed back they break UTF-8 encoders (SQLite, the JSON response)
_SURROGATE = "\ud800-\udfff"
_BAD_IN_ID = re.compile(f"[\x00-\x1f\x7f-\x9f{_SURROGATE}]")
_BAD_IN_TEXT = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_SURROGATE}]")


def _refuse(value: str, bad: re.Pattern) -> str:
    m = bad.search(value)
    if m is not None:
        code = ord(m.group())
        if 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"not valid Unicode: a lone surrogate U+{code:04X} at "
                             f"character {m.start()}")
        raise ValueError(f"contains a control character U+{code:04X} at character {m.start()}")
    return value


def check_id(value: str) -> str:
    """``value`` if it is a valid raw id (:data:`ID_RULE`), else ValueError naming the
    character. Length is checked by the field's constraints."""
    return _refuse(value, _BAD_IN_ID)


def check_text(value: str) -> str:
    """``value`` if it is valid Unicode without control characters other than tab, line
    feed and carriage return, else ValueError."""
    return _refuse(value, _BAD_IN_TEXT)


class Documented:
    """Annotation that adds a JSON Schema ``pattern`` (ECMA 262) to a string's schema
    without validating with it: the validators above check the same rule and name the
    offending character, which a failed pattern match would not."""

    def __init__(self, pattern: str):
        self.pattern = pattern

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        schema["pattern"] = self.pattern
        return schema


ID_PATTERN = r"^[^\u0000-\u001F\u007F-\u009F]*$"
TEXT_PATTERN = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"

#: a raw user or item id
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
               AfterValidator(check_id), Documented(ID_PATTERN)]
#: a category or channel name: the same rule as ids
Label = Id

# free text: valid Unicode; tab and line breaks are the only control characters allowed
QueryText = Annotated[str, StringConstraints(max_length=2000), AfterValidator(check_text),
                      Documented(TEXT_PATTERN)]
Title = Annotated[str, StringConstraints(max_length=1000), AfterValidator(check_text),
                  Documented(TEXT_PATTERN)]
ItemText = Annotated[str, StringConstraints(max_length=20_000), AfterValidator(check_text),
                     Documented(TEXT_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecallFilters(_Body):
    categories: list[Label] = Field(default_factory=list, max_length=100,
                                    description="only items in any of these categories")
    deny_items: list[Id] = Field(default_factory=list, max_length=10_000,
                                  description="raw item ids never to return")


class RecallRequest(_Body):
    """Who to recall for: a known ``user_id``, or an anonymous ``history`` and/or ``query``
    (at least one of: a ``user_id``, a non-empty ``history``, a non-empty ``query``)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
        {"required": ["history"], "properties": {"history": {"minItems": 1}}},
        {"required": ["query"], "properties": {"query": {"type": "string", "minLength": 1}}}]})

    user_id: Id | None = None
    history: list[Id] = Field(default_factory=list, max_length=5000,
                              description="raw item ids, oldest first (added to the user's history)")
    query: QueryText | None = Field(None, description="free text, matched against items")
    k: int = Field(100, ge=1, description="candidates to return (at most the service's max_k)")
    channels: list[Label] | None = Field(None, max_length=64, description="only these channels")
    filters: RecallFilters = Field(default_factory=RecallFilters)
    explain: bool = Field(False, description="say why each candidate was recalled")
    max_reasons: int | None = Field(
        3, ge=1, le=64, description="with explain: the reasons given per candidate, those of "
        "the channels that added most to its fused score, largest first; null: one for every "
        "channel that proposed it")


class Reason(BaseModel):
    channel: str
    rank: int = Field(description="1-based rank in that channel's list")
    why: str
    evidence_item: str | None = Field(None, description="the history item the reason names, "
                                      "if any")
    contribution: float | None = Field(None, description=(
        "what the channel added to the candidate's fused score: weight / (rrf_k + rank)"))


class Candidate(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="fused (weighted reciprocal-rank) score")
    channels: list[str] = Field(description="sources whose own list holds the item (a channel's "
                                            "popularity fallback is never named as the channel)")
    reasons: list[Reason] | None = None


class RecallResponse(BaseModel):
    user_id: str | None = Field(description="as given; null for an anonymous request")
    known_user: bool = Field(description=(
        "true when the service holds a history for user_id (in the artifact's data or from "
        "acknowledged events). false: the id is new to the service (never seen, erased, or "
        "null) and the answer is the cold-start one (popularity, plus the request's history "
        "and query); not an error, so an id of the wrong format shows up only here"))
    history_length: int = Field(description="entries of the history recall used (live history "
                                            "plus the request's known history items)")
    candidates: list[Candidate]
    degraded: list[str] = Field(description="channels left out of this answer (error/timeout)")
    channel_counts: dict[str, int] = Field(
        description="candidates each source proposed of its own for this request")
    ignored_history_items: list[str] = Field(
        default_factory=list, description="items of the request's history the service does not know")
    artifact_version: str


class Event(_Body):
    user_id: Id
    item_id: Id
    type: str = Field("interaction", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    timestamp: float | None = Field(
        None, description="seconds since the epoch (not milliseconds); default: now. From "
        "min_event_timestamp (1995-01-01) to max_event_future_s (a day) after the server's "
        "clock")
    weight: float = Field(1.0, gt=0, le=1e6)

    @field_validator("timestamp")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ValueError("must be a finite number of seconds >= 0")
        return v


class EventBatch(_Body):
    events: list[Event] = Field(min_length=1)


class EventAck(BaseModel):
    accepted: int
    first_seq: int
    last_seq: int


class Item(_Body):
    item_id: Id
    title: Title
    text: ItemText = ""
    categories: list[Label] = Field(default_factory=list, max_length=50)


class ItemBatch(_Body):
    items: list[Item] = Field(min_length=1)


class ItemAck(BaseModel):
    added: int
    updated: int


class ItemJobAck(ItemAck):
    """202: stored and in the vocabulary; the channels index the items in the background."""

    job_id: str
    status: str
    items: int
    status_url: str


class JobStatus(BaseModel):
    job_id: str
    kind: str
    status: str  # indexing, done, failed, interrupted
    items: int
    added: int
    updated: int
    indexed: int
    created: float
    finished: float | None
    channel_errors: list[str]


class Neighbour(BaseModel):
    item_id: str
    title: str
    score: float
    channels: list[str]
    reasons: list[Reason] | None = None


class SimilarResponse(BaseModel):
    item_id: str
    neighbours: list[Neighbour]
    degraded: list[str]


class HistoryEntry(BaseModel):
    item_id: str
    timestamp: float
    weight: float


class UserHistoryResponse(BaseModel):
    user_id: str
    known_user: bool
    history: list[HistoryEntry]


class EraseAck(BaseModel):
    user_id: str
    erased_events: int


class ReloadAck(BaseModel):
    artifact_version: str
    previous_version: str
    seconds: float


class Problem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: ``error`` (a code such as ``invalid_request``, ``not_found``,
    ``unauthorized``, ``too_large``), a ``message`` for people, the ``field`` it concerns
    (``events[3].timestamp``, ``X-API-Key``) and, for invalid requests, every ``problem``."""

    error: str
    message: str
    field: str | None = None
    problems: list[Problem] | None = Field(None, description="every invalid field (422)")


class ItemDeleteAck(BaseModel):
    item_id: str
    deleted: bool


class Health(BaseModel):
    status: str
    artifact_version: str
    dataset: str
    items: int
    users: int
    last_event_seq: int
    state_store: dict = Field(description="the durable state: kind (sqlite | postgres) and "
                              "available (PostgreSQL: the change listener is connected); with "
                              "[state] redis_url also redis: {kind, available} (available: "
                              "false while its circuit breaker is open) and user_states: "
                              "{available, failures, channels: {name: {hits, misses, "
                              "redis_hits, redis_misses}}} (the Redis level of the per-user "
                              "channel caches)")
    degraded_channels: list[str]
    channels: list[str]
