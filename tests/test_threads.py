"""The thread setting of the command line: ``--threads`` or ``$LLMRECALL_THREADS``, by default
the CPUs this process may run on, applied when a command runs.

Regression: importing ``llmrecall.cli`` set ``OMP_NUM_THREADS`` (and the OpenBLAS and MKL
variables) to 2, the core count of one machine: more cores went unused, fewer were
oversubscribed, and merely importing the module changed the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
THREAD_VARIABLES = ("LLMRECALL_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"),
                                reason="needs a CPU affinity mask (Linux)")


def _run_cli(args: list[str], cpus: set[int], env: dict[str, str] | None = None,
             torch: bool = False) -> dict:
    """Run ``llmrecall ARGS`` in a fresh process bound to ``cpus``; what it set, as JSON."""
    script = textwrap.dedent(f"""
        import json, os
        os.sched_setaffinity(0, {sorted(cpus)!r})
        from threadpoolctl import threadpool_info
        from typer.testing import CliRunner

        import llmrecall.data.builtin as builtin
        from llmrecall.cli import app

        builtin.BUILTIN.clear()  # `datasets` then lists nothing: the command itself is instant
        after_import = {{v: os.environ.get(v) for v in {THREAD_VARIABLES!r}}}
        result = CliRunner().invoke(app, {args!r})
        out = {{"exit_code": result.exit_code, "output": result.output,
               "after_import": after_import,
               "env": {{v: os.environ.get(v) for v in {THREAD_VARIABLES!r}}},
               "blas": sorted({{p["num_threads"] for p in threadpool_info()
                               if p["user_api"] == "blas"}})}}
        if {torch!r}:
            import torch
            out["torch"] = torch.get_num_threads()
        print(json.dumps(out))
    """)
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(SRC), **(env or {})}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _one_cpu() -> set[int]:
    return {min(os.sched_getaffinity(0))}


def test_the_default_follows_the_cpus_the_process_may_run_on():
    allowed = os.sched_getaffinity(0)
    got = _run_cli(["datasets"], allowed)
    assert got["exit_code"] == 0, got["output"]
    assert got["after_import"] == dict.fromkeys(THREAD_VARIABLES)  # importing sets nothing
    assert got["blas"] == [len(allowed)]
    assert got["env"] == dict.fromkeys(THREAD_VARIABLES, str(len(allowed)))
    # one CPU in the mask: one thread, whatever os.cpu_count() says
    got = _run_cli(["datasets"], _one_cpu())
    assert got["blas"] == [1] and got["env"]["LLMRECALL_THREADS"] == "1"


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_override_is_applied_to_blas_and_torch(how):
    def run(threads: str, cpus: set[int], torch: bool = False) -> dict:
        if how == "option":
            return _run_cli(["--threads", threads, "datasets"], cpus, torch=torch)
        return _run_cli(["datasets"], cpus, {"LLMRECALL_THREADS": threads}, torch=torch)

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("one CPU: an override of 1 is the default")
    # fewer than the CPUs: torch, loaded after the command started, follows too
    got = run("1", allowed, torch=True)
    assert got["exit_code"] == 0, got["output"]
    assert got["blas"] == [1] and got["torch"] == 1
    assert got["env"] == dict.fromkeys(THREAD_VARIABLES, "1")
    # more than the CPUs (torch caps itself at the cores; BLAS does not)
    got = run("3", _one_cpu())
    assert got["blas"] == [3] and got["env"] == dict.fromkeys(THREAD_VARIABLES, "3")


def test_a_bad_thread_count_is_a_usage_error():
    got = _run_cli(["--threads", "0", "datasets"], _one_cpu())
    assert got["exit_code"] == 2 and "--threads" in got["output"]
    got = _run_cli(["datasets"], _one_cpu(), {"LLMRECALL_THREADS": "many"})
    assert got["exit_code"] == 2 and "LLMRECALL_THREADS" in got["output"]


def test_serve_keeps_its_own_default_of_one_thread(tmp_path):
    # the service spreads requests over batches and threads: one BLAS thread per call,
    # whatever the cores, unless a thread count is given
    got = _run_cli(["serve", str(tmp_path)], os.sched_getaffinity(0))
    assert got["exit_code"] == 2  # not an artifact: the command stops after its setup
    assert got["env"]["LLMRECALL_THREADS"] == "1" and got["blas"] == [1]
    got = _run_cli(["--threads", "2", "serve", str(tmp_path)], os.sched_getaffinity(0))
    assert got["env"]["LLMRECALL_THREADS"] == "2" and got["blas"] == [2]
