"""The service and ``llmrecall recall`` with ``[fusion] method = "learned"``: ``build`` fits
the fusion on the ``loo`` split's validation task and saves it in the artifact, the engine's
fuse stage applies it to the channels' lists, and explanations are ordered by the learned
contributions.

Regression: the service fused by RRF with the config's weights whatever ``method`` said, so
an artifact built from a learned-fusion config answered with hand-weighted RRF.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from llmrecall.errors import DataError
from llmrecall.fusion import LearnedFusion, fuse
from llmrecall.serve.app import create_app
from llmrecall.serve.artifacts import load_artifact, resolve
from llmrecall.serve.engine import RecallEngine, RecallQuery
from llmrecall.serve.live import LiveState
from llmrecall.serve.metrics import Metrics
from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.store import Store

from .conftest import MAIN_CONFIG, _build

#: the service's main config (three fast channels) with the learned fusion
LEARNED_CONFIG = MAIN_CONFIG.replace("[fusion]\n", '[fusion]\nmethod = "learned"\n')
USERS = ["196", "186", "22", "244", "166", "298", "115", "253", "305", "6"]
K = 50


@pytest.fixture(scope="module")
def learned_artifact(tmp_path_factory):
    return _build(tmp_path_factory, "learned", LEARNED_CONFIG)


@pytest.fixture(scope="module")
def loaded(learned_artifact):
    return load_artifact(learned_artifact)


@pytest.fixture(scope="module")
def service(learned_artifact, tmp_path_factory):
    state = tmp_path_factory.mktemp("learned-state") / "state.sqlite"
    with TestClient(create_app(ServeSettings(artifact_dir=learned_artifact,
                                             state_path=state))) as client:
        yield client


def _offline(art, users: list[str], k: int):
    """The channels' lists of ``users`` recalled from the artifact's histories as the engine
    asks for them (its own entries only), and the learned fusion applied to them."""
    rows = art.users.lookup(users).astype(np.int32)
    pipeline = art.pipeline
    lists = {name: ch.recall(rows, max(pipeline.channel_k(name), k), art.histories).own()
             for name, ch in pipeline.channels.items()}
    model = pipeline.fusion_model_
    fused = model.fuse(lists, k, history_lengths=art.histories.lengths()[rows],
                       weights=pipeline.weights)
    return lists, fused


def test_build_saves_the_fusion_and_load_restores_it(learned_artifact, loaded):
    folder = resolve(learned_artifact)
    assert sorted(p.name for p in (folder / "fusion").iterdir()) == ["params.json", "table.npz"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["fusion"]["method"] == "learned" and manifest["fusion"]["protocol"] == "loo"
    model = loaded.pipeline.fusion_model_
    assert isinstance(model, LearnedFusion)
    assert sorted(model.channels) == sorted(loaded.pipeline.channels)
    assert model.report["validation_users"] == 943  # fitted on the loo validation task
    saved = LearnedFusion.load(folder / "fusion")
    np.testing.assert_array_equal(saved.table, model.table)
    assert (saved.reference, saved.prefix, saved.step) == (model.reference, model.prefix,
                                                           model.step)


def test_service_answers_with_the_learned_fusion_of_the_channels_lists(service, loaded):
    lists, fused = _offline(loaded, USERS, K)
    rrf = fuse(lists, K, weights=loaded.pipeline.weights,
               rrf_k=loaded.config.fusion.rrf_k)
    differs = 0
    for i, user in enumerate(USERS):
        response = service.post("/v1/recall", json={"user_id": user, "k": K})
        assert response.status_code == 200, response.text
        got = response.json()["candidates"]
        want = [int(j) for j in fused.ids[i] if j >= 0]
        assert [c["item_id"] for c in got] == loaded.items.raw(np.asarray(want)), user
        np.testing.assert_allclose([c["score"] for c in got], fused.scores[i, :len(want)],
                                   rtol=1e-6)
        differs += not np.array_equal(fused.ids[i], rrf.ids[i])
    assert differs  # the learned lists are not RRF's: the check above can tell them apart


def test_reasons_are_ordered_by_the_learned_contributions(service, loaded):
    """Each reason's contribution is the model's: its table value (learned base) or the
    config's RRF term (RRF base), plus the guard's bonus in the reference's prefix."""
    model = loaded.pipeline.fusion_model_
    width = model.table.shape[2]
    weights = loaded.pipeline.weights
    checked = 0
    for user in USERS[:4]:
        body = service.post("/v1/recall", json={"user_id": user, "k": 30, "explain": True,
                                                "max_reasons": None}).json()
        row = loaded.users.lookup([user])[0]
        bucket = model.buckets(loaded.histories.lengths()[[row]])[0]
        for cand in body["candidates"]:
            reasons = cand["reasons"]
            # one reason per proposing channel (max_reasons None)
            assert sorted(r["channel"] for r in reasons) == sorted(cand["channels"])
            gains = [r["contribution"] for r in reasons]
            assert gains == sorted(gains, reverse=True), (user, cand["item_id"])
            for r in reasons:
                rank = r["rank"] - 1
                if model.base == "rrf":
                    want = np.float32(weights[r["channel"]].weight / (model.rrf_k + rank + 1.0))
                else:
                    want = model.table[bucket, model.channels.index(r["channel"]),
                                       min(rank, width - 1)]
                if r["channel"] == model.reference and rank < model.prefix:
                    want = np.float32(want + model.step * (model.prefix - rank))
                assert r["contribution"] == pytest.approx(float(want), rel=1e-6)
                checked += 1
            assert sum(gains) == pytest.approx(cand["score"], rel=1e-5, abs=1e-5)
    assert checked > 100


def test_a_new_user_short_of_learned_candidates_gets_live_popularity_after_them(service):
    """itemcf has nothing of its own for a user without history: the learned fusion leaves
    the row empty, and the live source it was not fitted with completes it."""
    body = service.post("/v1/recall", json={"user_id": "never-seen", "k": 15,
                                            "channels": ["itemcf", "live_popularity"],
                                            "explain": True}).json()
    got = body["candidates"]
    assert len(got) == 15 and all(c["channels"] == ["live_popularity"] for c in got)
    scores = [c["score"] for c in got]
    assert scores == sorted(scores, reverse=True) and scores[0] < 0
    assert all(c["reasons"][0]["channel"] == "live_popularity" for c in got)
    popular = service.post("/v1/recall", json={"user_id": "never-seen", "k": 15,
                                               "channels": ["live_popularity"]}).json()
    assert [c["item_id"] for c in got] == [c["item_id"] for c in popular["candidates"]]


def test_a_batch_is_answered_as_each_user_alone(learned_artifact, loaded, tmp_path):
    state = LiveState(loaded, Store(tmp_path / "s.sqlite").read_all())
    engine = RecallEngine(ServeSettings(artifact_dir=learned_artifact,
                                        channel_budget_ms=60_000), Metrics())
    try:
        def query(user: str, k: int) -> RecallQuery:
            row = state.row_for(user)
            return RecallQuery(state, row, state.history(row), k, explain=True)

        ks = [K, 20, 35, K, 10, 5, K, 40, 25, K]
        batch = engine.recall([query(u, k) for u, k in zip(USERS, ks)])
        for user, k, answer in zip(USERS, ks, batch):
            (alone,) = engine.recall([query(user, k)])
            assert alone.candidates == answer.candidates, user
    finally:
        engine.shutdown()


def test_an_artifact_without_its_fusion_is_refused_at_load(learned_artifact, tmp_path):
    copy = tmp_path / "version"
    shutil.copytree(resolve(learned_artifact), copy)
    shutil.rmtree(copy / "fusion")
    with pytest.raises(DataError, match="no fitted fusion.*llmrecall build"):
        load_artifact(copy)


def test_cli_recall_fits_the_fusion_as_build_does(service, tmp_path):
    from llmrecall.cli import app as cli

    config = tmp_path / "pipeline.toml"
    config.write_text(LEARNED_CONFIG)
    result = CliRunner().invoke(cli, ["recall", "--dataset", "ml-100k", "--config", str(config),
                                      "--user", "196", "-k", "20", "--no-explain", "--json"])
    assert result.exit_code == 0, result.output
    printed = result.stdout
    from_cli = json.loads(printed[printed.index("{"):])
    from_service = service.post("/v1/recall", json={"user_id": "196", "k": 20}).json()
    for body in (from_cli, from_service):
        body.pop("artifact_version")
    assert from_cli == from_service


def test_an_item_added_live_keeps_its_guaranteed_place_in_a_learned_answer(
        learned_artifact, tmp_path, monkeypatch):
    """Items added after the build are recalled through their live co-visits, whose first
    ``live_covisit_min_slots`` candidates are guaranteed places. The learned table was not
    fitted on that source, and its own channels fill every row: the guaranteed co-visit
    must still be in the answer, after the learned candidates it displaces the last of.

    Regression: the learned fusion used live sources only to fill short rows, so with
    ``method = "learned"`` a new item never reached a user with a history."""
    monkeypatch.setenv("LLMRECALL_API_KEY", "k-learned")
    write = {"X-API-Key": "k-learned"}
    settings = ServeSettings(artifact_dir=learned_artifact, state_path=tmp_path / "s.sqlite",
                             channel_budget_ms=60_000)
    with TestClient(create_app(settings)) as client:
        before = client.post("/v1/recall", json={"history": ["50"], "k": K}).json()
        assert len(before["candidates"]) == K  # the learned channels fill the row
        item = {"item_id": "new-film-learned", "title": "Zorblax Returns", "text": "space"}
        assert client.put("/v1/items", json={"items": [item]}, headers=write).status_code == 200
        events = [{"user_id": f"fan-{i}", "item_id": it, "timestamp": 1e9 + j}
                  for i in range(5) for j, it in enumerate(["50", "new-film-learned"])]
        assert client.post("/v1/events", json={"events": events},
                           headers=write).status_code == 200
        after = client.post("/v1/recall", json={"history": ["50"], "k": K,
                                                "explain": True}).json()["candidates"]
    assert len(after) == K
    got = [c["item_id"] for c in after]
    assert "new-film-learned" in got
    hit = after[got.index("new-film-learned")]
    assert hit["channels"] == ["live_covisit"] and hit["score"] < 0
    # it sits after every learned candidate, which keep their order
    fitted = {"popularity", "itemcf", "ease"}  # LEARNED_CONFIG's channels
    learned = [c for c in after if fitted & set(c["channels"])]
    assert [c["item_id"] for c in learned] == [c["item_id"] for c in
                                               before["candidates"]][:len(learned)]
    assert got.index("new-film-learned") >= len(learned)


def test_the_service_answers_a_score_base_fusion_as_offline(learned_artifact, tmp_path):
    """The score base reads the channels' own scores: the service must pass them through
    (not ranks) and scale each list over the width the fit saw, so its answer is the
    offline fusion of the same lists, and differs from the rank table's."""
    import dataclasses

    copy = tmp_path / "version"
    shutil.copytree(resolve(learned_artifact), copy)
    table_model = LearnedFusion.load(copy / "fusion")
    channels = table_model.channels
    art = load_artifact(copy)
    scored = dataclasses.replace(
        table_model, base="score", reference=None, prefix=0,
        score_weights=np.linspace(1.0, 0.4, len(channels)).astype(np.float32),
        score_widths=np.array([art.pipeline.channel_k(nm) for nm in channels], np.int64))
    scored.save(copy / "fusion")
    art = load_artifact(copy)
    assert art.pipeline.fusion_model_.base == "score"
    lists, fused = _offline(art, USERS, K)
    by_table = table_model.fuse(lists, K, history_lengths=art.histories.lengths()[
        art.users.lookup(USERS)], weights=art.pipeline.weights)
    differs = 0
    with TestClient(create_app(ServeSettings(artifact_dir=copy,
                                             state_path=tmp_path / "state.sqlite"))) as client:
        for i, user in enumerate(USERS):
            response = client.post("/v1/recall", json={"user_id": user, "k": K})
            assert response.status_code == 200, response.text
            want = [int(j) for j in fused.ids[i] if j >= 0]
            got = [c["item_id"] for c in response.json()["candidates"]]
            assert got == art.items.raw(np.asarray(want)), user
            differs += not np.array_equal(fused.ids[i], by_table.ids[i])
    assert differs
