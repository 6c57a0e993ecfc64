"""One decoupled request's responses on their way from the model to the client.

A decoupled model (``model_transaction_policy { decoupled: true }``) sends 0..N responses per
request, from ``execute`` or from threads it starts, long after ``execute`` returned. Each
request gets a :class:`ResponseChannel`: the model's side (``send``, ``fail``, ``cancelled``)
may be called from any thread; the consumer's side (``get_ready``, ``cancel``) runs on the event
loop, woken through ``loop.call_soon_threadsafe`` only while it waits.

The channel is bounded: at most ``limit`` responses wait for a consumer that reads slower than
the model sends (the server's ``--max-buffered-responses``). The send that would exceed it
fails in the model, the request is cancelled (the model sees ``is_cancelled()``), and the
consumer reads the responses already buffered and then the error. A channel with a ``window``
(an ensemble step under ``max_inflight_requests``) also makes a send that finds ``window``
responses waiting wait until the consumer takes one, the request ends or is cancelled:
back-pressure on the model, as Triton pauses a faster upstream step. Only a send from another
thread than the consumer's loop waits (the loop cannot wait for itself: a nested ensemble sends
from it); one from the loop goes on up to ``limit``.

A channel may be paced (``interval_ns``, the server's ``--stream-interval-us``, set by the
front ends that write a stream's waiting responses together): once the consumer has taken
everything that was waiting (and written it), it takes nothing more until ``interval_ns`` has
passed, so the responses of that interval go out in one write. The first response and the
final one are never held: the final flag (or a failure) ends the hold at once. Nothing is timed
per response: a send after the interval wakes the consumer as usual, and a send within it
does not wake it at all (no cross-thread wake-up, the loop is left alone). Only when the model
goes quiet with responses held does one timer per event loop (:class:`_Pacer`) hand them over,
at most about a millisecond late (uvloop's timers count whole milliseconds).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from .errors import Cancelled, InferdError, Unavailable
from .types import InferResponse, Scalar

# Triton's TRITONSERVER_RESPONSE_COMPLETE_FINAL: the request's last response (or flags only).
RESPONSE_COMPLETE_FINAL = 1
# The default per-request bound of responses waiting for a slow consumer.
DEFAULT_BUFFERED_RESPONSES = 1024
# The server's --stream-interval-us: the default, and the most it accepts (one second).
DEFAULT_STREAM_INTERVAL_US = 2000
MAX_STREAM_INTERVAL_US = 1_000_000
_yield_cpu = getattr(os, "sched_yield", None)  # releases the GIL while it yields (POSIX only)
_NOT_SHARED: frozenset[str] = frozenset()  # InferResponse.in_shared_memory


class Streamed(dict):  # type: ignore[type-arg]
    """What a decoupled model's execution returns for a request in place of its outputs: its
    responses went (or will go) through the request's channel."""


STREAMED = Streamed()  # never mutated


class ChannelClosed(InferdError):
    """A send after the final flag: the model's error, as Triton's sender raises it."""


class ChannelOverflow(Unavailable):
    """More responses waiting for the consumer than the channel's limit."""


class ResponseChannel:
    """The response stream of one decoupled request (see the module's docstring)."""

    # Every channel still alive, for tests that check that nothing leaks.
    _alive: ClassVar[weakref.WeakSet[ResponseChannel]] = weakref.WeakSet()

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        model_name: str,
        model_version: str,
        request_id: str = "",
        limit: int = DEFAULT_BUFFERED_RESPONSES,
        label: str = "",
        interval_ns: int = 0,
        window: int = 0,
    ) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else 0
        self.model_name = model_name
        self.model_version = model_version
        self.request_id = request_id
        self.limit = limit
        self.label = label or f"model '{model_name}' version {model_version}"
        self._items: deque[tuple[InferResponse, int]] = deque()  # (response, monotonic ns when sent)
        self._lock = threading.Lock()
        # A send from another thread that finds ``window`` responses waiting waits here for room.
        self.window = window
        self._room = threading.Condition(self._lock) if window else None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False  # the model sent the final flag (or was failed): sends raise from here on
        self._ended = False  # nothing more reaches the consumer
        self._cancelled = False  # the model should stop: the consumer left, or it fell too far behind
        self._failure: InferdError | None = None  # raised to the consumer after the buffered responses
        self._sent_final_response = False  # the final flag came on a response, not alone
        self._first = True  # no response sent yet
        # Paced (see the module's docstring): responses are taken no sooner than _hold_until
        # (monotonic ns), unless the stream has ended. 0: not held.
        self.interval_ns = interval_ns
        self._hold_until = 0
        ResponseChannel._alive.add(self)

    @classmethod
    def alive(cls) -> int:
        """How many channels exist (tests: none may outlive its request)."""
        return len(cls._alive)

    # --- the model's side (any thread) --------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """Whether the model should stop: the consumer went away or fell too far behind."""
        return self._cancelled

    @property
    def closed(self) -> bool:
        """Whether the final flag was sent (no more sends are accepted)."""
        return self._closed

    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None,
        parameters: Mapping[str, Scalar] | None = None,
        error: InferdError | None = None,
        final: bool = False,
        fresh: bool = False,
    ) -> None:
        """One response (``outputs``, or ``error``), or with ``outputs`` None and ``final``
        only the final flag. Raises ChannelClosed after the final flag and ChannelOverflow
        when the consumer is ``limit`` responses behind; responses sent after the request was
        cancelled are dropped. ``fresh``: ``outputs`` and ``parameters`` are dicts made for
        this response, taken as they are (else they are copied)."""
        response = None
        if outputs is not None or error is not None:
            out: dict[str, np.ndarray] = {} if outputs is None else outputs if fresh else dict(outputs)  # type: ignore[assignment]
            params: dict[str, Scalar] = {} if not parameters else parameters if fresh else dict(parameters)  # type: ignore[assignment]
            response = InferResponse(
                self.model_name, self.model_version, out, self.request_id, params, _NOT_SHARED, final, error
            )
        now = time.monotonic_ns()
        with self._lock:
            if self._closed:
                raise ChannelClosed(f"{self.label}: Unable to send response. Response sender has been closed.")
            if final:
                self._closed = True
            if self._ended:
                return  # cancelled: dropped, as Triton drops them
            if response is not None:
                if self._room is not None and not self._on_loop():
                    while len(self._items) >= self.window and not self._ended:
                        self._room.wait()
                    if self._ended:
                        return  # cancelled while it waited: dropped
                if len(self._items) >= self.limit:
                    self._cancelled = self._ended = True
                    self._failure = ChannelOverflow(
                        f"{self.label}: the client is reading this request's responses too slowly: more than "
                        f"{self.limit} wait to be sent (--max-buffered-responses); the request is cancelled"
                    )
                    self._wake()
                    raise _detached(self._failure)
                self._items.append((response, now))
                self._sent_final_response = final
            if final:
                self._ended = True
            first, self._first = self._first, False
            # Held (paced): a response within the interval waits for the interval's end.
            woke = (final or now >= self._hold_until) and self._wake()
        if woke and (first or final) and _yield_cpu is not None and not self._on_loop():
            # The consumer's loop waits for the GIL, which this thread would otherwise keep up
            # to the switch interval (5 ms): hand it over now for the first response (time to
            # first token) and the last (the client's next request). Not for every response:
            # the others are written together when the loop gets its turn.
            _yield_cpu()

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def fail(self, error: InferdError) -> None:
        """End the request with ``error`` unless its final flag was already sent (execute
        failed, or the model dropped the sender without sending the final flag)."""
        with self._lock:
            if self._closed or self._ended:
                # Over for the consumer already. A cancelled request's model (its execute may
                # have handed the request to a thread before the cancel) still sends its final
                # flag, which is dropped: closing the sender here would make that send raise.
                return
            self._closed = self._ended = True
            self._failure = _detached(error)
            if self._room is not None:
                self._room.notify_all()
            self._wake()

    def _wake(self) -> bool:
        # With the lock held. The consumer registers its waiter under the same lock, so a
        # wake-up is never lost; it is scheduled only while the consumer actually waits.
        waiter, self._waiter = self._waiter, None
        if waiter is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(_resolve, waiter)
            return True
        return False

    # --- the consumer's side (the event loop) -------------------------------------------
    async def get_ready(self) -> list[tuple[InferResponse, int]] | None:
        """Every response waiting now (at least one; waits for one if none), each with when it
        was sent (monotonic ns), in order; None once the request is complete. Raises the
        request's failure after the responses sent before it.

        One call per batch, not per response: a stream's responses that came together are
        taken together, and make room for as many under ``limit`` and ``window``. ``more`` is
        set on every response of the batch but its last. On a paced channel, taking a batch
        starts the interval in which the next responses are held (the consumer writes what it
        took now)."""
        while True:
            with self._lock:
                items = self._items
                hold = self._hold_until
                now = time.monotonic_ns() if hold else 0
                if items and (now >= hold or self._ended):
                    batch = list(items)
                    items.clear()
                    if self._room is not None:
                        self._room.notify_all()
                    for response, _ in batch[:-1]:
                        response.more = True
                    batch[-1][0].more = False
                    if self.interval_ns:
                        self._hold_until = (now or time.monotonic_ns()) + self.interval_ns
                    return batch
                if self._ended:
                    if self._failure is not None:
                        raise _detached(self._failure)
                    return None
                assert self._loop is not None, "a channel made without a loop has no consumer"
                waiter = self._waiter = self._loop.create_future()
            pacer = _Pacer.of(self._loop) if now < hold else None
            if pacer is not None:  # held: the pacer wakes this consumer if the model goes quiet
                pacer.hold(self, hold)
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
                if pacer is not None:
                    pacer.drop(self)

    def _release(self) -> None:
        """The pacer's timer: the interval is over; hand over what waits (on the loop)."""
        with self._lock:
            self._hold_until = 0
            if self._items:
                self._wake()

    @property
    def final_on_response(self) -> bool:
        """Whether the final flag came with the last response (else alone, Triton's "empty
        final response")."""
        return self._sent_final_response

    def cancel(self) -> None:
        """The consumer went away: the model sees ``cancelled`` and what it sends is dropped."""
        with self._lock:
            if self._ended and not self._items:
                return
            self._cancelled = True
            self._ended = True
            self._items.clear()
            if self._room is not None:
                self._room.notify_all()
            if self._failure is None:
                self._failure = Cancelled(f"{self.label}: the request was cancelled")


def _detached(error: InferdError) -> InferdError:
    """A copy of ``error`` without its traceback, cause and context. The channel keeps its
    failure for as long as it lives, and the sender's finalizer keeps the channel (until the
    sender goes); a raised exception holds the frames it passed through, the model's sender
    among their locals: kept on the channel, it would keep the sender alive for good. So the
    channel stores an error it did not raise, and raises a fresh copy each time."""
    copy = type(error).__new__(type(error), *error.args)
    copy.__dict__.update(error.__dict__)
    return copy


class _Pacer:
    """The timer of one event loop's paced channels: wakes a held consumer whose interval is
    over while its model is quiet (a send after the interval wakes it without the pacer)."""

    _of: ClassVar[dict[asyncio.AbstractEventLoop, _Pacer]] = {}
    # uvloop counts timers in whole milliseconds: the timer waits at least that long, and a
    # tick ends the holds due within half of it.
    GRAIN_NS = 1_000_000

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: dict[ResponseChannel, int] = {}  # channel -> the end of its interval (ns)
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Pacer:
        pacer = cls._of.get(loop)
        if pacer is None:
            pacer = cls._of[loop] = cls(loop)
        return pacer

    def hold(self, channel: ResponseChannel, until_ns: int) -> None:
        self._held[channel] = until_ns
        if self._timer is None or until_ns < self._at:
            self._arm(until_ns)

    def drop(self, channel: ResponseChannel) -> None:
        held = self._held
        held.pop(channel, None)
        if not held:  # nothing to watch: no timer, and no reference to the loop kept
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._forget()

    def _arm(self, at_ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at_ns
        grains = max(1, -(-(at_ns - time.monotonic_ns()) // self.GRAIN_NS))  # rounded up
        self._timer = self._loop.call_later(grains * self.GRAIN_NS / 1e9, self._tick)

    def _tick(self) -> None:
        self._timer = None
        due = time.monotonic_ns() + self.GRAIN_NS // 2
        later = 0
        for channel, until in list(self._held.items()):
            if until <= due:
                del self._held[channel]
                channel._release()
            elif not later or until < later:
                later = until
        if later:
            self._arm(later)
        else:
            self._forget()

    def _forget(self) -> None:
        if _Pacer._of.get(self._loop) is self:
            del _Pacer._of[self._loop]


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
