"""The learned fusion's score base (``[fusion] score_base = true``): standardised scores, the
guard's third option, persistence, and the config hash it leaves alone when off."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from llmrecall.channels.base import Candidates
from llmrecall.config import PipelineConfig, load_config
from llmrecall.fusion import LearnedFusion, standardised_scores
from llmrecall.fusion_learn import GUARD_KS, fit_learned_fusion

N_ITEMS = 300


def test_standardised_scores_rows_padding_and_ties():
    scores = np.array([[3.0, 2.0, 1.0, -np.inf],   # padded
                       [5.0, 5.0, 5.0, 5.0],        # all equal: no information
                       [7.0, -np.inf, -np.inf, -np.inf],  # one score: no information
                       [10.0, 0.0, -10.0, -20.0]], np.float32)
    z = standardised_scores(scores)
    assert z.dtype == np.float32 and z.shape == scores.shape
    np.testing.assert_allclose(z[0, :3], np.array([2.0, 1.0, 0.0]) / np.std([3, 2, 1]),
                               rtol=1e-6)
    assert z[0, 3] == 0.0 and (z[1] == 0).all() and (z[2] == 0).all()
    assert z[3].min() == 0.0 and (np.diff(z[3]) < 0).all()
    # invariant to each row's scale and offset: only the spread within the row counts
    np.testing.assert_allclose(standardised_scores(scores[3:] * 7.0 - 3.0), z[3:], rtol=1e-5)


def _complementary(n_users: int = 800, seed: int = 0):
    """Two channels rank every item by a noisy signal of the user's target; each alone puts
    the target at the top for some users, and the sum of their standardised scores (the
    optimal rule for independent noise) for more. A third channel is pure noise."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, N_ITEMS, n_users)
    lists = {}
    for name, signal in (("a", 2.5), ("b", 2.5), ("noise", 0.0)):
        raw = rng.normal(size=(n_users, N_ITEMS))
        raw[np.arange(n_users), target] += signal
        order = np.argsort(-raw, axis=1)[:, :200].astype(np.int32)
        lists[name] = Candidates(order, np.take_along_axis(raw, order, 1).astype(np.float32))
    targets = sp.csr_matrix((np.ones(n_users, np.float32), (np.arange(n_users), target)),
                            shape=(n_users, N_ITEMS))
    return lists, targets, rng.integers(3, 300, n_users)


def test_the_guard_takes_the_score_base_where_scores_carry_what_ranks_do_not(tmp_path):
    lists, targets, lengths = _complementary()
    model = fit_learned_fusion(lists, targets, lengths, N_ITEMS, k=200, score_base=True)
    oof = model.report["out_of_fold_recall"]
    assert "score" in oof and model.base == "score", model.report
    weights = model.report["score_weights"]
    assert weights["a"] > 0 and weights["b"] > 0 and weights["noise"] < 0.2 * weights["a"]
    assert oof["score"]["10"] > oof["best_channel"]["10"] + 0.05
    for k in map(str, GUARD_KS):
        assert oof["fused"][k] >= oof["best_channel"][k]
    # persistence: the same lists after a save and load
    fused = model.fuse(lists, 200, history_lengths=lengths, n_items=N_ITEMS).ids
    model.save(tmp_path / "fusion")
    again = LearnedFusion.load(tmp_path / "fusion")
    np.testing.assert_array_equal(
        again.fuse(lists, 200, history_lengths=lengths, n_items=N_ITEMS).ids, fused)
    # a longer list online (a request for more candidates) is scaled over the fitted width
    longer = {nm: Candidates(np.pad(c.ids, ((0, 0), (0, 50)), constant_values=-1),
                             np.pad(c.scores, ((0, 0), (0, 50)), constant_values=-np.inf))
              for nm, c in lists.items()}
    np.testing.assert_array_equal(
        model.fuse(longer, 200, history_lengths=lengths, n_items=N_ITEMS).ids, fused)


def test_the_score_base_needs_scores_not_ids():
    lists, targets, lengths = _complementary(200)
    ids_only = {nm: c.ids for nm, c in lists.items()}
    with pytest.raises(ValueError, match="scores"):
        fit_learned_fusion(ids_only, targets, lengths, N_ITEMS, k=200, score_base=True)
    model = fit_learned_fusion(lists, targets, lengths, N_ITEMS, k=200, score_base=True)
    if model.base == "score":
        with pytest.raises(ValueError, match="Candidates"):
            model.fuse(ids_only, 200, history_lengths=lengths, n_items=N_ITEMS)
    with pytest.raises(ValueError, match="score weight"):
        LearnedFusion(["a"], np.zeros((1, 1, 1), np.float32), np.zeros(0, np.int64),
                      base="score")


def test_offering_the_score_base_leaves_the_learned_table_unchanged():
    lists, targets, lengths = _complementary(400)
    without = fit_learned_fusion(lists, targets, lengths, N_ITEMS, k=200)
    with_score = fit_learned_fusion(lists, targets, lengths, N_ITEMS, k=200, score_base=True)
    np.testing.assert_array_equal(without.table, with_score.table)
    assert without.score_weights is None and "score" not in \
        without.report["out_of_fold_recall"]


def test_score_base_is_left_out_of_the_config_hash_when_off():
    config = load_config("default")
    assert config.fusion.score_base  # the packaged default offers it

    def with_score_base(on: bool) -> PipelineConfig:
        return PipelineConfig.model_validate(
            {**config.model_dump(), "fusion": {**config.fusion.model_dump(), "score_base": on}})

    # the packaged default without it hashes as it was published before the setting existed
    assert with_score_base(False).config_hash() == "7064a8749e00d3f5"
    assert with_score_base(True).config_hash() == config.config_hash() != "7064a8749e00d3f5"


def test_the_guards_choice_is_said_with_its_base():
    from llmrecall.evaluate.experiment import guard_choice

    ks = [10, 20, 50, 100, 200]
    assert guard_choice({"reference": "textcf", "prefix": 5, "base": "score",
                         "guard_ks": ks}) == "textcf first 5, then the score base's list"
    assert guard_choice({"reference": None, "prefix": 0, "base": "rrf",
                         "guard_ks": ks}) == "the config's RRF"
    assert guard_choice({"reference": "sasrec", "prefix": 200, "base": "learned",
                         "guard_ks": ks}) == "sasrec alone"
