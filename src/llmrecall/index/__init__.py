"""Vector index backends behind one interface (:class:`VectorSearch`): FAISS in-process
(:class:`VectorIndex`, the default) and Milvus (:mod:`llmrecall.index.milvus_index`, imported
on use: it needs the ``milvus`` extra)."""

from llmrecall.index.base import VectorSearch, load_index
from llmrecall.index.faiss_index import VectorIndex, choose_kind
from llmrecall.index.merge import merge_hits

__all__ = ["VectorIndex", "VectorSearch", "choose_kind", "load_index", "merge_hits"]
