"""Recall channels. Importing this package registers every built-in channel kind."""

from llmrecall.channels.base import Candidates, Channel
from llmrecall.channels.registry import channel_class, known_kinds, register

__all__ = ["Candidates", "Channel", "channel_class", "known_kinds", "register"]
from llmrecall.channels import semantic  # noqa: E402,F401  (registers semantic_i2i, semantic_user)
from llmrecall.channels import sequential  # noqa: E402,F401  (registers sasrec)
from llmrecall.channels import textcf  # noqa: E402,F401  (registers textcf)
