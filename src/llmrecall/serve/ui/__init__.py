"""The inspector page (``GET /ui``): one user's history, fused candidates with every
channel's rank and evidence, the channels' own lists side by side, a free-text query, an
item's similar items, and, with the write API key, events added from the page.

Every number on the page comes from the JSON API itself: the page handlers call
``/v1/recall``, ``/v1/users/{id}/history`` and ``/v1/items/{id}/similar`` in process
(:func:`_api`: an ASGI request to this same app, through the same middleware, routes and
error handlers), so the page shows exactly what a client of the API gets. Events are posted
by the page's script to ``/v1/events`` with the ``X-API-Key`` header the user types: the
same key check as every write; without a configured key the form is not shown at all.

HTML is rendered by Jinja2 with autoescaping on: ids, titles, queries and reasons are text,
never markup. No external URL: the script and style sheet are served from
``/ui/static/`` (no build step, no CDN).
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader

HERE = Path(__file__).resolve().parent

#: history entries shown, most recent first (the page says how many are left out)
MAX_HISTORY_SHOWN = 200

#: k of the page's form when none is given
DEFAULT_K = 20

#: files under ``/ui/static/``: name -> (bytes, media type), read once
_STATIC = {name: ((HERE / "static" / name).read_bytes(), media)
           for name, media in (("inspector.js", "text/javascript; charset=utf-8"),
                               ("inspector.css", "text/css; charset=utf-8"))}

router = APIRouter(include_in_schema=False)


def path_id(value: str) -> str:
    """A raw id as one URL path segment (as the API reads it): every reserved character
    percent-encoded, '/' included; '.' and '..' as ``%2E`` (clients drop dot segments)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _utc(seconds: float) -> str:
    if not math.isfinite(seconds):
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["path_id"] = path_id
_env.filters["utc"] = _utc
_env.globals["urlencode"] = urlencode


async def _api(request: Request, method: str, path: str, query: dict | None = None,
               body: Any = None) -> tuple[int, Any]:
    """``(status, JSON body)`` of ``method path`` answered by this app in process: the same
    middleware, route, validation and error handler as a request over HTTP. ``path`` is
    percent-encoded (:func:`path_id` for ids)."""
    payload = b"" if body is None else orjson.dumps(body)
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": method, "scheme": "http",
             "path": unquote(path), "raw_path": path.encode("ascii"), "root_path": "",
             "query_string": urlencode(query or {}).encode("ascii"),
             "headers": [(b"host", b"inspector"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(payload)).encode())],
             "client": request.scope.get("client"), "server": request.scope.get("server"),
             "state": dict(request.scope.get("state") or {})}
    sent = False
    status, chunks = 500, []

    async def receive():
        nonlocal sent
        if sent:  # the body was read: nothing more comes (the client never disconnects)
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await request.app(scope, receive, send)
    return status, orjson.loads(b"".join(chunks) or b"null")


def _error(status: int, body: Any) -> str:
    if isinstance(body, dict) and "message" in body:
        return f"{status}: {body['message']}"
    return f"{status}: {body!r}"


def _int(value: str | None, default: int) -> int | str:
    """The form's ``k``: an int, or the text as typed (the API then refuses it with 422)."""
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        return value


async def _history(request: Request, user_id: str) -> dict:
    """The user's live history as the API answers it, newest first, with titles and the
    event types of stored events."""
    service = request.app.state.service
    status, body = await _api(request, "GET", f"/v1/users/{path_id(user_id)}/history")
    if status != 200:
        return {"error": _error(status, body), "entries": [], "total": 0}
    state = service.live
    entries = body["history"]
    types = await asyncio.to_thread(service.store.event_types, user_id)
    index = state.items.lookup([e["item_id"] for e in entries]).tolist()
    rows = []
    for e, i in zip(entries, index):
        rows.append({**e, "title": state.titles[i] if i >= 0 else "",
                     "type": types.get((e["item_id"], float(e["timestamp"])), "artifact")})
    rows.reverse()
    return {"error": None, "entries": rows[:MAX_HISTORY_SHOWN], "total": len(rows),
            "known_user": body["known_user"]}


async def _channel_lists(request: Request, base: dict, names: list[str]) -> list[dict]:
    """Each source's own answer for the same request (``channels=[name]``), side by side."""
    answers = await asyncio.gather(*[
        _api(request, "POST", "/v1/recall", body={**base, "channels": [name]}) for name in names])
    out = []
    for name, (status, body) in zip(names, answers):
        if status == 200:
            out.append({"name": name, "candidates": body["candidates"], "error": None})
        else:
            out.append({"name": name, "candidates": [], "error": _error(status, body)})
    return out


def _page_context(request: Request) -> dict:
    service = request.app.state.service
    state = service.live
    return {"dataset": state.artifact.manifest.get("dataset", ""),
            "artifact_version": state.artifact.version,
            "channels": list(state.artifact.pipeline.channels),
            "writes": service.api_key is not None,
            "api_key_env": request.app.state.settings.api_key_env,
            "max_k": service.settings.max_k}


@router.get("/ui", response_class=HTMLResponse)
async def inspector(request: Request, user: str | None = None, query: str | None = None,
                    k: str | None = None) -> HTMLResponse:
    """The inspector: a form, and for a user and/or a query the API's answers."""
    user = user or None
    query = query or None
    page_k = _int(k, DEFAULT_K)
    ctx: dict[str, Any] = {**_page_context(request), "user": user or "", "query": query or "",
                           "k": page_k, "recall": None, "recall_error": None, "history": None,
                           "lists": []}
    if user is not None or query is not None:
        base: dict[str, Any] = {"k": page_k, "explain": True}
        if user is not None:
            base["user_id"] = user
        if query is not None:
            base["query"] = query
        status, body = await _api(request, "POST", "/v1/recall", body=base)
        if status == 200:
            ctx["recall"] = body
            lists = _channel_lists(request, base, list(body["channel_counts"]))
            if user is not None:
                ctx["lists"], ctx["history"] = await asyncio.gather(lists, _history(request, user))
            else:
                ctx["lists"] = await lists
        else:
            ctx["recall_error"] = _error(status, body)
    return HTMLResponse(_env.get_template("inspector.html").render(ctx))


@router.get("/ui/items/{item_id:rawid}", response_class=HTMLResponse)
async def item_page(request: Request, item_id: str, k: str | None = None) -> HTMLResponse:
    """One item and its similar items (``/v1/items/{id}/similar``)."""
    page_k = _int(k, DEFAULT_K)
    status, body = await _api(request, "GET", f"/v1/items/{path_id(item_id)}/similar",
                              query={"k": page_k})
    state = request.app.state.service.live
    index = int(state.items.lookup([item_id])[0])
    ctx = {**_page_context(request), "item_id": item_id, "k": page_k,
           "title": state.titles[index] if index >= 0 else None,
           "categories": state.categories[index] if index >= 0 else [],
           "similar": body if status == 200 else None,
           "error": None if status == 200 else _error(status, body)}
    return HTMLResponse(_env.get_template("item.html").render(ctx),
                        status_code=200 if status == 200 else status)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    """The page's script and style sheet (served by the app: the page needs no network)."""
    hit = _STATIC.get(name)
    if hit is None:
        return Response(b"not found", status_code=404, media_type="text/plain")
    return Response(hit[0], media_type=hit[1], headers={"cache-control": "no-cache"})
