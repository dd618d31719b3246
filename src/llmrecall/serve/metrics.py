"""Prometheus metrics of the service, in a registry of its own (one per app).

Several server processes (``workers > 1``) use prometheus_client's multiprocess mode: the
CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before the processes start, each writes its values to
files there, and ``/metrics`` in any process reports all of them (counters and histograms
summed; gauges the maximum over live processes).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
COUNT_BUCKETS = (0, 1, 10, 50, 100, 200, 400, 1000, 5000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "llmrecall_request_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.channel_seconds = Histogram(
            "llmrecall_channel_seconds", "time one channel took for one batch", ["channel"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.channel_candidates = Histogram(
            "llmrecall_channel_candidates", "candidates a channel proposed per query", ["channel"],
            buckets=COUNT_BUCKETS, registry=r)
        self.channel_errors = Counter(
            "llmrecall_channel_errors", "channel calls left out of an answer",
            ["channel", "reason"], registry=r)
        self.channel_degraded = Gauge(
            "llmrecall_channel_degraded", "1 while a channel is failing or its breaker is open",
            ["channel"], registry=r, multiprocess_mode="livemax")
        self.batch_size = Histogram(
            "llmrecall_recall_batch_size", "queries answered together", buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r)
        self.events = Counter("llmrecall_events", "events acknowledged", registry=r)
        self.recent_merged = Counter(
            "llmrecall_redis_recent_events", "events another replica acknowledged that an "
            "answer took from Redis before the change feed brought them", registry=r)
        self.event_batches = Counter("llmrecall_event_batches", "event batches acknowledged",
                                     registry=r)
        self.errors = Counter("llmrecall_http_errors", "error responses", ["route", "status"],
                              registry=r)
        self.items = Gauge("llmrecall_items", "items in the vocabulary", registry=r,
                           multiprocess_mode="livemax")
        self.refreshes = Counter("llmrecall_interest_refreshes", "interest refreshes run",
                                 ["outcome"], registry=r)
        self.answers = Counter(
            "llmrecall_recall_answers", "recall answers (/v1/recall and /similar)", registry=r)
        self.degraded_answers = Counter(
            "llmrecall_recall_degraded_answers", "recall answers that left at least one "
            "channel out (timeout, error, circuit open)", registry=r)
        self.degraded_ratio = Gauge(
            "llmrecall_recall_degraded_ratio", "share of the answers of the last "
            "health_window_s seconds that left a channel out", registry=r,
            multiprocess_mode="livemax")
        self.rejected = Counter(
            "llmrecall_recall_rejected", "recall requests refused with 503", ["reason"],
            registry=r)
        self._known_degraded: set[str] = set()

    def collect_registry(self) -> CollectorRegistry:
        """What ``/metrics`` reports: this registry, or every process's values."""
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)
        return merged

    def process_exited(self) -> None:
        """Drop this process's live gauges from the shared directory (clean shutdown)."""
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(os.getpid())

    def set_degraded(self, names: list[str]) -> None:
        """The per-channel ``llmrecall_channel_degraded`` gauges: 1 for ``names``, else 0."""
        now = set(names)
        for name in now | self._known_degraded:
            self.channel_degraded.labels(name).set(1 if name in now else 0)
        self._known_degraded |= now


class RecentAnswers:
    """How many recall answers of the last ``window_s`` seconds left a channel out, counted in
    one-second buckets (memory: one bucket per second of the window, whatever the load)."""

    def __init__(self, window_s: float, clock=time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._buckets: deque[list] = deque()  # [second, answers, degraded], oldest first

    def record(self, degraded: bool) -> None:
        second = int(self.clock())
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
        else:
            bucket = [second, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += int(degraded)

    def counts(self) -> tuple[int, int]:
        """``(answers, degraded answers)`` of the window."""
        oldest = self.clock() - self.window_s
        while self._buckets and self._buckets[0][0] + 1 <= oldest:
            self._buckets.popleft()
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def ratio(self) -> float:
        answers, degraded = self.counts()
        return degraded / answers if answers else 0.0


#: name of the metrics folder a multi-process server creates: prefix, owner pid, random part
METRICS_DIR_PREFIX = "llmrecall-metrics-"


def clean_stale_metrics_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the metrics folders under ``root`` (default: the temp folder) whose owner, the
    supervisor pid in the name (``llmrecall-metrics-<pid>-<random>``), is no longer running:
    a supervisor killed with SIGKILL cannot remove its own. Folders of live owners, and any
    without an owner pid in the name, are left alone. Returns the folders removed."""
    base = Path(root if root is not None else tempfile.gettempdir())
    removed = []
    for path in sorted(base.glob(METRICS_DIR_PREFIX + "*")):
        m = re.fullmatch(re.escape(METRICS_DIR_PREFIX) + r"(\d+)-.+", path.name)
        if m is None or not path.is_dir() or _alive(int(m.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
