"""The serving hooks of the language-model channels: ``add_items`` and ``recall_query``.

On the topic domain (40 items, ids 0-39, four topics of ten): items added after fit get a
vector from their text at once, an id that exists is updated, the allow mask is respected,
and recalls keep working when the history's item vocabulary is wider or narrower than the
channel's.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmrecall.channels.semantic import SemanticItemToItem, SemanticUserInterest
from llmrecall.channels.sequential import SASRec
from llmrecall.channels.textcf import TextCF
from llmrecall.data.dataset import Histories, Interactions
from llmrecall.errors import DataError

from .lm_data import N_SINGLE, make_dataset, topic_of, user_topics

SPACE = 40  # new ids, right after the fitted catalog
COOKING = 41
NEW_TEXTS = ["Orbital rocket mission to Mars and Jupiter moons. Categories: Astronomy, Space exploration",
             "Rustic Italian pasta and pizza cookbook. Categories: Cooking, Food"]
SPACE_USER = 0  # users 0-19 stick to topic u % 4; topic 0 is space, 1 is cooking
COOKING_USER = 1


def history_of(items_per_user: dict[int, list[int]], n_users: int, n_items: int) -> Histories:
    users = [u for u, items in items_per_user.items() for _ in items]
    items = [i for its in items_per_user.values() for i in its]
    log = Interactions.build(user=users, item=items, time=np.arange(len(items), dtype=float))
    return Histories.from_interactions(log, n_users, n_items)


@pytest.fixture(scope="module", autouse=True)
def _private_lm_cache(request):
    """Every test here embeds through the session's private cache (``lm_cache``)."""
    request.getfixturevalue("lm_cache")


@pytest.fixture(scope="module")
def data():
    return make_dataset()


@pytest.fixture(params=[SemanticItemToItem, SemanticUserInterest], ids=["i2i", "user"])
def semantic(request, data):
    return request.param().fit(data)


def test_semantic_add_items_grows_arrays_and_index(semantic, data):
    d = semantic.item_vectors_.shape[1]
    semantic.add_items(np.array([SPACE, COOKING], np.int32), NEW_TEXTS)
    assert semantic.item_vectors_.shape == (42, d) and semantic.item_vectors_.dtype == np.float32
    assert np.allclose(np.linalg.norm(semantic.item_vectors_[[SPACE, COOKING]], axis=1), 1, atol=1e-5)
    assert semantic.popularity_.shape == (42,) and (semantic.popularity_[[SPACE, COOKING]] == 0).all()
    assert semantic.popularity_[:40].sum() == len(data.interactions.item)  # fitted counts untouched
    assert len(semantic._index) == 42


def test_semantic_recall_query(semantic):
    semantic.add_items(np.array([SPACE, COOKING], np.int32), NEW_TEXTS)
    c = semantic.recall_query(["rocket mission to mars", None, "  ", "pasta and pizza"], 5)
    assert c.ids.shape == (4, 5) and c.ids.dtype == np.int32 and c.scores.dtype == np.float32
    assert c.ids[0, 0] == SPACE and c.ids[3, 0] == COOKING
    assert (topic_of(c.ids[0, 1:]) == 0).all() and (topic_of(c.ids[3, 1:]) == 1).all()
    assert (c.ids[1:3] == -1).all() and np.isneginf(c.scores[1:3]).all()  # no query: empty
    assert (np.diff(c.scores[0]) <= 0).all()
    # the allow mask, including a mask shorter than the index (items added after it)
    allowed = np.ones(42, bool)
    allowed[SPACE] = False
    assert SPACE not in semantic.recall_query(["rocket mission to mars"], 5, allowed).ids
    short = semantic.recall_query(["rocket mission to mars", "pasta and pizza"], 40, np.ones(40, bool))
    assert not np.isin(short.ids, [SPACE, COOKING]).any()


def test_semantic_update_replaces_the_vector(semantic):
    semantic.add_items(np.array([SPACE], np.int32), NEW_TEXTS[:1])
    before = semantic.item_vectors_.copy()
    semantic.add_items(np.array([SPACE], np.int32), ["Creamy lasagna and risotto recipes"])
    assert semantic.item_vectors_.shape == before.shape and len(semantic._index) == 41
    assert not np.allclose(semantic.item_vectors_[SPACE], before[SPACE])
    assert np.array_equal(semantic.item_vectors_[:40], before[:40])
    assert semantic.recall_query(["lasagna and risotto"], 1).ids[0, 0] == SPACE
    assert SPACE not in semantic.recall_query(["rocket mission to mars"], 3).ids
    # an existing fitted item is updated the same way, keeping its popularity
    pop = semantic.popularity_[5]
    semantic.add_items(np.array([5], np.int32), ["Deep sea diving with whales"])
    assert semantic.recall_query(["whales diving"], 1).ids[0, 0] == 5
    assert semantic.popularity_[5] == pop


def test_semantic_history_with_new_items_and_wider_vocabulary(semantic):
    semantic.add_items(np.array([SPACE, COOKING], np.int32), NEW_TEXTS)
    # the service's vocabulary is wider than the channel's: 45 items, 43 and 44 unknown here
    h = history_of({0: [SPACE, 43], 1: [44]}, 2, 45)
    c = semantic.recall(np.array([0, 1], np.int32), 5, h, explain=True)
    assert (c.ids < 42).all() and SPACE not in c.ids[0]  # seen items are excluded
    assert (topic_of(c.ids[0]) == 0).all() and (c.evidence[0] == SPACE).all()
    # user 1 only has an item unknown to the channel: the popularity fallback, no new items
    assert not np.isin(c.ids[1], [SPACE, COOKING]).any() and (c.evidence[1] == -1).all()
    # and a history narrower than the channel (items added while a request runs)
    narrow = history_of({0: [0, 1]}, 1, 40)
    c = semantic.recall(np.array([0], np.int32), 40, narrow, allowed=np.ones(40, bool))
    assert (c.ids < 40).all()


def test_add_items_rejects_bad_input(semantic):
    with pytest.raises(DataError, match="2 ids for 1 texts"):
        semantic.add_items(np.array([40, 41]), ["one"])
    with pytest.raises(DataError, match="repeat"):
        semantic.add_items(np.array([40, 40]), ["one", "two"])
    with pytest.raises(DataError, match=">= 0"):
        semantic.add_items(np.array([-1]), ["one"])


def test_textcf_new_items_get_their_mlp_image_in_every_layer(data):
    import torch

    channel = TextCF(dim=32, hidden=64, epochs=10, batch_size=128, lr=3e-3).fit(data)
    layers_before = channel.item_layers_.copy()
    channel.add_items(np.array([SPACE, COOKING], np.int32), NEW_TEXTS)
    assert channel.item_layers_.shape == (3, 42, 32) and channel.item_vectors_.shape == (42, 32)
    assert channel.text_vectors_.shape[0] == 42 and channel.item_degree_[40:].tolist() == [0, 0]
    with torch.no_grad():
        image = channel.mlp_(torch.from_numpy(channel.text_vectors_[40:])).numpy()
    assert np.allclose(channel.item_layers_[:, 40:], image[None], atol=1e-5)
    unit = image / np.linalg.norm(image, axis=1, keepdims=True)
    assert np.allclose(channel.item_vectors_[40:], unit, atol=1e-5)
    assert np.array_equal(channel.item_layers_[:, :40], layers_before)
    # scored at once for a history in the service's grown vocabulary (45 items)
    h = data.histories()
    wide = Histories(h.indptr, h.items, h.times, h.weights, 45)
    users = np.arange(N_SINGLE, dtype=np.int32)
    scores = channel.score(users, wide)
    assert scores.shape == (N_SINGLE, 45) and np.isfinite(scores[:, :42]).all()
    assert np.isneginf(scores[:, 42:]).all()
    topic = np.array([user_topics(u)[0] for u in users])
    space, cooking = topic == 0, topic == 1
    assert (scores[space, SPACE] > scores[space, COOKING]).all()
    assert (scores[cooking, COOKING] > scores[cooking, SPACE]).all()
    # a fitted item with interactions keeps its propagated layers, gets a new layer 0
    channel.add_items(np.array([3], np.int32), ["Creamy lasagna and risotto recipes"])
    assert np.array_equal(channel.item_layers_[1:, 3], layers_before[1:, 3])
    assert not np.allclose(channel.item_layers_[0, 3], layers_before[0, 3])


def test_sasrec_fuse_scores_new_items_from_text(data):
    small = {"dim": 32, "max_len": 10, "epochs": 5, "batch_size": 32, "lr": 3e-3}
    channel = SASRec(text_init="fuse", **small).fit(data)
    h = data.histories()
    users = np.arange(4, dtype=np.int32)
    before = channel.score(users, h)
    channel.add_items(np.array([SPACE, COOKING], np.int32), NEW_TEXTS)
    assert channel.n_items_ == 42 and channel.popularity_.shape == (42,)
    wide = Histories(h.indptr, h.items, h.times, h.weights, 42)
    after = channel.score(users, wide)
    assert np.isfinite(after).all()
    assert np.allclose(after[:, :40], before, atol=1e-4)  # fitted items are unchanged
    adapted = channel.model_.text_adapter(channel.model_.text[1:]).detach().numpy()
    assert np.allclose(channel.model_.items()[SPACE + 1].detach().numpy(), adapted[SPACE], atol=1e-5)
    # "none" has no text to go on: new items stay unknown
    plain = SASRec(text_init="none", **{**small, "epochs": 1}).fit(data)
    plain.add_items(np.array([SPACE], np.int32), NEW_TEXTS[:1])
    assert plain.n_items_ == 40 and np.isneginf(plain.score(users, wide)[:, 40:]).all()
