"""Prompt search for the ``llm_interest`` channel: template text and generation settings.

A variant's ``template`` becomes the channel's ``settings.template`` and its ``params`` are
further :class:`~llmrecall.interest.jobs.InterestSettings` fields, so the template text itself
is what varies between variants. :func:`interest_variants` is the starting set: the channel's
default prompt written out as a template (the reference every other variant is compared
with) plus variants that differ in instructions, output form, count and history length.
:func:`search_interest_prompts` takes the train part and the *validation* task of a split,
nothing else, so it has no way to reach test targets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmrecall.channels.interest import InterestChannel
from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError
from llmrecall.evaluate.protocols import EvalTask
from llmrecall.interest.jobs import InterestSettings
from llmrecall.lm.generators import Generator
from llmrecall.lm.prompts import fewshot_template
from llmrecall.tune.prompts import (
    GeneratorProposer,
    PromptSearch,
    PromptVariant,
    ScoredVariant,
    channel_scorer,
    optimise_prompts,
)

#: name of the variant every search scores first: the channel's own default prompt
DEFAULT_VARIANT = "default"


def interest_variants(noun: str = "items", language: str = "en") -> list[PromptVariant]:
    """The starting set: the default prompt and five that each change one thing.

    - ``default``: the shipped few-shot completion prompt, channel defaults (5 titles,
      10 recent titles shown, decoding constrained to catalog titles, greedy).
    - ``fewshot/h30``: the same prompt showing 30 recent titles.
    - ``fewshot/n10``: the same prompt, 10 titles per user instead of 5.
    - ``zeroshot/instruction``: an instruction completion prompt without examples (shorter
      prompt), still constrained to catalog titles.
    - ``chat/titles``: a chat request for ``$count`` titles, free text matched to the catalog.
    - ``chat/profile``: a chat request for ``$count`` short interest phrases (the profile form).
    """
    fewshot = fewshot_template(noun, language)
    noun = noun.replace("$", "$$")  # literal text inside the templates below
    if language == "zh":
        zeroshot = f"下面是一位用户依次选择的{noun}：$history\n他们接下来选择的是："
        titles = (f"一位用户最近选择了这些{noun}：\n$history\n"
                  f"请列出他们会喜欢的另外 $count 个{noun}，每行一个。")
        profile = (f"一位用户最近选择了这些{noun}：\n$history\n用 $count 个简短的短语描述这位用户"
                   f"喜欢的{noun}（类型、主题、情绪），每行一个。")
    else:
        zeroshot = (f"Here are the {noun} one person chose, oldest first: $history\n"
                    f"The next one this person chose was:")
        titles = (f"A person recently chose these {noun}:\n$history\n"
                  f"List $count other {noun} they would enjoy, one per line.")
        profile = (f"A person recently chose these {noun}:\n$history\n"
                   f"Describe the {noun} this person likes as $count short phrases "
                   f"(genre, theme, mood), one per line.")
    chat = {"prompt": "naive", "constrain": "none", "language": language}
    return [
        PromptVariant(DEFAULT_VARIANT, fewshot, {"language": language}),
        PromptVariant("fewshot/h30", fewshot, {"language": language, "history_length": 30}),
        PromptVariant("fewshot/n10", fewshot, {"language": language, "n_texts": 10}),
        PromptVariant("zeroshot/instruction", zeroshot, {"language": language, "n_examples": 0}),
        PromptVariant("chat/titles", titles, {**chat, "max_tokens": 24}),
        PromptVariant("chat/profile", profile, {**chat, "max_tokens": 12}),
    ]


def variant_settings(variant: PromptVariant, noun: str) -> dict[str, Any]:
    """``InterestSettings`` fields of ``variant``: its params, its template, the noun."""
    settings = {"noun": noun, **variant.params, "template": variant.template}
    try:
        InterestSettings(**settings)
    except ValueError as exc:  # pydantic's ValidationError names the field
        raise ConfigError(f"prompt variant {variant.name!r}: {exc}") from None
    return settings


def search_interest_prompts(
        train: Dataset, valid: EvalTask, variants: list[PromptVariant], generator: Generator,
        *, noun: str = "items", metric: str = "recall@50", max_users: int | None = 50,
        seed: int = 0, rounds: int = 0, proposer: GeneratorProposer | None = None,
        output: str | Path | None = None, store_path: str | Path | None = None,
        embedder: Any = None, embedder_name: str | None = "default",
        embedding_cache: str | Path | None = None,
        progress: Callable[[str], None] | None = None) -> PromptSearch:
    """Score ``variants`` (and ``rounds`` rounds of ``proposer``'s) on validation users.

    Args:
        train: the training data; prompts show its histories.
        valid: the validation task; a seeded sample of ``max_users`` of its users is scored.
        variants: starting variants; params are ``InterestSettings`` fields.
        generator: the interest generator every variant shares (loaded once).
        store_path: SQLite generation store; generated text is keyed on settings (template
            hash included), generator and history, so a rerun only generates what is new.
        embedder / embedder_name: matching embedder instance (shared) or name; None name:
            BM25 only.
        output: where the best template is saved (see :func:`~llmrecall.tune.prompts.save_best`).
    Returns:
        The :class:`~llmrecall.tune.prompts.PromptSearch`, best first.
    """
    for v in variants:
        variant_settings(v, noun)  # a bad variant fails before any generation
    say = progress or (lambda _m: None)

    def build(variant: PromptVariant) -> InterestChannel:
        channel = InterestChannel(
            settings=variant_settings(variant, noun), embedder=embedder_name,
            store_path=None if store_path is None else str(store_path),
            users=raw_users, embedding_cache=(
                None if embedding_cache is None else str(embedding_cache)),
            name=f"llm_interest[{variant.name}]")
        say(f"generating for {len(score.users)} users with {variant.name} "
            f"(template {InterestSettings(**channel.settings).template_version})")
        return channel.use(generator=generator, embedder=embedder)

    score = channel_scorer(train, valid, build, metric, max_users=max_users, seed=seed)
    if not len(score.users):
        raise ConfigError("prompt search: the validation task has no users")
    raw_users = [u for u in train.users.raw(score.users) if u is not None]
    if len(raw_users) != len(score.users):  # raw() gives None for ids outside the vocabulary
        raise ConfigError("prompt search: validation users outside the training users")
    return optimise_prompts(variants, score, proposer=proposer, rounds=rounds, output=output,
                            progress=say)


def default_row(search: PromptSearch) -> ScoredVariant | None:
    """The scored default variant of ``search`` (None when it was not among the variants)."""
    return next((s for s in search.scored if s.variant.name == DEFAULT_VARIANT), None)
