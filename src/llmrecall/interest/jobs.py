"""Offline / near-line generation of interest text for users.

For each user the job reads the most recent titles, asks a generator for (a) hypothetical
next items — catalog titles when decoding is constrained — and optionally (b) a one-sentence
interest profile, cleans the answers, and stores them (in an :class:`~llmrecall.lm.cache.LMCache`).
A user whose history has barely changed since the last run keeps the stored text
(:func:`needs_refresh`); identical prompts are answered from the content-addressed cache.

Settings that were measured step by step on ml-100k (docs/llm_interests.md):
naive chat prompt -> few-shot completion prompt -> repetition control (repeat penalty,
dedupe, history titles forbidden) -> decoding constrained to catalog titles.
"""

from __future__ import annotations

import functools
import hashlib
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmrecall.data.dataset import Dataset, Histories
from llmrecall.errors import ConfigError
from llmrecall.interest.constrain import TitleTrie, title_grammar
from llmrecall.lm.cache import LMCache, content_key
from llmrecall.lm.errors import GenerationParseError
from llmrecall.lm.generators import ConstrainedDecoding, Generator, LlamaCppGenerator, constrained_decoder
from llmrecall.lm.parse import ListRules, delimit_list, first_title, parse_lines
from llmrecall.lm.parse import parse_list as lm_parse_list
from llmrecall.lm.prompts import (
    display_title,
    fewshot_blocks,
    fewshot_prompt,
    history_inline,
    naive_messages,
    normalise_title,
    profile_messages,
)
from llmrecall.lm.stores import LMStore
from llmrecall.progress import task

#: users written to the store per transaction
WRITE_BATCH = 5


class InterestSettings(BaseModel):
    """How interest text is generated. Every field is part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Literal["naive", "fewshot"] = Field(
        "fewshot", description="naive chat request, or a few-shot completion prompt")
    n_texts: int = Field(5, ge=1, le=50, description="hypothetical next items per user")
    history_length: int = Field(10, ge=1, le=100, description="recent titles shown")
    n_examples: int = Field(3, ge=0, le=10, description="few-shot examples from other users")
    example_length: int = Field(5, ge=1, le=50, description="titles per few-shot example")
    constrain: Literal["none", "trie", "grammar"] = Field(
        "trie", description="decoding limited to catalog titles (token trie or GBNF grammar)")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    repeat_penalty: float = Field(1.0, ge=1.0, le=3.0)
    dedupe: bool = Field(True, description="drop repeated texts")
    forbid_history: bool = Field(True, description="never propose a title the user has")
    diverse_prefix: int = Field(0, ge=0, le=8, description=(
        "with the trie: each new title may not start with the first N tokens of an earlier "
        "one (after a leading article), so greedy decoding leaves 'The Big ...'; 0 = off"))
    profile: bool = Field(False, description="also write a one-sentence interest profile")
    max_tokens: int = Field(32, ge=4, le=512, description="tokens per generated title")
    profile_tokens: int = Field(60, ge=8, le=512)
    noun: str = Field("items", min_length=1, description="what the catalog holds, e.g. movies")
    language: Literal["en", "zh"] = "en"
    seed: int = 0
    template: str | None = Field(None, description=(
        "prompt template text (string.Template) replacing the shipped prompt: $history (the "
        "recent titles) is required, $count (n_texts) and $examples (the few-shot blocks) are "
        "optional. With prompt 'fewshot' it is the completion prompt (titles inline, the model "
        "continues after it; constrained decoding applies); with 'naive' it is the user "
        "message of a chat request (titles in <item> tags, one per line) whose answer is read "
        "as a list. None: the shipped templates"))

    @field_validator("template")
    @classmethod
    def _valid_template(cls, text: str | None) -> str | None:
        if text is not None:
            check_interest_template(text)
        return text

    @property
    def template_version(self) -> str | None:
        """First 16 hex digits of the SHA-256 of ``template`` (None without one)."""
        if self.template is None:
            return None
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:16]

    def cache_fields(self) -> dict:
        """The settings as they enter cache keys: the template by its hash, and left out when
        unset, so stores written before templates existed stay valid."""
        out = self.model_dump(exclude={"template"})
        if self.template is not None:
            out["template"] = self.template_version
        return out

    def wants_examples(self) -> bool:
        """Few-shot examples are drawn for the shipped completion prompt and for a template
        that shows them (``$examples``)."""
        if self.template is not None:
            return "examples" in string.Template(self.template).get_identifiers()
        return self.prompt == "fewshot"

    def scope(self, fingerprint: str) -> str:
        """Key under which per-user results are stored for these settings and generator."""
        return content_key("interest", fingerprint, self.cache_fields())[:24]


#: placeholders of an interest prompt template: required, and allowed besides
TEMPLATE_REQUIRED = frozenset({"history"})
TEMPLATE_OPTIONAL = frozenset({"count", "examples"})


def check_interest_template(text: str, where: str = "interest prompt template") -> None:
    """ConfigError unless ``text`` is a ``string.Template`` with ``$history`` and no
    placeholders besides ``$count`` and ``$examples`` (literal dollars are ``$$``)."""
    try:
        fields = set(string.Template(text).get_identifiers())
        string.Template(text).substitute({f: "" for f in fields})
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{where}: not a valid $-template: {exc}") from None
    missing = TEMPLATE_REQUIRED - fields
    extra = fields - TEMPLATE_REQUIRED - TEMPLATE_OPTIONAL
    if missing or extra:
        raise ConfigError(f"{where}: needs {sorted(TEMPLATE_REQUIRED)}, may use "
                          f"{sorted(TEMPLATE_OPTIONAL)}; missing {sorted(missing)}, "
                          f"unknown {sorted(extra)}")


def needs_refresh(old_history, new_history, *, window: int = 10, min_changed: int = 3) -> bool:
    """Whether a user's interest text should be regenerated after new events.

    Args:
        old_history: item ids (any int sequence, oldest first) the stored text was written from.
        new_history: the user's current item ids, oldest first.
        window: how many recent items the prompt shows (``InterestSettings.history_length``).
        min_changed: regenerate once at least this many of the recent ``window`` items are
            new compared with the old recent window (fewer when the window is not yet full).
    Returns:
        True when there is no stored text for a non-empty history, or the recent window
        changed by at least ``min(min_changed, len(new window))`` items.
    """
    if window < 1 or min_changed < 1:
        raise ConfigError("needs_refresh needs window >= 1 and min_changed >= 1")
    old = [int(i) for i in list(old_history)[-window:]]
    new = [int(i) for i in list(new_history)[-window:]]
    if not new:
        return False
    if not old:
        return True
    changed = len(set(new) - set(old))
    return changed >= min(min_changed, len(new))


def fewshot_examples(histories: Histories, titles: list[str], n: int, length: int,
                     seed: int) -> list[tuple[list[int], int]]:
    """``n + 1`` (history item ids, next item id) pairs from training histories.

    One more than needed is drawn so the caller can drop a user's own example. Users are
    drawn at random (seeded) among those with more than ``length`` items and titles.
    """
    if n == 0:
        return []
    return [example_of(histories.of(int(user)), length)
            for user in example_users(histories.lengths(), n, length, seed)]


def example_users(lengths: np.ndarray, n: int, length: int, seed: int) -> np.ndarray:
    """The ``n + 1`` dense users :func:`fewshot_examples` draws, in the order drawn, from
    ``lengths`` (int[n_users] each user's training events; only the lengths decide, so a
    caller that knows them without the histories, the sharded log, draws the same users).
    """
    eligible = np.flatnonzero(np.asarray(lengths) > length)
    if len(eligible) < n + 1:
        raise ConfigError(f"few-shot prompts need {n + 1} users with more than {length} "
                          f"items; the data has {len(eligible)}")
    rng = np.random.default_rng(seed)
    return rng.choice(eligible, size=n + 1, replace=False)


def example_of(items: np.ndarray, length: int) -> tuple[list[int], int]:
    """One few-shot example from a user's training items (oldest first): the ``length``
    items before the last, and the last."""
    return [int(i) for i in items[-length - 1:-1]], int(items[-1])


_ARTICLES = {"The", "A", "An", "Il", "La", "Le", "Les", "Das", "Der", "Die", "El", "Los"}


def store_fingerprint(generator: Generator) -> str:
    """How interest and item-knowledge keys name a generator: the llama.cpp backend by its
    GGUF file name and size, any other backend as ``lm|`` + its fingerprint. Spelled as these
    stores always spelled it, so text generated before is found again."""
    if isinstance(generator, LlamaCppGenerator):
        path = generator.model_path
        return f"llama.cpp|{path.name}|{path.stat().st_size}"
    return f"lm|{generator.fingerprint}"


@dataclass
class JobStats:
    """What one run of the job did."""

    users: int = 0
    generated: int = 0
    reused: int = 0
    cache_hits: int = 0
    empty: int = 0
    seconds: float = 0.0
    generated_texts: int = 0
    per_user_seconds: list[float] = field(default_factory=list)
    #: what a generation pool reported (actors, tokens, seconds and tokens per 1,000
    #: users; see :func:`llmrecall.engine.ray_engine.generate_interests`); empty here
    cost: dict[str, Any] = field(default_factory=dict)


#: few-shot examples: (history item ids, next item id) pairs
Examples = list[tuple[list[int], int]]


def job_examples(histories: Histories, titles: list[str],
                 settings: InterestSettings) -> Examples:
    """The few-shot examples a job with ``settings`` draws once for all its users (none
    when its prompt shows none)."""
    if not settings.wants_examples():
        return []
    return fewshot_examples(histories, titles, settings.n_examples, settings.example_length,
                            settings.seed)


def text_list_key(fingerprint: str, settings: InterestSettings, history: np.ndarray,
                  examples: list[tuple[list[int], int]]) -> str:
    """The store key of the texts generated for one prompt: the generator, the settings,
    the user's whole history (item ids) and the job's few-shot examples. Any process that
    has these finds the stored answer (the local job, the Ray engine's driver)."""
    return content_key(fingerprint, settings.cache_fields(), np.asarray(history).tolist(),
                       examples)


class InterestJob:
    """Generates interest text for users of one dataset with one generator and settings.

    Args:
        dataset: the training data (its histories are what the prompts show).
        generator: any :class:`~llmrecall.lm.generators.Generator`; constrained decoding
            (``constrain`` "trie" or "grammar") needs one with
            :class:`~llmrecall.lm.generators.ConstrainedDecoding` (the local llama.cpp model).
        settings: :class:`InterestSettings`.
        store: where texts are cached; an in-memory cache when None.
        examples: the few-shot examples, when drawn elsewhere (the sharded log draws them
            from every shard's users, :func:`example_users`); None: drawn from ``dataset``'s
            histories (:func:`job_examples`).
    """

    def __init__(self, dataset: Dataset, generator: Generator,
                 settings: InterestSettings | None = None, store: LMStore | None = None,
                 examples: Examples | None = None):
        self.dataset = dataset
        self.generator = generator
        self.settings = settings or InterestSettings()
        self.store: LMStore = store or LMCache(":memory:")
        self.histories = dataset.histories()
        self.titles = [display_title(t) for t in dataset.catalog.titles]
        self.fingerprint = store_fingerprint(generator)
        self.scope = self.settings.scope(self.fingerprint)
        s = self.settings
        #: the generator as a constrained decoder, when the settings constrain decoding
        self._decoder: ConstrainedDecoding | None = None
        if s.constrain != "none":
            self._decoder = constrained_decoder(generator)
        if s.constrain != "none" and s.prompt != "fewshot":
            raise ConfigError("constrained decoding needs the few-shot completion prompt")
        self._examples = (job_examples(self.histories, self.titles, s) if examples is None
                          else [(list(h), int(t)) for h, t in examples])
        self._trie: TitleTrie | None = None
        self._grammar: str | None = None
        if s.constrain == "trie":
            assert self._decoder is not None
            self._trie = TitleTrie(self.titles, self._decoder.tokenize,
                                   self._decoder.newline_token)
        elif s.constrain == "grammar":
            self._grammar = title_grammar(self.titles)

    # ---- one user --------------------------------------------------------------------
    def _examples_for(self, user: int) -> list[tuple[list[str], str]]:
        s = self.settings
        picked = [(h, t) for h, t in self._examples
                  if not np.array_equal(h, self.histories.of(user)[-len(h) - 1:-1])][:s.n_examples]
        return [([self.titles[i] for i in h], self.titles[t]) for h, t in picked]

    def generate_user(self, user: int) -> list[str]:
        """Interest texts for one dense user id (empty list for an empty history)."""
        s = self.settings
        items = self.histories.of(user)
        if len(items) == 0:
            return []
        recent = [self.titles[i] for i in items[-s.history_length:]]
        seen = {normalise_title(self.titles[i]) for i in items} if s.forbid_history else set()
        texts: list[str] = []
        if s.profile:
            profile = self.generator.chat([profile_messages(recent, s.noun, s.language)],
                                          max_tokens=s.profile_tokens, temperature=0.0,
                                          repeat_penalty=s.repeat_penalty, seed=s.seed)[0]
            profile = " ".join(profile.split())
            if profile:
                texts.append(profile)
        if s.template is not None and s.prompt == "naive":
            return texts + self._chat_template(recent, user, seen)
        if s.prompt == "naive":
            answer = self.generator.chat([naive_messages(recent, s.noun, s.language)],
                                         max_tokens=s.max_tokens * s.n_texts,
                                         temperature=s.temperature,
                                         repeat_penalty=s.repeat_penalty, seed=s.seed)[0]
            return texts + self._clean(parse_lines(answer), seen)[:s.n_texts]
        if s.template is not None:
            prompt = string.Template(s.template).substitute(
                history=history_inline(recent), count=s.n_texts,
                examples=fewshot_blocks(self._examples_for(user), s.language)).rstrip("\n")
        else:
            prompt = fewshot_prompt(recent, self._examples_for(user), s.noun, s.language)
        if self._trie is not None:
            return texts + self._constrained(prompt, items)
        proposals: list[str] = []
        # free sampling may repeat itself; a few extra draws fill the list after cleaning
        attempts = s.n_texts * (3 if (s.dedupe or s.forbid_history) else 1)
        complete: Callable[..., str] = self.generator.complete
        if self._grammar is not None:
            assert self._decoder is not None
            complete = functools.partial(self._decoder.complete, grammar=self._grammar)
        for attempt in range(attempts):
            out = complete(prompt, max_tokens=s.max_tokens, temperature=s.temperature,
                           stop=["\n"], repeat_penalty=s.repeat_penalty, seed=s.seed + attempt)
            title = first_title(out)
            if title:
                proposals.append(title)
            if len(self._clean(proposals, seen)) >= s.n_texts:
                break
        return texts + self._clean(proposals, seen)[:s.n_texts]

    def _chat_template(self, recent: list[str], user: int, seen: set[str]) -> list[str]:
        """The template as a chat request; the answer read as a list (JSON array, numbered
        or bulleted lines), cleaned and cut to ``n_texts``. Titles go in as ``<item>`` blocks:
        they are data, and a title must not be able to act as an instruction."""
        s = self.settings
        assert s.template is not None  # generate_user calls this only with a template
        message = string.Template(s.template).substitute(
            history=delimit_list(recent, "item"), count=s.n_texts,
            examples=fewshot_blocks(self._examples_for(user), s.language))
        answer = self.generator.chat([[{"role": "user", "content": message.strip()}]],
                                     max_tokens=s.max_tokens * s.n_texts,
                                     temperature=s.temperature, repeat_penalty=s.repeat_penalty,
                                     seed=s.seed)[0]
        try:
            items = lm_parse_list(answer, ListRules(max_items=max(s.n_texts * 3, 10)),
                                  what="interest answer")
        except GenerationParseError:
            return []  # nothing usable: the user gets no text, as with an empty answer
        return self._clean(items, seen)[:s.n_texts]

    def _constrained(self, prompt: str, items: np.ndarray) -> list[str]:
        """n distinct catalog titles, each decoded through the trie; the user's own and the
        already written titles are banned, so even greedy decoding moves on to the next."""
        s, trie, decoder = self.settings, self._trie, self._decoder
        assert trie is not None and decoder is not None
        banned = {trie.title_id(self.titles[i]) for i in items} if s.forbid_history else set()
        banned.discard(-1)
        out: list[str] = []
        avoid: list[list[int]] = []
        for attempt in range(s.n_texts):
            if len(banned) >= len(trie):
                break
            text = decoder.complete(
                prompt, max_tokens=s.max_tokens, temperature=s.temperature, stop=["\n"],
                repeat_penalty=s.repeat_penalty, seed=s.seed + attempt,
                processor=trie.processor(banned, avoid))
            title_id = trie.title_id(text.strip())
            if title_id < 0:  # ran out of tokens inside a long title
                continue
            banned.add(title_id)
            out.append(trie.titles[title_id])
            if s.diverse_prefix:
                tokens = trie.title_tokens(title_id)
                article = 1 if trie.titles[title_id].split(" ", 1)[0] in _ARTICLES else 0
                avoid.append(tokens[:article + s.diverse_prefix])
        return out

    def _clean(self, texts: list[str], seen: set[str]) -> list[str]:
        s = self.settings
        out, keys = [], set()
        for text in texts:
            key = normalise_title(text)
            if not key or (s.forbid_history and key in seen):
                continue
            if s.dedupe and key in keys:
                continue
            keys.add(key)
            out.append(text)
        return out

    # ---- many users ------------------------------------------------------------------
    def run(self, users: np.ndarray, *, refresh_min_changed: int = 3,
            progress: Callable[[int, int], None] | None = None) -> tuple[dict[int, list[str]], JobStats]:
        """Texts for every user in ``users`` (dense ids), generating only what is missing.

        A user keeps the stored texts unless :func:`needs_refresh` says the history moved on.
        Returns ``({user: texts}, JobStats)``; users with empty histories map to ``[]``.
        """
        s = self.settings
        start = time.perf_counter()
        stats = JobStats(users=len(users))
        raw_ids = self.dataset.users.raw(users)
        stored = self.store.get_subjects(self.scope)
        fingerprint = self.fingerprint
        out: dict[int, list[str]] = {}
        pending_subjects: list[tuple[str, list[int], list[str]]] = []
        pending_cache: list[tuple[str, list[str]]] = []
        with task("generate interests", len(users), "user") as bar:
            for n, (user, raw) in enumerate(zip(np.asarray(users).tolist(), raw_ids)):
                if raw is None:  # raw() maps ids outside the user vocabulary to None
                    raise ConfigError(f"user {user} is not a dense user id of the dataset")
                items = self.histories.of(user)
                recent = items[-s.history_length:].tolist()
                if raw in stored and not needs_refresh(stored[raw][0], recent,
                                                       window=s.history_length,
                                                       min_changed=refresh_min_changed):
                    out[user] = stored[raw][1]
                    stats.reused += 1
                    bar.advance()
                    continue
                key = text_list_key(fingerprint, s, items, self._examples)
                cached = self.store.get_text_lists([key])
                if key in cached:
                    texts = cached[key]
                    stats.cache_hits += 1
                else:
                    t0 = time.perf_counter()
                    texts = self.generate_user(user)
                    stats.per_user_seconds.append(time.perf_counter() - t0)
                    stats.generated += 1
                    stats.generated_texts += len(texts)
                    pending_cache.append((key, texts))
                stats.empty += int(not texts)
                out[user] = texts
                pending_subjects.append((raw, recent, texts))
                if len(pending_subjects) >= WRITE_BATCH:
                    self.store.put_text_lists(pending_cache, fingerprint)
                    self.store.put_subjects(self.scope, pending_subjects)
                    pending_subjects, pending_cache = [], []
                bar.advance()
                if progress is not None:
                    progress(n + 1, len(users))
        self.store.put_text_lists(pending_cache, fingerprint)
        self.store.put_subjects(self.scope, pending_subjects)
        stats.seconds = time.perf_counter() - start
        return out, stats
