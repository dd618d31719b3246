"""How many threads the numeric libraries may use: one setting per process.

BLAS (numpy, scipy), OpenMP (FAISS, torch) and the channels' own pools each keep a
process-wide thread pool. Left alone, every one of them sizes itself to every core of the
machine, and work that is already spread over threads (the service's batches and channel
calls, nested BLAS inside a channel) then oversubscribes the cores: threads spin and wait on
one another instead of computing. So the count is one setting, ``$LLMRECALL_THREADS``
(``llmrecall --threads N``), by default the CPUs this process may run on, and the command
line applies it once when a command runs (:func:`use_threads`); the service pins it for its
whole life (:func:`pin_blas_threads`, 1 under ``llmrecall serve``).

This lives apart from the channels because the service, the command line and the channels
all read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from llmrecall.errors import DataError

#: the setting; the command line also exports it as each library's own variable
THREADS_ENV = "LLMRECALL_THREADS"
#: the libraries' own variables, read when each library starts its thread pool
LIBRARY_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the platform has one (a
    container or ``taskset`` may allow fewer than the machine has), else every core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def blas_threads() -> int:
    """Threads BLAS/LAPACK may use inside a channel: ``$LLMRECALL_THREADS`` or
    :func:`available_cpus`."""
    value = os.environ.get(THREADS_ENV)
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise DataError(f"{THREADS_ENV} must be an integer, got {value!r}") from None
    return available_cpus()


def use_threads(threads: int | None = None) -> int:
    """Apply the thread setting to this process and the processes it starts; returns it.

    ``threads`` (None: :func:`blas_threads`) becomes ``$LLMRECALL_THREADS`` and
    ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` (read by the
    libraries loaded from now on, e.g. torch and FAISS), and the BLAS already loaded
    (numpy's) is set to it. For a command about to run; a library caller that wants its own
    setting simply does not call it.
    """
    from threadpoolctl import threadpool_limits

    count = threads or blas_threads()
    for name in (THREADS_ENV, *LIBRARY_ENVS):
        os.environ[name] = str(count)
    # a fresh scan, not the cached controller of pin_blas_threads / limited_blas: that one
    # must still find the BLAS libraries loaded later (scipy's, torch's)
    threadpool_limits(limits=count, user_api="blas")
    return count


_CONTROLLER = None
_PINNED = False


def _controller():
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:  # scanning the loaded libraries takes ~4 ms: once per process
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def pin_blas_threads(threads: int | None = None) -> None:
    """Set the BLAS thread count for the whole process, once, and make :func:`limited_blas`
    a no-op from then on.

    For long-running servers whose channels already run on their own threads. Changing the
    global BLAS setting around every call (what :func:`limited_blas` does) wakes and parks
    OpenBLAS's worker threads each time; on two cores that cost 2-4 ms of hand-off latency
    per channel call, several times the call itself (bench/serve_load.py, docs/serving.md).
    """
    global _PINNED
    _controller().limit(limits=threads or blas_threads(), user_api="blas")
    _PINNED = True


@contextmanager
def limited_blas() -> Iterator[None]:
    """Cap BLAS threads (see :func:`blas_threads`) so nested parallelism cannot oversubscribe.
    A no-op once :func:`pin_blas_threads` has fixed the process-wide setting."""
    if _PINNED:
        yield
        return
    with _controller().limit(limits=blas_threads(), user_api="blas"):
        yield
