"""Recall channels. Importing this package registers every built-in channel kind."""

from llmrecall.channels import (  # noqa: E402,F401  (LLM text channels)
           cf_transfer,  # noqa: E402,F401  (registers cf_transfer)
           interest,
           knowledge,
           search,
           semantic,  # noqa: E402,F401  (registers semantic_i2i, semantic_user)
           sequential,  # noqa: E402,F401  (registers sasrec)
           textcf,  # noqa: E402,F401  (registers textcf)
)
from llmrecall.channels.als import ALS  # noqa: E402
from llmrecall.channels.base import Candidates, Channel
from llmrecall.channels.bpr import BPR  # noqa: E402
from llmrecall.channels.ease import EASE  # noqa: E402
from llmrecall.channels.edlae import EDLAE  # noqa: E402
from llmrecall.channels.itemcf import ItemCF  # noqa: E402

# built-in channels: importing a module registers its kind
from llmrecall.channels.popularity import Popularity  # noqa: E402
from llmrecall.channels.registry import channel_class, known_kinds, load_channel, register
from llmrecall.channels.swing import Swing  # noqa: E402

__all__ = ["ALS", "BPR", "Candidates", "Channel", "EASE", "EDLAE", "ItemCF", "Popularity", "Swing",
           "channel_class", "known_kinds", "load_channel", "register"]
