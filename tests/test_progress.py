"""Progress of long work: rich bars on a terminal, one line per stage on a pipe, nothing with
``--quiet`` or for a library caller; stdout and the results are the same in every mode."""

from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest
from rich.console import Console

from llmrecall import progress

ANSI = re.compile(r"\x1b\[")

#: a quick pipeline with a stage that counts (ALS iterations) and two that do not
QUICK = """
[fusion]
k = 50
channel_k = 200
[[channels]]
kind = "popularity"
[[channels]]
kind = "itemcf"
[[channels]]
kind = "als"
params = { iterations = 3 }
"""


@pytest.fixture(autouse=True)
def _silent_after():
    yield
    progress.set_reporter(progress.SILENT)


class Counting(progress.Lines):
    """Lines into a buffer, counting how often the bars would be redrawn."""

    def __init__(self):
        self.buffer = io.StringIO()
        super().__init__(self.buffer)
        self.updates = 0

    def update(self, bar):
        self.updates += 1

    @property
    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()


# ---- the module ---------------------------------------------------------------------------
def test_a_terminal_gets_a_bar_with_count_rate_elapsed_and_eta():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160)
    with progress.task("fit sasrec", total=4, unit="epoch", reporter=progress.Bars(console)) as bar:
        for _ in range(4):
            time.sleep(0.02)
            bar.advance()
    out = buffer.getvalue()
    assert ANSI.search(out)  # drawn live, not printed as lines
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).split("\r")[-1]
    assert "fit sasrec" in last and "4/4 epoch" in last, last
    assert re.search(r"\d+(\.\d+)? epoch/s", last), last
    assert "ETA" in last, last


def test_a_pipe_gets_one_line_per_stage_when_it_ends():
    lines = Counting()
    with progress.task("fit popularity", reporter=lines):
        pass
    with progress.task("fit als", reporter=lines):
        # the channel's own count continues the pipeline's stage of the same name
        with progress.task("fit als", total=3, unit="iteration", reporter=lines) as bar:
            for _ in range(3):
                bar.advance()
    assert len(lines.lines) == 2, lines.lines
    assert re.fullmatch(r"fit popularity: \d+\.\d s", lines.lines[0])
    assert re.fullmatch(r"fit als: 3 iterations in \d+\.\d s \([0-9.,e+]+ iteration/s\)",
                        lines.lines[1]), lines.lines[1]


def test_nested_stages_fold_into_the_line_of_a_stage_that_counts_nothing():
    lines = Counting()
    with progress.task("fit sasrec", reporter=lines):
        with progress.task("embed e5", total=5, unit="text", reporter=lines) as bar:
            bar.advance(5)
    with progress.task("tune recall@50", total=2, unit="trial", reporter=lines) as trials:
        for _ in range(2):
            with progress.task("recall itemcf", total=10, unit="user", reporter=lines) as bar:
                bar.advance(10)
            trials.advance()
    assert len(lines.lines) == 2, lines.lines
    assert lines.lines[0].startswith("fit sasrec: ") and "(embed e5: 5 texts in " in lines.lines[0]
    # the recalls inside each trial are not lines of their own
    assert lines.lines[1].startswith("tune recall@50: 2 trials in "), lines.lines[1]
    assert "recall itemcf" not in lines.lines[1]


def test_a_stage_ended_by_an_error_writes_no_line():
    lines = Counting()
    with pytest.raises(ValueError), progress.task("fit broken", total=3, reporter=lines):
        raise ValueError("boom")
    assert lines.lines == []


def test_advancing_per_item_is_throttled():
    lines = Counting()
    with progress.task("recall all", total=200_000, unit="user", reporter=lines) as bar:
        for _ in range(200_000):
            bar.advance()
    assert bar.completed == 200_000
    # one update per REFRESH_SECONDS at most (and one to set the total), not one per item
    assert lines.updates < 200, lines.updates
    assert lines.lines[0].startswith("recall all: 200,000 users in ")


def test_the_library_is_silent_unless_a_command_chose_a_reporter(ml100k_quick, capsys):
    from llmrecall.evaluate.experiment import evaluate

    assert progress.reporter() is progress.SILENT
    with progress.task("anything", total=2) as bar:
        bar.advance(2)
    progress.note("wrote nothing")
    dataset, cfg = ml100k_quick
    evaluate(dataset, "loo", cfg)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_choose_bars_only_on_a_real_terminal(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # colours forced on a pipe: still lines
    assert isinstance(progress.choose(console=Console(file=io.StringIO())), progress.Lines)
    assert progress.choose(quiet=True) is progress.SILENT
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            monkeypatch.setenv("TERM", "xterm-256color")
            assert isinstance(progress.choose(console=Console(file=tty)), progress.Bars)
    finally:
        os.close(master)
        os.close(slave)


def test_results_are_the_same_with_and_without_progress(ml100k_quick):
    from llmrecall.pipeline import RecallPipeline

    dataset, cfg = ml100k_quick
    silent = RecallPipeline(cfg).fit(dataset)
    progress.set_reporter(Counting())
    shown = RecallPipeline(cfg).fit(dataset)
    users = np.arange(50, dtype=np.int32)
    a = silent.recall(users, dataset.histories(), 50)
    b = shown.recall(users, dataset.histories(), 50)
    np.testing.assert_array_equal(a.fused.ids, b.fused.ids)
    np.testing.assert_array_equal(silent.channels["als"].item_factors_,
                                  shown.channels["als"].item_factors_)


def test_the_command_line_puts_the_reporter_back(tmp_path):
    from typer.testing import CliRunner

    from llmrecall.cli import app

    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    assert progress.reporter() is progress.SILENT


# ---- the command line in its three modes -------------------------------------------------
@pytest.fixture(scope="module")
def ml100k_quick(tmp_path_factory):
    from llmrecall.config import load_config
    from llmrecall.data.builtin import load_builtin

    path = tmp_path_factory.mktemp("config") / "quick.toml"
    path.write_text(QUICK)
    return load_builtin("ml-100k"), load_config(path)


@pytest.fixture
def quick(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text(QUICK)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE",
                        "LLMRECALL_QUIET", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", COLUMNS="160")
    return env


def _llmrecall(*args: str) -> list[str]:
    return [sys.executable, "-c", "from llmrecall.cli import main; main()", *args]


def _run_on_pipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_llmrecall(*args), capture_output=True, text=True, env=_env(),
                          timeout=600, stdin=subprocess.DEVNULL)


def _run_on_terminal(*args: str) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout a pipe); returns (code, stdout, stderr)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(_llmrecall(*args), stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env=_env())
    os.close(slave)
    out, err = bytearray(), bytearray()
    assert proc.stdout is not None
    streams = {proc.stdout.fileno(): out, master: err}
    deadline = time.monotonic() + 600
    while streams and time.monotonic() < deadline:
        ready, _, _ = select.select(list(streams), [], [], 1.0)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal's other end closed (Linux reports EIO)
                data = b""
            if data:
                streams[fd].extend(data)
            else:
                del streams[fd]
    code = proc.wait(timeout=60)
    os.close(master)
    return code, out.decode(), err.decode()


def test_stdout_json_is_the_same_on_a_terminal_a_pipe_and_with_quiet(quick):
    args = ("recall", "-u", "196", "-d", "ml-100k", "-c", str(quick), "-k", "10", "--json")
    code, tty_out, tty_err = _run_on_terminal(*args)
    piped = _run_on_pipe(*args)
    quiet = _run_on_pipe("--quiet", *args)
    assert code == 0 and piped.returncode == 0 and quiet.returncode == 0, piped.stderr
    # the terminal got live bars: escape codes, the ALS count with its rate and the ETA column
    assert ANSI.search(tty_err), tty_err
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty_err)
    assert "fit als" in plain and "3/3 iteration" in plain and "iteration/s" in plain, plain
    assert "ETA" in plain
    # the pipe got one plain line per stage
    assert not ANSI.search(piped.stderr)
    assert piped.stderr.splitlines() == [
        line for line in piped.stderr.splitlines() if line.startswith("fit ")]
    assert [line.split(":")[0] for line in piped.stderr.splitlines()] == [
        "fit popularity", "fit itemcf", "fit als"]
    assert quiet.stderr == ""
    rows = json.loads(piped.stdout)["candidates"]  # the service's answer body
    assert len(rows) == 10 and rows[0]["item_id"]
    assert tty_out == piped.stdout == quiet.stdout


def test_evaluate_writes_one_line_per_stage_on_a_pipe_and_nothing_with_quiet(quick, tmp_path):
    piped = _run_on_pipe("evaluate", "-d", "ml-100k", "-c", str(quick),
                         "-o", str(tmp_path / "piped.json"))
    quiet = _run_on_pipe("-q", "evaluate", "-d", "ml-100k", "-c", str(quick),
                         "-o", str(tmp_path / "quiet.json"))
    assert piped.returncode == 0 and quiet.returncode == 0, piped.stderr + quiet.stderr
    lines = piped.stderr.splitlines()
    assert not ANSI.search(piped.stderr)
    assert [line.split(":")[0].split(" ")[0:2] for line in lines] == [
        ["split", "loo"], ["fit", "popularity"], ["fit", "itemcf"], ["fit", "als"],
        ["recall", "popularity"], ["recall", "itemcf"], ["recall", "als"],
        ["wrote", str(tmp_path / "piped.json")], ["wrote", str(tmp_path / "piped.ranks.npz")]]
    assert re.fullmatch(r"fit als: 3 iterations in \d+\.\d s \(.* iteration/s\)", lines[3])
    assert re.fullmatch(r"recall itemcf: 943 users in \d+\.\d s \(.* user/s\)", lines[5])
    assert quiet.stderr == ""
    report = json.loads((tmp_path / "piped.json").read_text())
    again = json.loads((tmp_path / "quiet.json").read_text())
    assert report["results"] == again["results"]
    # the stages' times are the report's
    assert set(report["timings"]["recall_seconds"]) == {"popularity", "itemcf", "als"}
