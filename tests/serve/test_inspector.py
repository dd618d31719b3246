"""The inspector page (``/ui``) against a real server, in a real browser: Debian's
``chromium`` driven by Playwright (the system browser, launched by its path; no browser is
downloaded). What the page shows must be what the JSON API answers: the candidates of
``/v1/recall`` (ids, scores, each channel's rank), the history, each channel's own list,
the similar items; an event posted through the page (with the key) must change the answer
shown to the API's new answer. User-supplied text is shown as text, never run as markup.

Without chromium the browser tests skip locally and fail under CI (``CI=true``): `.ci/run`
installs it, so a missing browser there is a broken set-up, not a reason to pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from .conftest import ANSWER_BUDGET, API_KEY, WRITE, Server

CHROMIUM = Path(os.environ.get("LLMRECALL_CHROMIUM", "/usr/bin/chromium"))
USER = "196"
K = 10

#: an item and a user whose text is markup: shown as text, never run
XSS_TITLE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
XSS_ITEM = "<script>window.__xss = 3</script>"
XSS_USER = "<b>bold</b>"
XSS_QUERY = "<script>window.__xss = 4</script> toy story"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(why: str):
    if _in_ci():
        pytest.fail(f"{why}: CI must run the browser tests (.ci/run installs chromium)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"no browser at {CHROMIUM} (Debian package `chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (the `test` extra)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def keyed(artifact, tmp_path_factory):
    """A server over the main artifact whose writes take :data:`API_KEY`. The page's answer
    and the API's come from two requests: a generous channel deadline keeps a loaded machine
    from leaving one of them degraded (channels cut) and the other not."""
    srv = Server(artifact, tmp_path_factory.mktemp("inspector") / "state.sqlite", *ANSWER_BUDGET)
    yield srv
    srv.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def _recall(server: Server, **body) -> dict:
    r = server.client.post("/v1/recall", json={"explain": True, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _shown(page, selector: str, attribute: str = "data-item-id") -> list[str]:
    return page.locator(selector).evaluate_all(
        f"els => els.map(e => e.getAttribute('{attribute}'))")


def _shown_ranks(page) -> list[dict[str, int]]:
    """{channel: rank} of each fused candidate row, as the page shows them."""
    return page.locator("#fused tr.candidate").evaluate_all(
        "rows => rows.map(r => Object.fromEntries(Array.from(r.querySelectorAll("
        "'li[data-channel]'), li => [li.dataset.channel, Number(li.dataset.rank)])))")


def _assert_equals_api(page, answer: dict) -> None:
    """The fused table shows ``answer``'s candidates: ids, scores and channel ranks."""
    cands = answer["candidates"]
    assert answer["degraded"] == [], f"channels cut from the API's answer: {answer['degraded']}"
    assert _shown(page, "#fused tr.candidate") == [c["item_id"] for c in cands]
    assert [float(s) for s in _shown(page, "#fused tr.candidate", "data-score")] == \
        [c["score"] for c in cands]
    assert _shown_ranks(page) == [{r["channel"]: r["rank"] for r in c["reasons"]} for c in cands]


@pytest.mark.slow
def test_the_page_shows_the_apis_answers_and_an_event_changes_them(page, keyed, tmp_path):
    page.goto(f"{keyed.url}/ui")
    assert page.locator("#add-event").count() == 0  # no user looked up yet
    page.fill("#user", USER)
    page.fill("#k", str(K))
    page.click("#recall-button")
    page.wait_for_selector("#fused tr.candidate")

    # the fused candidates are /v1/recall's for the same user and k
    before = _recall(keyed, user_id=USER, k=K)
    assert len(before["candidates"]) == K
    _assert_equals_api(page, before)
    assert any(r.get("evidence_item") for c in before["candidates"] for r in c["reasons"])
    assert page.locator("#fused .evidence a.item").count() > 0  # evidence links to its item

    # the history, newest first, with titles
    history = keyed.client.get(f"/v1/users/{USER}/history").json()["history"]
    assert _shown(page, "#history tr.entry") == [e["item_id"] for e in reversed(history)]
    titles = page.locator("#history tr.entry td.title").all_inner_texts()
    assert titles[0] and all(isinstance(t, str) for t in titles)

    # each channel's own list, side by side: the same request with channels=[name]
    lists = page.locator("#lists .list")
    names = _shown(page, "#lists .list", "data-channel")
    assert set(names) == set(before["channel_counts"]) and len(names) >= 3
    for i, name in enumerate(names):
        own = _recall(keyed, user_id=USER, k=K, channels=[name])["candidates"]
        assert lists.nth(i).locator("li").evaluate_all(
            "els => els.map(e => e.dataset.itemId)") == [c["item_id"] for c in own], name

    # an event with a wrong key is refused and changes nothing
    top = before["candidates"][0]["item_id"]
    page.fill("#event-item", top)
    page.fill("#event-key", "not-the-key")
    page.click("#event-button")
    page.wait_for_selector("#event-status.error")
    assert page.get_attribute("#event-status", "data-status") == "403"
    assert _recall(keyed, user_id=USER, k=K)["candidates"] == before["candidates"]

    # with the key: the top candidate becomes history, and the answer shown changes to the
    # API's new answer
    page.fill("#event-key", API_KEY)
    page.click("#event-button")
    page.wait_for_selector("#event-status.ok")
    after = _recall(keyed, user_id=USER, k=K)
    assert [c["item_id"] for c in after["candidates"]] != [c["item_id"] for c in before["candidates"]]
    assert top not in [c["item_id"] for c in after["candidates"]]
    _assert_equals_api(page, after)
    assert page.locator("#fused tr.candidate.new").count() >= 1  # what is new is marked
    assert _shown(page, "#history tr.entry")[0] == top  # newest first, typed as posted
    assert page.locator("#history tr.entry td.type").first.inner_text() == "click"
    page.screenshot(path=str(tmp_path / "inspector.png"), full_page=True)
    assert (tmp_path / "inspector.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a free-text query (no user): the candidates are /v1/recall's for that query
    page.fill("#user", "")
    page.fill("#query", "star wars")
    page.click("#recall-button")
    page.wait_for_selector("#fused tr.candidate")
    assert page.locator("#add-event").count() == 0 and page.locator("#history").count() == 0
    _assert_equals_api(page, _recall(keyed, query="star wars", k=K))

    # an item's similar items: /v1/items/{id}/similar's
    first = page.locator("#fused tr.candidate a.item").first
    item = first.inner_text()
    first.click()
    page.wait_for_selector("#similar tr.candidate")
    assert page.inner_text("#item-id") == item
    similar = keyed.client.get(f"/v1/items/{quote(item, safe='')}/similar", params={"k": 20}).json()
    assert _shown(page, "#similar tr.candidate") == [n["item_id"] for n in similar["neighbours"]]


@pytest.mark.slow
def test_user_supplied_text_is_shown_as_text_in_the_browser(page, keyed):
    _put_markup(keyed)
    page.goto(f"{keyed.url}/ui?" + urlencode({"user": XSS_USER, "query": XSS_QUERY, "k": 50}))
    page.wait_for_selector("#history tr.entry")
    assert page.evaluate("window.__xss") is None  # nothing the text holds ran
    assert page.locator("#history td.title").first.inner_text() == XSS_TITLE
    assert page.locator("#history a.item").first.inner_text() == XSS_ITEM
    assert page.inner_text("#shown-query") == XSS_QUERY
    assert XSS_USER in page.inner_text("#summary")
    page.locator("#history a.item").first.click()  # the id survives the link, '/' included
    page.wait_for_selector("#item-title")
    assert page.inner_text("#item-id") == XSS_ITEM
    assert page.inner_text("#item-title") == XSS_TITLE
    assert page.evaluate("window.__xss") is None


def _put_markup(server: Server) -> None:
    r = server.client.put("/v1/items", headers=WRITE, json={"items": [
        {"item_id": XSS_ITEM, "title": XSS_TITLE, "text": "toy story markup"}]})
    assert r.status_code == 200, r.text
    r = server.client.post("/v1/events", headers=WRITE, json={"events": [
        {"user_id": XSS_USER, "item_id": XSS_ITEM, "type": "view"}]})
    assert r.status_code == 200, r.text


def test_user_supplied_text_is_escaped_in_the_html(keyed):
    """The HTML itself (no browser needed): markup in ids, titles and the query arrives
    escaped, in the body and in attributes."""
    _put_markup(keyed)
    html = keyed.client.get("/ui", params={"user": XSS_USER, "query": XSS_QUERY}).text
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html  # the title
    assert "&lt;script&gt;window.__xss = 4&lt;/script&gt;" in html  # the query
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # the user id
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/ui/static/inspector.js" defer>']
    assert "<img" not in html and "<b>bold" not in html
    item_page = keyed.client.get(f"/ui/items/{quote(XSS_ITEM, safe='')}").text
    assert "&lt;script&gt;window.__xss = 3&lt;/script&gt;" in item_page
    assert re.findall(r"<script\b[^>]*>", item_page) == []


def test_without_a_key_the_page_is_read_only(artifact, make_server, keyed):
    """No API key configured: no event form on the page, and the write it would make is
    refused (403), while every read the page shows still works."""
    srv = make_server(artifact, *ANSWER_BUDGET, env={"LLMRECALL_API_KEY": ""})
    html = srv.client.get("/ui", params={"user": USER, "k": K}).text
    assert 'id="fused"' in html and 'id="history"' in html
    assert 'id="add-event"' not in html and "read-only" in html
    assert 'class="pick"' not in html
    ids = re.findall(r'<tr class="candidate" data-item-id="([^"]*)"', html)
    assert ids == [c["item_id"] for c in _recall(srv, user_id=USER, k=K)["candidates"]]
    r = srv.client.post("/v1/events", json={"events": [{"user_id": USER, "item_id": ids[0]}]})
    assert r.status_code == 403 and r.json()["error"] == "writes_disabled"
    # with a key configured the form is there (the same page, the key rule only)
    keyed_html = keyed.client.get("/ui", params={"user": USER}).text
    assert 'id="add-event"' in keyed_html


def test_the_page_reports_the_apis_errors(keyed):
    """A bad k or an unknown item: the API's own message, on the page."""
    html = keyed.client.get("/ui", params={"user": USER, "k": "many"}).text
    assert 'id="recall-error"' in html and "422" in html and 'id="fused"' not in html
    r = keyed.client.get("/ui/items/no-such-item")
    assert r.status_code == 404 and "unknown item" in r.text
    assert keyed.client.get("/ui/static/nothing.js").status_code == 404
    js = keyed.client.get("/ui/static/inspector.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    # no external URL anywhere on the page: everything it loads comes from the service
    html = keyed.client.get("/ui", params={"user": USER}).text
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', html)
