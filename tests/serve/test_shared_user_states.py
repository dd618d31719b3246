"""Per-user channel states shared by replicas through Redis (llmrecall.serve.shared_states):
a state one replica computed answers another (and a restarted one) while the user's history
and the model are unchanged; Redis failing or holding garbage is a miss, never an error."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import pytest

from llmrecall.channels.als import ALS
from llmrecall.channels.sequential import SASRec
from llmrecall.channels.user_cache import (
    UserStateCache,
    context_digest,
    decode_payload,
    encode_payload,
)
from llmrecall.data.dataset import Histories
from llmrecall.serve.shared_states import SharedUserStates, user_cache_counts

from .conftest import WRITE

K = 50


@pytest.fixture(scope="module")
def ml100k():
    from llmrecall.data.builtin import load_builtin

    return load_builtin("ml-100k")


@pytest.fixture(scope="module")
def als(ml100k):
    return ALS(factors=32, iterations=5).fit(ml100k)


@pytest.fixture(scope="module")
def sasrec(ml100k):
    return SASRec(text_init="none", dim=32, max_len=20, epochs=1, batch_size=256).fit(ml100k)


def _versioned(h: Histories, version: int) -> Histories:
    """Every row at ``version``: versions are per process, so each replica has its own."""
    return replace(h, versions=np.full(h.n_users, version, np.int64))


class Replica:
    """One replica's copy of a fitted channel (as after loading the same artifact), with its
    own in-process cache behind which the shared Redis level sits; counts the users whose
    state the channel computed."""

    def __init__(self, channel, redis_url: str, stable_rows: int, retry_s: float = 1.0):
        # as another process's load of the same artifact: equal content, other objects
        self.channel = copy.copy(channel)
        if isinstance(channel, SASRec):
            self.channel.model_ = copy.deepcopy(channel.model_)
        else:
            self.channel.item_factors_ = channel.item_factors_.copy()
        self.channel.user_cache = UserStateCache(10_000)
        self.shared = SharedUserStates(redis_url, "test-state", timeout_s=0.2, retry_s=retry_s)
        self.shared.attach([("ch", self.channel)], "v1", stable_rows)
        self.computed = 0
        self._count_computes()

    def _count_computes(self) -> None:
        channel = self.channel
        if isinstance(channel, SASRec):
            # the transformer pass over the batch's sequences is the user-state compute
            model = channel.model_
            forward = model.forward

            def counted(seq, *args, **kwargs):
                self.computed += len(seq)
                return forward(seq, *args, **kwargs)

            model.forward = counted
        else:
            user_vectors = channel.user_vectors

            def counted_vectors(users, *args, **kwargs):
                self.computed += len(users)
                return user_vectors(users, *args, **kwargs)

            channel.user_vectors = counted_vectors

    @property
    def cache(self) -> UserStateCache:
        return self.channel.user_cache

    def recall(self, users, history):
        return self.channel.recall(users, K, history, explain=True)


def _identical(a, b) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    if a.evidence is not None:
        np.testing.assert_array_equal(a.evidence, b.evidence)


def _users(data, n=64, seed=0):
    return np.random.default_rng(seed).choice(data.n_users, n, replace=False).astype(np.int32)


# ---- the value format ----------------------------------------------------------------
def test_payloads_round_trip_and_foreign_values_are_misses():
    payload = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array(True),
               np.array([-1, 4], np.int32))
    raw = encode_payload(b"k1", payload)
    back = decode_payload(b"k1", raw)
    assert back is not None and len(back) == 3
    for a, b in zip(payload, back):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert decode_payload(b"k2", raw) is None  # another key's value
    assert decode_payload(b"k1", raw[:-1]) is None  # truncated
    assert decode_payload(b"k1", raw + b"\0") is None  # trailing bytes
    assert decode_payload(b"k1", b"") is None
    assert decode_payload(b"k1", b"\x80\x04\x95garbage") is None  # a pickle is never loaded
    objects = bytearray(raw)
    at = objects.index(b"<f4")
    objects[at:at + 3] = b"|O8"  # an object dtype: refused, never built
    assert decode_payload(b"k1", bytes(objects)) is None


def test_context_digest_follows_content_not_identity(sasrec):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert context_digest(a) == context_digest(a.copy())
    assert context_digest(a) != context_digest(np.vstack([a, np.zeros((1, 3), np.float32)]))
    assert context_digest(sasrec.model_) == context_digest(copy.deepcopy(sasrec.model_))
    assert context_digest(object()) is None  # not shareable: the channel keeps it in process


# ---- two replicas over one Redis -----------------------------------------------------
@pytest.mark.parametrize("kind", ["als", "sasrec"])
def test_second_replica_reuses_what_the_first_computed(request, redis, ml100k, kind):
    channel = request.getfixturevalue(kind)
    h = ml100k.histories()
    users = _users(ml100k)
    a = Replica(channel, redis.url, ml100k.n_users)
    b = Replica(channel, redis.url, ml100k.n_users)
    first = a.recall(users, _versioned(h, 3))
    assert a.computed == len(users) and a.cache.shared_misses == len(users)

    # replica B: its own process-local versions, an empty in-process cache
    second = b.recall(users, _versioned(h, 11))
    assert b.computed == 0
    assert b.cache.shared_hits == len(users) and b.cache.misses == len(users)
    _identical(second, first)
    _identical(second, channel.recall(users, K, h, explain=True))  # = the offline answer
    # now in B's process: the next recall does not ask Redis again
    _identical(b.recall(users, _versioned(h, 11)), first)
    assert b.cache.hits == len(users) and b.cache.shared_hits == len(users)
    assert user_cache_counts([("ch", b.channel)])["ch"] == {
        "hits": len(users), "misses": len(users), "redis_hits": len(users), "redis_misses": 0}


def test_changed_history_or_model_misses(redis, ml100k, als):
    h = ml100k.histories()
    users = _users(ml100k)
    Replica(als, redis.url, ml100k.n_users).recall(users, _versioned(h, 0))

    # a new event for one user: that user's state is computed, the others come from Redis
    user = int(users[5])
    grown = _extended(h, user, np.array([0, 1, 2], np.int32))
    b = Replica(als, redis.url, ml100k.n_users)
    _identical(b.recall(users, _versioned(grown, 0)), als.recall(users, K, grown, explain=True))
    assert b.computed == 1 and b.cache.shared_hits == len(users) - 1

    # another model: an item added (the item table grew, as add_items does), or the same
    # number of items with other values (another fit): nothing is shared with the old one
    c = Replica(als, redis.url, ml100k.n_users)
    factors = c.channel.item_factors_
    c.channel.item_factors_ = np.vstack([factors, np.zeros((1, factors.shape[1]), np.float32)])
    c.recall(users, _versioned(replace(h, n_items=h.n_items + 1), 0))
    assert c.computed == len(users) and c.cache.shared_hits == 0
    d = Replica(als, redis.url, ml100k.n_users)
    d.channel.item_factors_ = factors.copy()
    d.channel.item_factors_[0, 0] += 1e-3
    d.recall(users, _versioned(h, 0))
    assert d.computed == len(users) and d.cache.shared_hits == 0


def test_users_created_after_the_artifact_share_by_history_alone(redis, ml100k, als):
    """Rows past the artifact's users are numbered per process: the key leaves them out, so
    the same history under another row number is the same state (BPR/ALS give a fitted user
    their trained vector, so below ``stable_rows`` the row is part of the key)."""
    h = ml100k.histories()
    users = _users(ml100k, 16)
    a = Replica(als, redis.url, stable_rows=0)  # every row counts as created after the artifact
    a.recall(users, _versioned(h, 0))
    b = Replica(als, redis.url, stable_rows=ml100k.n_users)  # the same rows, now the artifact's
    b.recall(users, _versioned(h, 0))
    assert b.computed == len(users)  # another key: the row is in it


def _extended(h: Histories, user: int, items: np.ndarray) -> Histories:
    """``h`` with ``items`` appended (newest) to ``user``'s history."""
    e = h.indptr[user + 1]
    times = h.times[e - 1] + 1 + np.arange(len(items), dtype=np.float64)
    lengths = h.lengths()
    lengths[user] += len(items)
    indptr = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return Histories(indptr, np.insert(h.items, e, items).astype(np.int32),
                     np.insert(h.times, e, times),
                     np.insert(h.weights, e, np.ones(len(items), np.float32)), h.n_items)


# ---- Redis failing -------------------------------------------------------------------
def test_redis_stopped_is_a_miss_and_hits_resume_after_the_retry_pause(redis, ml100k, sasrec):
    h = _versioned(ml100k.histories(), 0)
    users = _users(ml100k)
    expected = sasrec.recall(users, K, replace(h, versions=None), explain=True)
    a = Replica(sasrec, redis.url, ml100k.n_users, retry_s=0.5)
    a.recall(users[:32], h)

    redis.stop()
    b = Replica(sasrec, redis.url, ml100k.n_users, retry_s=0.5)
    for block in (users[:32], users[32:], users):  # no exception, the same answers
        got = b.recall(block, h)
        _identical(got, sasrec.recall(block, K, replace(h, versions=None), explain=True))
    assert not b.shared.breaker.available and b.shared.breaker.failures >= 1
    assert b.computed == len(users) and b.cache.shared_hits == 0

    redis.start()  # back, empty
    c = Replica(sasrec, redis.url, ml100k.n_users, retry_s=0.5)
    c.recall(users, h)  # computes and stores
    time.sleep(0.6)  # B's breaker pauses Redis this long after its last failure
    fresh = Replica(sasrec, redis.url, ml100k.n_users)
    b.channel.user_cache = UserStateCache(10_000)  # B restarted: only Redis can answer
    b.shared.attach([("ch", b.channel)], "v1", ml100k.n_users)
    computed = b.computed
    _identical(b.recall(users, h), expected)
    assert b.computed == computed and b.cache.shared_hits == len(users)
    assert b.shared.breaker.available
    fresh.recall(users, h)
    assert fresh.computed == 0


def test_garbage_in_redis_is_a_miss(redis, ml100k, als):
    import redis as redis_py

    h = _versioned(ml100k.histories(), 0)
    users = _users(ml100k)
    Replica(als, redis.url, ml100k.n_users).recall(users, h)
    client = redis_py.Redis.from_url(redis.url)
    keys = sorted(client.scan_iter(match="llmrecall:test-state:user:*"))
    assert len(keys) == len(users)
    values = client.mget(keys)
    client.set(keys[0], b"\x80\x04\x95 not a payload")  # garbage
    client.set(keys[1], values[2])  # another key's (valid) value
    client.set(keys[2], values[3][:-4])  # truncated
    client.set(keys[3], b"")
    # well-formed, tagged for its key, but not the channel's layout (a 3-vector)
    client.set(keys[4], encode_payload(keys[4], (np.zeros(3, np.float32), np.array(True))))
    client.close()

    b = Replica(als, redis.url, ml100k.n_users)
    _identical(b.recall(users, h), als.recall(users, K, replace(h, versions=None), explain=True))
    assert b.computed == 5 and b.cache.shared_hits == len(users) - 5


def test_a_value_of_another_layout_with_nothing_to_vet_it_is_recomputed(redis, ml100k, als):
    """The only shared value of a batch has another layout, and the rest of the batch is
    computed: the value is caught against the computed rows, computed too and replaced."""
    import redis as redis_py

    h = _versioned(ml100k.histories(), 0)
    users = _users(ml100k, 2)
    a = Replica(als, redis.url, ml100k.n_users)
    a.recall(users[:1], h)
    client = redis_py.Redis.from_url(redis.url)
    (key,) = client.scan_iter(match="llmrecall:test-state:user:*")
    client.set(key, encode_payload(key, (np.zeros(3, np.float32), np.array(True))))

    b = Replica(als, redis.url, ml100k.n_users)
    _identical(b.recall(users, h), als.recall(users, K, replace(h, versions=None), explain=True))
    assert b.computed == 1 + 2  # the new user, then both once the value was found wrong
    assert decode_payload(key, client.get(key))[0].shape == (32,)  # replaced by the right one
    client.close()


def test_redis_that_never_answers_is_a_miss_within_the_timeout(ml100k, als):
    """A Redis that accepts connections but never answers (hung, overloaded): each call is
    bounded by the timeout, then the breaker skips it; the recall answers as without Redis."""
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # connections complete in the backlog; nothing is ever read
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        h = _versioned(ml100k.histories(), 0)
        users = _users(ml100k, 16)
        b = Replica(als, url, ml100k.n_users, retry_s=30.0)
        _identical(b.recall(users, h), als.recall(users, K, replace(h, versions=None),
                                                  explain=True))
        assert b.computed == len(users)
        assert not b.shared.breaker.available and b.shared.breaker.failures == 1
        b.channel.user_cache.clear()
        b.recall(users, h)  # the breaker is open: Redis is not called again
        assert b.shared.breaker.failures == 1 and b.computed == 2 * len(users)


# ---- two real replicas ---------------------------------------------------------------
ALS_CONFIG = """
seed = 0
[fusion]
k = 50
[[channels]]
kind = "popularity"
weight = 0.1
[[channels]]
kind = "als"
params = {factors = 32, iterations = 5}
"""


@pytest.fixture(scope="module")
def als_artifact(tmp_path_factory):
    from .conftest import _build

    return _build(tmp_path_factory, "als", ALS_CONFIG)


def _answer(server, user: str):
    body = server.client.post("/v1/recall", json={"user_id": user, "k": 30}).json()
    return [(c["item_id"], c["score"]) for c in body["candidates"]], body["history_length"]


def _als_counts(server) -> dict:
    return server.client.get("/healthz").json()["state_store"]["user_states"]["channels"]["als"]


def test_replica_answers_from_the_state_another_replica_computed(make_server, als_artifact,
                                                                 pg_dsn, redis):
    a = make_server(als_artifact, "--redis", redis.url, state=pg_dsn)
    b = make_server(als_artifact, "--redis", redis.url, state=pg_dsn)
    users = [str(u) for u in range(1, 21)]
    first = {u: _answer(a, u) for u in users}
    assert _als_counts(a) == {"hits": 0, "misses": 20, "redis_hits": 0, "redis_misses": 20}
    assert {u: _answer(b, u) for u in users} == first
    assert _als_counts(b) == {"hits": 0, "misses": 20, "redis_hits": 20, "redis_misses": 0}
    health = b.client.get("/healthz").json()["state_store"]["user_states"]
    assert health["available"] and health["failures"] == 0

    # an event for user 1 (acknowledged by A, applied by B from the feed): a new history,
    # so a new key: B computes it
    r = a.client.post("/v1/events", headers=WRITE,
                      json={"events": [{"user_id": "1", "item_id": "50", "timestamp": 1e9}]})
    assert r.status_code == 200
    length = first["1"][1] + 1
    deadline = time.monotonic() + 15
    seq = a.client.get("/healthz").json()["last_event_seq"]
    # applied from the feed (a history merged from Redis' recent events is not cached)
    while b.client.get("/healthz").json()["last_event_seq"] < seq:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answer, got_length = _answer(b, "1")
    assert got_length == length
    assert _als_counts(b)["redis_misses"] == 1
    assert _answer(a, "1")[0] == answer  # and A, computing it itself, agrees
