"""Datasets: vocabularies, interaction logs, item catalogs, loaders and built-in data."""

from llmrecall.data.dataset import Catalog, Dataset, Histories, Interactions, SearchLog
from llmrecall.data.vocab import Vocabulary

__all__ = ["Catalog", "Dataset", "Histories", "Interactions", "SearchLog", "Vocabulary"]
