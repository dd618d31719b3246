"""LLM-written interests and item knowledge: generation jobs, constrained decoding, the
hybrid text matching shared by the LLM text channels, and LoRA fine-tuning.

- :mod:`~llmrecall.interest.jobs` — interest text per user (cached, refreshed on change).
- :mod:`~llmrecall.interest.knowledge` — keywords / themes / audience per item.
- :mod:`~llmrecall.interest.constrain` — decoding limited to real catalog titles.
- :mod:`~llmrecall.interest.matching` — dense + BM25 matching, per-user merging.
- :mod:`~llmrecall.interest.finetune` — LoRA on training histories.

Generators, the cache the jobs write to, prompt templates and answer parsing come from the
language-model layer, :mod:`llmrecall.lm`.
"""

from llmrecall.interest.jobs import InterestJob, InterestSettings, needs_refresh

__all__ = ["InterestJob", "InterestSettings", "needs_refresh"]
