"""Wake the event loop at a deadline to within tens of microseconds, without spinning.

asyncio's and uvloop's timers sleep in whole milliseconds (epoll and libuv take a timeout in
ms and round up), which turns a 200 µs ``max_queue_delay_microseconds`` into more than 1 ms.
Waiting out the remainder by yielding in a loop keeps the delay exact but burns a core for as
long as any batch waits. A Linux timerfd has nanosecond resolution and is an ordinary file
descriptor: the loop watches it beside its sockets and wakes when it fires, so a delay costs
one wake-up and no CPU while it runs.

Elsewhere (no timerfd) the timer falls back to the loop's own ``call_at``, with the loop's
millisecond resolution.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable

CLOCK_MONOTONIC = 1  # the clock behind time.monotonic_ns() on Linux
TFD_TIMER_ABSTIME = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        ]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class PreciseTimer:
    """One re-armable timer on ``loop`` that calls ``callback`` (on the loop) when it fires.

    ``arm(deadline_ns)`` (a ``time.monotonic_ns()`` value) replaces any earlier deadline; a
    deadline already past fires at the loop's next turn. ``close()`` releases the descriptor.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._fd = -1
        self._handle: asyncio.TimerHandle | None = None  # the fallback's
        if _LIBC is not None:
            fd = _LIBC.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._spec = _Itimerspec()
                loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    def arm(self, deadline_ns: int) -> None:
        if self._fd < 0:
            if self._handle is not None:
                self._handle.cancel()
            # call_at takes the loop's clock, which is time.monotonic() for asyncio and uvloop.
            self._handle = self._loop.call_at(
                self._loop.time() + (deadline_ns - time.monotonic_ns()) / 1e9, self._callback
            )
            return
        # A zero it_value would disarm the timer: a deadline at or before 0 fires at 1 ns.
        deadline_ns = max(deadline_ns, 1)
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        if _LIBC.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:  # type: ignore[union-attr]
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; reading it re-arms readiness
        except BlockingIOError:  # re-armed to a later deadline after it became readable
            return
        self._callback()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
