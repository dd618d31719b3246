"""The command line at its edges: unwritable outputs, bad artifacts and bracketed messages
fail at once with one clear line and a non-zero exit, before any work is done."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from llmrecall.cli import app

#: a quick pipeline: nothing in these tests should get as far as fitting it
QUICK = """
[fusion]
k = 50
channel_k = 200
[[channels]]
kind = "popularity"
"""


@pytest.fixture
def quick(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text(QUICK)
    return path


@pytest.fixture
def not_a_folder(tmp_path):
    """A regular file: nothing can be written under it, even by root."""
    path = tmp_path / "plain-file"
    path.write_text("x")
    return path


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    # nothing was split, fitted or recalled before the check (no stage line of llmrecall.progress)
    assert "split" not in result.output, result.output
    assert not [line for line in result.output.splitlines()
                if line.startswith(("fit ", "recall "))], result.output


def test_evaluate_refuses_an_unwritable_output_before_running(quick, not_a_folder):
    # regression: the whole evaluation ran, then writing the report raised a traceback
    target = not_a_folder / "report.json"
    result = _run("evaluate", "-d", "ml-100k", "-c", str(quick), "--output", str(target))
    _assert_clean_failure(result, "cannot write", str(target))
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 2


def test_tune_refuses_an_unwritable_output_or_storage_before_tuning(quick, not_a_folder, tmp_path):
    result = _run("tune", "-d", "ml-100k", "-c", str(quick), "--trials", "1",
                  "--output", str(not_a_folder / "tuned.toml"))
    _assert_clean_failure(result, "cannot write", "tuned.toml")
    result = _run("tune", "-d", "ml-100k", "-c", str(quick), "--trials", "1",
                  "--output", str(tmp_path / "tuned.toml"),
                  "--storage", str(not_a_folder / "study.sqlite"))
    _assert_clean_failure(result, "cannot write", "study.sqlite")
    assert not (tmp_path / "tuned.toml").exists()


def test_build_refuses_an_unwritable_out_folder(quick, not_a_folder):
    # regression: an 87-line traceback after fitting every channel
    result = _run("build", "-d", "ml-100k", "-c", str(quick), "--out", str(not_a_folder / "art"))
    _assert_clean_failure(result, "cannot write", "art", "not a folder")
    result = _run("build", "-d", "ml-100k", "-c", str(quick), "--out", str(not_a_folder))
    _assert_clean_failure(result, "not a folder")


def test_serve_refuses_a_folder_that_is_not_an_artifact(tmp_path):
    # regression: state.sqlite was created in the folder and uvicorn printed a traceback
    folder = tmp_path / "not-an-artifact"
    folder.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _run("serve", str(folder), "--host", "127.0.0.1", "--port", str(port))
    assert result.exit_code == 2, result.output
    assert "not an artifact" in result.output
    assert "Traceback" not in result.output and "startup failed" not in result.output
    assert list(folder.iterdir()) == []


def test_bracketed_words_survive_in_error_messages(tmp_path):
    # regression: rich took "[data]" for markup and printed "invalid  table"
    spec = tmp_path / "data.toml"
    spec.write_text("[data]\nsurprise = 1\n")
    result = _run("evaluate", "--data", str(spec))
    assert result.exit_code == 2
    assert "invalid [data] table" in result.output, result.output
    spec.write_text("[other]\nx = 1\n")
    result = _run("build", "--data", str(spec), "--out", str(tmp_path / "art"))
    assert result.exit_code == 2
    assert "no [data] table" in result.output, result.output
