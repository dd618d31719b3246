"""Cache-backed embedders and generators: re-running never pays twice, long jobs resume.

:class:`CachedEmbedder` and :class:`CachedGenerator` look every input up in an
:class:`~llmrecall.lm.cache.LMCache` first, compute only the missing keys, and write results
back in groups of ``commit_every`` (one transaction each). A job that is interrupted keeps
every group it finished; the next run computes only what is still missing. Long runs report
their progress through :mod:`llmrecall.progress` (a bar on a terminal under the command
line; ``progress=True`` forces a rich bar, ``progress=False`` shows nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from llmrecall.lm.cache import cache_key
from llmrecall.lm.embedders import Embedder, Kind, l2_normalise
from llmrecall.lm.generators import Generator, Message
from llmrecall.lm.prompts import PromptTemplate
from llmrecall.lm.stores import LMStore


@contextmanager
def _progress(enabled: bool | None, total: int, description: str, unit: str):
    """Yields ``advance(n)``: the process-wide progress reporter's bar (None), none (False),
    or rich bars on stderr whatever the process chose (True)."""
    if enabled is False or total == 0:
        yield lambda n: None
        return
    from llmrecall import progress

    with progress.task(description, total, unit,
                       reporter=progress.Bars() if enabled else None) as bar:
        yield bar.advance


class CachedEmbedder(Embedder):
    """An :class:`Embedder` whose vectors come from the cache when already computed.

    Same contract as the wrapped embedder (``name``, ``model``, ``dim``, ``fingerprint``).
    Counters ``hits`` and ``misses`` count texts served from / added to the cache.
    """

    def __init__(self, embedder: Embedder, cache: LMStore, commit_every: int = 256,
                 progress: bool | None = None):
        self.inner, self.cache = embedder, cache
        self.name, self.model = embedder.name, embedder.model
        self.batch_size = embedder.batch_size
        self.commit_every, self.progress = commit_every, progress
        self.hits = self.misses = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def keys(self, texts: Sequence[str], kind: Kind) -> list[str]:
        return [cache_key("embedding", self.fingerprint, "", t, {"kind": kind}) for t in texts]

    def _embed_all(self, texts: list[str], kind: Kind) -> np.ndarray:
        keys = self.keys(texts, kind)
        found = self.cache.get_embeddings(keys)
        # each distinct missing text is computed once, even if repeated in the input
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        first_text: dict[str, str] = {}
        for k, t in zip(keys, texts):
            first_text.setdefault(k, t)
        self.hits += len(keys) - sum(1 for k in keys if k not in found)
        groups = [missing[s:s + self.commit_every]
                  for s in range(0, len(missing), self.commit_every)]
        # a pool of embedding workers gets as many groups at once as keeps it busy; each
        # group is still cut into the batches it alone would be, and committed on its own
        at_once = max(1, self.inner.parallel_groups(self.commit_every)) if groups else 1
        with _progress(self.progress, len(missing), f"embed {self.name}", "text") as advance:
            for g in range(0, len(groups), at_once):
                chunk = groups[g:g + at_once]
                vectors = self.inner.embed_groups([[first_text[k] for k in group]
                                                   for group in chunk], kind=kind)
                for group, group_vectors in zip(chunk, vectors):
                    self.cache.put_embeddings(self.fingerprint, zip(group, group_vectors))
                    found.update(zip(group, group_vectors))
                    self.misses += len(group)
                    advance(len(group))
        return l2_normalise(np.stack([found[k] for k in keys]))

    def _embed_batch(self, texts: list[str], kind: Kind) -> np.ndarray:
        return self._embed_all(texts, kind)

    def close(self) -> None:
        self.inner.close()


class CachedGenerator(Generator):
    """A :class:`Generator` whose outputs come from the cache when already generated.

    The key covers the backend fingerprint, the template version (``template=`` or
    :meth:`generate_from_template`), the full conversation and the parameters
    (``max_tokens``, ``temperature``, ``json_schema``, and ``repeat_penalty`` / ``seed`` when
    they are not the defaults, so keys written before those options existed stay valid). With
    ``temperature > 0`` a cached sample is reused: pass ``sample=i`` to ask for a different
    stored sample.
    """

    def __init__(self, generator: Generator, cache: LMStore, commit_every: int = 32,
                 progress: bool | None = None):
        super().__init__()
        self.inner, self.cache = generator, cache
        self.name, self.model = generator.name, generator.model
        self.commit_every, self.progress = commit_every, progress
        self.hits = self.misses = 0
        self.usage = generator.usage

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0,
                 json_schema: dict | None = None, *, template: PromptTemplate | str = "",
                 sample: int = 0, repeat_penalty: float = 1.0,
                 seed: int | None = None) -> list[str]:
        if isinstance(prompts, str):
            raise TypeError("generate() takes a list of prompts, not one string")
        return self.chat([[{"role": "user", "content": p}] for p in prompts], max_tokens,
                         temperature, json_schema, template=template, sample=sample,
                         repeat_penalty=repeat_penalty, seed=seed)

    def generate_from_template(self, template: PromptTemplate, values: Sequence[dict],
                               max_tokens: int = 256, temperature: float = 0.0,
                               json_schema: dict | None = None) -> list[str]:
        """Render ``template`` with each dict of ``values`` and generate, keyed by its version."""
        return self.generate([template.render(**v) for v in values], max_tokens, temperature,
                             json_schema, template=template)

    def chat(self, conversations: Sequence[Sequence[Message]], max_tokens: int = 256,
             temperature: float = 0.0, json_schema: dict | None = None, *,
             template: PromptTemplate | str = "", sample: int = 0, repeat_penalty: float = 1.0,
             seed: int | None = None) -> list[str]:
        version = template.id if isinstance(template, PromptTemplate) else str(template)
        params: dict = {"max_tokens": max_tokens, "temperature": temperature,
                        "json_schema": json_schema, "sample": sample}
        sampling: dict = {}
        if repeat_penalty != 1.0:
            sampling["repeat_penalty"] = repeat_penalty
        if seed is not None:
            sampling["seed"] = seed
        params.update(sampling)
        conversations = [list(c) for c in conversations]
        keys = [cache_key("generation", self.fingerprint, version,
                          _conversation_text(c), params) for c in conversations]
        found = self.cache.get_generations(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        by_key: dict[str, Sequence[Message]] = {}
        for k, c in zip(keys, conversations):
            by_key.setdefault(k, c)
        self.hits += sum(1 for k in keys if k in found)
        with _progress(self.progress, len(missing), f"generate {self.name}",
                       "prompt") as advance:
            for s in range(0, len(missing), self.commit_every):
                group = missing[s:s + self.commit_every]
                outputs = self.inner.chat([by_key[k] for k in group], max_tokens, temperature,
                                          json_schema, **sampling)
                self.cache.put_generations(self.fingerprint, version, zip(group, outputs))
                found.update(zip(group, outputs))
                self.misses += len(group)
                advance(len(group))
        return [found[k] for k in keys]

    def _chat(self, conversations, max_tokens, temperature, json_schema, *,
              repeat_penalty=1.0, seed=None):
        return self.chat(conversations, max_tokens, temperature, json_schema,
                         repeat_penalty=repeat_penalty, seed=seed)

    def close(self) -> None:
        self.inner.close()


def _conversation_text(conversation: Sequence[Message]) -> str:
    if len(conversation) == 1 and conversation[0].get("role") == "user":
        return conversation[0]["content"]  # the common case keys on the prompt itself
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in conversation)
