"""A native crash fails one test, not the run; a run cut short fails loudly.

Regression: a segfault inside llama.cpp ended ``make test`` at test 441 of 682 and the 241
tests after it never ran. ``make test`` now runs pytest with the options in the Makefile's
``PYTEST_ISOLATION`` (a pytest-xdist worker that is replaced when it dies) and checks the
ledger (tests/ledger.py) afterwards. Both are exercised here on a throwaway suite whose
middle test really segfaults.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

CRASHING_SUITE = '''
import ctypes

def test_before():
    assert True

def test_segfaults():
    ctypes.string_at(0)  # reads address 0: SIGSEGV in native code

def test_after():
    assert True
'''


def _isolation_options() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^PYTEST_ISOLATION := (.+)$", text, re.M)
    assert match, "the Makefile no longer defines PYTEST_ISOLATION"
    return shlex.split(match.group(1))


@pytest.fixture
def crashing_suite(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import ledger

        def pytest_configure(config):
            ledger.register(config)
    """))
    (tmp_path / "test_crash.py").write_text(CRASHING_SUITE)
    return tmp_path


def _run(suite: Path, options: list[str]) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    ledger_path = suite / "ledger.jsonl"
    env = {**os.environ, "LLMRECALL_TEST_LEDGER": str(ledger_path), "PYTHONFAULTHANDLER": ""}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *options, str(suite)],
                         cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    check = subprocess.run([sys.executable, str(TESTS / "ledger.py"), str(ledger_path)],
                           capture_output=True, text=True, timeout=60)
    return run, check


def test_crash_fails_one_test_and_the_run_goes_on(crashing_suite):
    run, check = _run(crashing_suite, _isolation_options())
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "crashed while running" in output and "test_segfaults" in output, output
    assert re.search(r"\b1 failed, 2 passed\b", output), output
    assert check.returncode == 1
    assert "3 collected, 3 finished, 2 passed, 1 failed" in check.stdout, check.stdout


def test_run_cut_short_by_a_crash_is_reported(crashing_suite):
    # without the worker process the crash kills pytest itself; the ledger says so
    run, check = _run(crashing_suite, ["-p", "no:xdist"])
    assert run.returncode < 0 or run.returncode > 128, run.returncode  # killed by SIGSEGV
    assert check.returncode == 1
    assert "only 1 of 3 collected tests finished" in check.stderr, check.stderr
    assert "did not end normally" in check.stderr


def test_full_pass_is_accepted(tmp_path):
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport ledger\n"
        "def pytest_configure(config):\n    ledger.register(config)\n")
    (tmp_path / "test_ok.py").write_text("import pytest\n\ndef test_a():\n    pass\n\n"
                                         "@pytest.mark.skip(reason='x')\ndef test_b():\n    pass\n")
    run, check = _run(tmp_path, _isolation_options())
    assert run.returncode == 0, run.stdout + run.stderr
    assert check.returncode == 0, check.stderr
    assert "2 collected, 2 finished, 1 passed, 0 failed, 1 skipped" in check.stdout
