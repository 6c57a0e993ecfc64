"""One decoupled request's responses on their way from the model to the client.

A decoupled model (``model_transaction_policy { decoupled: true }``) sends 0..N responses per
request, from ``execute`` or from threads it starts, long after ``execute`` returned. Each
request gets a :class:`ResponseChannel`: the model's side (``send``, ``fail``, ``cancelled``)
may be called from any thread; the consumer's side (``get``, ``cancel``) runs on the event
loop, woken through ``loop.call_soon_threadsafe`` only while it waits.

The channel is bounded: at most ``limit`` responses wait for a consumer that reads slower than
the model sends (the server's ``--max-buffered-responses``). The send that would exceed it
fails in the model, the request is cancelled (the model sees ``is_cancelled()``), and the
consumer reads the responses already buffered and then the error.
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
_yield_cpu = getattr(os, "sched_yield", None)  # releases the GIL while it yields (POSIX only)


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
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False  # the model sent the final flag (or was failed): sends raise from here on
        self._ended = False  # nothing more reaches the consumer
        self._cancelled = False  # the model should stop: the consumer left, or it fell too far behind
        self._failure: InferdError | None = None  # raised to the consumer after the buffered responses
        self._sent_final_response = False  # the final flag came on a response, not alone
        self._first = True  # no response sent yet
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
    ) -> None:
        """One response (``outputs``, or ``error``), or with ``outputs`` None and ``final``
        only the final flag. Raises ChannelClosed after the final flag and ChannelOverflow
        when the consumer is ``limit`` responses behind; responses sent after the request was
        cancelled are dropped."""
        now = time.monotonic_ns()
        with self._lock:
            if self._closed:
                raise ChannelClosed(f"{self.label}: Unable to send response. Response sender has been closed.")
            if final:
                self._closed = True
            if self._ended:
                return  # cancelled: dropped, as Triton drops them
            if outputs is not None or error is not None:
                if len(self._items) >= self.limit:
                    self._cancelled = self._ended = True
                    self._failure = ChannelOverflow(
                        f"{self.label}: the client is reading this request's responses too slowly: more than "
                        f"{self.limit} wait to be sent (--max-buffered-responses); the request is cancelled"
                    )
                    self._wake()
                    raise self._failure
                response = InferResponse(
                    self.model_name,
                    self.model_version,
                    dict(outputs) if outputs is not None else {},
                    self.request_id,
                    dict(parameters) if parameters else {},
                    final=final,
                    error=error,
                )
                self._items.append((response, now))
                self._sent_final_response = final
            if final:
                self._ended = True
            first, self._first = self._first, False
            woke = self._wake()
        if woke and (first or final) and _yield_cpu is not None and threading.get_ident() != self._loop_thread:
            # The consumer's loop waits for the GIL, which this thread would otherwise keep up
            # to the switch interval (5 ms): hand it over now for the first response (time to
            # first token) and the last (the client's next request). Not for every response:
            # the others are written together when the loop gets its turn.
            _yield_cpu()

    def fail(self, error: InferdError) -> None:
        """End the request with ``error`` unless its final flag was already sent (execute
        failed, or the model dropped the sender without sending the final flag)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._ended:
                return
            self._ended = True
            self._failure = error
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
    async def get(self) -> tuple[InferResponse, int] | None:
        """The next response and when it was sent (monotonic ns); None once the request is
        complete. Raises the request's failure after the responses sent before it."""
        while True:
            with self._lock:
                items = self._items
                if items:
                    item = items.popleft()
                    item[0].more = bool(items)
                    return item
                if self._ended:
                    if self._failure is not None:
                        raise self._failure
                    return None
                assert self._loop is not None, "a channel made without a loop has no consumer"
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None

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
            if self._failure is None:
                self._failure = Cancelled(f"{self.label}: the request was cancelled")


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
