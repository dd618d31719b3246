"""A throwaway Redis server for tests and benchmarks: ``redis-server`` on a free port of
127.0.0.1 with no persistence (``--save "" --appendonly no``), stopped and started again on
the same port by :meth:`RedisServer.stop` / :meth:`RedisServer.start`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def unavailable() -> str | None:
    """Why no test server can start here (None when one can)."""
    if shutil.which("redis-server") is None:
        return "no redis-server (Debian package `redis-server`)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (the `state` extra)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (no password, no persistence)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="llmrecall-redis-"))
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start (or start again, empty, on the same port)."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--logfile",
             str(self.root / "server.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
