"""Vector index backends: one interface (:class:`VectorIndex`) over FAISS in-process."""

from llmrecall.index.faiss_index import VectorIndex, choose_kind
from llmrecall.index.merge import merge_hits

__all__ = ["VectorIndex", "choose_kind", "merge_hits"]
