"""Progress of long work (fits, embedding, generation, tuning trials, all-user recall).

Library code says what it is doing and nothing about terminals::

    with progress.task("fit sasrec", total=epochs, unit="epoch") as bar:
        for epoch in range(epochs):
            ...
            bar.advance()

and the process-wide *reporter* decides what a person sees. The command line chooses it
once per command (:func:`configure`): on a terminal, live rich bars on stderr (description,
bar, done/total, rate, elapsed, time left); when stderr is not a terminal, one plain line per
stage when the stage ends (``fit sasrec: 30 epochs in 91.9 s (0.33 epoch/s)``); with
``--quiet``, nothing. A library caller that never configures one sees nothing: the default
reporter is silent. Everything goes to stderr, so JSON on stdout stays clean.

Stages nest. A task opened inside another of the same description continues it (the
pipeline's ``fit sasrec`` stage becomes the channel's own epoch count) instead of adding a
row. Other nested tasks are rows of their own on a terminal, removed when they end; in the
line output they are folded into the enclosing stage's line when that stage counts nothing
itself (``fit sasrec: ... (embed e5: 1,682 texts in 40.1 s)``) and left out when it does (the
fits and recalls inside each tuning trial), so a stage is always one line.

``advance`` is cheap enough to call per item: the count is handed to rich at most
:data:`REFRESH_SECONDS` apart (rich redraws on its own clock), and the silent reporter's bar
does nothing at all. Nothing here changes what the work computes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # not at import: the command line starts without rich.progress
    from rich.console import Console
    from rich.progress import Progress, TaskID

#: how often a bar hands its count to rich, in seconds (and rich's redraw rate, inverted)
REFRESH_SECONDS = 0.1

Mode = Literal["bars", "lines", "silent"]


class Bar:
    """One running stage: counts units of work done. Got from :func:`task`."""

    def __init__(self, reporter: Reporter, description: str, total: int | None, unit: str,
                 parent: Bar | None):
        self.reporter, self.description = reporter, description
        self.total, self.unit, self.parent = total, unit, parent
        self.completed = 0
        self.status = ""
        self.details: list[str] = []
        self.started = time.perf_counter()
        self._pending = 0
        self._flushed = self.started
        self.handle: TaskID | None = None  # the rich task, on a terminal

    def advance(self, n: int = 1) -> None:
        """``n`` more units done (call per item or per batch: it is throttled)."""
        self.completed += n
        self._pending += n
        now = time.perf_counter()
        if now - self._flushed >= REFRESH_SECONDS:
            self.flush(now)

    def set_total(self, total: int | None, unit: str | None = None) -> None:
        """The stage turned out to count ``total`` units (of ``unit``)."""
        self.total = total
        if unit is not None:
            self.unit = unit
        self.reporter.update(self)

    def set_status(self, text: str) -> None:
        """A short text shown after the bar (e.g. the best value so far) and at the end of
        the stage's line."""
        self.status = text
        self.reporter.update(self)

    def flush(self, now: float | None = None) -> None:
        if self._pending:
            self._pending = 0
            self._flushed = time.perf_counter() if now is None else now
            self.reporter.update(self)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> str:
        """``30 epochs in 91.9 s (0.33 epoch/s)``, or ``0.1 s`` when nothing was counted."""
        seconds = self.seconds
        if not self.completed:
            return f"{seconds:.1f} s"
        unit = self.unit if self.completed == 1 else plural(self.unit)
        text = f"{self.completed:,} {unit} in {seconds:.1f} s"
        if seconds > 0:
            text += f" ({format_rate(self.completed / seconds)} {self.unit}/s)"
        return text

    def line(self) -> str:
        """The stage's one line: ``description: summary[; status] [(nested stages)]``."""
        text = f"{self.description}: {self.summary()}"
        if self.status:
            text += f"; {self.status}"
        if self.details:
            text += f" ({'; '.join(self.details)})"
        return text


class _NullBar(Bar):
    """The silent reporter's bar: every call returns at once."""

    def __init__(self) -> None:
        super().__init__(SILENT, "", None, "", None)

    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None, unit: str | None = None) -> None:
        pass

    def set_status(self, text: str) -> None:
        pass


class Reporter:
    """Shows stages; this base class shows nothing (the library default)."""

    mode: Mode = "silent"

    def start(self, bar: Bar) -> None:
        """``bar`` began."""

    def update(self, bar: Bar) -> None:
        """``bar``'s count, total or status changed (at most every REFRESH_SECONDS for counts)."""

    def finish(self, bar: Bar, failed: bool = False) -> None:
        """``bar`` ended (``failed``: by an exception, whose own message says what happened)."""

    def note(self, message: str) -> None:
        """A one-line message about the work (``wrote results.json``)."""


class Lines(Reporter):
    """One plain line per top-level stage, on stderr when it ends; nested stages fold into
    the enclosing stage's line when that stage counts nothing itself."""

    mode: Mode = "lines"

    def __init__(self, stream=None):
        self._stream = stream  # None: sys.stderr as it is at each write (test runners swap it)
        self._lock = threading.Lock()

    def finish(self, bar: Bar, failed: bool = False) -> None:
        if failed:
            return
        if bar.parent is None:
            self._write(bar.line())
        elif bar.parent.total is None:
            bar.parent.details.append(f"{bar.description}: {bar.summary()}")

    def note(self, message: str) -> None:
        self._write(message)

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(text + "\n")
            stream.flush()


class Bars(Reporter):
    """Live rich bars on a terminal: top-level stages stay on screen when done, nested ones
    are removed; the live display runs only while a stage is open."""

    mode: Mode = "bars"

    def __init__(self, console: Console | None = None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._open = 0
        self._lock = threading.RLock()

    def start(self, bar: Bar) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with self._lock:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), console=self.console,
                    refresh_per_second=1 / REFRESH_SECONDS)
                self._progress.start()
            self._open += 1
            bar.handle = self._progress.add_task("  " * _depth(bar) + bar.description,
                                                 total=bar.total, **_fields(bar))

    def update(self, bar: Bar) -> None:
        with self._lock:
            if self._progress is not None and bar.handle is not None:
                self._progress.update(bar.handle, completed=bar.completed, total=bar.total,
                                      **_fields(bar))

    def finish(self, bar: Bar, failed: bool = False) -> None:
        with self._lock:
            progress = self._progress
            if progress is None or bar.handle is None:
                return
            if bar.parent is not None:
                progress.remove_task(bar.handle)
            else:
                # a stage without a count is drawn as done when it ends, not as an empty bar
                total = bar.total if bar.total is not None else 1
                done = bar.completed if bar.total is not None else (0 if failed else 1)
                progress.update(bar.handle, completed=done, total=total, **_fields(bar))
                progress.stop_task(bar.handle)
            bar.handle = None
            self._open -= 1
            if self._open == 0:
                progress.stop()  # the finished rows stay on screen above what comes next
                self._progress = None

    def note(self, message: str) -> None:
        from rich.markup import escape

        with self._lock:
            console = self._progress.console if self._progress is not None else self.console
            console.print(f"[dim]{escape(message)}[/dim]", soft_wrap=True)


def _depth(bar: Bar) -> int:
    depth, parent = 0, bar.parent
    while parent is not None:
        depth, parent = depth + 1, parent.parent
    return depth


def _fields(bar: Bar) -> dict[str, Any]:
    """The text columns of a bar's row: ``12/30 epoch``, ``0.33 epoch/s``, its status."""
    if bar.total is not None:
        count = f"{bar.completed:,}/{bar.total:,} {bar.unit}"
    else:  # a stage of one step counts nothing
        count = f"{bar.completed:,} {bar.unit}" if bar.completed else ""
    seconds = bar.seconds
    rate = (f"{format_rate(bar.completed / seconds)} {bar.unit}/s"
            if bar.completed and seconds > 0 else "")
    return {"count": count.rstrip(), "rate": rate, "status": bar.status}


def format_rate(per_second: float) -> str:
    """Three significant digits at most: ``9,430``, ``12.5``, ``0.333``."""
    if per_second >= 100:
        return f"{per_second:,.0f}"
    if per_second >= 1:
        return f"{per_second:.1f}"
    return f"{per_second:.2g}"


def plural(unit: str) -> str:
    if not unit or unit.endswith("s"):
        return unit
    return unit[:-1] + "ies" if unit.endswith("y") and unit[-2:-1] not in "aeiou" else unit + "s"


SILENT = Reporter()
_reporter: Reporter = SILENT
_configured = False
_local = threading.local()  # the stack of open bars of each thread


def reporter() -> Reporter:
    """The process-wide reporter (silent unless the command line chose another)."""
    return _reporter


def set_reporter(new: Reporter) -> Reporter:
    """Make ``new`` the process-wide reporter; returns the one it replaces."""
    global _reporter, _configured
    old, _reporter, _configured = _reporter, new, True
    return old


def configured() -> bool:
    """Whether a command chose a reporter in this process (else library code is silent)."""
    return _configured


def choose(quiet: bool = False, console: Console | None = None) -> Reporter:
    """The reporter for a command: silent with ``quiet``, bars when stderr (or ``console``'s
    file) is a terminal that can redraw a line, else lines."""
    if quiet:
        return SILENT
    from rich.console import Console

    console = console or Console(stderr=True)
    # a real terminal, not rich's is_terminal: FORCE_COLOR (set by many CI runners) makes a
    # pipe count as a terminal for colours, and live bars in a CI log are one line per redraw
    isatty = getattr(console.file, "isatty", None)
    if isatty is not None and isatty() and not console.is_dumb_terminal:
        return Bars(console)
    return Lines()


def configure(quiet: bool = False) -> Reporter:
    """Choose (:func:`choose`) and install the reporter; returns the one it replaces."""
    return set_reporter(choose(quiet))


def note(message: str) -> None:
    """A one-line message for a person (``wrote results.json``); nothing when silent."""
    _reporter.note(message)


def _stack() -> list[Bar]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


@contextmanager
def task(description: str, total: int | None = None, unit: str = "item", *,
         reporter: Reporter | None = None) -> Iterator[Bar]:
    """A stage of work: yields a :class:`Bar` to :meth:`~Bar.advance` as units get done.

    ``total`` None: the count is unknown (or the stage is one step); the stage still reports
    its time. Inside an open stage of the same description (on this thread) the stage is
    continued: ``total`` and ``unit`` become its count. ``reporter`` overrides the
    process-wide one (:func:`reporter`).
    """
    chosen = reporter or _reporter
    if chosen is SILENT:
        yield _NULL_BAR
        return
    stack = _stack()
    parent = stack[-1] if stack and stack[-1].reporter is chosen else None
    if parent is not None and parent.description == description:
        if total is not None:
            parent.set_total(total, unit)
        yield parent
        parent.flush()
        return
    bar = Bar(chosen, description, total, unit, parent)
    chosen.start(bar)
    stack.append(bar)
    failed = True
    try:
        yield bar
        failed = False
    finally:
        stack.remove(bar)
        chosen.finish(bar, failed)


_NULL_BAR = _NullBar()
