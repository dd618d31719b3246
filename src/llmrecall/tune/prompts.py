"""Prompt optimisation: score prompt variants by validation recall, keep the best, versioned.

A :class:`PromptVariant` is a template text plus the parameters that shape the generation
around it (how many texts, how much history, which output form, which language). A scorer
turns a variant into a number: the validation recall of the generated-interest channel built
with that variant, on a sample of validation users (:func:`channel_scorer`). The search
(:func:`optimise_prompts`) scores a starting set, optionally asks a generator to propose new
variants from the best ones (:class:`GeneratorProposer`) for a few rounds, and saves the best
template as a text file with a JSON sidecar recording its version (content hash), score,
metric and revision. A saved template is only replaced by one that scores higher under the
same evaluation (metric and user sample).
"""

from __future__ import annotations

import hashlib
import json
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from llmrecall.channels.base import Channel
from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError
from llmrecall.evaluate.metrics import ranking_metrics
from llmrecall.evaluate.protocols import EvalTask
from llmrecall.interest.jobs import TEMPLATE_OPTIONAL, TEMPLATE_REQUIRED, check_interest_template
from llmrecall.tune.objective import parse_metric

#: placeholders a prompt must keep (the user's items) and may use (how many texts to write,
#: the few-shot example blocks); the interest job fills exactly these
REQUIRED_FIELDS = TEMPLATE_REQUIRED
OPTIONAL_FIELDS = TEMPLATE_OPTIONAL


@dataclass(frozen=True)
class PromptVariant:
    """One candidate prompt.

    Attributes:
        name: a label for reports (not part of the identity).
        template: ``string.Template`` text with a ``$history`` placeholder; ``$count`` and
            ``$examples`` are optional (see :func:`check_template`).
        params: generation settings the scorer passes on (e.g. ``history_length``,
            ``n_texts``, ``output`` "profile" | "queries" | "titles", ``language``).
    """

    name: str
    template: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_template(self.template, where=f"prompt variant {self.name!r}")
        json.dumps(self.params)  # params must be JSON: they go to the sidecar

    @property
    def version(self) -> str:
        """First 16 hex digits of the SHA-256 of template and params: the variant's identity."""
        blob = json.dumps({"template": self.template, "params": self.params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "template": self.template,
                "params": self.params}


def check_template(text: str, where: str = "template") -> None:
    """ConfigError unless ``text`` is a valid template with ``$history`` and no placeholders
    besides ``$count`` and ``$examples``."""
    check_interest_template(text, where)


#: the shipped history templates, one per output form (llmrecall/lm/prompts/<lang>/<name>.txt)
OUTPUT_FORMS = ("interest_profile", "search_queries", "hypothetical_items")


def starting_variants(forms: Sequence[str] = OUTPUT_FORMS, languages: Sequence[str] = ("en",),
                      counts: Sequence[int] = (5, 10),
                      history_lengths: Sequence[int] = (10, 30)) -> list[PromptVariant]:
    """The grid of shipped templates x output form x language x count x history length.

    Params: ``output`` (the form), ``language``, ``count`` (texts asked for) and
    ``history_length`` (most recent items shown); a scorer's ``build`` passes them on.
    """
    from llmrecall.lm.prompts import load_template

    out = []
    for form in forms:
        for lang in languages:
            text = load_template(form, lang).text
            for count in counts:
                for length in history_lengths:
                    out.append(PromptVariant(
                        f"{form}/{lang}/n{count}/h{length}", text,
                        {"output": form, "language": lang, "count": int(count),
                         "history_length": int(length)}))
    return out


Scorer = Callable[[PromptVariant], float]


class ChannelScorer(Protocol):
    """The :data:`Scorer` that :func:`channel_scorer` returns, with its two attributes."""

    evaluation: dict[str, Any]
    users: np.ndarray

    def __call__(self, variant: PromptVariant) -> float: ...


def channel_scorer(train: Dataset, valid: EvalTask, build: Callable[[PromptVariant], Channel],
                   metric: str = "recall@50", *, max_users: int | None = 100,
                   seed: int = 0) -> ChannelScorer:
    """A scorer: ``build(variant)`` is fitted on ``train`` and scored on validation users.

    Only a seeded sample of at most ``max_users`` validation users is scored (generation
    is the expensive part). The scorer's ``evaluation`` attribute describes the sample and
    metric, so saved scores are only compared with scores measured the same way; its
    ``users`` attribute holds the sampled dense user ids.
    """
    name, k = parse_metric(metric)
    order = np.random.default_rng(seed).permutation(len(valid.users))
    if max_users is not None:
        order = np.sort(order[:max_users])
    users, targets = valid.users[order], valid.targets[order]

    def score(variant: PromptVariant) -> float:
        channel = build(variant).fit(train)
        ids = channel.recall(users, k, valid.history, allowed=valid.candidate_mask).ids
        return ranking_metrics(ids, targets, [k], valid.n_items)[f"{name}@{k}"]

    # cast: the function becomes a ChannelScorer once the two attributes are set, here
    scorer = cast(ChannelScorer, score)
    scorer.evaluation = {"metric": f"{name}@{k}", "users": int(len(users)), "seed": seed,
                         "users_hash": hashlib.sha256(users.tobytes()).hexdigest()[:16]}
    #: int32[u] the dense users scored, for channels that generate for those users only
    scorer.users = users
    return scorer


@dataclass
class ScoredVariant:
    variant: PromptVariant
    score: float
    seconds: float
    round: int


@dataclass
class PromptSearch:
    """What :func:`optimise_prompts` tried, best first, and where the best was saved."""

    scored: list[ScoredVariant]
    saved: bool
    path: Path | None

    @property
    def best(self) -> ScoredVariant:
        return self.scored[0]

    def as_dict(self) -> dict[str, Any]:
        return {"saved": self.saved, "path": None if self.path is None else str(self.path),
                "scored": [{**s.variant.as_dict(), "score": s.score, "seconds": s.seconds,
                            "round": s.round} for s in self.scored]}


Proposer = Callable[[list[ScoredVariant]], list[PromptVariant]]


def optimise_prompts(variants: Sequence[PromptVariant], score: Scorer, *,
                     proposer: Proposer | None = None, rounds: int = 0, keep: int = 3,
                     output: str | Path | None = None,
                     progress: Callable[[str], None] | None = None) -> PromptSearch:
    """Score ``variants``; for ``rounds`` rounds let ``proposer`` add new ones from the
    ``keep`` best; save the best to ``output`` (``<name>.txt`` + ``<name>.json``).

    Identical variants (same :attr:`PromptVariant.version`) are scored once.
    """
    if not variants:
        raise ConfigError("optimise_prompts needs at least one prompt variant")
    say = progress or (lambda _m: None)
    seen: dict[str, ScoredVariant] = {}

    def run(batch: Sequence[PromptVariant], round_: int) -> None:
        for v in batch:
            if v.version in seen:
                continue
            start = time.perf_counter()
            value = float(score(v))
            seen[v.version] = ScoredVariant(v, value, time.perf_counter() - start, round_)
            say(f"round {round_}: {v.name} ({v.version}) scored {value:.4f}")

    run(variants, 0)
    for r in range(1, rounds + 1):
        if proposer is None:
            break
        best = sorted(seen.values(), key=lambda s: -s.score)[:keep]
        run(proposer(best), r)
    scored = sorted(seen.values(), key=lambda s: (-s.score, s.round))
    saved, path = False, None
    if output is not None:
        saved, path = save_best(scored[0], output, getattr(score, "evaluation", {}))
    return PromptSearch(scored, saved, path)


def save_best(best: ScoredVariant, output: str | Path,
              evaluation: dict[str, Any]) -> tuple[bool, Path]:
    """Write ``best`` as ``output`` (.txt) with a ``.json`` sidecar, unless the template
    already there scored at least as well under the same ``evaluation``.

    The sidecar holds ``version``, ``score``, ``evaluation``, ``params``, ``revision``
    (1, 2, ... each time the file is replaced) and ``history`` (earlier versions/scores).
    Returns (whether it was written, the template path).
    """
    path = Path(output).with_suffix(".txt")
    sidecar = path.with_suffix(".json")
    previous = json.loads(sidecar.read_text()) if sidecar.exists() else None
    if previous is not None and previous.get("evaluation") == evaluation \
            and previous.get("score", -np.inf) >= best.score:
        return False, path
    history = []
    if previous is not None:
        history = previous.get("history", []) + [
            {k: previous.get(k) for k in ("version", "score", "evaluation", "revision", "saved_at")}]
    record = {"name": best.variant.name, "version": best.variant.version, "score": best.score,
              "evaluation": evaluation, "params": best.variant.params,
              "revision": (previous or {}).get("revision", 0) + 1,
              "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "history": history}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(best.variant.template, encoding="utf-8")
    sidecar.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return True, path


def load_saved(output: str | Path) -> tuple[PromptVariant, dict[str, Any]]:
    """The saved best variant and its sidecar record."""
    path = Path(output).with_suffix(".txt")
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: no saved prompt there") from None
    variant = PromptVariant(record["name"], text, record["params"])
    if variant.version != record["version"]:
        raise ConfigError(f"{path}: the template was edited after it was scored "
                          f"(version {variant.version}, sidecar says {record['version']})")
    return variant, record


META_PROMPT = """You improve prompt templates for a recommender system. A template asks a \
language model to read a user's history and write $$count short texts describing what the \
user may want next. Each template below got a score (higher is better).

$examples

Write one new template that should score higher. It must contain the placeholder \
$$history exactly once, may contain $$count and $$examples, and no other $$ signs. Answer \
with the template text only."""


@dataclass
class GeneratorProposer:
    """Asks a text generator (``generate(prompts, max_tokens, temperature) -> [str]``) for
    new templates written from the best ones; malformed answers are dropped.

    Each proposal keeps the parameters of the variant it was derived from.
    """

    generator: Any
    per_round: int = 2
    max_tokens: int = 300
    temperature: float = 0.7
    rejected: int = 0

    def __call__(self, best: list[ScoredVariant]) -> list[PromptVariant]:
        examples = "\n\n".join(f"Template (score {s.score:.4f}):\n<<<\n{s.variant.template}\n>>>"
                               for s in best)
        # substituted values are not re-parsed, so the examples' own $fields stay as they are
        prompt = string.Template(META_PROMPT).substitute(examples=examples)
        # a numbered request per proposal: identical prompts would hit the generation cache
        prompts = [f"{prompt}\n\n(Proposal {i + 1} of {self.per_round}.)"
                   for i in range(self.per_round)]
        answers = self.generator.generate(prompts, max_tokens=self.max_tokens,
                                          temperature=self.temperature)
        out = []
        for i, text in enumerate(answers):
            text = text.strip().strip("<>").strip()
            parent = best[i % len(best)].variant
            try:
                out.append(PromptVariant(f"{parent.name}+gen{i}", text, dict(parent.params)))
            except ConfigError:
                self.rejected += 1  # the model broke the placeholders: nothing to score
        return out
