"""Sharded catalog embedding: resumable (a rerun computes only the missing shards), and on
a Ray actor pool the same vectors, also when an actor is SIGKILLed mid-job."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from llmrecall.engine.embed import ShardedVectors, embed_catalog


class HashEmbedder:
    """A deterministic stand-in for a model: vectors from the texts' bytes."""

    name = "hash"
    model = "hash-8"
    fingerprint = "hash|hash-8"

    def __init__(self, fail_after: int | None = None, kill_marker: str | None = None):
        self.calls = 0
        self.fail_after = fail_after
        self.kill_marker = kill_marker

    def embed(self, texts, kind="passage"):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("the job dies here")
        if self.kill_marker is not None and not os.path.exists(self.kill_marker):
            with open(self.kill_marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        out = np.zeros((len(texts), 8), np.float32)
        for i, text in enumerate(texts):
            raw = np.frombuffer(text.encode().ljust(8, b"."), np.uint8)[:8]
            out[i] = raw / 255.0
        return out


TEXTS = [f"item {i} title" for i in range(103)]


def test_a_killed_job_resumes_with_only_the_missing_shards(tmp_path):
    with pytest.raises(RuntimeError):
        embed_catalog(TEXTS, lambda: HashEmbedder(fail_after=3), tmp_path, shard_size=10)
    vectors, computed = embed_catalog(TEXTS, HashEmbedder, tmp_path, shard_size=10)
    assert computed == 11 - 3  # 11 shards, 3 were done before the failure
    assert np.array_equal(vectors, HashEmbedder().embed(TEXTS))
    assert embed_catalog(TEXTS, HashEmbedder, tmp_path, shard_size=10)[1] == 0


def test_changed_texts_recompute_only_their_shard(tmp_path):
    embed_catalog(TEXTS, HashEmbedder, tmp_path, shard_size=10)
    edited = list(TEXTS)
    edited[42] = "a new title"
    vectors, computed = embed_catalog(edited, HashEmbedder, tmp_path, shard_size=10)
    assert computed == 1
    assert np.array_equal(vectors, HashEmbedder().embed(edited))
    store = ShardedVectors(tmp_path, HashEmbedder.fingerprint, len(edited), 10)
    assert store.missing(edited) == [] and store.missing(TEXTS) == [4]


@pytest.mark.slow
def test_actor_pool_same_vectors_with_an_actor_killed(tmp_path):
    ray = pytest.importorskip("ray")
    from llmrecall.engine.ray_engine import embed_catalog as embed_on_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        # "local": a new instance of its own, never a cluster already running on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        marker = str(tmp_path / "killed")
        vectors, computed = embed_on_ray(
            TEXTS, lambda: HashEmbedder(kill_marker=marker), tmp_path / "cache",
            shard_size=10, actors=2, cpus_per_actor=0.5)
        assert computed == 11
        assert int(open(marker).read()) != os.getpid()  # an actor died, not this process
        assert np.array_equal(vectors, HashEmbedder().embed(TEXTS))
        # a rerun finds every shard done
        assert embed_on_ray(TEXTS, HashEmbedder, tmp_path / "cache", shard_size=10)[1] == 0
    finally:
        if started:
            ray.shutdown()
