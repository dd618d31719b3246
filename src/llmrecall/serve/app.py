"""The HTTP API (FastAPI). Routes are thin: they validate, resolve ids and call the
:class:`~llmrecall.serve.service.Service`. OpenAPI docs at ``/docs``."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import time
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmrecall.serve import schemas as s
from llmrecall.serve import sources
from llmrecall.serve.engine import RecallQuery
from llmrecall.serve.live import UserHistory
from llmrecall.serve.service import Overloaded, Service
from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.store import EventRows, ItemRow

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
    """('body', 'events', 3, 'timestamp') -> 'events[3].timestamp'."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")] or list(loc[:1])
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


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
    """The FastAPI app; the service starts in its lifespan (artifact load, replay)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(settings)
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

    app = FastAPI(title="llmrecall", version="1", lifespan=lifespan,
                  description="Online recall (candidate generation) over versioned artifacts, "
                              "with real-time events and item updates.")
    app.add_middleware(_Guard, settings=settings)

    async def require_key(request: Request) -> None:
        expected = app.state.service.api_key
        if expected is None:
            raise ApiError(403, "writes_disabled",
                           f"write endpoints are disabled: set the API key in ${settings.api_key_env}",
                           "X-API-Key")
        got = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if got is None and auth.lower().startswith("bearer "):
            got = auth[7:]
        if not got:
            raise ApiError(401, "unauthorized", "an API key is required (X-API-Key header)", "X-API-Key")
        if not hmac.compare_digest(got.encode(), expected.encode()):
            raise ApiError(403, "forbidden", "the API key is not valid", "X-API-Key")

    Write = [Depends(require_key)]
    errors = {422: {"model": s.ErrorBody}, 413: {"model": s.ErrorBody}}

    # ---- exception handlers -------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError):
        return _json({"error": exc.error, "message": exc.message, "field": exc.field}, exc.status)

    @app.exception_handler(Overloaded)
    async def _overloaded(_req: Request, exc: Overloaded):
        response = _json({"error": "overloaded", "message": str(exc), "field": None}, 503)
        response.headers["retry-after"] = str(settings.overload_retry_after_s)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        problems = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        return _json({"error": "invalid_request", "field": first["field"],
                      "message": f"{first['field']}: {first['message']}", "problems": problems}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        return _json({"error": "http_error", "message": str(exc.detail), "field": None},
                     exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return _json({"error": "internal", "message": f"internal error: {type(exc).__name__}",
                      "field": None}, 500)

    # ---- recall -------------------------------------------------------------------------
    @app.post("/v1/recall", response_model=s.RecallResponse, responses=errors, tags=["recall"])
    async def recall(req: s.RecallRequest, svc: Svc):
        """Candidates for a user (or an anonymous history / query), fused across channels."""
        state = svc.state
        if req.k > settings.max_k:
            raise ApiError(422, "invalid_request", f"k: at most {settings.max_k}", "k")
        if req.user_id is None and not req.history and not req.query:
            raise ApiError(422, "invalid_request", "give user_id, history or query", "user_id")
        pipeline = state.artifact.pipeline
        only = None
        if req.channels is not None:
            known = set(pipeline.channels) | {sources.LIVE_POPULARITY, sources.LIVE_COVISIT,
                                              sources.QUERY_LEXICAL}
            for i, name in enumerate(req.channels):
                if name not in known:
                    raise ApiError(422, "invalid_request",
                                   f"unknown channel {name!r}; known: {sorted(known)}",
                                   f"channels[{i}]")
            only = tuple(sorted(set(req.channels)))
        row = state.row_for(req.user_id) if req.user_id is not None else None
        history = state.history(row)
        ignored: list[str] = []
        if req.history:
            idx = state.items.lookup(req.history)
            ignored = [req.history[i] for i in np.flatnonzero(idx < 0)]
            extra = idx[idx >= 0]
            if len(extra):
                start = float(history.times[-1]) + 1 if len(history) else 0.0
                history = UserHistory(
                    np.concatenate([history.items, extra]).astype(np.int32),
                    np.concatenate([history.times, start + np.arange(len(extra), dtype=np.float64)]),
                    np.concatenate([history.weights, np.ones(len(extra), np.float32)]))
        allowed = None
        if req.filters.categories or req.filters.deny_items:
            allowed = state.allowed.copy()
            if req.filters.categories:
                allowed &= state.category_mask(req.filters.categories)
            if req.filters.deny_items:
                deny = state.items.lookup(req.filters.deny_items)
                allowed[deny[deny >= 0]] = False
        query = RecallQuery(state, row, history, req.k, req.query, only, allowed, req.explain,
                            adhoc=bool(req.history) and row is not None,
                            query_only=row is None and len(history) == 0 and bool(req.query))
        answer = await svc.recall(query)
        return _json({"user_id": req.user_id, "known_user": row is not None,
                      "history_length": len(history), "candidates": answer.candidates,
                      "degraded": answer.degraded, "channel_counts": answer.channel_counts,
                      "ignored_history_items": ignored,
                      "artifact_version": state.artifact.version})

    @app.get("/v1/items/{item_id}/similar", response_model=s.SimilarResponse, tags=["recall"])
    async def similar(item_id: Annotated[str, Path(min_length=1, max_length=256)], svc: Svc,
                      k: Annotated[int, Query(ge=1)] = 20):
        """Item-to-item neighbours from the item-to-item channels, with evidence."""
        state = svc.state
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
                                              None, True))
        return _json({"item_id": item_id, "neighbours": answer.candidates,
                      "degraded": answer.degraded})

    # ---- events and users -----------------------------------------------------------------
    @app.post("/v1/events", response_model=s.EventAck, dependencies=Write, responses=errors,
              tags=["events"])
    async def events(batch: s.EventBatch, svc: Svc):
        """Store a batch of feedback durably (all or nothing), then make it count at once."""
        evs = batch.events
        if len(evs) > settings.max_events_per_batch:
            raise ApiError(413, "too_large", f"at most {settings.max_events_per_batch} events "
                           "per batch", "events")
        state = svc.state
        item_ids = [e.item_id for e in evs]
        idx = state.items.lookup(item_ids)
        if (idx < 0).any():
            i = int(np.argmax(idx < 0))
            raise ApiError(422, "invalid_request", f"events[{i}].item_id: unknown item "
                           f"{item_ids[i]!r} (PUT /v1/items first)", f"events[{i}].item_id")
        now = time.time()
        rows = EventRows([e.user_id for e in evs], item_ids, [e.type for e in evs],
                         [now if e.timestamp is None else e.timestamp for e in evs],
                         [e.weight for e in evs])
        first, last = await svc.add_events(rows, idx)
        return _json({"accepted": len(evs), "first_seq": first, "last_seq": last})

    @app.get("/v1/users/{user_id}/history", response_model=s.UserHistoryResponse, tags=["users"])
    async def user_history(user_id: Annotated[str, Path(min_length=1, max_length=256)], svc: Svc):
        """The live history the service recalls from (artifact + acknowledged events)."""
        state = svc.state
        row = state.row_for(user_id)
        h = state.history(row)
        raw = state.items.raw(h.items)
        return _json({"user_id": user_id, "known_user": row is not None,
                      "history": [{"item_id": r, "timestamp": t, "weight": w}
                                  for r, t, w in zip(raw, h.times.tolist(), h.weights.tolist())]})

    @app.delete("/v1/users/{user_id}", response_model=s.EraseAck, dependencies=Write, tags=["users"])
    async def erase_user(user_id: Annotated[str, Path(min_length=1, max_length=256)], svc: Svc):
        """Erase the user's events and live history everywhere; they recall as new afterwards."""
        n = await svc.erase_user(user_id)
        return _json({"user_id": user_id, "erased_events": n})

    # ---- items -----------------------------------------------------------------------------
    @app.put("/v1/items", response_model=s.ItemAck, dependencies=Write,
             responses={**errors, 202: {"model": s.ItemJobAck}}, tags=["items"])
    async def put_items(batch: s.ItemBatch, svc: Svc):
        """Add or update items (stored durably before the answer); re-adding undeletes.

        Up to ``items_sync_max`` items: 200 once every channel has indexed them, so they are
        recallable at once by all channels. More: 202 once stored and in the vocabulary,
        with a ``job_id``; the channels index them in the background and
        ``GET /v1/jobs/{job_id}`` says when they are done."""
        if len(batch.items) > settings.max_items_per_batch:
            raise ApiError(413, "too_large", f"at most {settings.max_items_per_batch} items "
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

    @app.get("/v1/jobs/{job_id}", response_model=s.JobStatus, tags=["items"])
    async def job_status(job_id: Annotated[str, Path(min_length=1, max_length=64)], svc: Svc):
        """A bulk item write's indexing: ``indexing`` (``indexed`` of ``items`` so far),
        ``done``, ``failed``, or ``interrupted`` (the process stopped first; the items are
        stored and indexed by every process started since)."""
        record = svc.job(job_id)
        if record is None:
            raise ApiError(404, "not_found", f"unknown job {job_id!r}", "job_id")
        return _json(record)

    @app.delete("/v1/items/{item_id}", dependencies=Write, tags=["items"])
    async def delete_item(item_id: Annotated[str, Path(min_length=1, max_length=256)], svc: Svc):
        """Never return this item again (until it is PUT again)."""
        index = _item_index(svc.state, item_id, allow_deleted=True)
        await svc.delete_item(index, item_id)
        return _json({"item_id": item_id, "deleted": True})

    # ---- operations ----------------------------------------------------------------------
    @app.post("/v1/admin/reload", response_model=s.ReloadAck, dependencies=Write, tags=["admin"])
    async def reload(svc: Svc):
        """Load the artifact named by CURRENT fully, replay state, swap atomically."""
        try:
            version, previous, seconds = await svc.reload()
        except Exception as exc:  # the old state keeps serving
            raise ApiError(500, "reload_failed", f"reload failed, still serving the previous "
                           f"artifact: {exc}") from None
        return _json({"artifact_version": version, "previous_version": previous,
                      "seconds": seconds})

    @app.get("/healthz", tags=["admin"])
    async def healthz(svc: Svc):
        """Always 200 while the process serves; ``status`` is ``degraded`` while too many
        recent answers left a channel out (``health_degraded_ratio``), else ``ok``."""
        state = svc.state
        status, answers, ratio = svc.health()
        return _json({"status": status, "recent_answers": answers,
                      "recent_degraded_ratio": ratio, "artifact_version": state.artifact.version,
                      "dataset": state.artifact.manifest["dataset"], "items": state.n_items,
                      "users": len(state.user_rows), "last_event_seq": state.last_seq,
                      "degraded_channels": svc.engine.degraded_channels(),
                      "channels": list(state.artifact.pipeline.channels)})

    @app.get("/metrics", tags=["admin"])
    async def metrics(svc: Svc):
        """Prometheus text; with several processes, their metrics summed (gauges: the max)."""
        svc.health()  # the degraded-ratio gauge of this process, as of now
        return Response(generate_latest(svc.metrics.collect_registry()),
                        media_type=CONTENT_TYPE_LATEST)

    return app


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


