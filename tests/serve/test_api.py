"""HTTP API against a real server over an ml-100k artifact (popularity, itemcf, ease)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import WRITE


def recall(server, **body):
    r = server.client.post("/v1/recall", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def ids(answer) -> list[str]:
    return [c["item_id"] for c in answer["candidates"]]


def history_of(ds, user: str) -> set[str]:
    row = ds.users.index(user)
    return set(ds.items.raw(ds.histories().of(row)))


def test_known_user_gets_k_unseen_candidates_with_channels(server, ml100k):
    ans = recall(server, user_id="196", k=50)
    got = ids(ans)
    assert ans["known_user"] and ans["history_length"] == len(history_of(ml100k, "196"))
    assert len(got) == 50 and len(set(got)) == 50
    assert not set(got) & history_of(ml100k, "196")
    assert all(c["channels"] for c in ans["candidates"])
    scores = [c["score"] for c in ans["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert {"itemcf", "ease"} <= {ch for c in ans["candidates"] for ch in c["channels"]}


def test_explanations_name_history_items(server, ml100k):
    ans = recall(server, user_id="196", k=20, explain=True)
    seen = history_of(ml100k, "196")
    reasons = [r for c in ans["candidates"] for r in c["reasons"]]
    assert reasons and all(r["why"] for r in reasons)
    itemcf = [r for r in reasons if r["channel"] == "itemcf"]
    assert itemcf and all(r["evidence_item"] in seen for r in itemcf)


def test_unknown_user_gets_popular_items(server, ml100k):
    ans = recall(server, user_id="never-seen-user", k=10)
    assert not ans["known_user"] and len(ids(ans)) == 10
    counts = np.bincount(ml100k.interactions.item, minlength=ml100k.n_items)
    top = set(ml100k.items.raw(np.argsort(-counts)[:30]))
    assert len(set(ids(ans)) & top) >= 5


def test_single_event_history_gets_item_to_item_candidates(server):
    ans = recall(server, history=["50"], k=20, explain=True)  # Star Wars
    assert "50" not in ids(ans)
    by_itemcf = [c for c in ans["candidates"] if "itemcf" in c["channels"]]
    assert by_itemcf
    assert any(r["evidence_item"] == "50" for c in by_itemcf for r in c["reasons"])
    assert "Return of the Jedi" in [c["title"] for c in ans["candidates"][:10]]


def test_query_only_matches_titles_lexically(server):
    ans = recall(server, query="star wars", k=10)
    titles = [c["title"] for c in ans["candidates"]]
    assert titles[0] == "Star Wars"
    assert sum("Star" in t for t in titles) >= 3


def test_unknown_history_items_are_reported_not_fatal(server):
    ans = recall(server, history=["no-such-item", "50"], k=5)
    assert ans["ignored_history_items"] == ["no-such-item"] and len(ids(ans)) == 5


def test_channel_selection_restricts_sources(server):
    ans = recall(server, user_id="196", k=30, channels=["itemcf"])
    assert ans["candidates"] and all(c["channels"] == ["itemcf"] for c in ans["candidates"])


def test_category_and_deny_filters(server, ml100k):
    cats = dict(zip(ml100k.items.ids, ml100k.catalog.categories))
    ans = recall(server, user_id="196", k=40, filters={"categories": ["Horror"]})
    assert ans["candidates"] and all("Horror" in cats[i] for i in ids(ans))
    first = ids(recall(server, user_id="196", k=10))
    denied = recall(server, user_id="196", k=10, filters={"deny_items": first[:3]})
    assert not set(first[:3]) & set(ids(denied))


@pytest.mark.parametrize("body, field", [
    ({"user_id": "196", "k": 5000}, "k"),
    ({"user_id": "196", "k": 0}, "k"),
    ({"k": 10}, "user_id"),
    ({"user_id": "196", "channels": ["nope"]}, "channels[0]"),
    ({"user_id": "196", "filters": {"categories": "Horror"}}, "filters.categories"),
    ({"user_id": "196", "surprise": 1}, "surprise"),
])
def test_bad_recall_requests_name_the_field(server, body, field):
    r = server.client.post("/v1/recall", json=body)
    assert r.status_code == 422
    assert r.json()["field"] == field


def test_malformed_json_and_oversized_body(server):
    r = server.client.post("/v1/recall", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert r.status_code == 422 and "field" in r.json()
    big = {"user_id": "196", "history": ["x" * 600] * 4000}
    r = server.client.post("/v1/recall", json=big)
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_writes_need_the_api_key(server):
    body = {"events": [{"user_id": "a", "item_id": "50"}]}
    assert server.client.post("/v1/events", json=body).status_code == 401
    r = server.client.post("/v1/events", json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 403 and r.json()["field"] == "X-API-Key"
    assert server.client.delete("/v1/items/50").status_code == 401
    assert server.client.post("/v1/admin/reload").status_code == 401


def test_bad_event_rejects_whole_batch(server):
    body = {"events": [{"user_id": "batch-user", "item_id": "50"},
                       {"user_id": "batch-user", "item_id": "181"},
                       {"user_id": "batch-user", "item_id": "1", "timestamp": "yesterday"}]}
    r = server.client.post("/v1/events", json=body, headers=WRITE)
    assert r.status_code == 422 and r.json()["field"] == "events[2].timestamp"
    body["events"][2] = {"user_id": "batch-user", "item_id": "not-an-item"}
    r = server.client.post("/v1/events", json=body, headers=WRITE)
    assert r.status_code == 422 and r.json()["field"] == "events[2].item_id"
    hist = server.client.get("/v1/users/batch-user/history").json()
    assert not hist["known_user"] and hist["history"] == []


def test_events_count_at_once(server):
    cold = ids(recall(server, user_id="fresh-user", k=20))
    r = server.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "fresh-user", "item_id": "50", "timestamp": 1e9},
        {"user_id": "fresh-user", "item_id": "172", "timestamp": 1e9 + 1, "type": "click", "weight": 2}]})
    assert r.status_code == 200 and r.json()["accepted"] == 2
    hist = server.client.get("/v1/users/fresh-user/history").json()
    assert [h["item_id"] for h in hist["history"]] == ["50", "172"]
    warm = recall(server, user_id="fresh-user", k=20)
    assert warm["known_user"] and warm["history_length"] == 2
    assert not {"50", "172"} & set(ids(warm))
    assert ids(warm) != cold


def test_new_item_is_recallable_at_once(server):
    item = {"item_id": "new-film-1", "title": "Zorblax Returns", "text": "a space opera",
            "categories": ["Sci-Fi"]}
    r = server.client.put("/v1/items", json={"items": [item]}, headers=WRITE)
    assert r.status_code == 200 and r.json() == {"added": 1, "updated": 0}
    # by query text, immediately
    assert ids(recall(server, query="zorblax", k=5))[0] == "new-film-1"
    # item-to-item: people who watched Star Wars (50) go on to the new item
    events = [{"user_id": f"fan-{i}", "item_id": it, "timestamp": 1e9 + j}
              for i in range(5) for j, it in enumerate(["50", "new-film-1"])]
    assert server.client.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    ans = recall(server, history=["50"], k=100, explain=True)
    hit = [c for c in ans["candidates"] if c["item_id"] == "new-film-1"]
    assert hit and "live_covisit" in hit[0]["channels"]
    assert any(r["evidence_item"] == "50" for r in hit[0]["reasons"] if r["channel"] == "live_covisit")
    similar = server.client.get("/v1/items/new-film-1/similar", params={"k": 5}).json()
    assert "50" in [n["item_id"] for n in similar["neighbours"]]


def test_deleted_item_is_never_returned(make_server, artifact):
    server = make_server(artifact)  # deletions would disturb the other tests' server
    top = ids(recall(server, user_id="13", k=10))
    cold_top = ids(recall(server, user_id="nobody-x", k=5))
    for item in (top[0], cold_top[0]):
        assert server.client.delete(f"/v1/items/{item}", headers=WRITE).status_code == 200
    for body in ({"user_id": "13", "k": 200}, {"user_id": "nobody-x", "k": 200},
                 {"query": "star", "k": 200}, {"history": ["50"], "k": 200}):
        assert not {top[0], cold_top[0]} & set(ids(recall(server, **body)))
    assert server.client.get(f"/v1/items/{top[0]}/similar").status_code == 404
    assert server.client.delete("/v1/items/no-such-item", headers=WRITE).status_code == 404


def test_similar_items_with_evidence(server):
    r = server.client.get("/v1/items/50/similar", params={"k": 10})
    assert r.status_code == 200
    neighbours = r.json()["neighbours"]
    assert len(neighbours) == 10 and "50" not in [n["item_id"] for n in neighbours]
    assert all(set(n["channels"]) <= {"itemcf", "live_covisit"} for n in neighbours)
    assert sum("itemcf" in n["channels"] for n in neighbours) >= 5
    assert all(reason["evidence_item"] == "50" for n in neighbours for reason in n["reasons"])
    assert server.client.get("/v1/items/nope/similar").status_code == 404


def test_erased_user_recalls_as_new(server, ml100k):
    user = "305"
    assert recall(server, user_id=user, k=5)["known_user"]
    server.client.post("/v1/events", headers=WRITE,
                       json={"events": [{"user_id": user, "item_id": "50"}]})
    r = server.client.delete(f"/v1/users/{user}", headers=WRITE)
    assert r.status_code == 200 and r.json()["erased_events"] == 1
    hist = server.client.get(f"/v1/users/{user}/history").json()
    assert not hist["known_user"] and hist["history"] == []
    after = recall(server, user_id=user, k=30)
    stranger = recall(server, user_id="someone-never-seen", k=30)
    assert not after["known_user"] and ids(after) == ids(stranger)


def test_metrics_and_docs(server):
    recall(server, user_id="196", k=10)
    text = server.client.get("/metrics").text
    assert ('llmrecall_request_seconds_bucket{le="0.001",method="POST",route="/v1/recall",'
            'status="200"}' in text or 'route="/v1/recall"' in text)
    assert 'llmrecall_channel_seconds_count{channel="ease"}' in text
    assert 'llmrecall_channel_candidates_count{channel="itemcf"}' in text
    spec = server.client.get("/openapi.json").json()
    for path in ("/v1/recall", "/v1/events", "/v1/items", "/v1/items/{item_id}/similar",
                 "/v1/users/{user_id}", "/healthz", "/metrics", "/v1/admin/reload"):
        assert path in spec["paths"]
    assert server.client.get("/docs").status_code == 200
