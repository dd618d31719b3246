"""What the replica benchmarks (``pg_propagation.py``, ``scale_out.py``) share: the small
pipeline they build an artifact of, the API key they run with, and starting one
``llmrecall serve`` process on a free loopback port, returned once it reports healthy."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

#: popularity + ItemCF: fast to build, so the benchmarks measure the state, not the models
CONFIG = """
seed = 0
[[channels]]
kind = "popularity"
[[channels]]
kind = "itemcf"
"""
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(artifact: Path, state: str, env: dict, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start a server over ``artifact`` with ``--state state`` (a file or a PostgreSQL DSN);
    returns the process and its URL once ``/healthz`` answers 200 (exits if it dies first)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmrecall.serve", "serve", str(artifact),
                             "--port", str(port), "--state", state, *extra], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not become healthy")
