"""EASE restricted to the most popular items (``max_items``), which keeps large catalogs
affordable: the long tail is never recalled by EASE, the modelled items score as an EASE
fitted on them alone."""

import numpy as np

from llmrecall.channels.ease import EASE
from llmrecall.data import Catalog, Dataset, Interactions, Vocabulary


def _dataset(seed=0, n_users=60, n_items=30):
    rng = np.random.default_rng(seed)
    # item i is drawn with probability falling in i: low ids are the popular head
    p = 1.0 / np.arange(1, n_items + 1)
    users = np.repeat(np.arange(n_users), 8)
    items = np.concatenate([rng.choice(n_items, 8, replace=False, p=p / p.sum()) for _ in range(n_users)])
    log = Interactions.build(users, items)
    return Dataset("head-tail", Vocabulary(map(str, range(n_users))),
                   Vocabulary(map(str, range(n_items))), log, Catalog.empty(n_items))


def test_tail_items_are_never_recalled_and_head_scores_match_a_head_only_model():
    data = _dataset()
    full = EASE(regularization=5.0, max_items=None).fit(data)
    head = EASE(regularization=5.0, max_items=10).fit(data)
    assert len(head.items_) == 10
    counts = np.bincount(data.interactions.item, minlength=data.n_items)
    assert set(head.items_.tolist()) == set(np.argsort(-counts, kind="stable")[:10].tolist())
    users = np.arange(data.n_users, dtype=np.int32)
    history = data.histories()
    got = head.recall(users, 30, history).ids
    assert set(got[got >= 0].tolist()) <= set(head.items_.tolist())
    assert not np.array_equal(full.weights_.shape, head.weights_.shape)
    # the head-only model equals EASE fitted on the head columns alone
    sub = data.with_interactions(data.interactions.take(np.isin(data.interactions.item, head.items_)))
    alone = EASE(regularization=5.0, max_items=None).fit(sub)
    np.testing.assert_allclose(head.weights_, alone.weights_[np.ix_(head.items_, head.items_)], atol=1e-5)
