"""Language-model channels in the running service: items added at run time are embedded and
recalled at once (by query, through a user's history, as similar items), deleted items never
come back, and after a restart the stored items are embedded again.

Real ml-100k artifact with semantic_i2i, semantic_user and textcf over the default embedder.
"""

from __future__ import annotations

import pytest

from .conftest import WRITE

#: a distinctive new item, and a near-duplicate of ml-100k item "1" ("Toy Story. year: 1995.
#: Categories: Animation, Children's, Comedy")
JAZZ = {"item_id": "jazz-mice", "title": "Submarine Cheese Orchestra",
        "text": "A band of mice plays jazz in underwater concerts",
        "categories": ["Musical", "Animation"]}
TWIN = {"item_id": "toy-twin", "title": "Toy Story", "text": "year: 1995. remastered",
        "categories": ["Animation", "Children's", "Comedy"]}
JAZZ_QUERY = "mice playing jazz under the sea"
BADGER_QUERY = "badger detective using quantum physics"
#: generous: the point here is what the channels answer, not the default 100 ms deadline
BUDGET = ("--channel-budget-ms", "10000")

pytestmark = pytest.mark.slow


def ids(answer: dict, key: str = "candidates") -> list[str]:
    return [c["item_id"] for c in answer[key]]


def channels_of(answer: dict, item_id: str, key: str = "candidates") -> list[str]:
    return next(c["channels"] for c in answer[key] if c["item_id"] == item_id)


def test_new_items_are_recalled_at_once_and_deleted_ones_never(make_server, lm_artifact, tmp_path):
    state = tmp_path / "lm.sqlite"
    server = make_server(lm_artifact, *BUDGET, state=state)
    c = server.client
    assert c.put("/v1/items", json={"items": [JAZZ, TWIN]}, headers=WRITE).json() == \
        {"added": 2, "updated": 0}

    # query only: the embedding channels answer (BM25 is not used when they do)
    answer = c.post("/v1/recall", json={"query": JAZZ_QUERY, "k": 10}).json()
    assert answer["degraded"] == [] and ids(answer)[0] == "jazz-mice"
    # both semantic channels search the same item embeddings: one of them answers the query
    # (two identical lists would double the query's weight in the fusion)
    assert "semantic_i2i:query" in channels_of(answer, "jazz-mice")
    assert "semantic_user:query" not in answer["channel_counts"]
    assert "query_lexical" not in answer["channel_counts"]

    # a user whose history holds the twin's original gets the twin from semantic_i2i
    c.post("/v1/events", json={"events": [{"user_id": "u-twin", "item_id": "1"}]}, headers=WRITE)
    answer = c.post("/v1/recall", json={"user_id": "u-twin", "k": 20, "explain": True}).json()
    assert answer["degraded"] == [] and "toy-twin" in ids(answer)
    twin = next(x for x in answer["candidates"] if x["item_id"] == "toy-twin")
    reason = next(r for r in twin["reasons"] if r["channel"] == "semantic_i2i")
    assert reason["rank"] == 1 and reason["evidence_item"] == "1"

    # similar items, both ways: the twin is found from "1", and "1" from the twin
    similar = c.get("/v1/items/1/similar", params={"k": 100}).json()
    assert "semantic_i2i" in channels_of(similar, "toy-twin", "neighbours")
    similar = c.get("/v1/items/toy-twin/similar", params={"k": 10}).json()
    assert ids(similar, "neighbours")[0] == "1"

    # a new item in a history is evidence too: semantic_i2i cites it, and textcf places the
    # user from it (without it, a user with no history gets textcf's popularity ranking)
    answer = c.post("/v1/recall", json={"history": ["jazz-mice"], "k": 10, "explain": True,
                                         "channels": ["semantic_i2i"]}).json()
    assert answer["degraded"] == [] and len(answer["candidates"]) == 10
    assert all(r["evidence_item"] == "jazz-mice" for x in answer["candidates"] for r in x["reasons"])
    from_new = c.post("/v1/recall", json={"history": ["jazz-mice"], "k": 10,
                                           "channels": ["textcf"]}).json()
    popular = c.post("/v1/recall", json={"history": ["no-such-item"], "k": 10,
                                          "channels": ["textcf"]}).json()
    assert from_new["degraded"] == [] and len(from_new["candidates"]) == 10
    assert popular["ignored_history_items"] == ["no-such-item"]
    assert len(set(ids(from_new)) & set(ids(popular))) < 5

    # deleted: never returned, by any route, while still indexed by the channels
    assert c.delete("/v1/items/toy-twin", headers=WRITE).status_code == 200
    assert_twin_gone(c)

    # an artifact item edited at run time is re-embedded, now and after the restart
    edit = {"item_id": "2", "title": "Quantum Badger Detective",
            "text": "A badger solves crimes with quantum physics", "categories": ["Mystery"]}
    assert c.put("/v1/items", json={"items": [edit]}, headers=WRITE).json()["updated"] == 1
    assert ids(c.post("/v1/recall", json={"query": BADGER_QUERY, "k": 5}).json())[0] == "2"

    # restart on the same state: items are embedded again from the store
    server.stop()
    again = make_server(lm_artifact, *BUDGET, state=state).client
    answer = again.post("/v1/recall", json={"query": JAZZ_QUERY, "k": 10}).json()
    assert ids(answer)[0] == "jazz-mice"
    assert "semantic_i2i:query" in channels_of(answer, "jazz-mice")
    answer = again.post("/v1/recall", json={"query": BADGER_QUERY, "k": 5}).json()
    assert ids(answer)[0] == "2" and "semantic_i2i:query" in channels_of(answer, "2")
    similar = again.get("/v1/items/jazz-mice/similar", params={"k": 10}).json()
    assert similar["degraded"] == [] and len(similar["neighbours"]) == 10
    assert_twin_gone(again)


def assert_twin_gone(c) -> None:
    answer = c.post("/v1/recall", json={"user_id": "u-twin", "k": 200}).json()
    assert answer["degraded"] == [] and len(answer["candidates"]) == 200
    assert "toy-twin" not in ids(answer)
    answer = c.post("/v1/recall", json={"query": "Toy Story remastered", "k": 200}).json()
    assert "toy-twin" not in ids(answer) and "1" in ids(answer)[:3]
    assert "toy-twin" not in ids(c.get("/v1/items/1/similar", params={"k": 200}).json(),
                                 "neighbours")
