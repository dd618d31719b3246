"""Schemathesis against a real server: every operation of /openapi.json, positive and
negative data, ``--checks all`` (server errors, status codes, content types, response
schemas, schema-valid requests accepted, schema-invalid ones refused, undeclared methods,
auth), a fixed seed and a few examples per operation, so the schema cannot drift from what
the service does. A real server on 127.0.0.1 rather than the ASGI app in-process: routing
on the raw path (ids with an encoded '/') and uvicorn's own parsing are part of the edge."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx

from .conftest import API_KEY, HERE

CONFIG = HERE / "schemathesis.toml"
#: examples per operation and phase; the seed makes the run repeatable
MAX_EXAMPLES = 10
SEED = 1


def run_schemathesis(url: str, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
           "run", f"{url}/openapi.json", "--checks", "all", "--header", f"X-API-Key: {API_KEY}",
           "--generation-database", "none", "--workers", "1", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_schemathesis_finds_no_issue(make_server, artifact, tmp_path):
    srv = make_server(artifact)  # its own server: the fuzz writes, deletes and reloads
    r = run_schemathesis(srv.url, "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    # every operation the schema declares was fuzzed
    schema = httpx.get(f"{srv.url}/openapi.json", timeout=30).json()
    n_operations = sum(len(methods) for methods in schema["paths"].values())
    assert n_operations >= 10
    assert re.search(rf"Operations:\s+{n_operations} selected / {n_operations} total", out), \
        out[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and int(generated.group(1)) >= 200, out[-3000:]
    assert "No issues found" in out
