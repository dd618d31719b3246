"""The request examples of docs/serving.md and README.md name ids of the artifact they build.

Regression: the docs built an ml-1m artifact and then asked for ``{"user_id": "42"}``;
ml-1m's user ids are ``1m_N``, so the example was silently answered with cold-start
popularity (``known_user: false``). Each fenced block that builds an artifact from a
built-in dataset (``build --dataset NAME``) and sends requests is checked: every user id
and item id its requests name exists there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "serving.md", ROOT / "README.md"]


def blocks(path: Path) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S)


def requests_of(block: str) -> tuple[set[str], set[str]]:
    """(user ids, item ids) named by the block's JSON bodies and item paths."""
    users, items = set(), set()
    for body in re.findall(r"-d '(\{.*?\})'", block):
        data = json.loads(body)
        if data.get("user_id") is not None:
            users.add(data["user_id"])
        items.update(data.get("history", []))
        for event in data.get("events", []):
            users.add(event["user_id"])
            items.add(event["item_id"])
    items.update(unquote(m) for m in re.findall(r"/v1/items/([^/?' ]+)/similar", block))
    return users, items


def examples() -> list[tuple[str, str, str]]:
    out = []
    for path in DOCS:
        for block in blocks(path):
            dataset = re.search(r"build --dataset (\S+)", block)
            if dataset and "/v1/" in block:
                out.append((path.name, dataset.group(1), block))
    return out


def test_docs_have_request_examples():
    names = {name for name, _, _ in examples()}
    assert names == {"serving.md", "README.md"}


@pytest.mark.parametrize("name,dataset,block", examples(),
                         ids=[f"{n}-{d}" for n, d, _ in examples()])
def test_example_ids_exist_in_the_dataset_built(name, dataset, block):
    from llmrecall.data.builtin import load_builtin

    ds = load_builtin(dataset)
    users, items = requests_of(block)
    assert users or items, f"{name}: a request example without ids"
    unknown_users = [u for u in sorted(users) if ds.users.lookup([u])[0] < 0]
    unknown_items = [i for i in sorted(items) if ds.items.lookup([i])[0] < 0]
    assert not unknown_users, f"{name}: users not in {dataset}: {unknown_users}"
    assert not unknown_items, f"{name}: items not in {dataset}: {unknown_items}"


def test_known_user_false_is_explained_where_the_answer_is_documented():
    """An unknown id is answered, not refused: the docs and the OpenAPI schema must say what
    ``known_user: false`` means, or a wrong id format passes unnoticed."""
    from llmrecall.serve.schemas import RecallResponse

    description = RecallResponse.model_fields["known_user"].description or ""
    assert "cold-start" in description and "wrong format" in description
    serving = (ROOT / "docs" / "serving.md").read_text()
    row = next(line for line in serving.splitlines() if line.startswith("| `known_user` |"))
    assert "**false**" in row and "cold-start" in row and "1m_N" in row
