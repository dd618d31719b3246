"""Test-run ledger: proof that every collected test finished, or a loud failure.

Tests that load native libraries (llama.cpp, torch, faiss) can die with a signal instead of
failing. ``make test`` runs the suite through pytest-xdist with one worker process: a crashed
worker is replaced and the test that crashed it is reported as failed, so the run goes on.
This ledger covers what that cannot: the controlling process dying, xdist giving up after
too many crashes, or a run cut short some other way. Then the pytest summary line may never
be printed, and the exit status alone is easy to miss in a script.

Usage (what ``make test`` does)::

    LLMRECALL_TEST_LEDGER=.pytest-ledger.jsonl python -m pytest ...
    python tests/ledger.py .pytest-ledger.jsonl     # exit 0 only if all collected passed

The ledger file is JSON lines, appended and flushed as the run goes, so whatever a crash
leaves behind still counts:
``{"collected": N}`` once, ``{"test": nodeid, "outcome": "passed"|"failed"|"skipped"}`` per
finished test, ``{"exitstatus": S}`` at the end of a session that ended normally.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

#: environment variable naming the ledger file; the plugin is inactive without it
LEDGER_ENV = "LLMRECALL_TEST_LEDGER"


class Ledger:
    """pytest plugin writing the ledger; registered on the controlling process only."""

    def __init__(self, path: Path):
        self.path = path
        self._outcomes: dict[str, str] = {}
        self._file = path.open("a", encoding="utf-8")

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    # without xdist: the controller collects the items itself
    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.items:
            self._write({"collected": len(session.items)})

    # with xdist: the controller learns the collection from its worker (every worker
    # collects the same ids; a replaced worker reports them again, so only the first counts)
    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        if not getattr(self, "_xdist_collected", False):
            self._xdist_collected = True
            self._write({"collected": len(ids)})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # a test's outcome is its worst phase; it has finished at teardown, or at the
        # synthetic "???" report xdist makes for a test whose worker crashed
        if report.failed:
            self._outcomes[report.nodeid] = "failed"
        elif report.skipped and report.when != "teardown":
            self._outcomes.setdefault(report.nodeid, "skipped")
        if report.when in ("teardown", "???"):
            outcome = self._outcomes.pop(report.nodeid, "passed")
            self._write({"test": report.nodeid, "outcome": outcome})

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._write({"exitstatus": int(exitstatus)})
        self._file.close()


def register(config: pytest.Config) -> None:
    """Register the ledger if ``$LLMRECALL_TEST_LEDGER`` is set (not in xdist workers)."""
    path = os.environ.get(LEDGER_ENV)
    if path and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Ledger(Path(path)), "llmrecall-ledger")


def summarise(path: Path) -> tuple[dict[str, int], list[str]]:
    """Read a ledger; return counts and the reasons the run is not a full pass (empty = ok).

    Counts: collected, finished, passed, failed, skipped. A test reported twice (a crashed
    test that xdist re-reports) counts once, with its last outcome.
    """
    collected = None
    exitstatus = None
    outcomes: dict[str, str] = {}
    if not path.exists():
        return {}, [f"no ledger at {path}: pytest did not start, or the ledger was not enabled"]
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # the last line of a ledger whose writer was killed may be cut short
            continue
        if "collected" in record:
            collected = record["collected"]
        elif "test" in record:
            outcomes[record["test"]] = record["outcome"]
        elif "exitstatus" in record:
            exitstatus = record["exitstatus"]
    counts = {"collected": collected or 0, "finished": len(outcomes)}
    for kind in ("passed", "failed", "skipped"):
        counts[kind] = sum(1 for o in outcomes.values() if o == kind)
    problems = []
    if collected is None:
        problems.append("no collection was recorded")
    elif len(outcomes) < collected:
        problems.append(f"only {len(outcomes)} of {collected} collected tests finished: "
                        f"the run ended early (a crash?)")
    if counts["failed"]:
        problems.append(f"{counts['failed']} tests failed")
    if exitstatus is None:
        problems.append("the pytest session did not end normally (no exit status recorded)")
    elif exitstatus != 0:
        problems.append(f"pytest exited with status {exitstatus}")
    return counts, problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/ledger.py LEDGER.jsonl", file=sys.stderr)
        return 2
    counts, problems = summarise(Path(argv[0]))
    if counts:
        print("test ledger: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for problem in problems:
        print(f"test ledger: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
