"""Time limits and a cap on HTTP connections, as a subclass of uvicorn's own HTTP protocol.

uvicorn times out only the idle gap between two requests of a keep-alive connection (5 s); a
connection that never sends a byte, sends its headers a byte at a time, or stops in the middle
of its body is held forever, each holding a socket and its buffers. The protocol here closes:

- a connection whose request headers are not complete ``http_header_timeout_s`` after it
  opened or after its previous response was sent (``header_timeout``);
- a connection whose request body has received no byte for ``http_body_timeout_s``
  (``body_timeout``; a slow but moving upload goes on);
- a new connection beyond ``http_max_connections`` open at once, at once (``too_many_connections``).

Each is counted in ``inferd_refused_total{protocol="http", reason}``. Nothing is timed while the
app handles a request: a long inference is not a slow client.

:func:`calls_probe` tells the scheduling's load (scheduling/load.py) how many HTTP requests are
in, even while an execution holds the event loop: the requests the app is handling or receiving
the body of, plus those the kernel holds for the loop to read (bytes waiting on an open
connection). A GET, HEAD or OPTIONS request (health, metadata, statistics: what monitoring and
perf_analyzer send beside the load) is not counted, nor a connection not yet accepted: monitoring
opens one per call, while an inference client keeps its connection, whose later requests count
(its first may wait behind one execution held on the loop).
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import socket
import termios
from collections.abc import Callable, Collection
from typing import Any

from .request_limits import Refusals, RequestLimits

_HEADERS, _BODY, _APP = "headers", "body", "app"
# Past this many open connections the probe does not look at each (one ioctl apiece) and calls
# the server busy: a quiet server has a few.
PROBE_MAX_CONNECTIONS = 32


def _uvicorn_protocol() -> type[Any]:
    """The protocol uvicorn's "auto" picks: httptools when installed, else h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # httptools is an optional dependency of uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def guarded_protocol(limits: RequestLimits, refusals: Refusals) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the time limits and connection cap of ``limits``."""
    base = _uvicorn_protocol()
    h11_based = base.__name__ == "H11Protocol"

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        # One timer per connection, checked lazily: a phase sets its deadline, and the timer,
        # when it fires, closes the connection if the deadline passed or waits for the later one.
        # Re-arming a loop timer three times per request cost more than the request's routing.
        _timer: asyncio.TimerHandle | None = None
        _phase = _HEADERS
        _deadline: float | None = None  # loop time; None while the app has the request
        _timer_at = 0.0  # when the pending timer fires

        def _arm(self, phase: str) -> None:
            self._phase = phase
            if phase == _HEADERS:
                self._deadline = self.loop.time() + limits.http_header_timeout_s
            elif phase == _BODY:
                self._deadline = self.loop.time() + limits.http_body_timeout_s
            else:
                self._deadline = None
                return
            if self._timer is not None and self._deadline >= self._timer_at:
                return  # the timer fires first and finds the later deadline
            if self._timer is not None:
                self._timer.cancel()  # a shorter limit than the pending one (body < header timeout)
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._check)

        def _check(self) -> None:
            self._timer = None
            deadline = self._deadline
            if deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < deadline:
                self._timer_at = deadline
                self._timer = self.loop.call_at(deadline, self._check)
                return
            refusals.count("http", "header_timeout" if self._phase == _HEADERS else "body_timeout")
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.http_max_connections:
                refusals.count("http", "too_many_connections")
                transport.close()
                return
            self._arm(_HEADERS)

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(_APP)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if h11_based:
                self._follow_h11()
            elif self._phase == _BODY:
                self._arm(_BODY)  # a byte came: the body's idle time starts again

        def _follow_h11(self) -> None:
            import h11

            state = self.conn.their_state
            if state is h11.SEND_BODY:
                self._arm(_BODY)
            elif state is not h11.IDLE and self._phase != _APP:
                self._arm(_APP)

        # httptools' parser callbacks (h11 has none: its states are read after each chunk).
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self.cycle.transport = HeldHeaders(self.transport, self.loop)
            self._arm(_BODY)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._arm(_APP)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(_HEADERS)  # the next request's headers are timed from now

    return GuardedProtocol


# A body up to this size is joined to the held headers (one bytes object); a larger one goes
# with them as two buffers of one writelines call.
_JOIN_MAX = 64 * 1024


class HeldHeaders:
    """The connection's transport as one response's cycle sees it: uvicorn writes the status
    line and headers as soon as the app starts the response, then the body in a second write,
    so every response cost two send calls (and, on loopback, two wake-ups of the client).
    The first write of the response waits for the next one made in the same step of the event
    loop and goes out with it; if none comes (a stream whose first chunk is not ready), it goes
    out alone on the loop's next iteration. Closing writes what is held first."""

    __slots__ = ("_transport", "_loop", "_held", "_first")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self._flush)
            return
        held = self._held
        if held is None:
            self._transport.write(data)
            return
        self._held = None
        if len(data) <= _JOIN_MAX:
            self._transport.write(held + data)
        else:
            self._transport.writelines((held, data))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._flush()
        self._transport.close()


# Methods of the requests that cannot be inference (health, metadata, statistics, metrics): the
# probe does not count them, since waiting behind a held loop costs them nothing that matters.
_NEVER_INFERENCE = frozenset(("GET", "HEAD", "OPTIONS"))
_NEVER_INFERENCE_LINES = tuple(f"{m} ".encode() for m in _NEVER_INFERENCE)


def _may_infer(fd: int) -> bool:
    """Whether the unread bytes on connection ``fd`` may start an inference request: anything
    but a request line of _NEVER_INFERENCE (TLS bytes, or too few to tell, count)."""
    try:
        peek = socket.socket(fileno=fd)
    except OSError:
        return True
    try:
        head = peek.recv(8, socket.MSG_PEEK)
    except OSError:
        return True
    finally:
        peek.detach()  # the connection's descriptor stays open: the transport owns it
    return not head.startswith(_NEVER_INFERENCE_LINES)


def calls_probe(connections: Collection[Any]) -> Callable[[], int]:
    """A probe for scheduling/load.py over one uvicorn server's ``connections`` (its protocols;
    see the module's docstring)."""
    waiting = array.array("i", [0])

    def calls() -> int:
        if len(connections) > PROBE_MAX_CONNECTIONS:
            return len(connections)
        n = 0
        for protocol in connections:
            if getattr(protocol, "_phase", _HEADERS) != _HEADERS:
                # The app has the request, or its body is arriving.
                scope = getattr(protocol, "scope", None)
                n += not isinstance(scope, dict) or scope.get("method") not in _NEVER_INFERENCE
                continue
            transport = protocol.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None:
                continue
            try:
                fd = sock.fileno()
                fcntl.ioctl(fd, termios.FIONREAD, waiting)
            except OSError:
                continue
            n += waiting[0] > 0 and _may_infer(fd)  # a request the loop has not read yet
        return n

    return calls
