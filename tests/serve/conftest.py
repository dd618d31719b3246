"""Fixtures: small ml-100k artifacts (built once per session) and real uvicorn servers."""

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
import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
API_KEY = "test-key-123"
WRITE = {"X-API-Key": API_KEY}

sys.path.insert(0, str(HERE))
import serve_plugins  # noqa: E402,F401  (registers the test channel kinds here too)

from . import pg, redis_server  # noqa: E402

MAIN_CONFIG = """
seed = 0
[fusion]
k = 200
channel_k = 300
[[channels]]
kind = "popularity"
weight = 0.3
[[channels]]
kind = "itemcf"
weight = 1.0
[[channels]]
kind = "ease"
weight = 1.5
"""

DEGRADED_CONFIG = """
seed = 0
[[channels]]
kind = "test_popularity"
[[channels]]
kind = "test_cooc"
[[channels]]
kind = "test_failing"
[[channels]]
kind = "test_slow"
params = {seconds = 1.5}
"""


TEXT_CONFIG = """
seed = 0
[[channels]]
kind = "test_popularity"
[[channels]]
kind = "test_text"
"""


TEXT_BROKEN_CONFIG = """
seed = 0
[[channels]]
kind = "test_popularity"
[[channels]]
kind = "test_text_broken"
"""

#: a channel with the text hooks' methods but no declared capability, before a declaring one
UNDECLARED_CONFIG = """
seed = 0
[[channels]]
kind = "test_popularity"
[[channels]]
kind = "test_text_undeclared"
[[channels]]
kind = "test_text"
"""

#: the language-model channels that implement the service's text hooks (textcf kept short:
#: its fit is the slow part; the item texts' embeddings come from the shared LM cache)
LM_CONFIG = """
seed = 0
[fusion]
k = 200
channel_k = 300
[[channels]]
kind = "popularity"
weight = 0.3
[[channels]]
kind = "itemcf"
[[channels]]
kind = "semantic_i2i"
[[channels]]
kind = "semantic_user"
[[channels]]
kind = "textcf"
weight = 0.5
params = {epochs = 1, batch_size = 4096}
"""


def _build(tmp_path_factory, name: str, config_text: str) -> Path:
    import tomllib

    from llmrecall.config import parse_config
    from llmrecall.data.builtin import load_builtin
    from llmrecall.serve import build

    root = tmp_path_factory.mktemp(name)
    build(load_builtin("ml-100k"), parse_config(tomllib.loads(config_text)), root / "artifact")
    return root / "artifact"


@pytest.fixture(scope="session")
def ml100k():
    from llmrecall.data.builtin import load_builtin

    return load_builtin("ml-100k")


@pytest.fixture(scope="session")
def artifact(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "main", MAIN_CONFIG)


@pytest.fixture(scope="session")
def degraded_artifact(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "degraded", DEGRADED_CONFIG)


@pytest.fixture(scope="session")
def text_artifact(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "text", TEXT_CONFIG)


@pytest.fixture(scope="session")
def text_broken_artifact(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "text-broken", TEXT_BROKEN_CONFIG)


@pytest.fixture(scope="session")
def undeclared_artifact(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "undeclared", UNDECLARED_CONFIG)


@pytest.fixture(scope="session")
def lm_artifact(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "lm", LM_CONFIG)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test alone (one it may stop and start again)."""
    server = pg.server_or_skip()
    yield server
    server.close()


@pytest.fixture
def redis():
    """A Redis server of the test alone (tests/serve/redis_server.py; one it may stop and
    start again); skipped without one, failed under CI (``.ci/run`` installs it)."""
    why = redis_server.unavailable()
    if why is not None:
        if in_ci():
            pytest.fail(f"{why}: CI must run the Redis tests")
        pytest.skip(why)
    server = redis_server.RedisServer()
    yield server
    server.close()


#: a per-channel deadline no channel misses on a loaded test machine, for tests about what
#: an answer holds rather than about deadlines
ANSWER_BUDGET = ("--channel-budget-ms", "10000")


class Server:
    """A real ``llmrecall.serve serve`` process on 127.0.0.1. ``state`` is a SQLite file, or
    a PostgreSQL DSN (then the log goes to ``log``)."""

    def __init__(self, artifact: Path, state: Path | str, *extra: str, env: dict | None = None,
                 log: Path | None = None):
        self.artifact, self.state, self.extra = artifact, state, extra
        self.log_path = log or Path(state).with_suffix(".log")
        self.env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}",
                    "LLMRECALL_API_KEY": API_KEY, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmrecall.serve", "serve", str(self.artifact),
             "--port", str(self.port), "--state", str(self.state), "--plugin", "serve_plugins",
             *self.extra], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: kill() reaches every worker
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: "
                                   + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    self.client = httpx.Client(base_url=self.url, timeout=30)
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL to the server and every process it started: no shutdown code runs."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # a worker its parent did not stop
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.client.close()
        self.log.close()


@pytest.fixture
def make_server(tmp_path):
    servers: list[Server] = []

    def make(artifact: Path, *extra: str, state: Path | str | None = None,
             env: dict | None = None) -> Server:
        server = Server(artifact, state or tmp_path / f"state{len(servers)}.sqlite", *extra,
                        env=env, log=tmp_path / f"server{len(servers)}.log"
                        if isinstance(state, str) else None)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    """One server per test module over the main artifact, with a fresh state file.

    Its channels get :data:`ANSWER_BUDGET` rather than the default 100 ms: the tests that
    use it compare answers with each other, and on a loaded 2-core machine a channel can
    miss 100 ms and leave a (correctly) degraded answer that differs from the next one.
    Deadlines have their own tests (test_degraded.py, test_overload.py)."""
    srv = Server(artifact, tmp_path_factory.mktemp("state") / "state.sqlite", *ANSWER_BUDGET)
    yield srv
    srv.stop()
