import numpy as np
import pytest

from llmrecall.errors import ConfigError
from llmrecall.interest.matching import HybridMatcher, merge_user_texts, rrf_lists
from llmrecall.lexical import BM25Index

DOCS = ["Toy Story. Animation", "GoldenEye. Action Thriller", "Four Rooms. Comedy",
        "Toy Soldiers. Action"]


def test_bm25_known_answers_and_padding():
    index = BM25Index(DOCS)
    ids, scores = index.search(["toy story", "thriller", "zzz unknown", ""], 3)
    assert ids.shape == scores.shape == (4, 3)
    assert ids[0, 0] == 0 and ids[0, 1] == 3 and ids[0, 2] == -1  # story only in doc 0
    assert ids[1].tolist() == [1, -1, -1]
    assert (ids[2:] == -1).all() and np.isneginf(scores[2:]).all()
    assert scores[0, 0] > scores[0, 1]


def test_bm25_rejects_bad_parameters():
    with pytest.raises(ConfigError):
        BM25Index(DOCS, k1=0)


def test_rrf_lists_fuses_by_reciprocal_rank():
    a = np.array([[1, 2, 3]], np.int32)
    b = np.array([[3, 2, -1]], np.int32)
    ids, scores = rrf_lists([(a, 1.0), (b, 1.0)], 4, rrf_k=0.0)
    # 1: 1, 2: 1/2+1/2 = 1, 3: 1/3+1 = 1.33 -> 3 first; 1 and 2 tie -> lower id first
    assert ids.tolist() == [[3, 1, 2, -1]]
    assert scores[0, 0] == pytest.approx(4 / 3)


def test_merge_rrf_versus_round_robin():
    # one user, two texts: text 0 ranks [5, 6, 7], text 1 ranks [8, 7, 9]
    match = np.array([[5, 6, 7], [8, 7, 9]], np.int32)
    owner, rank, index = np.array([0, 0]), np.array([0, 1]), np.array([10, 11])
    ids, _, ev = merge_user_texts(owner, rank, index, match, 1, 6, method="round_robin",
                                  exclude_seen=False)
    assert ids.tolist() == [[5, 8, 6, 7, 9, -1]]
    assert ev.tolist() == [[10, 11, 10, 11, 11, -1]]  # 7 is ranked higher by text 1
    ids, _, _ = merge_user_texts(owner, rank, index, match, 1, 3, method="rrf", rrf_k=1.0,
                                 exclude_seen=False)
    assert ids[0, 0] == 7  # both texts agree on 7
    allowed = np.zeros(10, bool)
    allowed[[6, 9]] = True
    ids, _, _ = merge_user_texts(owner, rank, index, match, 1, 3, allowed=allowed,
                                 exclude_seen=False)
    assert sorted(ids[0][ids[0] >= 0].tolist()) == [6, 9]
    with pytest.raises(ConfigError):
        merge_user_texts(owner, rank, index, match, 1, 3, method="borda")


def test_hybrid_matcher_lexical_only_without_embedder():
    matcher = HybridMatcher(DOCS, None, per_text_k=2)
    assert matcher.item_vectors is None and matcher.dense_weight == 0
    ids, _ = matcher.match(["golden eye thriller", "toy"])
    assert ids[0, 0] == 1 and set(ids[1].tolist()) == {0, 3}
    with pytest.raises(ConfigError):
        HybridMatcher(DOCS, None, lexical_weight=0)
