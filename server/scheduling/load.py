"""How busy a server is, for one decision: whether an execution too long for the event loop
under load may still run there because nothing else is waiting for it (placement.py).

At one client every hop to an instance thread and back is pure latency: two thread wake-ups,
often of an idle CPU, which on a virtual machine is the slowest and least predictable part of
the request. Running the execution on the loop instead is only safe while nothing else wants
the loop, which takes two signals:

* ``busy``: requests inside any scheduler (``Scheduler.submit``), all models together;
* probes: front ends that can tell, even while the loop is held, how many inference calls they
  have taken in and not ended (the native gRPC front end's threads keep accepting while the loop
  runs; the HTTP front end asks the kernel what waits on its sockets, http_connections.calls_probe).
  Health, metadata and statistics calls are not counted: they can wait for the loop, and
  monitoring and perf_analyzer send them beside a lone client all the time.

A call that arrived while an execution held the loop, or any sight of a second request, marks
the server contended for CONTENDED_NS: later executions go to their threads, where arrivals
overlap compute, until the server has been quiet that long: a window much shorter than a
second lets two steady clients meet a held loop often enough to move their p99. Without a probe
(grpc.aio alone) nothing runs on the loop this way: its arrivals cannot be seen while it is held.

One server runs on one event loop, so the state is kept per loop (tests run several servers in
one process).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

CONTENDED_NS = 1_000_000_000


class ServerLoad:
    def __init__(self) -> None:
        self.busy = 0
        self.contended_until_ns = 0
        self.probes: list[Callable[[], int]] = []

    def calls(self) -> int:
        return sum(probe() for probe in self.probes)

    def alone(self) -> int | None:
        """The probes' count when the caller's request is the only one anywhere (so it may
        hold the loop for a while), else None. Seeing another request marks the server
        contended too: under steady load, requests overlap nearly always, and one held loop
        per quiet moment would delay a request that arrives during it."""
        if not self.probes:
            return None
        now = time.monotonic_ns()
        if self.busy != 1:
            self.contended_until_ns = now + CONTENDED_NS
            return None
        if now < self.contended_until_ns:
            return None
        n = self.calls()
        if n > 1:
            self.contended_until_ns = now + CONTENDED_NS
            return None
        return n

    def arrived_since(self, before: int) -> None:
        """After holding the loop: when calls came in meanwhile, stop holding it for a while."""
        if self.calls() > before:
            self.contended_until_ns = time.monotonic_ns() + CONTENDED_NS


_loads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ServerLoad] = weakref.WeakKeyDictionary()


def of_loop(loop: asyncio.AbstractEventLoop) -> ServerLoad:
    load = _loads.get(loop)
    if load is None:
        load = _loads[loop] = ServerLoad()
    return load


def current() -> ServerLoad:
    """The running loop's (call on the loop)."""
    return of_loop(asyncio.get_running_loop())
