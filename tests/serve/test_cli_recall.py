"""``llmrecall recall`` and the service's ``POST /v1/recall`` answer through the same code
(serve/request.py): the same candidates, scores, channels and reasons for the same user,
history and filters, the command fitting in process what the artifact holds."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from llmrecall.cli import app as cli
from llmrecall.serve.app import create_app
from llmrecall.serve.settings import ServeSettings

from .conftest import MAIN_CONFIG

REQUESTS = [
    # a known user, extended by the request's history (one unknown item), filtered
    {"user_id": "196", "k": 30, "explain": True, "history": ["50", "181", "no-such-item"],
     "filters": {"categories": ["Comedy", "Drama"], "deny_items": ["1", "204"]}},
    # a user the artifact does not know: the cold-start answer
    {"user_id": "never-seen", "k": 15, "explain": False, "history": [],
     "filters": {"categories": [], "deny_items": []}},
]


def _cli_args(req: dict) -> list[str]:
    args = ["--user", req["user_id"], "-k", str(req["k"]),
            "--explain" if req["explain"] else "--no-explain", "--json"]
    args += [a for item in req["history"] for a in ("--history", item)]
    args += [a for cat in req["filters"]["categories"] for a in ("--category", cat)]
    args += [a for item in req["filters"]["deny_items"] for a in ("--deny", item)]
    return args


@pytest.fixture(scope="module")
def service(artifact, tmp_path_factory):
    state = tmp_path_factory.mktemp("cli-recall") / "state.sqlite"
    with TestClient(create_app(ServeSettings(artifact_dir=artifact, state_path=state))) as client:
        yield client


@pytest.mark.parametrize("req", REQUESTS, ids=["known-user-history-filters", "unknown-user"])
def test_cli_recall_answers_as_the_service(req, service, tmp_path):
    config = tmp_path / "pipeline.toml"
    config.write_text(MAIN_CONFIG)
    result = CliRunner().invoke(cli, ["recall", "--dataset", "ml-100k", "--config", str(config),
                                      *_cli_args(req)])
    assert result.exit_code == 0, result.output
    printed = result.stdout
    from_cli = json.loads(printed[printed.index("{"):])
    response = service.post("/v1/recall", json=req)
    assert response.status_code == 200, response.text
    from_service = response.json()
    for body in (from_cli, from_service):
        body.pop("artifact_version")
    assert len(from_service["candidates"]) == req["k"]
    assert from_cli == from_service
