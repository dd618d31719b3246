"""The report of an interest prompt search: standard errors, best against default, and the
summary ``llmrecall tune-prompts`` prints and writes.

Every variant is scored on the same ``n`` validation users, each with one held-out target, so
a recall is a proportion of ``n`` trials and its binomial standard error is
``sqrt(p (1 - p) / n)`` (:func:`binomial_se`). Best and default are compared by their
difference and ``hypot(se_best, se_default)``, the standard error of a difference of two
independent proportions; the difference counts as real when it exceeds two of them. The
scores come from the same users, so they are not independent: when they are positively
correlated this overstates the error of the difference, i.e. the test is conservative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmrecall.tune.interest_prompts import default_row
from llmrecall.tune.prompts import PromptSearch, ScoredVariant


def binomial_se(value: float, n: int) -> float:
    """Standard error of a recall measured on ``n`` users with one target each
    (``sqrt(value (1 - value) / n)``; NaN for ``n = 0``)."""
    return float(np.sqrt(max(value * (1 - value), 0.0) / n)) if n else float("nan")


@dataclass(frozen=True)
class ReportRow:
    """One scored variant as the report shows it; ``mark`` is "best", "default", both or ""."""

    name: str
    version: str
    round: int
    score: float
    se: float
    seconds: float
    mark: str


@dataclass(frozen=True)
class Comparison:
    """Best against default: ``difference`` = best - default, ``se`` its standard error,
    ``significant`` when the difference exceeds ``2 * se``."""

    best: ScoredVariant
    default: ScoredVariant
    difference: float
    se: float
    significant: bool

    def sentence(self) -> str:
        """``best NAME S vs default S (difference ±D ± SE, more|not more than two standard
        errors)``."""
        return (f"best {self.best.variant.name} {self.best.score:.4f} vs default "
                f"{self.default.score:.4f} (difference {self.difference:+.4f} ± {self.se:.4f}, "
                f"{'more' if self.significant else 'not more'} than two standard errors)")


@dataclass(frozen=True)
class PromptReport:
    """What a prompt search found, ready to print and to write.

    Attributes:
        rows: one per scored variant, best first.
        summary: the JSON written beside the saved template (``OUTPUT.search.json``).
        comparison: best against the default variant; None when the default was not scored.
    """

    rows: list[ReportRow]
    summary: dict[str, Any]
    comparison: Comparison | None


def prompt_report(search: PromptSearch, *, metric: str, users: int, protocol: str, seed: int,
                  rejected_proposals: int = 0) -> PromptReport:
    """The report of ``search``, whose variants were scored by ``metric`` on ``users``
    validation users of ``protocol`` split with ``seed``."""
    best, default = search.best, default_row(search)
    rows = [ReportRow(s.variant.name, s.variant.version, s.round, s.score,
                      binomial_se(s.score, users), s.seconds,
                      " ".join(m for m, on in (("best", s is best), ("default", s is default))
                               if on))
            for s in search.scored]
    summary = {"metric": metric, "users": users, "protocol": protocol, "seed": seed,
               "best": {"name": best.variant.name, "version": best.variant.version,
                        "score": best.score, "se": binomial_se(best.score, users)},
               "default": None if default is None else {
                   "name": default.variant.name, "version": default.variant.version,
                   "score": default.score, "se": binomial_se(default.score, users)},
               "rejected_proposals": rejected_proposals,
               **search.as_dict()}
    comparison = None
    if default is not None:
        diff_se = float(np.hypot(summary["best"]["se"], summary["default"]["se"]))
        difference = best.score - default.score
        comparison = Comparison(best, default, difference, diff_se,
                                difference > 2 * diff_se)
    return PromptReport(rows, summary, comparison)
