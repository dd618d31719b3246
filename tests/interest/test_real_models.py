"""The interest machinery with the real packaged models (SmolLM2 GGUF, the default embedder)
on real ml-100k data, and the production path: the same channel pointed at an
OpenAI-compatible server (lm-serve on 127.0.0.1)."""

import numpy as np
import pytest

from llmrecall.channels.interest import InterestChannel
from llmrecall.channels.search import SearchQueryChannel
from llmrecall.data.builtin import load_builtin
from llmrecall.data.dataset import SearchLog
from llmrecall.evaluate.protocols import EvalTask, make_split
from llmrecall.evaluate.runner import evaluate_channel
from llmrecall.interest.jobs import InterestJob, InterestSettings
from llmrecall.lm.cache import LMCache
from llmrecall.lm.generators import ConstrainedDecoding, get_generator, make_generator
from llmrecall.lm.prompts import display_title

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ml100k_train():
    return make_split(load_builtin("ml-100k"), "loo", 0).train


def test_trie_constrained_generation_writes_new_real_titles(ml100k_train):
    generator = get_generator("local", threads=2)
    settings = InterestSettings(noun="movies", n_texts=3, history_length=6, n_examples=1,
                                constrain="trie")
    job = InterestJob(ml100k_train, generator, settings)
    user = 0
    texts = job.generate_user(user)
    catalog = {display_title(t) for t in ml100k_train.catalog.titles}
    history = {display_title(ml100k_train.catalog.titles[i])
               for i in ml100k_train.histories().of(user)}
    assert len(texts) == 3 and len(set(texts)) == 3
    assert all(t in catalog for t in texts)
    assert not set(texts) & history


def test_fit_reuses_stored_text_until_the_history_moves(ml100k_train, tmp_path):
    generator = get_generator("local", threads=2)
    settings = dict(noun="movies", n_texts=2, history_length=4, n_examples=1, constrain="trie")
    users = ml100k_train.users.raw(np.array([1, 2]))
    store = str(tmp_path / "interest.sqlite")
    first = InterestChannel(settings=settings, embedder=None, store_path=store, users=users)
    first.use(generator=generator).fit(ml100k_train)
    assert first.job_stats.generated == 2
    again = InterestChannel(settings=settings, embedder=None, store_path=store, users=users)
    again.use(generator=generator).fit(ml100k_train)
    assert again.job_stats.generated == 0 and again.job_stats.reused == 2
    assert again.texts_of(1) == first.texts_of(1)
    out = again.recall(np.array([1]), 20, ml100k_train.histories())
    assert (out.ids[0] >= 0).sum() > 0 and out.evidence_kind == "text"


def test_search_channel_finds_searched_titles_with_the_real_embedder():
    ds = load_builtin("ml-100k")
    split = make_split(ds, "loo", 0)
    task = split.valid
    keep = np.arange(0, len(task.users), 10)
    sub = EvalTask(task.users[keep], task.targets[keep], task.history, None, task.exclude[keep])
    targets = sub.targets.tocsr()
    wanted = targets.indices[targets.indptr[:-1]]
    log = SearchLog(sub.users.astype(np.int32), [ds.catalog.titles[i] for i in wanted],
                    np.zeros(len(sub.users)))
    from dataclasses import replace

    channel = SearchQueryChannel().fit(replace(split.train, searches=log))
    metrics = evaluate_channel(channel, sub, 50, (10, 50))
    # the exact title was typed: it must come back near the top for nearly everyone
    # (duplicate titles in the catalog cost a few places)
    assert metrics["recall@10"] >= 0.9


def test_openai_compatible_endpoint_drives_the_same_job(ml100k_train):
    from llmrecall.lm.server import create_app, start_in_thread

    server = start_in_thread(create_app(None, get_generator("default", threads=2)))
    try:
        generator = make_generator({"backend": "openai", "base_url": server.url,
                                    "model": "SmolLM2-135M-Instruct.Q4_1"})
        assert not isinstance(generator, ConstrainedDecoding)
        settings = InterestSettings(noun="movies", n_texts=2, history_length=4, n_examples=1,
                                    constrain="none", temperature=0.0, max_tokens=16)
        texts, stats = InterestJob(ml100k_train, generator, settings, LMCache(":memory:")).run(
            np.array([0, 1]))
        assert stats.generated == 2
        assert all(isinstance(t, str) and t.strip() for v in texts.values() for t in v)
        assert sum(len(v) for v in texts.values()) >= 1
    finally:
        server.stop()
