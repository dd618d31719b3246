"""Recall channels. Importing this package registers every built-in channel kind."""

from llmrecall.channels.base import Candidates, Channel
from llmrecall.channels.registry import channel_class, known_kinds, register

# built-in channels: importing a module registers its kind
from llmrecall.channels.popularity import Popularity  # noqa: E402
from llmrecall.channels.itemcf import ItemCF  # noqa: E402
from llmrecall.channels.swing import Swing  # noqa: E402
from llmrecall.channels.ease import EASE  # noqa: E402
from llmrecall.channels.als import ALS  # noqa: E402
from llmrecall.channels.bpr import BPR  # noqa: E402
from llmrecall.channels import semantic  # noqa: E402,F401  (registers semantic_i2i, semantic_user)
from llmrecall.channels import sequential  # noqa: E402,F401  (registers sasrec)
from llmrecall.channels import textcf  # noqa: E402,F401  (registers textcf)
from llmrecall.channels import interest, knowledge, search  # noqa: E402,F401  (LLM text channels)

__all__ = ["ALS", "BPR", "Candidates", "Channel", "EASE", "ItemCF", "Popularity", "Swing",
           "channel_class", "known_kinds", "register"]
