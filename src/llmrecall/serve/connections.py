"""Connection limits of the HTTP server: read deadlines and a cap on open connections.

uvicorn bounds only the idle time *between* requests (``timeout_keep_alive``), and cancels
even that as soon as any byte arrives. A client that opens a connection and sends nothing,
or half a request line, or headers without the promised body, held its connection (and a
file descriptor) forever: 1,000 such clients took a server from 21 to 1,021 open descriptors
and none was ever closed. :class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol
with three more bounds, all settings (:class:`~llmrecall.serve.settings.ServeSettings`):

- ``header_timeout_s``: from the moment a connection is opened, or its previous response
  was sent, the next request's line and headers must have arrived within this many
  seconds; otherwise the server answers ``408`` (when part of a request came) and closes.
- ``body_timeout_s``: from the end of the headers, the whole body must have arrived within
  this many seconds; otherwise the connection is closed (the request sees a disconnect).
- ``max_connections``: a connection opened while this many are open in the process is
  answered ``503`` and closed at once, before anything is read from it.

While a request is being answered nothing is timed here (``channel_budget_ms`` and the
admission limit bound that). The bounds are class attributes set once per process by
:func:`configure` before the server accepts: uvicorn creates the protocol itself, from its
import path in every worker process.
"""

from __future__ import annotations

import logging
from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

#: uvicorn's ``http=`` value for :class:`GuardedHttpToolsProtocol` (an import path: it is
#: pickled into every worker process)
PROTOCOL = "llmrecall.serve.connections:GuardedHttpToolsProtocol"


def _response(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body)


TIMEOUT_408 = _response(b"408 Request Timeout", b'{"error":"timeout","message":"the request '
                        b'did not arrive in time","field":null}')
FULL_503 = _response(b"503 Service Unavailable", b'{"error":"overloaded","message":"too many '
                     b'open connections","field":null}')


def configure(settings) -> None:
    """Set the bounds of every connection this process will accept from ``settings``."""
    GuardedHttpToolsProtocol.header_timeout = settings.header_timeout_s
    GuardedHttpToolsProtocol.body_timeout = settings.body_timeout_s
    GuardedHttpToolsProtocol.max_connections = settings.max_connections


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a connection cap (see the
    module docstring). At most one deadline is armed per connection at a time."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000  # 0 = no cap

    _deadline: TimerHandle | None = None
    _partial = False  # some bytes of a request arrived and its headers did not complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            log.warning("refused a connection: %d open (max_connections)", len(self.connections) - 1)
            transport.write(FULL_503)
            transport.close()
            return
        self._arm(self.header_timeout)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ---- parser callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._partial = True

    def on_headers_complete(self) -> None:
        self._partial = False
        super().on_headers_complete()
        self._arm(self.body_timeout)  # disarmed again at once when the body is complete

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a queued request starts now: it is not waited for
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm(self.header_timeout)

    # ---- the deadline ----------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self._partial:  # no response under way: say why before closing
            self.transport.write(TIMEOUT_408)
        self.transport.close()
