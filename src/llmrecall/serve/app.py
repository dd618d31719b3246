"""The HTTP API (FastAPI). Routes are thin: they validate, resolve ids and call the
:class:`~llmrecall.serve.service.Service`. OpenAPI docs at ``/docs``."""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import os
import signal
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, unquote

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmrecall.serve import schemas as s
from llmrecall.serve import sources
from llmrecall.serve.engine import RecallQuery
from llmrecall.serve.live import UserHistory
from llmrecall.serve.request import InvalidRequest, known_channels
from llmrecall.serve.service import Overloaded, Service
from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.shared_states import user_cache_counts
from llmrecall.serve.store import EventRows, ItemRow, StoreUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as ``{"error", "message", "field"}`` with an HTTP status."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def _field(loc) -> str:
    """('body', 'events', 3, 'timestamp') -> 'events[3].timestamp'. Only the first element
    says where (body, query, path, header): a body field may be named ``query``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return _printable(out or "body")


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\ud800``): an error about a JSON key or
    value that is not Unicode must still encode as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _IdConvertor(Convertor[str]):
    """A raw id in a URL path: one path segment as sent, percent-decoded here. Routing
    happens on the undecoded path (:class:`_RawPath`), so an encoded '/' (``%2F``) is part
    of the id, not a separator: ``/v1/users/team%2Falice/history`` is user ``team/alice``,
    and ``DELETE /v1/users/x/history`` is 405, not the erasure of a user ``x/history``.
    Bytes that are not UTF-8 decode to lone surrogates, which the id validator refuses."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value, errors="surrogateescape")

    def to_string(self, value: str) -> str:
        return quote(value, safe="", errors="surrogateescape")


register_url_convertor("rawid", _IdConvertor())


class _RawPath:
    """Pure ASGI middleware: route on the path as sent (``raw_path``), not on its decoded
    form, where an encoded '/' inside an id could not be told from a separator. The route
    parameters (:class:`_IdConvertor`) decode themselves."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw:
            scope = {**scope, "path": raw.decode("latin-1")}
        return await self.app(scope, receive, send)


#: a raw id in a URL path (``{name:rawid}``): one percent-encoded segment, so every id the
#: API accepts can be addressed
PathId = Annotated[str, Path(min_length=1, max_length=s.MAX_ID_LENGTH, description=s.ID_RULE,
                             json_schema_extra={"pattern": s.ID_PATTERN}),
                   AfterValidator(s.check_id)]

# the write key, from either header (documented as alternatives in the OpenAPI schema)
_KEY_HEADER = APIKeyHeader(name="X-API-Key", scheme_name="ApiKey", auto_error=False,
                           description="the write API key (write endpoints only)")
_BEARER = HTTPBearer(scheme_name="Bearer", auto_error=False,
                     description="the write API key as a bearer token")


class _PrometheusText(Response):
    media_type = CONTENT_TYPE_LATEST


async def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    await service.sync()  # other processes' writes first (a no-op with one process)
    return service


Svc = Annotated[Service, Depends(_service)]


#: environment variable carrying the settings (JSON) to each process of a multi-process server
SETTINGS_ENV = "LLMRECALL_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app of one server process, its settings read from ``$LLMRECALL_SERVE_SETTINGS``
    (uvicorn's factory for ``workers > 1``: each process builds its own)."""
    from llmrecall.serve import connections
    from llmrecall.serve.supervision import SUPERVISOR_ENV, die_with_parent

    settings = ServeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor:  # before the artifact loads: a worker never outlives its supervisor
        die_with_parent(int(supervisor))
    connections.configure(settings)
    return create_app(settings)


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app; the service starts in its lifespan (artifact load, replay). The
    routes are the module's :data:`router`; they find the service in ``app.state``."""
    app = FastAPI(title="llmrecall", version="1", lifespan=_lifespan,
                  description="Online recall (candidate generation) over versioned artifacts, "
                              "with real-time events and item updates.")
    app.state.settings = settings
    app.add_middleware(_Guard, settings=settings)
    app.add_middleware(_RawPath)  # outermost: _Guard sees the route the router matched
    for error, handler in _HANDLERS.items():
        app.add_exception_handler(error, handler)
    app.include_router(router)
    from llmrecall.serve import ui  # here: its routes use the "rawid" convertor registered above

    app.include_router(ui.router)  # the inspector page, /ui (docs/serving.md)
    generated = app.openapi

    def openapi() -> dict:
        service = getattr(app.state, "service", None)
        return _state_limits(copy.deepcopy(generated()), settings,
                             None if service is None else sorted(known_channels(service.state)))

    app.openapi = openapi  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    service = Service(app.state.settings)
    await service.start()
    app.state.service = service
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(
            service.reload_logged("on SIGHUP")))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        pass
    try:
        yield
    finally:
        await service.stop()
        service.metrics.process_exited()


async def _require_key(
        request: Request,
        key: Annotated[str | None, Security(_KEY_HEADER)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]) -> None:
    expected = request.app.state.service.api_key
    if expected is None:
        raise ApiError(403, "writes_disabled", "write endpoints are disabled: set the API key "
                       f"in ${request.app.state.settings.api_key_env}", "X-API-Key")
    got = key if key is not None else (bearer.credentials if bearer is not None else None)
    if not got:
        raise ApiError(401, "unauthorized", "an API key is required (X-API-Key header)", "X-API-Key")
    if not hmac.compare_digest(got.encode(), expected.encode()):
        raise ApiError(403, "forbidden", "the API key is not valid", "X-API-Key")


_WRITE = [Depends(_require_key)]
_WRITTEN = (401, 403, 422)  # every write: the key, and the fields


_ERRORS = {
    401: "no API key given (X-API-Key or Authorization: Bearer)",
    403: "the API key is wrong, or writes are disabled (no key configured)",
    404: "unknown (or deleted) item",
    413: "body or batch too large (max_body_bytes, max_events_per_batch, "
         "max_items_per_batch)",
    422: "an invalid field, named in `field` (also: unknown channel, unknown event item, "
         "event time outside the window, k over max_k)",
    500: "the reload failed; the previous artifact keeps serving",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the error statuses a route can answer."""
    return {code: {"model": s.ErrorBody, "description": _ERRORS[code]} for code in codes}


# ---- exception handlers -----------------------------------------------------------------------
async def _api_error(_req: Request, exc: Exception):
    assert isinstance(exc, ApiError)
    return _json({"error": exc.error, "message": exc.message, "field": exc.field}, exc.status)


async def _invalid_request(_req: Request, exc: Exception):
    assert isinstance(exc, InvalidRequest)
    return _json({"error": "invalid_request", "message": exc.message, "field": exc.field}, 422)


async def _overloaded(req: Request, exc: Exception):
    response = _json({"error": "overloaded", "message": str(exc), "field": None}, 503)
    response.headers["retry-after"] = str(req.app.state.settings.overload_retry_after_s)
    return response


async def _store_unavailable(req: Request, exc: Exception):
    # the write was not acknowledged: the client retries it (it may have been stored when
    # the connection broke during the commit; events then count twice)
    response = _json({"error": "state_unavailable", "message": str(exc), "field": None}, 503)
    response.headers["retry-after"] = str(req.app.state.settings.state.unavailable_retry_after_s)
    return response


async def _validation(_req: Request, exc: Exception):
    assert isinstance(exc, RequestValidationError)
    problems = [_problem(e) for e in exc.errors()]
    first = problems[0] if problems else {"field": "body", "message": "invalid request"}
    return _json({"error": "invalid_request", "field": first["field"],
                  "message": f"{first['field']}: {first['message']}", "problems": problems}, 422)


async def _http(_req: Request, exc: Exception):
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # the body could not be read as JSON text at all (FastAPI answers 400)
        why = ("not valid UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError)
               else "not valid JSON")
        return _json({"error": "invalid_request", "field": "body",
                      "message": f"body: {why}"}, 422)
    response = _json({"error": "http_error", "message": str(exc.detail), "field": None},
                     exc.status_code)
    response.headers.update(exc.headers or {})  # 405: Allow
    return response


async def _internal(_req: Request, exc: Exception):
    log.error("unhandled error", exc_info=exc)
    return _json({"error": "internal", "message": f"internal error: {type(exc).__name__}",
                  "field": None}, 500)


_HANDLERS = {ApiError: _api_error, InvalidRequest: _invalid_request, Overloaded: _overloaded,
             StoreUnavailable: _store_unavailable,
             RequestValidationError: _validation, StarletteHTTPException: _http,
             Exception: _internal}

#: every route of the API; each reads the service (and its settings) from ``app.state``
router = APIRouter()


# ---- recall -----------------------------------------------------------------------------------
@router.post("/v1/recall", response_model=s.RecallResponse, responses=_responses(413, 422),
             tags=["recall"])
async def recall(req: s.RecallRequest, svc: Svc):
    """Candidates for a user (or an anonymous history / query), fused across channels."""
    return _json(await svc.recall_request(req))


@router.get("/v1/items/{item_id:rawid}/similar", response_model=s.SimilarResponse,
            responses=_responses(404, 422), tags=["recall"])
async def similar(item_id: PathId, svc: Svc,
                  k: Annotated[int, Query(ge=1, description="at most max_k")] = 20):
    """Item-to-item neighbours from the item-to-item channels, with evidence. An item
    they know nothing of (no events, no text match) gets popular items instead, named
    ``live_popularity``; they rank after every real neighbour."""
    state, settings = svc.live, svc.settings
    if k > settings.max_k:
        raise ApiError(422, "invalid_request", f"k: at most {settings.max_k}", "k")
    index = _item_index(state, item_id)
    pipeline = state.artifact.pipeline
    wanted = set(settings.similar_channels)
    names = [n for n, ch in pipeline.channels.items() if n in wanted or ch.kind in wanted]
    if sources.LIVE_COVISIT in wanted:
        names.append(sources.LIVE_COVISIT)
    history = UserHistory(np.asarray([index], np.int32), np.zeros(1), np.ones(1, np.float32))
    answer = await svc.recall(RecallQuery(state, None, history, k, None, tuple(sorted(names)),
                                          None, True, popular_fill=True))
    return _json({"item_id": item_id, "neighbours": answer.candidates,
                  "degraded": answer.degraded})


# ---- events and users -------------------------------------------------------------------------
@router.post("/v1/events", response_model=s.EventAck, dependencies=_WRITE,
             responses=_responses(*_WRITTEN, 413), tags=["events"])
async def events(batch: s.EventBatch, svc: Svc):
    """Store a batch of feedback durably (all or nothing), then make it count at once."""
    evs, settings = batch.events, svc.settings
    if len(evs) > settings.max_events_per_batch:
        raise ApiError(413, "too_large", f"at most {settings.max_events_per_batch} events "
                       "per batch", "events")
    now = time.time()
    _check_timestamps(evs, settings, now)
    state = svc.live
    item_ids = [e.item_id for e in evs]
    idx = state.items.lookup(item_ids)
    if (idx < 0).any():
        i = int(np.argmax(idx < 0))
        raise ApiError(422, "invalid_request", f"events[{i}].item_id: unknown item "
                       f"{item_ids[i]!r} (PUT /v1/items first)", f"events[{i}].item_id")
    rows = EventRows([e.user_id for e in evs], item_ids, [e.type for e in evs],
                     [now if e.timestamp is None else e.timestamp for e in evs],
                     [e.weight for e in evs])
    first, last = await svc.add_events(rows, idx)
    return _json({"accepted": len(evs), "first_seq": first, "last_seq": last})


def _check_timestamps(evs: list[s.Event], settings: ServeSettings, now: float) -> None:
    """422 for the first event whose timestamp is outside the accepted window."""
    lowest, highest = settings.min_event_timestamp, now + settings.max_event_future_s
    for i, e in enumerate(evs):
        if e.timestamp is not None and not lowest <= e.timestamp <= highest:
            raise ApiError(422, "invalid_request", f"events[{i}].timestamp: {e.timestamp!r} "
                           f"is outside the accepted window: seconds since the epoch from "
                           f"{_utc(lowest)} to {settings.max_event_future_s:g} s after now "
                           f"({_utc(highest)}); milliseconds are 1000 times too large",
                           f"events[{i}].timestamp")


@router.get("/v1/users/{user_id:rawid}/history", response_model=s.UserHistoryResponse,
            responses=_responses(422), tags=["users"])
async def user_history(user_id: PathId, svc: Svc):
    """The live history the service recalls from (artifact + acknowledged events)."""
    state, known, h = await svc.user_history(user_id)
    raw = state.items.raw(h.items)
    return _json({"user_id": user_id, "known_user": known,
                  "history": [{"item_id": r, "timestamp": t, "weight": w}
                              for r, t, w in zip(raw, h.times.tolist(), h.weights.tolist())]})


@router.delete("/v1/users/{user_id:rawid}", response_model=s.EraseAck, dependencies=_WRITE,
               responses=_responses(*_WRITTEN), tags=["users"])
async def erase_user(user_id: PathId, svc: Svc):
    """Erase the user's events and live history everywhere; they recall as new afterwards."""
    n = await svc.erase_user(user_id)
    return _json({"user_id": user_id, "erased_events": n})


# ---- items ------------------------------------------------------------------------------------
@router.put("/v1/items", response_model=s.ItemAck, dependencies=_WRITE,
            responses={**_responses(*_WRITTEN, 413), 202: {"model": s.ItemJobAck}},
            tags=["items"])
async def put_items(batch: s.ItemBatch, svc: Svc):
    """Add or update items (stored durably before the answer); re-adding undeletes.

    Up to ``items_sync_max`` items: 200 once every channel has indexed them, so they are
    recallable at once by all channels. More: 202 once stored and in the vocabulary,
    with a ``job_id``; the channels index them in the background and
    ``GET /v1/jobs/{job_id}`` says when they are done."""
    if len(batch.items) > svc.settings.max_items_per_batch:
        raise ApiError(413, "too_large", f"at most {svc.settings.max_items_per_batch} items "
                       "per batch", "items")
    seen: dict[str, int] = {}
    for i, it in enumerate(batch.items):
        if it.item_id in seen:
            raise ApiError(422, "invalid_request", f"items[{i}].item_id: {it.item_id!r} "
                           f"repeats items[{seen[it.item_id]}]", f"items[{i}].item_id")
        seen[it.item_id] = i
    added, updated, job_id = await svc.put_items(
        [ItemRow(it.item_id, it.title, it.text, list(it.categories)) for it in batch.items])
    if job_id is None:
        return _json({"added": added, "updated": updated})
    url = f"/v1/jobs/{job_id}"
    response = _json({"added": added, "updated": updated, "job_id": job_id,
                      "status": "indexing", "items": len(batch.items), "status_url": url}, 202)
    response.headers["location"] = url
    return response


@router.get("/v1/jobs/{job_id}", response_model=s.JobStatus, responses=_responses(404, 422),
            tags=["items"])
async def job_status(job_id: Annotated[str, Path(min_length=1, max_length=64)], svc: Svc):
    """A bulk item write's indexing: ``indexing`` (``indexed`` of ``items`` so far),
    ``done``, ``failed``, or ``interrupted`` (the process stopped first; the items are
    stored and indexed by every process started since)."""
    record = svc.job(job_id)
    if record is None:
        raise ApiError(404, "not_found", f"unknown job {job_id!r}", "job_id")
    return _json(record)


@router.delete("/v1/items/{item_id:rawid}", response_model=s.ItemDeleteAck, dependencies=_WRITE,
               responses=_responses(*_WRITTEN, 404), tags=["items"])
async def delete_item(item_id: PathId, svc: Svc):
    """Never return this item again (until it is PUT again)."""
    index = _item_index(svc.live, item_id, allow_deleted=True)
    await svc.delete_item(index, item_id)
    return _json({"item_id": item_id, "deleted": True})


# ---- operations -------------------------------------------------------------------------------
@router.post("/v1/admin/reload", response_model=s.ReloadAck, dependencies=_WRITE,
             responses=_responses(401, 403, 500), tags=["admin"])
async def reload(svc: Svc, announce: Annotated[bool, Query(
        description="false: reload this process only, not the others sharing the state (a "
        "rolling rollout reloads each replica in turn)")] = True):
    """Load the artifact named by CURRENT fully, replay state, swap atomically. Other
    processes sharing the state load it too, unless ``announce=false``."""
    try:
        version, previous, seconds = await svc.reload(announce=announce)
    except Exception as exc:  # the old state keeps serving
        raise ApiError(500, "reload_failed", f"reload failed, still serving the previous "
                       f"artifact: {exc}") from None
    return _json({"artifact_version": version, "previous_version": previous,
                  "seconds": seconds})


def _user_state_health(svc, state) -> dict:
    """``user_states``: the Redis level of the per-user channel caches, and each cache's
    hit/miss counts in process and in Redis (llmrecall.serve.shared_states)."""
    if svc.user_states is None:
        return {}
    return {"user_states": svc.user_states.describe() | {
        "channels": user_cache_counts(state.artifact.pipeline.channels.items())}}


@router.get("/healthz", response_model=s.Health, tags=["admin"])
async def healthz(svc: Svc):
    """Always 200 while the process serves; ``status`` is ``degraded`` while too many
    recent answers left a channel out (``health_degraded_ratio``), else ``ok``."""
    state = svc.live
    status, answers, ratio = svc.health()
    return _json({"status": status, "recent_answers": answers,
                  "recent_degraded_ratio": ratio, "artifact_version": state.artifact.version,
                  "dataset": state.artifact.manifest["dataset"], "items": state.n_items,
                  "users": len(state.user_rows), "last_event_seq": state.last_seq,
                  "state_store": svc.store.describe() | (
                      {"redis": svc.hot.describe()} if svc.hot is not None else {}) | (
                      _user_state_health(svc, state)),
                  "degraded_channels": svc.engine.degraded_channels(),
                  "channels": list(state.artifact.pipeline.channels)})


@router.get("/metrics", response_class=_PrometheusText, tags=["admin"])
async def metrics(svc: Svc):
    """Prometheus text; with several processes, their metrics summed (gauges: the max)."""
    svc.health()  # the degraded-ratio gauge of this process, as of now
    return _PrometheusText(generate_latest(svc.metrics.collect_registry()))


def _state_limits(spec: dict, settings: ServeSettings, channels: list[str] | None) -> dict:
    """The generated OpenAPI ``spec`` with the limits that depend on the settings (and the
    loaded artifact) written in, so that a request the schema allows is not refused for a
    limit it does not state. Computed for each request of ``/openapi.json``: the channels
    change with reloads."""
    schemas = spec["components"]["schemas"]
    schemas["RecallRequest"]["properties"]["k"]["maximum"] = settings.max_k
    if channels is not None:
        schemas["RecallRequest"]["properties"]["channels"]["anyOf"][0]["items"]["enum"] = channels
    schemas["EventBatch"]["properties"]["events"]["maxItems"] = settings.max_events_per_batch
    schemas["ItemBatch"]["properties"]["items"]["maxItems"] = settings.max_items_per_batch
    # the upper bound moves with the clock: a number written here would be wrong (too low)
    # a moment after it was served, so it is stated in words
    stamp = schemas["Event"]["properties"]["timestamp"]
    stamp["anyOf"][0]["minimum"] = settings.min_event_timestamp
    stamp["description"] = (
        f"seconds since the epoch (not milliseconds); default: now. From "
        f"{settings.min_event_timestamp:g} ({_utc(settings.min_event_timestamp)}, "
        f"min_event_timestamp) to {settings.max_event_future_s:g} s after the server's clock "
        f"(max_event_future_s) when the event arrives")
    for param in spec["paths"]["/v1/items/{item_id}/similar"]["get"]["parameters"]:
        if param["name"] == "k":
            param["schema"]["maximum"] = settings.max_k
    return spec


def _problem(error: dict) -> dict:
    """One pydantic error as ``{field, message}``."""
    if error["type"] == "json_invalid":  # loc is ('body', character offset)
        return {"field": "body", "message": f"not valid JSON ({error.get('ctx', {}).get('error')} "
                                            f"at character {error['loc'][-1]})"}
    message = error["msg"]
    if error["type"] == "string_unicode":  # pydantic's words for a lone surrogate
        message = "not valid Unicode (a lone surrogate)"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return {"field": _field(error["loc"]), "message": _printable(message)}


def _item_index(state, item_id: str, allow_deleted: bool = False) -> int:
    index = int(state.items.lookup([item_id])[0])
    if index < 0 or (state.deleted[index] and not allow_deleted):
        raise ApiError(404, "not_found", f"unknown item {item_id!r}", "item_id")
    return index


class _Guard:
    """Pure ASGI middleware: bounds request bodies (413) and records latency/error metrics."""

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.limit = settings.max_body_bytes
        # with several processes every response names the one that answered (operations)
        self.process = str(os.getpid()).encode() if settings.shares_state else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                if self.process is not None:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"x-llmrecall-process", self.process)]}
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            too_big = length is not None and length.isdigit() and int(length) > self.limit
            if length is None and not too_big:  # no length given: read it, bounded
                chunks, size, more = [], 0, True
                while more and size <= self.limit:
                    msg = await receive()
                    chunks.append(msg.get("body", b""))
                    size += len(chunks[-1])
                    more = msg.get("more_body", False)
                too_big = size > self.limit
                body = b"".join(chunks)

                async def receive():  # noqa: F811  (replay the buffered body)
                    return {"type": "http.request", "body": body, "more_body": False}
            if too_big:
                payload = orjson.dumps({"error": "too_large", "field": "body",
                                        "message": f"request body over {self.limit} bytes"})
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(payload)).encode())]})
                await send({"type": "http.response.body", "body": payload})
                self._observe(scope, 413, start)
                return
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._observe(scope, status_holder["status"], start)

    @staticmethod
    def _observe(scope, status: int, start: float) -> None:
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None)
        if service is None:
            return
        route = scope.get("route")
        label = getattr(route, "path", "unmatched")
        service.metrics.request_seconds.labels(label, scope["method"], str(status)).observe(
            time.perf_counter() - start)
        if status >= 400:
            service.metrics.errors.labels(label, str(status)).inc()


