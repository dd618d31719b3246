"""``lm-serve``: the local models behind OpenAI-compatible endpoints.

Routes: ``GET /v1/models``, ``POST /v1/embeddings``, ``POST /v1/chat/completions``. Any
OpenAI-compatible client (llmrecall's own, the ``openai`` package, curl) can use the packaged
models over HTTP, so several processes share one loaded model. Binds 127.0.0.1 by default;
there is no authentication, so expose it beyond the machine only behind a proxy that has some.

Extensions: ``input_type`` ("query" | "passage") on embeddings selects the e5 prefix;
``response_format`` ``{"type": "json_schema", "json_schema": {"schema": ...}}`` or
``{"type": "json_object", "schema": ...}`` constrains generation.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from llmrecall.lm.embedders import Embedder
from llmrecall.lm.errors import LMError
from llmrecall.lm.generators import Generator


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "passage"] = "passage"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int = Field(256, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0, le=2)
    response_format: dict[str, Any] | None = None


def _schema_of(response_format: dict[str, Any] | None) -> dict | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    elif kind == "json_object":
        schema = response_format.get("schema") or {"type": "object"}
    elif kind == "text":
        return None
    else:
        raise HTTPException(400, f"unsupported response_format type {kind!r}")
    if not isinstance(schema, dict):
        raise HTTPException(400, "response_format needs a JSON schema object")
    return schema


def create_app(embedder: Embedder | None = None, generator: Generator | None = None) -> FastAPI:
    """A FastAPI app serving ``embedder`` and/or ``generator`` (either may be None: its route
    then answers 404). Model calls run in FastAPI's thread pool; the backends serialise
    access to their native handles themselves."""
    app = FastAPI(title="llmrecall lm-serve", version="1")
    created = int(time.time())

    def model_names() -> list[str]:
        return [m.model for m in (embedder, generator) if m is not None]

    def check_model(requested: str | None, served: str) -> None:
        # Clients must name a model; accept the served id, or a backend name alias.
        if requested not in (None, "", served, embedder and embedder.name,
                             generator and generator.name):
            raise HTTPException(404, f"model {requested!r} is not served here; "
                                     f"serving {model_names()}")

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "llmrecall"}
            for name in model_names()]}

    @app.post("/v1/embeddings")
    def embeddings(request: EmbeddingRequest) -> dict:
        if embedder is None:
            raise HTTPException(404, "this server has no embedder")
        check_model(request.model, embedder.model)
        texts = [request.input] if isinstance(request.input, str) else request.input
        if not texts:
            raise HTTPException(400, "input is empty")
        try:
            vectors = embedder.embed(texts, kind=request.input_type)
        except LMError as exc:
            raise HTTPException(500, str(exc)) from exc
        data = []
        for i, v in enumerate(vectors):
            value = (base64.b64encode(np.asarray(v, "<f4").tobytes()).decode("ascii")
                     if request.encoding_format == "base64" else v.tolist())
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(t.split()) for t in texts)  # an estimate; the model's tokenizer is private
        return {"object": "list", "data": data, "model": embedder.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatRequest) -> dict:
        if generator is None:
            raise HTTPException(404, "this server has no generator")
        check_model(request.model, generator.model)
        schema = _schema_of(request.response_format)
        before = (generator.usage.prompt_tokens, generator.usage.completion_tokens)
        try:
            [text] = generator.chat([[m.model_dump() for m in request.messages]],
                                    max_tokens=request.max_tokens,
                                    temperature=request.temperature, json_schema=schema)
        except LMError as exc:
            raise HTTPException(500, str(exc)) from exc
        prompt_tokens = generator.usage.prompt_tokens - before[0]
        completion_tokens = generator.usage.completion_tokens - before[1]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": generator.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return app


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread (tests, notebooks, benchmarks)."""

    url: str  # e.g. http://127.0.0.1:54321/v1
    server: Any
    thread: threading.Thread

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0,
                    startup_timeout_s: float = 30.0) -> RunningServer:
    """Serve ``app`` from a daemon thread; ``port=0`` picks a free port. Returns once listening."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("lm-serve did not start")
        time.sleep(0.02)
    bound_host, bound_port = sock.getsockname()[:2]
    return RunningServer(f"http://{bound_host}:{bound_port}/v1", server, thread)


def run_server(host: str = "127.0.0.1", port: int = 8000, embedder: Embedder | None = None,
               generator: Generator | None = None, log_level: str = "info") -> None:
    """Serve the given models in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(create_app(embedder, generator), host=host, port=port, log_level=log_level)


def main(host: str = "127.0.0.1", port: int = 8000, embedder: str | None = "default",
         generator: str | None = "default", threads: int = 1) -> None:
    """``lm-serve``: load the named local backends (None to leave one out) and serve them."""
    from llmrecall.lm.embedders import get_embedder
    from llmrecall.lm.generators import get_generator

    emb = get_embedder(embedder, threads=threads) if embedder else None
    gen = get_generator(generator, threads=threads) if generator else None
    run_server(host=host, port=port, embedder=emb, generator=gen)
