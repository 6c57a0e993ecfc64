"""An instance's thread, and the hand-off of executions between it and the event loop.

``run_async`` hands a call over through a plain queue and the outcome back through a per-loop
eventfd, which the thread writes with the GIL released. ``call_soon_threadsafe`` (what
``run_in_executor`` uses) wakes the loop while the thread still holds the GIL: on a CPU the two
share, the woken loop preempts the thread (which runs below its priority, thread_priority.py),
finds the GIL taken, and the GIL changes hands three more times before the loop goes on. With
the GIL released during the wake-up, the loop takes it at once and finishes its callbacks, and
the thread takes it back when the loop next waits: about a quarter of the CPU per round trip
(perf/reports/2026-12-07-mlp-against-triton.md). Without eventfd (not Linux) or ``add_reader``
(Windows' proactor loop), outcomes go through ``call_soon_threadsafe``.

It is also a ``concurrent.futures.Executor`` (``submit``, ``shutdown``) for callers that block
on a result from another thread: loading a backend, and tests.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class _Completions:
    """One loop's way in for results from instance threads: a deque and an eventfd it watches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            loop.add_reader(self._fd, self._drain)
        except BaseException:
            os.close(self._fd)
            raise
        # Closed with the loop's last reference: a closed loop has dropped its reader.
        weakref.finalize(loop, os.close, self._fd)

    def deliver(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """From the instance thread: queue the outcome, then wake the loop with the GIL released."""
        self._done.append((future, ok, value))
        try:
            os.eventfd_write(self._fd, 1)
        except OSError:  # the loop and its descriptor are gone: nobody waits for the outcome
            pass

    def _drain(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass
        done = self._done
        while done:
            future, ok, value = done.popleft()
            _settle(future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled meanwhile
        return
    if ok:
        future.set_result(value)
        return
    try:
        future.set_exception(value)
    except TypeError:  # StopIteration, which a future refuses to carry
        future.set_exception(RuntimeError(f"{type(value).__name__} raised on an instance thread: {value}"))


_completions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Completions | None] = weakref.WeakKeyDictionary()
_completions_lock = threading.Lock()


def _completions_for(loop: asyncio.AbstractEventLoop) -> _Completions | None:
    """The loop's eventfd channel, made on first use; None where it cannot have one."""
    try:
        return _completions[loop]
    except KeyError:
        pass
    with _completions_lock:
        if loop not in _completions:
            channel: _Completions | None = None
            if hasattr(os, "eventfd"):
                try:
                    channel = _Completions(loop)
                except (NotImplementedError, OSError):
                    channel = None
            _completions[loop] = channel
        return _completions[loop]


class InstanceThread(Executor):
    """One thread running one call at a time, in submission order. Like a ThreadPoolExecutor's
    worker, the thread ends once the object is shut down or dropped, and at the interpreter's
    exit after the call it is running."""

    def __init__(self, name: str, initializer: Callable[[], object] | None = None) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._shutdown = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the last caller's, and its delivery
        self._deliver: Callable[[asyncio.Future[Any], bool, Any], None] | None = None
        # The thread holds the queue, not this object, so that dropping it ends the thread.
        self._thread = threading.Thread(
            target=_work, args=(self._queue, initializer), name=name, daemon=_register_atexit is None
        )
        self._thread.start()
        weakref.finalize(self, self._queue.put, _STOP)
        _live[self._thread] = self._queue

    @property
    def name(self) -> str:
        return self._thread.name

    def run_async(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the thread; from the running loop, whose future gets the outcome.
        Cancelling the future before the call starts skips the call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if loop is not self._loop:
            channel = _completions_for(loop)
            self._deliver = channel.deliver if channel is not None else _threadsafe_delivery(loop)
            self._loop = loop
        self._put((fn, args, future, self._deliver))
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._put((fn, args, future, kwargs or None))
        return future

    def _put(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"instance thread {self.name} is shut down")
            self._queue.put(item)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                self._queue.put(_STOP)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()


def _work(calls: queue.SimpleQueue[Any], initializer: Callable[[], object] | None) -> None:
    if initializer is not None:
        initializer()
    get = calls.get
    while True:
        item = get()
        if item is _STOP:
            return
        fn, args, future, extra = item
        del item
        if isinstance(future, Future):
            _run_blocking(fn, args, future, extra)
        elif not future.cancelled():  # run_in_executor's rule: cancelled before it started, skipped
            try:
                value, ok = fn(*args), True
            except BaseException as e:
                value, ok = e, False
            extra(future, ok, value)
            del value
        del fn, args, future, extra  # nothing of a call outlives it while the thread waits


def _run_blocking(fn: Callable[..., Any], args: tuple[Any, ...], future: Future[Any], kwargs: Any) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **(kwargs or {}))
    except BaseException as e:
        future.set_exception(e)
    else:
        future.set_result(result)


# Every live thread's queue: at the interpreter's exit (before it joins non-daemon threads, as
# concurrent.futures does for its workers) each is told to stop after its current call.
_live: weakref.WeakKeyDictionary[threading.Thread, queue.SimpleQueue[Any]] = weakref.WeakKeyDictionary()


def _stop_all() -> None:
    for thread, calls in list(_live.items()):
        calls.put(_STOP)
        thread.join()


_register_atexit = getattr(threading, "_register_atexit", None)  # else the threads are daemons
if _register_atexit is not None:
    _register_atexit(_stop_all)


def _threadsafe_delivery(loop: asyncio.AbstractEventLoop) -> Callable[[asyncio.Future[Any], bool, Any], None]:
    """Delivery through ``call_soon_threadsafe``, where the loop has no eventfd channel."""

    def deliver(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(_settle, future, ok, value)
        except RuntimeError:  # the loop is closed: nobody waits for the outcome
            pass

    return deliver
