"""The prompt-search report: binomial standard errors, best against default, the summary."""

from __future__ import annotations

import math

import pytest

from llmrecall.tune.prompt_report import binomial_se, prompt_report
from llmrecall.tune.prompts import PromptSearch, PromptVariant, ScoredVariant


@pytest.mark.parametrize("p, n", [(0.25, 100), (0.5, 4), (0.02, 943), (0.999, 10)])
def test_binomial_se_is_the_spread_of_a_proportion(p, n):
    # oracle: the variance of the mean of n Bernoulli(p) trials, summed term by term
    variance = sum((1 - p) ** 2 * p + (0 - p) ** 2 * (1 - p) for _ in range(n)) / n ** 2
    assert binomial_se(p, n) == pytest.approx(math.sqrt(variance), rel=1e-12)


def test_binomial_se_edges():
    assert binomial_se(0.0, 50) == 0.0 == binomial_se(1.0, 50)
    assert math.isnan(binomial_se(0.3, 0))


def _search(scores: dict[str, float]) -> PromptSearch:
    scored = [ScoredVariant(PromptVariant(name, f"$history {name}"), score, 2.0, i % 2)
              for i, (name, score) in enumerate(sorted(scores.items(), key=lambda kv: -kv[1]))]
    return PromptSearch(scored, saved=True, path=None)


def test_report_compares_best_with_default():
    search = _search({"default": 0.20, "fewshot/h30": 0.30, "chat/titles": 0.10})
    report = prompt_report(search, metric="recall@50", users=100, protocol="loo", seed=3,
                           rejected_proposals=1)
    assert [r.name for r in report.rows] == ["fewshot/h30", "default", "chat/titles"]
    assert [r.mark for r in report.rows] == ["best", "default", ""]
    se_best, se_default = math.sqrt(0.3 * 0.7 / 100), math.sqrt(0.2 * 0.8 / 100)
    assert report.rows[0].se == pytest.approx(se_best)
    c = report.comparison
    assert c is not None and c.best.variant.name == "fewshot/h30"
    assert c.difference == pytest.approx(0.10)
    assert c.se == pytest.approx(math.sqrt(se_best ** 2 + se_default ** 2))  # 0.0608
    assert not c.significant  # 0.10 < 2 x 0.0608
    assert c.sentence() == ("best fewshot/h30 0.3000 vs default 0.2000 (difference +0.1000 "
                            "± 0.0608, not more than two standard errors)")
    s = report.summary
    assert list(s)[:7] == ["metric", "users", "protocol", "seed", "best", "default",
                           "rejected_proposals"]
    assert s["best"] == {"name": "fewshot/h30", "version": search.best.variant.version,
                         "score": 0.30, "se": pytest.approx(se_best)}
    assert s["default"]["se"] == pytest.approx(se_default)
    assert (s["metric"], s["users"], s["protocol"], s["seed"], s["rejected_proposals"]) == \
        ("recall@50", 100, "loo", 3, 1)
    assert s["saved"] is True and len(s["scored"]) == 3


def test_a_large_gap_is_more_than_two_standard_errors():
    report = prompt_report(_search({"default": 0.10, "better": 0.40}), metric="recall@50",
                           users=400, protocol="loo", seed=0)
    assert report.comparison is not None and report.comparison.significant
    assert "more than two standard errors" in report.comparison.sentence()
    assert "not more" not in report.comparison.sentence()


def test_default_best_and_missing_default():
    alone = prompt_report(_search({"default": 0.2, "x": 0.1}), metric="recall@50", users=10,
                          protocol="loo", seed=0)
    assert alone.rows[0].mark == "best default"
    assert alone.comparison is not None and alone.comparison.difference == 0.0
    without = prompt_report(_search({"x": 0.2}), metric="recall@50", users=10, protocol="loo",
                            seed=0)
    assert without.comparison is None and without.summary["default"] is None
