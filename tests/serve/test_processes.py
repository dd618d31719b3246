"""Server processes and connections under abuse: workers die with their supervisor, stale
metrics folders are cleaned, slow clients are cut off and the number of open connections
is bounded."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llmrecall.serve.metrics import METRICS_DIR_PREFIX, clean_stale_metrics_dirs

from .conftest import API_KEY, HERE, SRC, free_port


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_metrics_dirs_of_dead_owners_are_removed(tmp_path):
    # regression: every SIGKILLed multi-process server left its metrics folder behind
    dead = tmp_path / f"{METRICS_DIR_PREFIX}{_dead_pid()}-abc"
    live = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    foreign = tmp_path / "llmrecall-metrics-xyz"  # no owner recorded: not ours to judge
    for d in (dead, live, foreign):
        d.mkdir()
        (d / "counter_1.db").write_bytes(b"x")
    removed = clean_stale_metrics_dirs(tmp_path)
    assert removed == [dead]
    assert not dead.exists() and live.exists() and foreign.exists()


def _start(artifact: Path, state: Path, port: int, env: dict, *extra: str) -> subprocess.Popen:
    log = open(state.with_suffix(f".{port}.log"), "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmrecall.serve", "serve", str(artifact), "--port", str(port),
         "--state", str(state), "--plugin", "serve_plugins", *extra],
        env={**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}", "LLMRECALL_API_KEY": API_KEY,
             "OMP_NUM_THREADS": "1", **env},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: "
                               + state.with_suffix(f".{port}.log").read_text()[-3000:])
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.1)
    raise RuntimeError("server did not become healthy")


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The server processes the supervisor started (not multiprocessing's helpers)."""
    out = []
    for child in psutil.Process(proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                out.append(child)
    return out


@pytest.mark.slow
def test_workers_die_with_a_killed_supervisor_and_the_port_is_free_again(artifact, tmp_path):
    # regression: after kill -9 of the supervisor both workers kept serving (acknowledging
    # writes) and holding the port, so a restart failed with "Address already in use"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    port = free_port()
    state = tmp_path / "state.sqlite"
    first = _start(artifact, state, port, env, "--workers", "2")
    again = None
    try:
        workers = _workers(first)
        assert len(workers) == 2
        own_dirs = list(tmp.glob(f"{METRICS_DIR_PREFIX}{first.pid}-*"))
        assert len(own_dirs) == 1
        os.kill(first.pid, signal.SIGKILL)  # the supervisor only
        first.wait(30)
        _gone, alive = psutil.wait_procs(workers, timeout=20)
        assert alive == [], f"workers outlived their supervisor: {[p.pid for p in alive]}"
        again = _start(artifact, state, port, env, "--workers", "2")  # binds the same port
        r = httpx.post(f"http://127.0.0.1:{port}/v1/recall", json={"user_id": "196"}, timeout=30)
        assert r.status_code == 200
        assert not own_dirs[0].exists()  # its owner is dead: removed at the next start
        assert len(list(tmp.glob(f"{METRICS_DIR_PREFIX}{again.pid}-*"))) == 1
    finally:
        for proc in (first, again):
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if proc is again else signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


# ---- slow clients ----------------------------------------------------------------------------

def _settings(tmp_path: Path, **values) -> str:
    path = tmp_path / "serve.toml"
    path.write_text("[serve]\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return str(path)


def _closed(sock: socket.socket, timeout: float = 0.5) -> bytes | None:
    """What the server sent before closing, or None if the connection is still open."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    except TimeoutError:
        return None


@pytest.mark.slow
def test_slow_clients_are_cut_off_and_descriptors_come_back(make_server, artifact, tmp_path):
    # regression: connections holding half-sent requests were never closed (1,000 of them
    # took 1,000 file descriptors for as long as they liked)
    server = make_server(artifact, "--settings", _settings(
        tmp_path, header_timeout_s=2.0, body_timeout_s=2.0))
    proc = psutil.Process(server.proc.pid)
    assert server.client.get("/healthz").status_code == 200
    baseline = proc.num_fds()
    socks = []
    for i in range(50):
        s = socket.create_connection(("127.0.0.1", server.port))
        if i % 5 == 0:
            pass  # connects and never sends a byte
        elif i % 5 in (1, 2):
            s.sendall(b"POST /v1/recall HTTP/1.1\r\nHost: x\r\ncontent-le")  # half the headers
        else:  # complete headers, a body that never finishes
            s.sendall(b"POST /v1/recall HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 100\r\n\r\n{\"user_id\":")
        socks.append(s)
    deadline = time.monotonic() + 10
    while proc.num_fds() < baseline + 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.num_fds() >= baseline + 50  # all held at first
    # meanwhile an ordinary client is answered
    r = httpx.post(server.url + "/v1/recall", json={"user_id": "196", "k": 5}, timeout=30)
    assert r.status_code == 200 and len(r.json()["candidates"]) == 5
    time.sleep(2.5)
    answers = [_closed(s) for s in socks]
    assert all(a is not None for a in answers), "a slow client's connection was left open"
    for i, a in enumerate(answers):
        if i % 5 in (1, 2):
            assert a.startswith(b"HTTP/1.1 408"), a
    for s in socks:
        s.close()
    deadline = time.monotonic() + 10
    while proc.num_fds() > baseline + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.num_fds() <= baseline + 3
    # a kept-alive connection that starts a second request and stalls is cut off too
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    head, body = head.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200") and len(body) == length
    s.sendall(b"GET /heal")
    assert (_closed(s, 5.0) or b"").startswith(b"HTTP/1.1 408")
    s.close()
    assert server.client.get("/healthz").status_code == 200


@pytest.mark.slow
def test_connections_over_the_cap_are_refused_at_once(make_server, artifact, tmp_path):
    server = make_server(artifact, "--settings", _settings(tmp_path, max_connections=20))
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", server.port))
    answer = _closed(extra, 5.0)
    assert answer is not None and answer.startswith(b"HTTP/1.1 503"), answer
    extra.close()
    for s in held:
        s.close()
    time.sleep(0.3)
    r = httpx.post(server.url + "/v1/recall", json={"user_id": "196", "k": 5}, timeout=30)
    assert r.status_code == 200
