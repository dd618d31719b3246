"""Prompt optimisation: variants scored by validation recall, best saved and versioned."""

from __future__ import annotations

import json

import pytest

from llmrecall.channels.registry import channel_class
from llmrecall.errors import ConfigError
from llmrecall.tune.prompts import (
    GeneratorProposer,
    PromptVariant,
    ScoredVariant,
    channel_scorer,
    check_template,
    load_saved,
    optimise_prompts,
)

BASE = ("Here is what a user watched, oldest first:\n$history\n"
        "Write $count titles they may watch next, one per line.")


def test_templates_must_keep_the_placeholders():
    check_template(BASE)
    PromptVariant("x", "Items: $history")  # $count and $examples are optional
    PromptVariant("x", "${examples}Chosen: $history\nNext:")
    with pytest.raises(ConfigError, match="missing \\['history'\\]"):
        PromptVariant("x", "Write $count titles.")
    with pytest.raises(ConfigError, match="unknown \\['user'\\]"):
        PromptVariant("x", "$history $count $user")
    with pytest.raises(ConfigError, match="valid"):
        PromptVariant("x", "$history $count $")


def test_version_follows_template_and_params_not_name():
    a = PromptVariant("a", BASE, {"history_length": 10})
    assert PromptVariant("b", BASE, {"history_length": 10}).version == a.version
    assert PromptVariant("a", BASE, {"history_length": 20}).version != a.version
    assert PromptVariant("a", BASE + " ", {"history_length": 10}).version != a.version


def _itemcf(variant: PromptVariant):
    # a real channel whose answer depends on the variant: how much history it reads
    return channel_class("itemcf")(history_length=variant.params["history_length"])


@pytest.mark.slow
def test_best_variant_is_saved_with_its_score_and_replaced_only_by_a_better_one(split, tmp_path):
    score = channel_scorer(split.train, split.valid, _itemcf, "recall@50", max_users=300)
    variants = [PromptVariant(f"h{n}", BASE, {"history_length": n}) for n in (1, 5, 50)]
    out = tmp_path / "prompts" / "interest"
    search = optimise_prompts(variants, score, output=out)
    values = {s.variant.name: s.score for s in search.scored}
    assert len(values) == 3 and len(set(values.values())) == 3
    assert search.best.score == max(values.values())
    assert search.saved
    variant, record = load_saved(out)
    assert variant == search.best.variant
    assert record["score"] == search.best.score
    assert record["revision"] == 1
    assert record["evaluation"]["metric"] == "recall@50"
    assert record["evaluation"]["users"] == 300
    assert len(score.users) == 300 and set(score.users) <= set(split.valid.users.tolist())

    worst = min(search.scored, key=lambda s: s.score).variant
    again = optimise_prompts([worst], score, output=out)
    assert not again.saved  # a worse template never replaces the saved one
    assert load_saved(out)[1]["revision"] == 1

    # a new best (here: a proposer finds a longer history) bumps the revision
    def propose(best: list[ScoredVariant]) -> list[PromptVariant]:
        top = best[0].variant
        return [PromptVariant("longer", top.template, {"history_length": 200})]

    better = optimise_prompts([worst], score, proposer=propose, rounds=1, output=out)
    if better.best.score > record["score"]:
        assert better.saved
        new_record = json.loads((out.with_suffix(".json")).read_text())
        assert new_record["revision"] == 2
        assert new_record["history"][0]["version"] == record["version"]
    else:
        assert not better.saved


def test_edited_template_is_detected(tmp_path):
    from llmrecall.tune.prompts import save_best

    v = PromptVariant("a", BASE, {"n": 1})
    save_best(ScoredVariant(v, 0.5, 0.0, 0), tmp_path / "p", {"metric": "recall@50"})
    (tmp_path / "p.txt").write_text(BASE.replace("user", "person"))
    with pytest.raises(ConfigError, match="edited"):
        load_saved(tmp_path / "p")


@pytest.mark.slow
def test_local_generator_proposals_are_valid_or_dropped():
    from llmrecall.lm.generators import get_generator

    generator = get_generator("default")
    proposer = GeneratorProposer(generator, per_round=2, max_tokens=120)
    best = [ScoredVariant(PromptVariant("base", BASE, {"history_length": 10}), 0.1, 0.0, 0)]
    proposals = proposer(best)
    assert len(proposals) + proposer.rejected == 2
    for p in proposals:
        check_template(p.template)
        assert p.params == {"history_length": 10}


def test_starting_variants_cover_forms_languages_counts_and_history():
    from llmrecall.tune.prompts import starting_variants

    variants = starting_variants(languages=("en", "zh"), counts=(5,), history_lengths=(10, 30))
    assert len(variants) == 3 * 2 * 1 * 2
    assert len({v.version for v in variants}) == len(variants)
    assert {v.params["output"] for v in variants} == {"interest_profile", "search_queries",
                                                      "hypothetical_items"}
    for v in variants:
        check_template(v.template)  # the shipped templates use exactly $history and $count
