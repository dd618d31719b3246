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
    channels: list[str] = Field(description="channels that proposed the item")
    reasons: list[Reason] | None = None


class RecallResponse(BaseModel):
    user_id: str | None
    known_user: bool
    history_length: int
    candidates: list[Candidate]
    degraded: list[str] = Field(description="channels left out of this answer (error/timeout)")
    channel_counts: dict[str, int]
    ignored_history_items: list[str] = Field(default_factory=list)
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


class ErrorBody(BaseModel):
    error: str
    message: str
    field: str | None = None
