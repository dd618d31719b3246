"""Channel contract checks for llm_interest, search_query and llm_knowledge on toy data
(BM25 matching only, so they run in milliseconds; real models are in test_real_models.py)."""

import numpy as np
import pytest
from interest_toydata import make_dataset

from llmrecall.channels.interest import InterestChannel, select_users
from llmrecall.channels.knowledge import KnowledgeChannel
from llmrecall.channels.registry import load_channel
from llmrecall.channels.search import SearchQueryChannel, recent_queries
from llmrecall.errors import ConfigError, NotFittedError
from llmrecall.interest.knowledge import clean_keywords, enrich_dataset


def interest_channel(toy, texts):
    return InterestChannel(embedder=None).set_texts(toy, texts)


def test_interest_recall_follows_the_texts_and_reports_them(toy):
    channel = interest_channel(toy, {0: ["The Godfather Part II"], 2: ["Jurassic Park", "Alien"]})
    history = toy.histories()
    out = channel.recall(np.array([0, 1, 2, 3]), 3, history)
    assert out.ids.shape == (4, 3) and out.evidence_kind == "text"
    assert out.ids[0, 0] == 5  # "Godfather: Part II, The"
    assert out.evidence_text[out.evidence[0, 0]] == "The Godfather Part II"
    assert {out.ids[2, 0], out.ids[2, 1]} == {11, 6}  # Jurassic Park, Alien
    assert (out.ids[1] == -1).all() and (out.ids[3] == -1).all()  # no texts: nothing
    assert np.isneginf(out.scores[1]).all()


def test_interest_batch_equals_single_and_unknown_users(toy):
    channel = interest_channel(toy, {0: ["Godfather"], 2: ["Alien", "Titanic"]})
    history = toy.histories()
    batch = channel.recall(np.array([2, 0]), 4, history)
    for row, user in enumerate([2, 0]):
        single = channel.recall(np.array([user]), 4, history)
        assert np.array_equal(single.ids[0], batch.ids[row])
        assert [single.evidence_text[e] for e in single.evidence[0] if e >= 0] == \
               [batch.evidence_text[e] for e in batch.evidence[row] if e >= 0]
    far = channel.recall(np.array([99]), 4, history)  # a user the channel never saw
    assert (far.ids == -1).all()


def test_interest_excludes_seen_and_respects_allowed(toy):
    channel = interest_channel(toy, {2: ["Titanic", "Sense and Sensibility", "Alien"]})
    history = toy.histories()  # user 2 has items 8 (Titanic) and 9 (Sense and Sensibility)
    ids = channel.recall(np.array([2]), 5, history).ids[0]
    assert 8 not in ids and 9 not in ids and ids[0] == 6
    allowed = np.zeros(toy.n_items, bool)
    allowed[7] = True
    ids = channel.recall(np.array([2]), 5, history, allowed=allowed).ids[0]
    assert set(ids[ids >= 0].tolist()) <= {7}


def test_interest_save_load_round_trip(toy, tmp_path):
    channel = interest_channel(toy, {0: ["Godfather"], 2: ["Alien", "Titanic"]})
    loaded = load_channel(channel.save(tmp_path / "interest"))
    history = toy.histories()
    a = channel.recall(np.array([0, 2]), 4, history)
    b = loaded.recall(np.array([0, 2]), 4, history)
    assert np.array_equal(a.ids, b.ids) and a.evidence_text == b.evidence_text
    assert loaded.texts_of(2) == ["Alien", "Titanic"]


def test_interest_validates_parameters(toy):
    with pytest.raises(ConfigError, match="n_texts"):
        InterestChannel(settings={"n_texts": 0})
    with pytest.raises(ConfigError):
        InterestChannel(merge="borda")
    with pytest.raises(NotFittedError):
        InterestChannel().recall(np.array([0]), 3, toy.histories())
    with pytest.raises(ConfigError, match="not in the dataset"):
        select_users(toy, None, ["0", "nobody"], 0)
    assert select_users(toy, None, None, 0).tolist() == [0, 1, 2]  # user 3 has no history
    assert len(select_users(toy, 2, None, 0)) == 2


def test_recent_queries_newest_first_distinct():
    toy = make_dataset([[0], [1]], searches=[(0, "space opera", 1.0), (0, "godfather", 3.0),
                                              (0, "space  opera", 2.0), (1, "alien", 1.0),
                                              (0, "titanic", 0.5)])
    got = recent_queries(toy.searches, toy.n_users, 2)
    assert got == {0: ["godfather", "space opera"], 1: ["alien"]}


def test_search_channel_retrieves_what_was_searched():
    toy = make_dataset([[0], [3], [8]], searches=[(0, "godfather part", 1.0),
                                                  (1, "jurassic", 2.0)])
    channel = SearchQueryChannel(embedder=None).fit(toy)
    out = channel.recall(np.array([0, 1, 2]), 3, toy.histories())
    assert out.ids[0, 0] == 5 and out.evidence_text[out.evidence[0, 0]] == "godfather part"
    assert out.ids[1, 0] == 11
    assert (out.ids[2] == -1).all()  # never searched


def test_search_channel_without_a_log_is_empty(toy):
    channel = SearchQueryChannel(embedder=None).fit(toy)
    assert (channel.recall(np.array([0, 1]), 3, toy.histories()).ids == -1).all()


def test_clean_keywords():
    answer = "Keywords: 1. space, Star Wars, epic battle; space, a very long phrase that goes on and on"
    assert clean_keywords(answer, "Star Wars", 5) == "space, epic battle"
    prose = "Toy Story is a light-hearted,  comedic tale of friendship and adventure"
    assert clean_keywords(prose, "Toy Story", 5) == " ".join(prose.split())


def test_enrich_dataset_adds_a_text_field(toy):
    knowledge = [""] * toy.n_items
    knowledge[3] = "toys, friendship"
    enriched = enrich_dataset(toy, knowledge)
    assert "keywords: toys, friendship" in enriched.catalog.texts()[3]
    assert "keywords" not in enriched.catalog.texts()[0]
    with pytest.raises(Exception, match="entries"):
        enrich_dataset(toy, ["x"])


def test_knowledge_channel_uses_the_enrichment():
    # user 0 watched Toy Story; only the knowledge links it to Jurassic Park
    toy = make_dataset([[3], [4]])
    knowledge = [""] * toy.n_items
    knowledge[3] = "dinosaurs adventure family"
    knowledge[11] = "dinosaurs adventure family"
    plain = KnowledgeChannel(knowledge=False, embedder=None).fit(toy)
    enriched = KnowledgeChannel(embedder=None).use(knowledge_texts=knowledge).fit(toy)
    history = toy.histories()
    assert 11 not in plain.recall(np.array([0]), 5, history).ids[0]
    out = enriched.recall(np.array([0]), 5, history)
    assert out.ids[0, 0] == 11 and out.evidence_kind == "item" and out.evidence[0, 0] == 3
    # the Godfather films share words in their plain titles
    assert plain.recall(np.array([1]), 3, history).ids[1 - 1, 0] == 5


def test_production_example_config_builds_the_channels():
    from pathlib import Path

    from llmrecall.channels import channel_class
    from llmrecall.config import load_config

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "llm_interest_openai.toml"
    config = load_config(path)
    kinds = {c.kind: c for c in config.channels}
    interest = channel_class("llm_interest")(**kinds["llm_interest"].params)
    assert interest.generator["backend"] == "openai"
    assert interest.settings["constrain"] == "none"
    channel_class("llm_knowledge")(**kinds["llm_knowledge"].params)
    channel_class("search_query")(**kinds["search_query"].params)


def test_knowledge_artifact_saved_with_the_old_neighbours_name_still_loads(tmp_path):
    # the parameter (and its learned table) was renamed `neighbours` -> `neighbors`; an
    # artifact written before the rename loads and recalls the same
    import json

    toy = make_dataset([[3], [4]])
    channel = KnowledgeChannel(knowledge=False, embedder=None, neighbors=4).fit(toy)
    folder = channel.save(tmp_path / "knowledge")
    meta = json.loads((folder / "params.json").read_text())
    meta["params"]["neighbours"] = meta["params"].pop("neighbors")
    (folder / "params.json").write_text(json.dumps(meta))
    with np.load(folder / "state.npz") as npz:
        arrays = {("neighbours_" if k == "neighbors_" else k): npz[k] for k in npz.files}
    np.savez(folder / "state.npz", **arrays)
    loaded = load_channel(folder)
    assert loaded.neighbors == 4
    history = toy.histories()
    users = np.array([0, 1])
    assert np.array_equal(loaded.recall(users, 5, history).ids, channel.recall(users, 5, history).ids)
