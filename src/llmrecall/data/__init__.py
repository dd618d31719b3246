"""Datasets: vocabularies, interaction logs, item catalogs, loaders and built-in data."""

from llmrecall.data.dataset import Catalog, Dataset, Histories, Interactions, SearchLog
from llmrecall.data.loaders import load_dataset, load_dataset_toml
from llmrecall.data.spec import DataSpec, InteractionsSpec, ItemsSpec, SearchesSpec
from llmrecall.data.vocab import Vocabulary

__all__ = ["Catalog", "DataSpec", "Dataset", "Histories", "Interactions", "InteractionsSpec",
           "ItemsSpec", "SearchLog", "SearchesSpec", "Vocabulary", "load_dataset",
           "load_dataset_toml"]
