"""The Ray engine: co-occurrence fits and all-user recall as Ray tasks, language-model work
on actor pools.

* ItemCF / Swing: the map-shuffle-reduce of :mod:`llmrecall.engine.cooccurrence`, each map
  a task with one return per partition (the shuffle), each reduce a task taking its piece
  of every map. The neighbour lists are identical to the in-process fit.
* SASRec and textcf: data-parallel training with Ray Train's ``TorchTrainer`` (DDP on CPU
  workers, gloo), :func:`train_sasrec` and :func:`train_textcf`; the fitted channel is the
  one a local fit gives.
* Every other channel is fitted on the driver (EASE's Gram matrix, ALS/BPR through
  ``implicit``: single-node, see docs/scale-out.md).
* All-user recall: the fitted channel and the task are put in the object store once; one
  task per block of users (a multiple of the evaluator's batch, so every batch is the one
  the local run scores) returns that block's lists.
* Embedding and generation for the text channels: the channels ask the engine for their
  embedder (:meth:`RayEngine.embedder`: a :class:`PoolEmbedder`, the one-process batches
  embedded by a pool of actors) and for interests and item knowledge
  (:meth:`RayEngine.generate_interests`, :meth:`RayEngine.generate_knowledge`: a pool of
  generator actors); the driver reads and writes the LM cache, so the vectors and texts
  are the local engine's and land where a local run finds them.

Faults: a task whose worker dies (killed, out of memory, its node lost) is run again by
Ray (``max_retries``); map outputs lost with a node are rebuilt from their lineage. Every
task is a pure function of its inputs, so a retried job gives the same output. A Ray
Train fit whose worker dies is started again (``train_max_failures``) from its last
checkpoint (SASRec: every epoch; textcf: every ``train_checkpoint_steps`` steps), which
holds all the state the later steps read: the weights are the uninterrupted fit's.

Where the driver still holds the data: the :class:`~llmrecall.data.dataset.Dataset` (the
dense int32/float64 log, 16 bytes an event, and the vocabularies), the training matrix
slices it sends to the maps, the pruned similarity it assembles (``n_items * neighbors``
entries) and the ranked lists it gathers (``users * k`` int32).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray

from llmrecall.engine.cooccurrence import concat, itemcf_similarity, swing_similarity
from llmrecall.engine.local import Engine, is_loaded
from llmrecall.errors import ConfigError
from llmrecall.evaluate.runner import EVAL_BATCH
from llmrecall.lm.embedders import Embedder

#: retries of a task whose worker died (SIGKILL, OOM, node lost)
MAX_RETRIES = 4

#: Ray Train restarts of a run whose worker died, by default (``train_max_failures``)
TRAIN_MAX_FAILURES = 2

#: textcf's optimizer steps between checkpoints on Ray Train (SASRec: every epoch)
TEXTCF_CHECKPOINT_STEPS = 50


def _apply_map(fn: Callable, item: Any, n_partitions: int):
    parts = fn(item)
    return tuple(parts) if n_partitions > 1 else parts[0]


def _apply_reduce(fn: Callable, partition: int, *parts):
    return fn(partition, concat(parts))


def _apply_streamed_reduce(fn: Callable, partition: int, wrapped: list[list[Any]]):
    # the pieces arrive as references wrapped in lists, which Ray does not resolve before
    # the call: each is fetched when the reducer asks for it and dropped after
    return fn(partition, (ray.get(w[0]) for w in wrapped))


def _apply_task(fn: Callable, item: Any):
    return fn(item)


def _rank_block(channel, task, start: int, stop: int, k: int):
    from llmrecall.evaluate.protocols import EvalTask
    from llmrecall.evaluate.runner import recall_lists

    rows = slice(start, stop)
    sub = EvalTask(task.users[rows], task.targets[rows], task.history, task.candidate_mask,
                   None if task.exclude is None else task.exclude[rows])
    return recall_lists(channel, sub, k)


class RayEngine(Engine):
    """Runs the co-occurrence fits and the all-user recall on a Ray cluster.

    Args:
        address: ``"auto"``, ``host:port`` or ``ray://host:port`` of a running cluster;
            None starts a local Ray instance (or reuses the one this process started).
        partitions: shuffle partitions (reducers) per stage; default: the cluster's CPUs.
        user_block: users per recall task (a multiple of ``EVAL_BATCH`` keeps every batch
            the one the local run scores).
        matrix_block: users per ItemCF map task.
        train_workers: Ray Train workers for SASRec and textcf (default: the cluster's CPUs, at least
            1); ``train_cpus`` CPUs each.
        train_min_workers: with fewer than ``train_workers``, the fits are elastic (Ray
            Train's ``ScalingConfig(num_workers=(min, max))``): they start on as many
            workers as the cluster has room for, up to ``train_workers``, and a run that
            lost a node goes on, from its last checkpoint, on the workers that still fit,
            down to this many. None (the default): always ``train_workers``.
        train_storage: where Ray Train keeps the run and the trained network's checkpoint:
            a path every node can reach (a shared file system); default a temporary
            folder on this machine, removed after each fit. Each fit writes a new run
            folder there, holding its latest checkpoint.
        train_max_failures: how many times a Ray Train run whose worker died (killed,
            out of memory, its node lost) is started again (0: the fit fails at once).
            SASRec resumes from its last epoch checkpoint, textcf from its last (every
            ``train_checkpoint_steps`` optimizer steps, default 50, and after the last).
        actors: embedding and generator actors per pool (default: the cluster's CPUs, at
            least 1); ``actor_cpus`` CPUs each (a pool of endpoint clients can ask for
            less).

    ``train_runs`` has one entry per Ray Train fit: ``name``, ``seconds`` and rank 0's last
    metrics: ``epoch`` (SASRec) or ``step`` (textcf) done, ``resumed_from``, the epoch
    or step its last attempt started from (0 when no worker died), and ``world``, the
    workers of that attempt (fewer than at the start when an elastic run lost a node).

    ``pool_work`` counts what the pools did: ``embedded_texts`` (texts an embedding actor
    embedded), ``generated_users`` and ``generated_items`` (written by generator actors).
    """

    kind = "ray"

    def __init__(self, address: str | None = None, partitions: int | None = None,
                 user_block: int = 4 * EVAL_BATCH, matrix_block: int = 20_000,
                 num_cpus: int | None = None, train_workers: int | None = None,
                 train_cpus: float = 1.0, train_storage: str | None = None,
                 train_max_failures: int = TRAIN_MAX_FAILURES,
                 train_checkpoint_steps: int = TEXTCF_CHECKPOINT_STEPS,
                 actors: int | None = None, actor_cpus: float = 1.0,
                 train_min_workers: int | None = None):
        if train_max_failures < 0:
            raise ConfigError(f"engine: train_max_failures must be >= 0, got {train_max_failures}")
        if train_checkpoint_steps < 1:
            raise ConfigError("engine: train_checkpoint_steps must be >= 1, got "
                              f"{train_checkpoint_steps}")
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None and num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            # "local": a new instance on this machine, never one found running here
            ray.init(address=address or "local", **kwargs)
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.partitions = partitions or max(1, cpus)
        self.user_block = max(1, user_block)
        self.matrix_block = matrix_block
        self.train_workers = train_workers or max(1, cpus)
        if train_min_workers is not None and not 1 <= train_min_workers <= self.train_workers:
            raise ConfigError(f"engine: train_min_workers must be between 1 and the "
                              f"{self.train_workers} train workers, got {train_min_workers}")
        self.train_min_workers = train_min_workers
        self.train_cpus = train_cpus
        self.train_storage = train_storage
        self.train_max_failures = train_max_failures
        self.train_checkpoint_steps = train_checkpoint_steps
        self.train_runs: list[dict[str, Any]] = []
        self._map = ray.remote(_apply_map)
        self._reduce = ray.remote(_apply_reduce).options(max_retries=MAX_RETRIES)
        self._rank = ray.remote(_rank_block).options(max_retries=MAX_RETRIES)
        self._streamed_reduce = ray.remote(_apply_streamed_reduce).options(
            max_retries=MAX_RETRIES)
        self._task = ray.remote(_apply_task).options(max_retries=MAX_RETRIES)
        self._task_refs: dict[int, tuple[Any, Any]] = {}
        self.actors = actors or max(1, cpus)
        self.actor_cpus = actor_cpus
        self._embedders: dict[str, PoolEmbedder] = {}
        self.pool_work: Counter[str] = Counter()

    # --- the shuffle ------------------------------------------------------------------

    def shuffle(self, map_fn: Callable, inputs: Sequence[Any], reduce_fn: Callable,
                n_partitions: int, keep: bool = False) -> list[Any]:
        """``reduce_fn(p, concat(piece p of every map_fn(x)))`` for each partition p: the
        maps run as tasks with one return per partition, each reduce a task fed those
        returns (Ray moves them between nodes; nothing passes through the driver). With
        ``keep`` the reduce outputs stay in the object store and their references are
        returned: given as another shuffle's ``inputs`` (or a task's), each is read where
        it is used, so a chain of shuffles passes nothing through the driver."""
        outs, reduce_ref = self._start_maps(map_fn, inputs, reduce_fn, n_partitions)
        refs = [self._reduce.remote(reduce_ref, p, *[o[p] for o in outs])
                for p in range(n_partitions)]
        return refs if keep else ray.get(refs)

    def _start_maps(self, map_fn: Callable, inputs: Sequence[Any], reduce_fn: Callable,
                    n_partitions: int) -> tuple[list[Any], Any]:
        """Submit one map task per input (one return per partition) and put ``reduce_fn``
        in the object store: the map outputs' references (``outs[m][p]``) and its own."""
        self._release_embedders()
        map_ref, reduce_ref = ray.put(map_fn), ray.put(reduce_fn)
        mapper = self._map.options(num_returns=n_partitions, max_retries=MAX_RETRIES)
        outs: list[Any] = [mapper.remote(map_ref, x, n_partitions) for x in inputs]
        if n_partitions == 1:
            outs = [[o] for o in outs]
        return outs, reduce_ref

    def shuffle_streamed(self, map_fn: Callable, inputs: Sequence[Any], reduce_fn: Callable,
                         n_partitions: int) -> list[Any]:
        """As :meth:`shuffle`, but each reducer gets an iterator over its pieces, fetched
        from the object store one at a time (Ray spills the ones waiting to disk when the
        store is full), so a reducer that folds them in holds one piece at once."""
        outs, reduce_ref = self._start_maps(map_fn, inputs, reduce_fn, n_partitions)
        refs = [self._streamed_reduce.remote(reduce_ref, p, [[o[p]] for o in outs])
                for p in range(n_partitions)]
        return ray.get(refs)

    def map_tasks(self, fn: Callable, inputs: Sequence[Any]) -> list[Any]:
        """``fn(x)`` for every input, one task each (retried when its worker dies)."""
        self._release_embedders()
        fn_ref = ray.put(fn)
        return ray.get([self._task.remote(fn_ref, x) for x in inputs])

    def _workers(self) -> int | tuple[int, int]:
        """The Ray Train workers of a fit: ``train_workers``, or ``(train_min_workers,
        train_workers)`` for an elastic one."""
        if self.train_min_workers is None or self.train_min_workers >= self.train_workers:
            return self.train_workers
        return (self.train_min_workers, self.train_workers)

    def similarity(self, channel, dataset, matrix):
        """The pruned similarity of an ItemCF or Swing ``channel`` (``fit``'s hook)."""
        if channel.kind == "itemcf":
            return itemcf_similarity(channel, dataset, matrix, self.shuffle, self.partitions,
                                     self.matrix_block)
        return swing_similarity(channel, dataset, matrix, self.shuffle, self.partitions,
                                self.matrix_block)

    # --- the Engine contract ----------------------------------------------------------

    def fit_channel(self, channel: Any, dataset: Any) -> None:
        from llmrecall.channels.itemcf import ItemCF
        from llmrecall.channels.sequential import SASRec
        from llmrecall.channels.swing import Swing
        from llmrecall.channels.textcf import TextCF

        try:
            # exact classes: a subclass may compute its similarity (or train) otherwise
            if type(channel) in (ItemCF, Swing):
                channel.fit(dataset, similarity=self.similarity)
            elif type(channel) is SASRec:
                channel.fit(dataset, train=self.train_sasrec)
            elif type(channel) is TextCF:
                channel.fit(dataset, train=self.train_textcf)
            else:
                channel.fit(dataset)
        finally:
            self._release_embedders()

    def recall_lists(self, channel: Any, task: Any, k: int,
                     on_batch: Callable[[int], None] | None = None) -> Any:
        from llmrecall.channels.base import Candidates

        n = len(task.users)
        if n <= self.user_block:
            return super().recall_lists(channel, task, k, on_batch=on_batch)
        self._release_embedders()
        task_ref = self._task_ref(task)
        channel_ref = ray.put(channel)
        starts = range(0, n, self.user_block)
        refs = [self._rank.remote(channel_ref, task_ref, s, min(s + self.user_block, n), k)
                for s in starts]
        blocks = ray.get(refs)
        if on_batch is not None:
            on_batch(n)
        return Candidates(np.concatenate([b.ids for b in blocks]),
                          np.concatenate([b.scores for b in blocks]))

    def _task_ref(self, task):
        # one copy of a task (history, targets) in the object store for all its channels
        held = self._task_refs.get(id(task))
        if held is None or held[0] is not task:
            held = (task, ray.put(task))
            self._task_refs = {id(task): held}
        return held[1]

    def train_sasrec(self, channel, model, windows: Any, n_items: int):
        """``SASRec.fit``'s ``train`` hook: :func:`train_sasrec` on ``train_workers``."""
        self._release_embedders()  # the catalog is embedded: its actors' CPUs train now
        return train_sasrec(channel, model, windows, n_items, self._workers(),
                            self.train_cpus, self.train_storage, self.train_max_failures,
                            self.train_runs)

    def train_textcf(self, channel, mlp, graph):
        """``TextCF.fit``'s ``train`` hook: :func:`train_textcf` on ``train_workers``."""
        self._release_embedders()  # the catalog is embedded: its actors' CPUs train now
        return train_textcf(channel, mlp, graph, self._workers(), self.train_cpus,
                            self.train_storage, self.train_max_failures, self.train_runs,
                            self.train_checkpoint_steps)

    # --- language-model work on actor pools --------------------------------------------

    def embedder(self, name: str) -> PoolEmbedder:
        """The embedder ``name`` run on a pool of ``actors`` actors (one model each, started
        at the first batch; stopped after each channel fit and before any other job of the
        engine needs the cluster's CPUs): the batches the local embedder would embed,
        embedded by the actors."""
        held = self._embedders.get(name)
        if held is None:
            held = self._embedders[name] = PoolEmbedder(
                partial(_named_embedder, name), self.actors, self.actor_cpus, self.pool_work)
        return held

    def _release_embedders(self) -> None:
        # the embedding actors hold CPUs; every other job of the engine (tasks, Ray Train
        # workers, generator actors) releases them first, so none waits for idle actors
        for embedder in self._embedders.values():
            embedder.release()

    def generate_interests(self, dataset: Any, generator: Any, settings: Any, users: Any,
                           store: Any, refresh_min_changed: int = 3,
                           examples: Any = None) -> tuple[dict, Any]:
        """:func:`generate_interests` on ``actors`` generator actors, each building its own
        generator with the factory ``generator``; a generator already loaded here runs
        here (it cannot travel). The ``JobStats`` carry the pool's report in ``cost``."""
        from llmrecall.interest.jobs import JobStats

        if is_loaded(generator):
            return super().generate_interests(dataset, generator, settings, users, store,
                                              refresh_min_changed, examples)
        self._release_embedders()
        texts, report = generate_interests(dataset, generator, settings, users, store,
                                           actors=self.actors, cpus_per_actor=self.actor_cpus,
                                           refresh_min_changed=refresh_min_changed,
                                           examples=examples)
        self.pool_work["generated_users"] += report["generated"]
        return texts, JobStats(users=report["users"], generated=report["generated"],
                               reused=report["reused"], cache_hits=report["cache_hits"],
                               empty=report["empty"],
                               generated_texts=report["generated_texts"],
                               seconds=report["seconds"], cost=report)

    def generate_knowledge(self, dataset: Any, generator: Any, items: Any, settings: Any,
                           store: Any) -> tuple[list[str], Any]:
        """:func:`generate_knowledge` on ``actors`` generator actors (as
        :meth:`generate_interests`); the ``KnowledgeStats`` carry the pool's report."""
        from llmrecall.interest.knowledge import KnowledgeStats

        if is_loaded(generator):
            return super().generate_knowledge(dataset, generator, items, settings, store)
        self._release_embedders()
        texts, report = generate_knowledge(dataset, generator, settings, items, store,
                                           actors=self.actors, cpus_per_actor=self.actor_cpus)
        self.pool_work["generated_items"] += report["generated"]
        asked = range(dataset.n_items) if items is None else np.asarray(items).tolist()
        return texts, KnowledgeStats(items=report["items"], generated=report["generated"],
                                     cache_hits=report["reused"],
                                     empty=sum(1 for i in asked if not texts[i]),
                                     seconds=report["seconds"], cost=report)

    def describe(self) -> dict[str, Any]:
        resources = ray.cluster_resources()
        return {"kind": self.kind, "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
                "cpus": resources.get("CPU", 0), "partitions": self.partitions,
                "pid": os.getpid()}

    def close(self) -> None:
        self._task_refs = {}
        self._release_embedders()
        if self._started and ray.is_initialized():
            ray.shutdown()


# --- SASRec and textcf: data-parallel training with Ray Train --------------------------------


def _torch_rng_states(world: int) -> list[Any]:
    """torch's CPU generator state of every rank, in rank order (a collective: every
    worker calls it). Each rank draws its own dropout masks, so a resumed run needs each
    rank's state, not rank 0's alone."""
    import torch

    state = torch.get_rng_state()
    if world == 1:
        return [state]
    import torch.distributed as dist

    gathered = [torch.empty_like(state) for _ in range(world)]  # uint8[5056] each
    dist.all_gather(gathered, state)
    return gathered


def _report_train_state(module, rank: int, world: int, metrics: dict[str, Any], step: int,
                        optimizer: Any, rng_state: Mapping[str, Any], folder_name: str,
                        extra: Callable[[str], None] | None = None) -> None:
    """Ray Train's report of a worker after ``step`` steps (epochs): rank 0 attaches the
    checkpoint a restarted run resumes from (:mod:`~llmrecall.channels.train_state`:
    ``module``'s weights, the optimizer state, ``step``, the numpy generator state
    ``rng_state`` and every rank's torch generator; safetensors and JSON, no pickle) in a
    folder ``folder_name``, and whatever ``extra(folder)`` writes there (SASRec's early
    stopping state); the other ranks report ``metrics`` only (a report is a barrier: every
    rank makes the same ones)."""
    import tempfile

    import ray.train

    from llmrecall.channels.train_state import save_train_state

    torch_rng = _torch_rng_states(world)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            save_train_state(folder, module, optimizer, step, rng_state, torch_rng)
            if extra is not None:
                extra(folder)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=folder_name)


def _report_epoch(module, rng: np.random.Generator, rank: int, world: int, resumed_from: int,
                  stopping, rows_held: int, epochs_done: int, optimizer: Any) -> None:
    """SASRec's ``on_epoch`` on a Ray Train worker: the checkpoint after every epoch, in
    ``epoch-<n>``, with the early stopping state when ``stopping``
    (:class:`~llmrecall.channels.early_stop.HeldOutNext`) is set; metrics ``epoch``,
    ``resumed_from`` (the epoch this attempt started from) and ``rows_held`` (the training
    windows this worker holds)."""
    _report_train_state(module, rank, world,
                        {"epoch": epochs_done, "resumed_from": resumed_from, "world": world,
                         "rows_held": rows_held},
                        epochs_done,
                        optimizer, rng.bit_generator.state, f"epoch-{epochs_done:05d}",
                        None if stopping is None else stopping.save)


def _report_steps(module, rank: int, world: int, resumed_from: int, every: int, total: int,
                  steps_done: int, optimizer: Any, rng_state: Mapping[str, Any]) -> None:
    """textcf's ``on_step`` on a Ray Train worker: the checkpoint after every ``every``
    steps and after the last (``total``), in ``step-<n>``; metrics ``step`` and
    ``resumed_from`` (the step this attempt started from)."""
    if steps_done % every and steps_done != total:
        return
    _report_train_state(module, rank, world,
                        {"step": steps_done, "resumed_from": resumed_from, "world": world},
                        steps_done,
                        optimizer, rng_state, f"step-{steps_done:07d}")


def _last_train_state(extra: Callable[[str], None] | None = None):
    """The :class:`~llmrecall.channels.train_state.TrainState` of the run's latest
    checkpoint (a worker restarted after a failure), or None on the first attempt;
    ``extra(folder)`` reads what :func:`_report_train_state`'s ``extra`` wrote."""
    import ray.train

    from llmrecall.channels.train_state import load_train_state

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        if extra is not None:
            extra(folder)
        return load_train_state(folder)


def _sasrec_worker(config: dict) -> None:
    """One Ray Train worker: the driver's initial network, DDP-wrapped, trained on this
    worker's rows of every batch (:meth:`SASRec.train_epochs`); rank 0 reports a
    checkpoint after every epoch (:func:`_report_epoch`), the last one the trained state.

    Restarted after a worker failure (``train_max_failures``), every worker loads the
    latest checkpoint and runs the epochs after it, with the state the uninterrupted run
    had then: the result is that run's."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from llmrecall.channels.sequential import _build_model
    from llmrecall.channels.train_state import restore

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    channel = config["channel_type"](**config["params"])
    # the driver's held-out next items (their targets already masked in the windows); every
    # worker scores its replica after each epoch and so stops at the same one
    channel.stopping_ = stopping = config["stopping"]
    torch.set_num_threads(min(channel.threads, 2))
    # dropout differs between workers (each its own rows); the order and the negatives come
    # from the numpy generator, seeded alike everywhere
    torch.manual_seed(channel.seed + rank)
    rng = np.random.default_rng(channel.seed)
    state = {k: torch.from_numpy(np.array(v)) for k, v in ray.get(config["initial"]).items()}
    text = state["text"][1:].numpy() if "text" in state else None
    net = _build_model(config["n_items"], channel.dim, channel.blocks, channel.heads,
                       channel.max_len, channel.dropout, text, channel.text_init)
    resumed = _last_train_state(None if stopping is None else stopping.load)
    net.load_state_dict(state if resumed is None else resumed.weights)
    model = prepare_model(net) if world > 1 else net
    optimizer = channel.optimizer(model)
    start = 0
    if resumed is not None:  # after building: the network's initialisation draws from torch
        restore(resumed, optimizer, rng, rank, channel.seed)
        start = resumed.step
    # the driver's windows from the object store (every worker reads them all, zero-copy
    # on a node), or this worker's slice of the sharded log's window files
    windows, per_worker = config["windows"], None
    if not hasattr(windows, "load_slice"):
        windows = ray.get(windows)
    elif len(windows) >= world:  # every slice has a row
        per_worker = -(-len(windows) // world)
        windows = windows.load_slice(rank, world)
    else:
        windows = windows.load()
    channel.train_epochs(model, windows, config["n_items"], rng, rank=rank, world=world,
                         optimizer=optimizer, start_epoch=start, rows_per_worker=per_worker,
                         on_epoch=partial(_report_epoch, net, rng, rank, world, start, stopping,
                                          len(windows)))
    if stopping is not None:
        # train_epochs put the best epoch's weights back: the last checkpoint is them, and
        # its metrics tell the driver how training went
        _report_train_state(net, rank, world,
                            {"epoch": len(stopping.scores), "resumed_from": start,
                             "world": world, "rows_held": len(windows),
                             "early_stop": {"scores": stopping.scores,
                                            "best_epoch": stopping.best_epoch}},
                            len(stopping.scores), optimizer, rng.bit_generator.state, "best")


def _textcf_worker(config: dict) -> None:
    """One Ray Train worker of textcf: the driver's initial MLP, its layer-0 module
    DDP-wrapped, trained on this worker's anchors of every batch
    (:meth:`TextCF.train_steps`); rank 0 reports a checkpoint every
    ``config["checkpoint_steps"]`` steps and after the last (:func:`_report_steps`).

    Restarted after a worker failure, every worker loads the latest checkpoint and runs
    the steps after it, drawing the batches the uninterrupted run draws (the generator
    state of the pass in progress is in the checkpoint): the result is that run's."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from llmrecall.channels.textcf import _layer0, _mlp
    from llmrecall.channels.train_state import restore

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    channel = config["channel_type"](**config["params"])
    torch.set_num_threads(min(channel.threads, 2))
    # the driver's graph, read-only and zero-copy from the node's object store, or the
    # sharded log's graph file, read and built here
    graph = config["graph"]
    graph = graph.load(channel) if hasattr(graph, "load") else ray.get(graph)
    mlp = _mlp(graph.text.shape[1], channel.hidden, channel.dim)
    resumed = _last_train_state()
    mlp.load_state_dict({k: torch.from_numpy(np.array(v))
                         for k, v in ray.get(config["initial"]).items()}
                        if resumed is None else resumed.weights)
    layer0 = _layer0(mlp, graph, channel.user_init)
    model = prepare_model(layer0) if world > 1 else layer0
    optimizer = channel.optimizer(model)
    # the batches come from the numpy generator, seeded alike everywhere (no dropout)
    rng = np.random.default_rng(channel.seed)
    start = 0
    if resumed is not None:
        restore(resumed, optimizer, rng, rank, channel.seed)
        start = resumed.step
    total = channel.total_steps(graph)
    channel.train_steps(model, graph, rng, rank=rank, world=world, optimizer=optimizer,
                        start_step=start,
                        on_step=partial(_report_steps, mlp, rank, world, start,
                                        config["checkpoint_steps"], total))


def inputs_digest(*parts: Any) -> str:
    """16 hex digits of a SHA-256 over everything a training run reads: numpy arrays (dtype,
    shape, bytes), scipy sparse matrices, dataclasses (their public fields), mappings,
    sequences and plain values. Equal inputs give equal digests in any process."""
    import dataclasses
    import hashlib

    import scipy.sparse as sp

    h = hashlib.sha256()

    def add(x: Any) -> None:
        if isinstance(x, np.ndarray):
            h.update(f"array{x.dtype.str}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif sp.issparse(x):
            matrix: Any = x  # scipy's stubs give issparse's narrowing no tocsr
            csr = matrix.tocsr()
            h.update(f"sparse{csr.shape}".encode())
            for a in (csr.indptr, csr.indices, csr.data):
                add(a)
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            h.update(type(x).__name__.encode())
            for f in dataclasses.fields(x):
                if not f.name.startswith("_"):
                    h.update(f.name.encode())
                    add(getattr(x, f.name))
        elif isinstance(x, Mapping):
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                add(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"seq{len(x)}".encode())
            for v in x:
                add(v)
        elif x is None or isinstance(x, (bool, int, float, str)):
            h.update(repr(x).encode())
        elif isinstance(x, type):
            h.update(f"{x.__module__}.{x.__qualname__}".encode())
        else:
            raise TypeError(f"cannot digest a {type(x).__name__}")

    add(list(parts))
    return h.hexdigest()[:16]


def _num_workers(workers: int | tuple[int, int]) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: a fixed count, or ``(min, max)`` for an elastic run."""
    if isinstance(workers, tuple):
        low, high = max(1, workers[0]), max(1, workers[1])
        return high if low >= high else (low, high)
    return max(1, workers)


def _train_on_workers(worker: Callable[[dict], None], config: dict, name: str,
                      workers: int | tuple[int, int],
                      cpus_per_worker: float, storage: str | None, max_failures: int,
                      runs: list[dict[str, Any]] | None = None,
                      inputs: str | None = None) -> dict[str, Any]:
    """Run ``worker`` on ``workers`` Ray Train workers (``TorchTrainer``, DDP over gloo on
    CPUs) and return the state dict (name -> tensor) of the last checkpoint rank 0 reported.

    A worker that dies (killed, out of memory, its node lost) fails the attempt; Ray Train
    starts the workers again, at most ``max_failures`` times, and they resume from the
    latest checkpoint (``ray.train.get_checkpoint``); only that checkpoint is kept. In a
    ``storage`` given by the caller the run's folder is ``<name>-<inputs>``
    (:func:`inputs_digest` of everything the run reads, the number of workers included):
    the same fit started again after its driver was killed finds that folder and Ray Train
    resumes it from its last registered checkpoint, and a fit that finished returns its
    last checkpoint without training. Without ``storage`` (or ``inputs``) the folder is
    new for every call, in a temporary folder removed after. ``runs``, when given, gets one entry per call:
    ``name``, ``seconds``, and rank 0's last metrics (``epoch`` or ``step``, and
    ``resumed_from``, where the last attempt started: 0 without failure)."""
    import shutil
    import tempfile
    import time
    import uuid

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from safetensors.torch import load_file

    folder = Path(storage) if storage else Path(tempfile.mkdtemp(prefix="llmrecall-train-"))
    folder.mkdir(parents=True, exist_ok=True)
    # in a storage that outlives the driver the run is named by what it trains, so the same
    # fit started again (its driver killed) finds its run there and resumes from the last
    # checkpoint (a finished one returns its result); a temporary folder has nothing to find
    run_name = f"{name}-{inputs}" if storage and inputs else \
        f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    try:
        trainer = TorchTrainer(
            worker, train_loop_config=config,
            torch_config=TorchConfig(backend="gloo"),
            # Ray Train v2 (what ray.train gives at run time) takes (min, max) for an
            # elastic run; the type stubs are v1's
            scaling_config=ScalingConfig(num_workers=cast(Any, _num_workers(workers)),
                                         use_gpu=False,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            run_config=RunConfig(storage_path=str(folder), name=run_name,
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)))
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"{name}: Ray Train returned no checkpoint ({result.error})")
        if runs is not None:
            runs.append({"name": name, "seconds": time.perf_counter() - started,
                         **(result.metrics or {})})
        with result.checkpoint.as_directory() as done:
            return load_file(os.path.join(done, "model.safetensors"))
    finally:
        if storage is None:
            shutil.rmtree(folder, ignore_errors=True)


def train_sasrec(channel, model, windows: Any, n_items: int,
                 workers: int | tuple[int, int] = 2,
                 cpus_per_worker: float = 1.0, storage: str | None = None,
                 max_failures: int = TRAIN_MAX_FAILURES,
                 runs: list[dict[str, Any]] | None = None):
    """Train SASRec's initialised ``model`` data-parallel on ``workers`` Ray Train workers
    (``TorchTrainer``, DDP over gloo on CPUs) and return it with the trained weights.

    Every worker starts from ``model``'s weights and runs the channel's own loop
    (:meth:`~llmrecall.channels.sequential.SASRec.train_epochs`) on its rows of each batch:
    the same epochs, batches, optimizer and seed as one process, the gradients averaged
    across workers. The result equals the one-process fit in distribution, not bit for
    bit (dropout masks and float summation differ). ``windows`` (an array) go to the
    object store once (read zero-copy by the workers of a node); of the sharded log's
    :class:`~llmrecall.engine.sharded_sasrec.WindowFiles` each worker reads only its slice
    of the rows from the shared work folder (never through the driver) and draws its rows
    of each batch from it (``rows_per_worker`` in ``train_epochs``).

    Rank 0 checkpoints every epoch; a run whose worker dies is started again (at most
    ``max_failures`` times) from the last finished epoch, and its result is the
    uninterrupted run's (see :func:`_sasrec_worker`). ``runs``: see
    :func:`_train_on_workers`."""
    initial = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    stopping = getattr(channel, "stopping_", None)  # set by fit when patience > 0
    config = {"channel_type": type(channel), "params": channel.get_params(),
              "initial": ray.put(initial), "n_items": n_items,
              "windows": windows if hasattr(windows, "load") else ray.put(windows),
              "stopping": stopping}
    calls: list[dict[str, Any]] = [] if runs is None else runs
    digest = inputs_digest(type(channel), channel.get_params(), initial, n_items, windows,
                           stopping, workers, cpus_per_worker) if storage else None
    model.load_state_dict(_train_on_workers(_sasrec_worker, config, f"sasrec-{channel.name}",
                                            workers, cpus_per_worker, storage, max_failures,
                                            calls, digest))
    if stopping is not None:  # the workers' record of the epochs, for the fit's report
        record = calls[-1]["early_stop"]
        stopping.scores = [float(v) for v in record["scores"]]
        stopping.best_epoch = int(record["best_epoch"])
    return model


def train_textcf(channel, mlp, graph, workers: int | tuple[int, int] = 2,
                 cpus_per_worker: float = 1.0,
                 storage: str | None = None, max_failures: int = TRAIN_MAX_FAILURES,
                 runs: list[dict[str, Any]] | None = None,
                 checkpoint_steps: int = TEXTCF_CHECKPOINT_STEPS):
    """Train textcf's initialised ``mlp`` data-parallel on ``workers`` Ray Train workers
    (``TorchTrainer``, DDP over gloo on CPUs) and return it with the trained weights.

    Every worker starts from ``mlp``'s weights and runs the channel's own steps
    (:meth:`~llmrecall.channels.textcf.TextCF.train_steps`) with its anchors of each
    batch against all of the batch's items: the same steps, batches, negatives, optimizer
    and seed as one process, the gradients averaged across workers. There is no dropout,
    so the result differs from the one-process fit only by float summation (grouped
    otherwise, and amplified over the steps). ``graph``
    (:class:`~llmrecall.channels.textcf.TrainingGraph`) goes to the object store once and
    every worker reads all of it (zero-copy on a node): each step propagates over the whole
    graph. The sharded log's :class:`~llmrecall.engine.sharded_textcf.GraphFile` is read
    and built into the graph by each worker instead, never passing through the driver.

    Rank 0 checkpoints every ``checkpoint_steps`` steps and after the last; a run whose
    worker dies is started again (at most ``max_failures`` times) from the last
    checkpoint, and its result is the uninterrupted run's (see :func:`_textcf_worker`).
    ``runs``: see :func:`_train_on_workers`."""
    if checkpoint_steps < 1:
        raise ConfigError(f"textcf: checkpoint_steps must be >= 1, got {checkpoint_steps}")
    initial = {k: v.detach().numpy() for k, v in mlp.state_dict().items()}
    config = {"channel_type": type(channel), "params": channel.get_params(),
              "initial": ray.put(initial),
              "graph": graph if hasattr(graph, "load") else ray.put(graph),
              "checkpoint_steps": checkpoint_steps}
    digest = inputs_digest(type(channel), channel.get_params(), initial, graph,
                           checkpoint_steps, workers, cpus_per_worker) if storage else None
    mlp.load_state_dict(_train_on_workers(_textcf_worker, config, f"textcf-{channel.name}",
                                          workers, cpus_per_worker, storage, max_failures,
                                          runs, digest))
    return mlp


# --- catalog embedding on an actor pool ---------------------------------------------------


class _EmbedActor:
    """One copy of the model: embeds shards into the shared shard folder (``root``), or
    batches for the driver (:class:`PoolEmbedder`)."""

    def __init__(self, make_embedder: Callable, root: str | None = None, n: int = 0,
                 shard_size: int = 0):
        from llmrecall.engine.embed import ShardedVectors

        self.embedder = make_embedder()
        self.store = (None if root is None else
                      ShardedVectors(root, self.embedder.fingerprint, n, shard_size))

    def fingerprint(self) -> str:
        return self.embedder.fingerprint

    def describe(self) -> dict[str, Any]:
        """What the driver's stand-in needs: name, model, fingerprint, dim, batch size."""
        e = self.embedder
        return {"name": e.name, "model": e.model, "fingerprint": e.fingerprint,
                "dim": e.dim, "batch_size": e.batch_size}

    def run(self, shard: int, texts: list[str]) -> int:
        """Embed and store one shard (``texts`` are that shard's texts only)."""
        assert self.store is not None
        self.store.write(shard, texts, self.embedder.embed(texts, "passage"))
        return shard

    def batch(self, texts: list[str], kind: str) -> np.ndarray:
        """float32[len(texts), dim], any norm: the model's output for one batch, as the
        embedder's own ``_embed_all`` gives it (normalised once, by the driver)."""
        return self.embedder._embed_all(texts, kind)


def _embed_pool(make_embedder: Callable, actors: int, cpus_per_actor: float,
                *args: Any) -> list[Any]:
    actor_cls: Any = ray.remote(_EmbedActor).options(
        num_cpus=cpus_per_actor, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
    return [actor_cls.remote(make_embedder, *args) for _ in range(max(1, actors))]


def _named_embedder(name: str) -> Embedder:
    from llmrecall.lm.embedders import get_embedder

    return get_embedder(name)


class PoolEmbedder(Embedder):
    """An :class:`~llmrecall.lm.embedders.Embedder` whose batches are embedded by a pool of
    actors, each holding one model (``make_embedder()``), started at the first use and
    stopped by :meth:`release` (started again when used after).

    ``embed`` cuts the texts into the very batches of ``batch_size`` the one-process
    embedder would (``Embedder._embed_all``), sends them to the actors in parallel and
    normalises the concatenated output once, as the one-process embedder does: the vectors
    are the one-process ones bit for bit (each batch is the same model call on the same
    texts). Wrapped in :class:`~llmrecall.lm.CachedEmbedder` on the driver, the texts
    already in the driver's LM cache are not sent and the new vectors are written there.
    ``work["embedded_texts"]`` counts the texts the actors embedded."""

    def __init__(self, make_embedder: Callable[[], Embedder], actors: int,
                 cpus_per_actor: float, work: Counter[str] | None = None):
        self.make_embedder = make_embedder
        self.n_actors, self.cpus_per_actor = max(1, actors), cpus_per_actor
        self.work = work if work is not None else Counter()
        self._pool: list[Any] = []
        self._about: dict[str, Any] | None = None

    def _actors(self) -> list[Any]:
        if not self._pool:
            self._pool = _embed_pool(self.make_embedder, self.n_actors, self.cpus_per_actor)
        return self._pool

    def _describe(self) -> dict[str, Any]:
        if self._about is None:
            self._about = ray.get(self._actors()[0].describe.remote())
        return self._about

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._describe()["name"]

    @property
    def model(self) -> str:  # type: ignore[override]
        return self._describe()["model"]

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self._describe()["batch_size"]

    @property
    def fingerprint(self) -> str:
        return self._describe()["fingerprint"]

    @property
    def dim(self) -> int:
        return self._describe()["dim"]

    def parallel_groups(self, group_size: int) -> int:
        """Groups of ``group_size`` texts that give every actor a batch at once."""
        return max(1, -(-self.n_actors * self.batch_size // max(group_size, 1)))

    def embed_groups(self, groups: Sequence[Sequence[str]], kind: Any = "passage") -> list[np.ndarray]:
        """Each group cut into the batches ``embed(group)`` would cut, the batches of all
        groups embedded by the actors at once, each group normalised: ``embed(group)`` for
        each, bit for bit."""
        from llmrecall.lm.embedders import l2_normalise

        size = self.batch_size
        batches, owner = [], []
        for g, group in enumerate(groups):
            texts = list(group)
            for s in range(0, len(texts), size):
                batches.append(texts[s:s + size])
                owner.append(g)
        parts = self._run_batches(batches, kind)
        out = []
        for g in range(len(groups)):
            mine = [part for part, o in zip(parts, owner) if o == g]
            out.append(np.ascontiguousarray(l2_normalise(np.concatenate(mine, axis=0)))
                       if mine else np.zeros((0, self.dim), np.float32))
        return out

    def _run_batches(self, batches: list[list[str]], kind: Any) -> list[np.ndarray]:
        from ray.util import ActorPool

        parts = list(ActorPool(self._actors()).map(
            lambda actor, batch: actor.batch.remote(batch, kind), batches))
        self.work["embedded_texts"] += sum(len(b) for b in batches)
        self.work["embedding_batches"] += len(batches)
        self.work["most_batches_at_once"] = max(self.work["most_batches_at_once"],
                                                min(len(batches), self.n_actors))
        return parts

    def _embed_all(self, texts: list[str], kind: Any) -> np.ndarray:
        size = self.batch_size
        batches = [texts[s:s + size] for s in range(0, len(texts), size)]
        return np.concatenate(self._run_batches(batches, kind), axis=0)

    def _embed_batch(self, texts: list[str], kind: Any) -> np.ndarray:
        return self._embed_all(texts, kind)

    def release(self) -> None:
        """Stop the actors (their CPUs go back to the cluster); the next use starts them."""
        pool, self._pool = self._pool, []
        for actor in pool:
            ray.kill(actor)

    def close(self) -> None:
        self.release()


def embed_catalog(texts: Sequence[str], make_embedder: Callable, root: str | os.PathLike,
                  shard_size: int | None = None, actors: int = 2,
                  cpus_per_actor: float = 1.0) -> tuple[np.ndarray, int]:
    """float32[n, dim] vectors of ``texts``: the shards missing under ``root`` are embedded
    by a pool of ``actors`` actors (one model each), the rest are read back. An actor that
    dies is restarted and its shard retried; a job killed outright is resumed by running
    it again (done shards are kept). Returns the vectors and the shards computed now.

    ``root`` must be reachable at the same path from every node (see
    :mod:`llmrecall.engine.embed`)."""
    from ray.util import ActorPool

    from llmrecall.engine.embed import SHARD_SIZE, ShardedVectors

    shard_size = shard_size or SHARD_SIZE
    texts = list(texts)
    pool = _embed_pool(make_embedder, actors, cpus_per_actor, str(root), len(texts),
                       shard_size)
    try:
        fingerprint: str = ray.get(pool[0].fingerprint.remote())
        store = ShardedVectors(Path(root), fingerprint, len(texts), shard_size)
        todo = store.missing(texts)

        def submit(actor, shard):
            lo, hi = store.bounds(shard)
            return actor.run.remote(shard, texts[lo:hi])

        done = list(ActorPool(pool).map_unordered(submit, todo))
        assert sorted(done) == todo
        return store.load(), len(todo)
    finally:
        for actor in pool:
            ray.kill(actor)


# --- LLM generation (interests, item knowledge) on an actor pool ---------------------------

#: users (or items) per generation task: what a killed job may have to redo
GENERATE_SHARD = 8


class _GenerateActor:
    """One generator (a local model, loaded once, or a client of an OpenAI-compatible
    endpoint: one request in flight per actor) running the one-process jobs on shards."""

    def __init__(self, make_generator: Callable, dataset: Any):
        self.generator = make_generator()
        self.dataset = dataset
        self._interest_jobs: dict[tuple[str, str], Any] = {}

    def fingerprint(self) -> str:
        from llmrecall.interest.jobs import store_fingerprint

        return store_fingerprint(self.generator)

    def usage(self) -> tuple[int, int, int]:
        u = self.generator.usage
        return u.prompt_tokens, u.completion_tokens, u.calls

    def interests(self, settings: Any, users: list[int],
                  examples: Any = None) -> tuple[dict, list, list, dict]:
        """``InterestJob.run`` on ``users`` against a store in memory: the texts, the rows
        the job wrote there (for the driver to write to the shared store) and its stats.
        ``examples``: the job's few-shot examples when drawn elsewhere (None: from the
        actor's dataset)."""
        from dataclasses import asdict

        from llmrecall.interest.jobs import InterestJob

        store = _recording_store()
        key = (settings.model_dump_json(), repr(examples))
        job = self._interest_jobs.get(key)
        if job is None:  # the trie and examples are built once per settings
            job = InterestJob(self.dataset, self.generator, settings, examples=examples)
            self._interest_jobs = {key: job}
        job.store = store
        out, stats = job.run(np.asarray(users, np.int64))
        return out, store.text_lists, store.subjects, asdict(stats)

    def knowledge(self, settings: Any, items: list[int]) -> tuple[list, dict]:
        from dataclasses import asdict

        from llmrecall.interest.knowledge import generate_knowledge

        store = _recording_store()
        _, stats = generate_knowledge(self.dataset, self.generator, np.asarray(items, np.int64),
                                      settings, store)
        return store.text_lists, asdict(stats)


def _recording_store():
    from llmrecall.lm.cache import LMCache

    class RecordingStore(LMCache):
        """An in-memory cache that also keeps what was written, for the driver."""

        def __init__(self):
            super().__init__(":memory:")
            self.text_lists: list[tuple[str, list[str]]] = []
            self.subjects: list[tuple[str, list[int], list[str]]] = []

        def put_text_lists(self, items, fingerprint="", template=""):
            items = list(items)
            self.text_lists.extend(items)
            return super().put_text_lists(items, fingerprint, template)

        def put_subjects(self, scope, rows):
            rows = list(rows)
            self.subjects.extend(rows)
            return super().put_subjects(scope, rows)

    return RecordingStore()



def _generate_pool(make_generator: Callable, dataset: Any, actors: int,
                   cpus_per_actor: float) -> list[Any]:
    actor_cls: Any = ray.remote(_GenerateActor).options(
        num_cpus=cpus_per_actor, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
    dataset_ref = ray.put(dataset)
    return [actor_cls.remote(make_generator, dataset_ref) for _ in range(max(1, actors))]


def _usage(pool: list[Any]) -> dict[str, int]:
    totals = np.sum([ray.get(a.usage.remote()) for a in pool], axis=0).tolist()
    return dict(zip(("prompt_tokens", "completion_tokens", "calls"), map(int, totals)))


def generate_interests(dataset: Any, make_generator: Callable, settings: Any, users: Any,
                       store: Any, actors: int = 2, cpus_per_actor: float = 1.0,
                       shard_size: int = GENERATE_SHARD, refresh_min_changed: int = 3,
                       examples: Any = None) -> tuple[dict[int, list[str]], dict]:
    """Interest texts for ``users`` (dense ids) generated on a pool of ``actors`` actors,
    each with its own ``make_generator()`` (a local model, loaded once per actor, or an
    OpenAI-compatible client: then ``actors`` is the bound on requests in flight, and
    ``cpus_per_actor`` can be small).

    Each actor runs :meth:`InterestJob.run <llmrecall.interest.jobs.InterestJob.run>` on
    shards of ``shard_size`` users; the driver writes each shard's texts to ``store`` (the
    shared :class:`~llmrecall.lm.cache.LMCache` the channels and the service read) as it
    comes back, so a killed job, run again, generates only the users not yet stored (users
    whose stored text is still fresh, :func:`~llmrecall.interest.jobs.needs_refresh`, are
    not sent). The texts are the one-process job's: the same job code, prompts and
    generator per user (``examples``: the few-shot examples when drawn elsewhere, None:
    from ``dataset``). Returns ``({user: texts}, report)``: users, generated, reused,
    seconds, tokens and, per 1,000 generated users, seconds and tokens."""
    import time

    from ray.util import ActorPool

    from llmrecall.interest.jobs import InterestSettings, needs_refresh

    settings = settings or InterestSettings()
    start = time.perf_counter()
    users = [int(u) for u in np.asarray(users).tolist()]
    pool = _generate_pool(make_generator, dataset, actors, cpus_per_actor)
    try:
        fingerprint: str = ray.get(pool[0].fingerprint.remote())
        scope = settings.scope(fingerprint)
        stored = store.get_subjects(scope)
        histories = dataset.histories()
        raws = dataset.users.raw(np.asarray(users, np.int64))
        out: dict[int, list[str]] = {}
        todo = []
        for user, raw in zip(users, raws):
            recent = histories.of(user)[-settings.history_length:].tolist()
            if raw in stored and not needs_refresh(stored[raw][0], recent,
                                                   window=settings.history_length,
                                                   min_changed=refresh_min_changed):
                out[user] = stored[raw][1]
            else:
                todo.append(user)
        # a prompt answered before (the same history, settings, examples and generator) is
        # read from the store here, as the local job reads it, not generated again
        reused = len(users) - len(todo)
        todo, cache_hits, empty = _stored_answers(dataset, histories, settings, fingerprint,
                                                  scope, todo, store, out, examples)
        shards = [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
        generated = generated_texts = 0
        results = ActorPool(pool).map_unordered(
            lambda actor, shard: actor.interests.remote(settings, shard, examples), shards)
        for texts, text_lists, subjects, stats in results:
            store.put_text_lists(text_lists, fingerprint)
            store.put_subjects(scope, subjects)
            out.update(texts)
            generated += stats["generated"]
            cache_hits += stats["cache_hits"]
            empty += stats["empty"]
            generated_texts += stats["generated_texts"]
        tokens = _usage(pool)
    finally:
        for actor in pool:
            ray.kill(actor)
    seconds = time.perf_counter() - start
    report = _cost("users", len(users), generated, reused, cache_hits, seconds,
                   tokens, actors)
    return {u: out[u] for u in users}, {**report, "empty": empty,
                                         "generated_texts": generated_texts}


def _stored_answers(dataset: Any, histories: Any, settings: Any, fingerprint: str, scope: str,
                    users: list[int], store: Any, out: dict[int, list[str]],
                    examples: Any = None) -> tuple[list[int], int, int]:
    """Take from ``store`` the texts of the ``users`` whose prompt was answered before
    (:func:`~llmrecall.interest.jobs.text_list_key`; ``histories``: ``dataset``'s;
    ``examples``: the job's, None: drawn from ``histories``): they go to ``out`` and to the
    store's subjects. Returns the users left to generate, the answers found and how many of
    them were empty."""
    from llmrecall.interest.jobs import job_examples, text_list_key
    from llmrecall.lm.prompts import display_title

    if not users:
        return users, 0, 0
    if examples is None:
        examples = job_examples(histories, [display_title(t) for t in dataset.catalog.titles],
                                settings)
    keys = {u: text_list_key(fingerprint, settings, histories.of(u), examples) for u in users}
    found = store.get_text_lists(list(keys.values()))
    hits = [u for u in users if keys[u] in found]
    raws = dataset.users.raw(np.asarray(hits, np.int64)) if hits else []
    rows = []
    for user, raw in zip(hits, raws):
        out[user] = found[keys[user]]
        rows.append((raw, histories.of(user)[-settings.history_length:].tolist(), out[user]))
    store.put_subjects(scope, rows)
    return ([u for u in users if keys[u] not in found], len(hits),
            sum(1 for u in hits if not out[u]))


def generate_knowledge(dataset: Any, make_generator: Callable, settings: Any = None,
                       items: Any = None, store: Any = None, actors: int = 2,
                       cpus_per_actor: float = 1.0,
                       shard_size: int = GENERATE_SHARD) -> tuple[list[str], dict]:
    """Item knowledge (:func:`llmrecall.interest.knowledge.generate_knowledge`) for
    ``items`` (all when None) on a pool of generator actors: only the items whose raw
    answer is not in ``store`` yet are sent, in shards; each shard's answers are written to
    ``store`` as they come back (resumable). Returns one cleaned string per catalog item
    and the cost report (as :func:`generate_interests`, per 1,000 items)."""
    import time

    from ray.util import ActorPool

    from llmrecall.interest.knowledge import KnowledgeSettings, clean_keywords, knowledge_keys
    from llmrecall.lm.cache import LMCache

    settings = settings or KnowledgeSettings()
    store = store if store is not None else LMCache(":memory:")
    start = time.perf_counter()
    items = np.arange(dataset.n_items) if items is None else np.asarray(items)
    titles = dataset.catalog.titles
    pool = _generate_pool(make_generator, dataset, actors, cpus_per_actor)
    try:
        fingerprint: str = ray.get(pool[0].fingerprint.remote())
        keys = knowledge_keys(dataset, items, settings, fingerprint)
        cached = store.get_text_lists(list(keys.values()))
        todo = [i for i in items.tolist() if keys[i] not in cached and titles[i].strip()]
        shards = [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
        generated = 0
        results = ActorPool(pool).map_unordered(
            lambda actor, shard: actor.knowledge.remote(settings, shard), shards)
        for text_lists, stats in results:
            store.put_text_lists(text_lists, fingerprint)
            generated += stats["generated"]
        tokens = _usage(pool)
    finally:
        for actor in pool:
            ray.kill(actor)
    cached = store.get_text_lists(list(keys.values()))
    out = [""] * dataset.n_items
    for item, key in keys.items():
        if key in cached:
            raw = cached[key][0] if cached[key] else ""
            out[item] = clean_keywords(raw, titles[item], settings.max_keywords)
    seconds = time.perf_counter() - start
    return out, _cost("items", len(items), generated, len(items) - len(todo), 0, seconds,
                      tokens, actors)


def _cost(unit: str, n: int, generated: int, reused: int, cache_hits: int, seconds: float,
          tokens: dict[str, int], actors: int) -> dict[str, Any]:
    per = 1000.0 / generated if generated else 0.0
    return {unit: n, "generated": generated, "reused": reused, "cache_hits": cache_hits,
            "actors": actors, "seconds": seconds, **tokens,
            f"seconds_per_1000_{unit}": seconds * per,
            f"tokens_per_1000_{unit}": (tokens["prompt_tokens"] + tokens["completion_tokens"])
            * per}
