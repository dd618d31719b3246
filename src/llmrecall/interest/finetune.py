"""LoRA fine-tuning of the local generator on training histories (as GPT4Rec fine-tunes GPT-2).

Training pairs come from the *training* split only: for a user with items i_1..i_n, the
prompt shows titles i_{t-L}..i_{t-1} in the few-shot format of
:func:`llmrecall.lm.prompts.fewshot_prompt` (no examples) and the target is
`` <title of i_t>\\n``; the loss covers the target tokens only.

SmolLM2 ships only as GGUF here; transformers de-quantizes it to float32 (needs the
``gguf`` package) and peft adds LoRA adapters (``peft``). The adapter is saved as
safetensors. Cost on this machine is measured in docs/llm_interests.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmrecall.data.dataset import Dataset
from llmrecall.errors import ConfigError
from llmrecall.lm.generators import smollm2_path
from llmrecall.lm.prompts import display_title, fewshot_prompt


def training_pairs(dataset: Dataset, n_pairs: int, history_length: int = 8, noun: str = "movies",
                   seed: int = 0) -> list[tuple[str, str]]:
    """``n_pairs`` (prompt, target) pairs drawn at random (seeded) from every user's
    training sequence positions with at least one earlier item."""
    histories = dataset.histories()
    lengths = histories.lengths()
    # every (user, position >= 1) is a candidate pair; sample positions uniformly
    total = np.maximum(lengths - 1, 0)
    if total.sum() == 0:
        raise ConfigError("fine-tuning needs users with at least two training items")
    rng = np.random.default_rng(seed)
    picks = rng.choice(int(total.sum()), size=min(n_pairs, int(total.sum())), replace=False)
    owner = np.searchsorted(np.cumsum(total), picks, side="right")
    offset = picks - (np.cumsum(total) - total)[owner]
    titles = dataset.catalog.titles
    pairs = []
    for user, pos in zip(owner.tolist(), (offset + 1).tolist()):
        items = histories.of(user)
        shown = [titles[i] for i in items[max(0, pos - history_length):pos]]
        pairs.append((fewshot_prompt(shown, [], noun), f" {display_title(titles[items[pos]])}\n"))
    return pairs


@dataclass
class FinetuneReport:
    """What a fine-tuning run cost and achieved."""

    steps: int
    batch_size: int
    trainable_parameters: int
    total_parameters: int
    load_seconds: float
    seconds_per_step: float
    mean_tokens_per_example: float
    losses: list[float] = field(default_factory=list)
    adapter_dir: str | None = None


def lora_finetune(pairs: list[tuple[str, str]], *, steps: int = 20, batch_size: int = 4,
                  learning_rate: float = 2e-4, rank: int = 8, threads: int = 1,
                  gguf_path: str | Path | None = None, out_dir: str | Path | None = None,
                  seed: int = 0) -> FinetuneReport:
    """Train LoRA adapters (attention q/v projections) on ``pairs`` for ``steps`` steps.

    Returns a :class:`FinetuneReport`; the adapter is written to ``out_dir`` (safetensors)
    when given.
    """
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ConfigError(f"fine-tuning needs torch, transformers, peft and gguf: {exc}") from exc
    if not pairs:
        raise ConfigError("no training pairs")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    path = Path(gguf_path) if gguf_path else smollm2_path()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    load_seconds = time.perf_counter() - start
    total_params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch(rows: list[tuple[str, str]]):
        ids, labels = [], []
        for prompt, target in rows:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            t = tokenizer(target, add_special_tokens=False)["input_ids"]
            ids.append(p + t)
            labels.append([-100] * len(p) + t)  # loss on the target title only
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        label_t = torch.full((len(ids), width), -100, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, (x, y) in enumerate(zip(ids, labels)):
            input_ids[i, :len(x)] = torch.tensor(x)
            label_t[i, :len(y)] = torch.tensor(y)
            mask[i, :len(x)] = 1
        return input_ids, label_t, mask, float(np.mean([len(x) for x in ids]))

    model.train()
    losses, tokens = [], []
    rng = np.random.default_rng(seed)
    step_start = time.perf_counter()
    for _ in range(steps):
        rows = [pairs[i] for i in rng.choice(len(pairs), size=min(batch_size, len(pairs)),
                                              replace=False)]
        input_ids, labels, mask, mean_len = batch(rows)
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out.loss.detach()))
        tokens.append(mean_len)
    per_step = (time.perf_counter() - step_start) / max(steps, 1)
    adapter_dir = None
    if out_dir is not None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        adapter_dir = str(out_dir)
    return FinetuneReport(steps, batch_size, trainable, total_params, load_seconds, per_step,
                          float(np.mean(tokens)), losses, adapter_dir)


__all__ = ["FinetuneReport", "lora_finetune", "training_pairs"]
