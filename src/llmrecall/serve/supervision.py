"""Worker processes end with their supervisor (``serve --workers N``).

uvicorn's workers do not watch their parent: after ``kill -9`` of the supervisor they kept
answering (acknowledging writes) and holding the port, so the restarted server failed with
"Address already in use". :func:`die_with_parent`, called in each worker before it serves:

- on Linux asks the kernel for SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
  uvicorn takes SIGTERM as a graceful shutdown (requests under way are finished);
- then checks the parent is still the supervisor: had it died before the ``prctl`` call,
  no signal would ever come, so the worker exits at once;
- and, on every platform, starts a thread that looks at the parent pid every second and
  sends the process SIGTERM once it changed (the portable fallback), and ends the process
  outright if it is still there ``HARD_EXIT_S`` later (a shutdown stuck on a request).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

#: environment variable carrying the supervisor's pid to its workers
SUPERVISOR_ENV = "LLMRECALL_SUPERVISOR_PID"

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

#: seconds after the SIGTERM at which a worker whose supervisor died exits regardless
HARD_EXIT_S = 30.0


def die_with_parent(parent: int, interval_s: float = 1.0) -> None:
    """Make this process end when ``parent`` (its supervisor) does; see the module docstring.
    Raises SystemExit when the parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); watching the "
                            "supervisor by polling only", ctypes.get_errno())
        except (OSError, AttributeError):
            log.warning("prctl is unavailable; watching the supervisor by polling only")
    if os.getppid() != parent:  # it died before prctl: the signal will never come
        log.warning("the supervisor (pid %d) is gone; this worker exits", parent)
        raise SystemExit(1)
    threading.Thread(target=_watch, args=(parent, interval_s), daemon=True,
                     name="llmrecall-supervisor-watch").start()


def _watch(parent: int, interval_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    log.warning("the supervisor (pid %d) is gone; this worker stops", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(HARD_EXIT_S)
    os._exit(1)
