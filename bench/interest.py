"""Measure the LLM interest, item-knowledge and search channels; print markdown tables.

    PYTHONPATH=src python bench/interest.py steps  --users 50 --out results/interest_steps.json
    PYTHONPATH=src python bench/interest.py knowledge --out results/interest_knowledge.json
    PYTHONPATH=src python bench/interest.py search --out results/interest_search.json
    PYTHONPATH=src python bench/interest.py cold --out results/interest_cold.json

``steps``: validation Recall@K of ``llm_interest`` on a fixed sample of ml-100k users
(protocol loo, seed 0) for each step that makes the local generator useful.
Generated text is cached in ``--store`` so a rerun only regenerates what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from llmrecall.channels.interest import InterestChannel  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.evaluate.protocols import EvalTask, make_split  # noqa: E402
from llmrecall.evaluate.runner import evaluate_channel  # noqa: E402
from llmrecall.interest.jobs import InterestJob, InterestSettings  # noqa: E402
from llmrecall.lm.cache import LMCache  # noqa: E402
from llmrecall.lm.generators import get_generator  # noqa: E402

KS = (10, 20, 50, 100, 200)
#: llama.cpp threads: 1, because on a busy 2-core machine two threads wait on each other
THREADS = int(os.environ.get("LLMRECALL_BENCH_THREADS", "1"))
DEV = Path(os.environ.get("LLMRECALL_BENCH_DIR", "/tmp/llmrecall_interest_bench"))

BASE = dict(noun="movies", history_length=8, n_examples=2, example_length=5, n_texts=5)
STEPS: list[tuple[str, dict]] = [
    ("1 naive chat prompt", dict(prompt="naive", constrain="none", dedupe=False,
                                 forbid_history=False, max_tokens=16)),
    ("2 few-shot prompt (sampled, T=0.8)", dict(prompt="fewshot", constrain="none",
                                                temperature=0.8, dedupe=False,
                                                forbid_history=False)),
    ("3 + repetition control", dict(prompt="fewshot", constrain="none", temperature=0.8,
                                     repeat_penalty=1.3, dedupe=True, forbid_history=True)),
    ("4 + title trie, greedy", dict(prompt="fewshot", constrain="trie", temperature=0.0)),
    ("4b + prefix diversity", dict(prompt="fewshot", constrain="trie", temperature=0.0,
                                   diverse_prefix=1)),
    ("4c + sampled T=1.0", dict(prompt="fewshot", constrain="trie", temperature=1.0,
                                diverse_prefix=1)),
    ("5 step 4 + interest profile", dict(prompt="fewshot", constrain="trie", temperature=0.0,
                                         profile=True)),
]


def sample_task(task: EvalTask, n: int, seed: int = 0) -> EvalTask:
    """A fixed random subset of ``n`` users of ``task`` (same history and masks)."""
    if n >= len(task.users):
        return task
    idx = np.sort(np.random.default_rng(seed).choice(len(task.users), n, replace=False))
    exclude = None if task.exclude is None else task.exclude[idx]
    return EvalTask(task.users[idx], task.targets[idx], task.history, task.candidate_mask,
                    exclude)


def fmt_row(name: str, metrics: dict, extra: str = "") -> str:
    cells = " | ".join(f"{metrics[f'recall@{k}']:.3f}" for k in KS)
    return f"| {name} | {cells} | {extra} |"


def random_metrics(task: EvalTask, n_items: int, seed: int = 0) -> dict:
    from llmrecall.evaluate.metrics import ranking_metrics

    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(n_items)[:max(KS)] for _ in task.users]).astype(np.int32)
    if task.candidate_mask is not None:
        allowed = np.flatnonzero(task.candidate_mask)
        ranked = np.stack([rng.permutation(allowed)[:max(KS)] for _ in task.users])
        ranked = np.pad(ranked, ((0, 0), (0, max(KS) - ranked.shape[1])), constant_values=-1)
        ranked = ranked.astype(np.int32)
    excl = task.excluded()
    keep = np.asarray(excl[np.arange(len(task.users))[:, None], np.maximum(ranked, 0)].todense()) == 0
    ranked = np.where(keep, ranked, -1)
    return ranking_metrics(ranked, task.targets, KS, n_items)


def cmd_steps(args) -> dict:
    ds = load_builtin("ml-100k")
    split = make_split(ds, "loo", 0)
    task = sample_task(split.valid, args.users)
    raw_users = ds.users.raw(task.users)
    generator = get_generator("local", threads=THREADS)
    store_path = str(DEV / "interest_store.sqlite")
    emb_cache = str(DEV / "lm_cache.sqlite")
    results: dict = {"dataset": "ml-100k", "protocol": "loo", "split": "valid", "seed": 0,
                     "users": len(task.users), "steps": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print("| step | " + " | ".join(f"R@{k}" for k in KS) + " | s/user, texts/user |")
    print("|---" * (len(KS) + 2) + "|")
    results["steps"]["0 random"] = random_metrics(task, ds.n_items)
    print(fmt_row("0 random", results["steps"]["0 random"]))
    # reference without a language model: the user's own recent titles as the texts
    histories = split.train.histories()
    recent = {int(u): [ds.catalog.titles[i] for i in histories.of(int(u))[-5:]]
              for u in task.users}
    ref = InterestChannel(embedder="default", embedding_cache=emb_cache).use()
    ref.set_texts(split.train, recent)
    results["steps"]["0 recent history titles as texts (no LM)"] = evaluate_channel(ref, task, 200, KS)
    print(fmt_row("0 recent history titles as texts (no LM)",
                  results["steps"]["0 recent history titles as texts (no LM)"]))
    for name, step in STEPS:
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        settings = {**BASE, **step}
        start = time.perf_counter()
        channel = InterestChannel(settings=settings, embedder="default", store_path=store_path,
                                  users=raw_users, embedding_cache=emb_cache).use(generator=generator)
        channel.fit(split.train)
        stats = channel.job_stats
        metrics = evaluate_channel(channel, task, 200, KS)
        texts = [channel.texts_of(int(u)) for u in task.users]
        gen_s = (sum(stats.per_user_seconds) / len(stats.per_user_seconds)
                 if stats.per_user_seconds else float("nan"))
        results["steps"][name] = {**metrics, "settings": settings,
                                  "seconds_per_generated_user": gen_s,
                                  "generated": stats.generated, "reused": stats.reused,
                                  "texts_per_user": float(np.mean([len(t) for t in texts])),
                                  "distinct_text_share": float(len({x for t in texts for x in t})
                                                               / max(1, sum(len(t) for t in texts))),
                                  "example_texts": texts[:3],
                                  "fit_seconds": time.perf_counter() - start}
        print(fmt_row(name, metrics, f"{gen_s:.1f}, {results['steps'][name]['texts_per_user']:.1f}"),
              flush=True)
        out.write_text(json.dumps(results, indent=2))
    if args.grammar_users:
        results["grammar"] = grammar_timing(split.train, task, generator, args.grammar_users)
        print("grammar timing:", results["grammar"])
    out.write_text(json.dumps(results, indent=2))
    return results


def grammar_timing(train, task, generator, n_users: int) -> dict:
    """Seconds per user for GBNF- vs trie-constrained decoding on the same users."""
    users = task.users[:n_users]
    out = {}
    for mode in ("grammar", "trie"):
        settings = InterestSettings(**{**BASE, "prompt": "fewshot", "constrain": mode,
                                       "temperature": 0.8 if mode == "grammar" else 0.0,
                                       "dedupe": True, "forbid_history": True})
        t0 = time.perf_counter()
        job = InterestJob(train, generator, settings, LMCache(":memory:"))
        build = time.perf_counter() - t0
        texts, stats = job.run(users)
        out[mode] = {"build_seconds": build,
                     "seconds_per_user": float(np.mean(stats.per_user_seconds)),
                     "texts_per_user": float(np.mean([len(t) for t in texts.values()]))}
    return out


def cmd_knowledge(args) -> dict:
    """Cold-items (seed 0, test): text channels with and without LLM item knowledge.

    Knowledge is generated for the new (held-out) items only — the items this protocol
    ranks — so the enrichment is on the candidate side; history items keep plain text.
    """
    from llmrecall.channels.knowledge import KnowledgeChannel
    from llmrecall.channels.semantic import SemanticUserInterest
    from llmrecall.interest.knowledge import KnowledgeSettings, enrich_dataset, generate_knowledge

    ds = load_builtin("ml-100k")
    split = make_split(ds, "cold-items", 0)
    task = split.test
    new_items = np.flatnonzero(task.candidate_mask)
    generator = get_generator("local", threads=THREADS)
    store = LMCache(DEV / "knowledge_store.sqlite")
    knowledge, stats = generate_knowledge(split.train, generator, new_items,
                                          KnowledgeSettings(noun_one="movie"), store)
    results: dict = {"dataset": "ml-100k", "protocol": "cold-items", "split": "test", "seed": 0,
                     "users": int(len(task.users)), "new_items": int(len(new_items)),
                     "knowledge": {"generated": stats.generated, "cache_hits": stats.cache_hits,
                                   "empty": stats.empty,
                                   "seconds_per_item": (float(np.mean(stats.per_item_seconds))
                                                        if stats.per_item_seconds else None),
                                   "store_bytes": store.size_bytes(),
                                   "examples": {ds.catalog.titles[i]: knowledge[i]
                                                for i in new_items[:5]}},
                     "channels": {}}
    store.close()
    emb_cache = str(DEV / "lm_cache.sqlite")
    results["channels"]["random"] = random_metrics(task, ds.n_items)
    print("| channel | knowledge | " + " | ".join(f"R@{k}" for k in KS) + " |")
    print("|---" * (len(KS) + 2) + "|")
    print("| random | - | " + " | ".join(f"{results['channels']['random'][f'recall@{k}']:.3f}"
                                          for k in KS) + " |")
    variants = [("llm_knowledge hybrid", dict(dense_weight=1.0, lexical_weight=1.0)),
                ("llm_knowledge BM25 only", dict(dense_weight=0.0, lexical_weight=1.0)),
                ("llm_knowledge dense only", dict(dense_weight=1.0, lexical_weight=0.0))]
    for name, params in variants:
        for use in (False, True):
            channel = KnowledgeChannel(knowledge=use, embedding_cache=emb_cache,
                                       neighbors=ds.n_items, **params)
            channel.use(knowledge_texts=knowledge).fit(split.train)
            metrics = evaluate_channel(channel, task, 200, KS)
            results["channels"][f"{name} / knowledge={use}"] = metrics
            print(f"| {name} | {'with' if use else 'without'} | "
                  + " | ".join(f"{metrics[f'recall@{k}']:.3f}" for k in KS) + " |", flush=True)
    for use in (False, True):
        train = enrich_dataset(split.train, knowledge) if use else split.train
        channel = SemanticUserInterest().fit(train)
        metrics = evaluate_channel(channel, task, 200, KS)
        results["channels"][f"semantic_user / knowledge={use}"] = metrics
        print(f"| semantic_user (lmchan) | {'with' if use else 'without'} | "
              + " | ".join(f"{metrics[f'recall@{k}']:.3f}" for k in KS) + " |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def cmd_cold(args) -> dict:
    """Cold-items (seed 0, test): llm_interest with the best generation settings."""
    ds = load_builtin("ml-100k")
    split = make_split(ds, "cold-items", 0)
    task = sample_task(split.test, args.users)
    generator = get_generator("local", threads=THREADS)
    settings = {**BASE, **dict(STEPS)[args.step]}
    results = {"dataset": "ml-100k", "protocol": "cold-items", "split": "test", "seed": 0,
               "users": int(len(task.users)), "settings": settings,
               "random": random_metrics(task, ds.n_items)}
    channel = InterestChannel(settings=settings, store_path=str(DEV / "interest_store.sqlite"),
                              users=ds.users.raw(task.users), per_text_k=ds.n_items,
                              embedding_cache=str(DEV / "lm_cache.sqlite")).use(generator=generator)
    channel.fit(split.train)
    results["llm_interest"] = evaluate_channel(channel, task, 200, KS)
    texts = [t for u in task.users for t in channel.texts_of(int(u))]
    new_titles = {ds.catalog.titles[i] for i in np.flatnonzero(task.candidate_mask)}
    from llmrecall.lm.prompts import display_title
    new_display = {display_title(t) for t in new_titles}
    results["generated_titles_that_are_new_items"] = float(
        np.mean([t in new_display for t in texts])) if texts else 0.0
    for name in ("random", "llm_interest"):
        print(fmt_row(name, results[name]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return results


def cmd_search(args) -> dict:
    """Synthetic search log on ml-100k (loo, valid): before each validation target the user
    typed a query made from that target's title (a mechanism test, not a real-world number).

    Query kinds: the full title; its two longest words; its genres only.
    """
    from dataclasses import replace as dc_replace

    from llmrecall.channels.search import SearchQueryChannel
    from llmrecall.data.dataset import SearchLog

    ds = load_builtin("ml-100k")
    split = make_split(ds, "loo", 0)
    task = split.valid
    titles, cats = ds.catalog.titles, ds.catalog.categories
    targets = task.targets.tocsr()
    first_target = targets.indices[targets.indptr[:-1]]
    kinds = {
        "full title": lambda i: titles[i],
        "two longest title words": lambda i: " ".join(sorted(titles[i].split(), key=len)[-2:]),
        "genres only": lambda i: " ".join(cats[i]),
    }
    results = {"dataset": "ml-100k", "protocol": "loo", "split": "valid",
               "users": int(len(task.users)), "queries": {}}
    print("| query | " + " | ".join(f"R@{k}" for k in KS) + " |")
    print("|---" * (len(KS) + 1) + "|")
    for name, make in kinds.items():
        log = SearchLog(task.users.astype(np.int32), [make(int(i)) for i in first_target],
                        np.zeros(len(task.users)))
        train = dc_replace(split.train, searches=log)
        channel = SearchQueryChannel(embedding_cache=str(DEV / "lm_cache.sqlite")).fit(train)
        metrics = evaluate_channel(channel, task, 200, KS)
        results["queries"][name] = metrics
        print(f"| {name} | " + " | ".join(f"{metrics[f'recall@{k}']:.3f}" for k in KS) + " |",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return results


def cmd_finetune(args) -> dict:
    """LoRA on SmolLM2 (de-quantized to float32) over ml-100k training pairs: cost per step."""
    from dataclasses import asdict

    from llmrecall.interest.finetune import lora_finetune, training_pairs

    split = make_split(load_builtin("ml-100k"), "loo", 0)
    pairs = training_pairs(split.train, args.pairs, history_length=BASE["history_length"],
                           noun=BASE["noun"])
    report = lora_finetune(pairs, steps=args.steps, batch_size=args.batch_size,
                           out_dir=DEV / "lora_adapter")
    result = {"pairs": len(pairs), "all_training_pairs": int(
        (np.maximum(split.train.histories().lengths() - 1, 0)).sum()), **asdict(report)}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def cmd_fused(args) -> dict:
    """EASE alone vs EASE + llm_interest (RRF fusion) on the steps' user sample (loo, valid).

    Generated texts come from the steps' store (run ``steps`` first with the same --users).
    """
    from llmrecall.config import parse_config
    from llmrecall.evaluate.experiment import recall_task, score_lists
    from llmrecall.pipeline import RecallPipeline

    ds = load_builtin("ml-100k")
    split = make_split(ds, "loo", 0)
    task = sample_task(split.valid, args.users)
    raw_users = ds.users.raw(task.users)
    steps = dict(STEPS)
    results: dict = {"dataset": "ml-100k", "protocol": "loo", "split": "valid",
                     "users": len(task.users), "runs": {}}
    print("| pipeline | " + " | ".join(f"R@{k}" for k in KS) + " |")
    print("|---" * (len(KS) + 1) + "|")
    runs = [("ease", None, 0.0)] + [(f"ease + llm_interest[{name}] w={w}", name, w)
                                    for name in args.steps for w in args.weights]
    for label, step, weight in runs:
        channels = [{"kind": "ease", "weight": 1.0}]
        if step is not None:
            channels.append({"kind": "llm_interest", "weight": weight, "params": {
                "settings": {**BASE, **steps[step]}, "users": raw_users,
                "store_path": str(DEV / "interest_store.sqlite"),
                "embedding_cache": str(DEV / "lm_cache.sqlite")}})
        config = parse_config({"channels": channels, "fusion": {"k": 200, "channel_k": 200}})
        pipeline = RecallPipeline(config).fit(split.train)
        metrics, _ = score_lists(pipeline, recall_task(pipeline, task), ds.n_items, KS)
        results["runs"][label] = metrics["fused"]
        print(f"| {label} | " + " | ".join(f"{metrics['fused'][f'recall@{k}']:.3f}" for k in KS)
              + " |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    steps = sub.add_parser("steps")
    steps.add_argument("--users", type=int, default=30)
    steps.add_argument("--only", nargs="*", default=None, help="step-number prefixes to run")
    steps.add_argument("--grammar-users", type=int, default=0)
    steps.add_argument("--out", default="results/interest_steps.json")
    knowledge = sub.add_parser("knowledge")
    knowledge.add_argument("--out", default="results/interest_knowledge.json")
    cold = sub.add_parser("cold")
    cold.add_argument("--users", type=int, default=30)
    cold.add_argument("--step", default=STEPS[3][0], help="settings of this step name")
    cold.add_argument("--out", default="results/interest_cold.json")
    search = sub.add_parser("search")
    search.add_argument("--out", default="results/interest_search.json")
    finetune = sub.add_parser("finetune")
    finetune.add_argument("--pairs", type=int, default=2000)
    finetune.add_argument("--steps", type=int, default=6)
    finetune.add_argument("--batch-size", type=int, default=4)
    finetune.add_argument("--out", default="results/interest_finetune.json")
    fused = sub.add_parser("fused")
    fused.add_argument("--users", type=int, default=100)
    fused.add_argument("--steps", nargs="*", default=["1 naive chat prompt", "4c + sampled T=1.0"])
    fused.add_argument("--weights", nargs="*", type=float, default=[0.3, 1.0])
    fused.add_argument("--out", default="results/interest_fused.json")
    args = parser.parse_args()
    DEV.mkdir(parents=True, exist_ok=True)
    {"steps": cmd_steps, "knowledge": cmd_knowledge, "cold": cmd_cold,
     "search": cmd_search, "finetune": cmd_finetune, "fused": cmd_fused}[args.command](args)


if __name__ == "__main__":
    main()
