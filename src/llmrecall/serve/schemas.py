"""Request and response bodies of the HTTP API (pydantic; they also make the OpenAPI docs)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

RawId = Field(min_length=1, max_length=256)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecallFilters(_Body):
    categories: list[str] = Field(default_factory=list, max_length=100,
                                  description="only items in any of these categories")
    deny_items: list[str] = Field(default_factory=list, max_length=10_000,
                                  description="raw item ids never to return")


class RecallRequest(_Body):
    """Who to recall for: a known ``user_id``, or an anonymous ``history`` and/or ``query``."""

    user_id: str | None = Field(None, min_length=1, max_length=256)
    history: list[str] = Field(default_factory=list, max_length=5000,
                               description="raw item ids, oldest first (added to the user's history)")
    query: str | None = Field(None, max_length=2000, description="free text, matched against items")
    k: int = Field(100, ge=1, description="candidates to return (at most the service's max_k)")
    channels: list[str] | None = Field(None, max_length=64, description="only these channels")
    filters: RecallFilters = Field(default_factory=RecallFilters)
    explain: bool = Field(False, description="say why each candidate was recalled")


class Reason(BaseModel):
    channel: str
    rank: int = Field(description="1-based rank in that channel's list")
    why: str
    evidence_item: str | None = None


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
    user_id: str = RawId
    item_id: str = RawId
    type: str = Field("interaction", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    timestamp: float | None = Field(None, description="seconds since the epoch; default: now")
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
    item_id: str = RawId
    title: str = Field(max_length=1000)
    text: str = Field("", max_length=20_000)
    categories: list[str] = Field(default_factory=list, max_length=50)


class ItemBatch(_Body):
    items: list[Item] = Field(min_length=1)


class ItemAck(BaseModel):
    added: int
    updated: int


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


class ErrorBody(BaseModel):
    error: str
    message: str
    field: str | None = None
