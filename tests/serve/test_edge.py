"""The HTTP edge against a real server: invalid Unicode, control characters, ids that need
percent-encoding (``/``, ``..``, ``%``, spaces, non-ASCII), strict JSON types, event-time
bounds, and an OpenAPI schema that states the limits the service enforces."""

from __future__ import annotations

import json
import time
import unicodedata
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import WRITE


def seg(raw_id: str) -> str:
    """One id as one path segment: every reserved character percent-encoded, and the dots
    too, so that an id of ``.`` or ``..`` is not taken for a dot segment by the client."""
    return quote(raw_id, safe="").replace(".", "%2E")


def raw_post(server, path: str, body: str, headers: dict | None = None) -> httpx.Response:
    """POST a JSON text as written (json= would refuse lone surrogates before sending)."""
    return server.client.post(path, content=body.encode(),
                              headers={"content-type": "application/json", **(headers or {})})


def ids(answer) -> list[str]:
    return [c["item_id"] for c in answer["candidates"]]


# ---- invalid Unicode -------------------------------------------------------------------------

SURROGATE = "\\ud800"  # a lone UTF-16 surrogate, as a JSON escape: valid JSON, invalid Unicode

RECALL_CASES = [
    # regression: a lone surrogate in history was echoed in ignored_history_items -> 500
    (f'{{"history": ["{SURROGATE}"], "k": 5}}', "history[0]"),
    (f'{{"user_id": "196", "filters": {{"deny_items": ["{SURROGATE}"]}}}}', "filters.deny_items[0]"),
    (f'{{"user_id": "196", "filters": {{"categories": ["{SURROGATE}"]}}}}', "filters.categories[0]"),
    (f'{{"user_id": "a{SURROGATE}"}}', "user_id"),
    (f'{{"query": "star {SURROGATE}"}}', "query"),
    (f'{{"user_id": "196", "channels": ["{SURROGATE}"]}}', "channels[0]"),
]


@pytest.mark.parametrize("body, field", RECALL_CASES)
def test_lone_surrogate_in_recall_is_422_naming_the_field(server, body, field):
    r = raw_post(server, "/v1/recall", body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and "Unicode" in r.json()["message"]


@pytest.mark.parametrize("event, field", [
    ({"user_id": f"u{SURROGATE}", "item_id": "50"}, "events[0].user_id"),
    ({"user_id": "u", "item_id": f"5{SURROGATE}"}, "events[0].item_id"),
])
def test_lone_surrogate_in_event_is_422(server, event, field):
    body = '{"events": [' + ", ".join(f'"{k}": "{v}"' for k, v in event.items()).join("{}") + "]}"
    r = raw_post(server, "/v1/events", body, WRITE)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


@pytest.mark.parametrize("key, field", [("item_id", "items[0].item_id"), ("title", "items[0].title"),
                                        ("text", "items[0].text")])
def test_lone_surrogate_in_item_is_422(server, key, field):
    item = {"item_id": "sur-item", "title": "t", "text": ""}
    item[key] = f"x{SURROGATE}"
    body = '{"items": [{' + ", ".join(f'"{k}": "{v}"' for k, v in item.items()) + "}]}"
    r = server.client.put("/v1/items", content=body.encode(),
                          headers={"content-type": "application/json", **WRITE})
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_lone_surrogate_in_a_key_is_422_not_500(server):
    r = raw_post(server, "/v1/recall", f'{{"user_id": "196", "{SURROGATE}": 1}}')
    assert r.status_code == 422, r.text
    json.loads(r.text)  # a valid JSON answer: the key is escaped, not echoed raw


def test_body_that_is_not_utf8_is_422(server):
    r = server.client.post("/v1/recall", content=b'{"user_id": "\xff\xfe"}',
                           headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body", r.text


# ---- control characters and id rules -----------------------------------------------------------

@pytest.mark.parametrize("bad", ["nul\x00x", "tab\tx", "nl\nx", "del\x7fx", "c1\x85x"])
def test_ids_with_control_characters_are_refused(server, bad):
    # regression: a NUL inside a user_id was stored
    for event, field in (({"user_id": bad, "item_id": "50"}, "events[0].user_id"),
                         ({"user_id": "ctl-user", "item_id": bad}, "events[0].item_id")):
        r = server.client.post("/v1/events", json={"events": [event]}, headers=WRITE)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
        assert "control character" in r.json()["message"]
    r = server.client.put("/v1/items", json={"items": [{"item_id": bad, "title": "t"}]},
                          headers=WRITE)
    assert r.status_code == 422 and r.json()["field"] == "items[0].item_id"
    r = server.client.get(f"/v1/users/{seg(bad)}/history")
    assert r.status_code == 422 and r.json()["field"] == "user_id", r.text
    r = server.client.get(f"/v1/items/{seg(bad)}/similar")
    assert r.status_code == 422 and r.json()["field"] == "item_id", r.text


def test_free_text_keeps_line_breaks_but_not_other_controls(server):
    ok = {"item_id": "ctl-text-ok", "title": "Two\tparts", "text": "line one\nline two\r\n"}
    assert server.client.put("/v1/items", json={"items": [ok]}, headers=WRITE).status_code == 200
    bad = {"item_id": "ctl-text-bad", "title": "bell\x07"}
    r = server.client.put("/v1/items", json={"items": [bad]}, headers=WRITE)
    assert r.status_code == 422 and r.json()["field"] == "items[0].title"
    r = server.client.post("/v1/recall", json={"query": "a\x00b"})
    assert r.status_code == 422 and r.json()["field"] == "query"


def test_id_over_256_characters_is_refused(server):
    r = server.client.post("/v1/events", headers=WRITE,
                           json={"events": [{"user_id": "u" * 257, "item_id": "50"}]})
    assert r.status_code == 422 and r.json()["field"] == "events[0].user_id"
    assert server.client.get(f"/v1/users/{'u' * 257}/history").status_code == 422


# ---- every accepted id is addressable ----------------------------------------------------------

def roundtrip(server, raw_id: str, title_token: str | None = None) -> None:
    """``raw_id`` as an item and as a user: stored, then read, recalled, deleted and erased
    through the id-in-path routes."""
    item = {"item_id": raw_id, "title": f"{title_token or 'odd'} id film", "categories": ["Odd"]}
    r = server.client.put("/v1/items", json={"items": [item]}, headers=WRITE)
    assert r.status_code == 200, r.text
    r = server.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": raw_id, "item_id": "50"}, {"user_id": raw_id, "item_id": raw_id}]})
    assert r.status_code == 200, r.text
    r = server.client.get(f"/v1/users/{seg(raw_id)}/history")
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == raw_id
    assert [h["item_id"] for h in r.json()["history"]][-2:] == ["50", raw_id]
    r = server.client.get(f"/v1/items/{seg(raw_id)}/similar", params={"k": 5})
    assert r.status_code == 200 and r.json()["item_id"] == raw_id, r.text
    if title_token is not None:
        assert raw_id in ids(server.client.post("/v1/recall", json={
            "query": title_token, "k": 5}).json())
    r = server.client.delete(f"/v1/items/{seg(raw_id)}", headers=WRITE)
    assert r.status_code == 200 and r.json()["item_id"] == raw_id, r.text
    assert server.client.get(f"/v1/items/{seg(raw_id)}/similar").status_code == 404
    if title_token is not None:
        assert raw_id not in ids(server.client.post("/v1/recall", json={
            "query": title_token, "k": 50}).json())
    r = server.client.delete(f"/v1/users/{seg(raw_id)}", headers=WRITE)
    assert r.status_code == 200 and r.json() == {"user_id": raw_id, "erased_events": 2}, r.text
    r = server.client.get(f"/v1/users/{seg(raw_id)}/history")
    assert r.status_code == 200 and not r.json()["known_user"] and r.json()["history"] == []


ODD_IDS = ["Face/Off (1997)", "team/alice", "..", ".", "a/../b", "../x", "100%", "%2F",
           "with space", "ünïcødé/東京", "x/similar", "x/history", "trailing/", "/leading",
           "a//b", "?q=1#frag", "emoji 🎬"]


@pytest.mark.parametrize("raw_id", ODD_IDS)
def test_ids_needing_encoding_can_be_read_deleted_and_erased(server, raw_id):
    # regression: DELETE /v1/items/Face%2FOff%20%281997%29 was 404 and the item stayed
    # recallable; users "team/alice" and ".." took events but could never be read or erased
    roundtrip(server, raw_id, title_token=f"zq{ODD_IDS.index(raw_id)}x")


ID_CHARS = st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Z", "M", "Cf", "Co"])


@settings(max_examples=25, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(raw_id=(st.text(ID_CHARS, min_size=1, max_size=24)
                | st.text(st.sampled_from("/.%? #a"), min_size=1, max_size=6))
       .filter(lambda s: not s.isdigit()))  # not the artifact's items and users
def test_every_accepted_id_is_addressable(server, raw_id):
    roundtrip(server, raw_id)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(raw_id=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                      max_size=8))
def test_ids_are_accepted_exactly_by_the_documented_rule(server, raw_id):
    has_control = any(unicodedata.category(c) == "Cc" for c in raw_id)
    r = server.client.post("/v1/events", headers=WRITE,
                           json={"events": [{"user_id": raw_id, "item_id": "50"}]})
    assert r.status_code == (422 if has_control else 200), (raw_id, r.text)


# ---- strict types -----------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"user_id": "196", "k": "5"}, "k"),
    ({"user_id": "196", "k": True}, "k"),
    ({"user_id": "196", "k": 5.0}, "k"),
    ({"user_id": "196", "explain": 0}, "explain"),
    ({"user_id": "196", "explain": "true"}, "explain"),
    ({"user_id": 196}, "user_id"),
])
def test_recall_numbers_and_booleans_are_strict(server, body, field):
    # regression: "5", true and 5.0 were taken as k = 5 and 0 as explain = false
    r = server.client.post("/v1/recall", json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


@pytest.mark.parametrize("extra, field", [
    ({"weight": "2"}, "weight"), ({"weight": True}, "weight"), ({"timestamp": True}, "timestamp"),
    ({"timestamp": "1000000000"}, "timestamp"),
])
def test_event_numbers_are_strict(server, extra, field):
    r = server.client.post("/v1/events", headers=WRITE,
                           json={"events": [{"user_id": "strict-user", "item_id": "50", **extra}]})
    assert r.status_code == 422 and r.json()["field"] == f"events[0].{field}", r.text


def test_integral_numbers_are_still_numbers(server):
    # JSON has one number type: 2 is a valid weight, 1000000000 a valid timestamp
    r = server.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "strict-int", "item_id": "50", "weight": 2, "timestamp": 1_000_000_000}]})
    assert r.status_code == 200, r.text


# ---- event times ------------------------------------------------------------------------------

@pytest.mark.parametrize("stamp", [1e308, time.time() * 1000, 0.0, 5.0, 788_918_399.0,
                                   time.time() + 2 * 86_400])
def test_event_time_outside_the_window_is_refused(server, stamp):
    # regression: 1e308 (or a millisecond epoch) was stored and pinned the event last forever
    r = server.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "ts-user", "item_id": "181"},
        {"user_id": "ts-user", "item_id": "50", "timestamp": stamp}]})
    assert r.status_code == 422 and r.json()["field"] == "events[1].timestamp", r.text
    message = r.json()["message"]
    assert "1995-01-01" in message and "seconds" in message
    assert server.client.get("/v1/users/ts-user/history").json()["history"] == []


@pytest.mark.parametrize("stamp", [788_918_400.0, 874_724_710.0, 1_046_454_590.0,
                                   time.time(), time.time() + 3_600])
def test_event_time_inside_the_window_is_taken(server, stamp):
    # 1995-01-01, ml-100k's first rating (1997), ml-1m's last (2003), now, an hour ahead
    r = server.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "ts-ok", "item_id": "50", "timestamp": stamp}]})
    assert r.status_code == 200, r.text


def test_event_time_window_is_configurable(make_server, artifact, tmp_path):
    settings_file = tmp_path / "serve.toml"
    settings_file.write_text("[serve]\nmin_event_timestamp = 0\nmax_event_future_s = 0\n")
    srv = make_server(artifact, "--settings", str(settings_file))
    ok = srv.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "old", "item_id": "50", "timestamp": 5.0}]})
    assert ok.status_code == 200, ok.text
    late = srv.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": "old", "item_id": "50", "timestamp": time.time() + 60}]})
    assert late.status_code == 422 and late.json()["field"] == "events[0].timestamp"
    spec = srv.client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["Event"]["properties"]["timestamp"]["anyOf"][0][
        "minimum"] == 0


# ---- OpenAPI tells the truth ------------------------------------------------------------------

def test_openapi_states_limits_errors_and_content_types(server):
    spec = server.client.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    # regression: similar?k=140452 was refused but no maximum was declared
    similar = paths["/v1/items/{item_id}/similar"]["get"]
    k = next(p for p in similar["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == 1000
    assert schemas["RecallRequest"]["properties"]["k"]["maximum"] == 1000
    assert schemas["EventBatch"]["properties"]["events"]["maxItems"] == 10_000
    assert schemas["ItemBatch"]["properties"]["items"]["maxItems"] == 1_000
    stamp = schemas["Event"]["properties"]["timestamp"]
    assert stamp["anyOf"][0]["minimum"] == 788_918_400
    # the upper bound moves with the clock: in words, not as a maximum that goes stale
    assert "maximum" not in stamp["anyOf"][0] and "86400 s after the server's clock" in stamp[
        "description"]
    # regression: 404 and the auth errors were undocumented
    assert "404" in similar["responses"]
    assert "404" in paths["/v1/items/{item_id}"]["delete"]["responses"]
    for path, method in (("/v1/events", "post"), ("/v1/items", "put"),
                         ("/v1/items/{item_id}", "delete"), ("/v1/users/{user_id}", "delete"),
                         ("/v1/admin/reload", "post")):
        op = paths[path][method]
        assert {"401", "403"} <= set(op["responses"]), (path, op["responses"].keys())
        assert op["security"], path
    for path, method in (("/v1/recall", "post"), ("/v1/events", "post"), ("/v1/items", "put")):
        assert {"413", "422"} <= set(paths[path][method]["responses"])
    # regression: /metrics declared JSON though it answers Prometheus text
    content = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == [server.client.get("/metrics").headers["content-type"]]


def test_405_names_the_allowed_methods(server):
    # regression: TRACE answered 405 without the Allow header HTTP requires
    for method, path, allowed in (("TRACE", "/v1/recall", "POST"), ("GET", "/v1/events", "POST"),
                                  ("POST", "/healthz", "GET")):
        r = server.client.request(method, path)
        assert r.status_code == 405 and r.headers.get("allow") == allowed, (method, path, r.headers)


def test_an_encoded_slash_is_part_of_the_id_a_plain_one_separates(server):
    # routing is on the path as sent: DELETE .../users/x/history is not the erasure of a user
    # "x/history" (the history route does not take DELETE), and a plain '/' is no part of an id
    r = server.client.delete("/v1/users/x/history", headers=WRITE)
    assert r.status_code == 405 and r.headers["allow"] == "GET", r.text
    assert server.client.delete("/v1/items/x/similar", headers=WRITE).status_code == 405
    server.client.put("/v1/items", json={"items": [{"item_id": "sep/a", "title": "t"}]},
                      headers=WRITE).raise_for_status()
    assert server.client.get("/v1/items/sep/a/similar").status_code == 404
    assert server.client.get("/v1/items/sep%2Fa/similar").status_code == 200
    assert server.client.get("/v1/items/sep%2fa/similar").status_code == 200


def test_path_id_that_is_not_utf8_is_422(server):
    r = server.client.get("/v1/users/%FF%FE/history")
    assert r.status_code == 422 and r.json()["field"] == "user_id", r.text
    assert "Unicode" in r.json()["message"]


def test_the_key_works_as_either_documented_scheme(server):
    body = {"events": [{"user_id": "bearer-user", "item_id": "50"}]}
    r = server.client.post("/v1/events", json=body,
                           headers={"Authorization": "Bearer " + WRITE["X-API-Key"]})
    assert r.status_code == 200, r.text
    r = server.client.post("/v1/events", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    r = server.client.post("/v1/events", json=body, headers={"Authorization": "Basic eDp5"})
    assert r.status_code == 401
    schemes = server.client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": "the write API key (write endpoints only)"}
    assert schemes["Bearer"]["scheme"] == "bearer"
