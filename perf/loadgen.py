"""The load generator: asyncio tasks over one transport (one channel / connection pool).

* Concurrency mode keeps exactly N requests in flight: N tasks, each sending its next request
  as soon as the previous one is answered (perf_analyzer's concurrency manager).
* Rate mode sends on a schedule (constant or Poisson intervals) whatever the server's pace,
  each request in its own task, and records how late each send was: a send more than
  ``LATE_NS`` behind schedule means the generator could not hold the rate.

The generator also watches for a server that has stopped answering (:class:`OutageWatch`), so
that the profiler can end the run instead of measuring failures.

Every completed request becomes one record ``(end_ns, latency_ns, send_ns, recv_ns, ok, lag_ns)``
on the ``time.monotonic_ns`` clock (shared by all processes on Linux, so child processes'
records merge with the parent's windows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, NamedTuple

import numpy as np

from .transport import RequestFailed, Transport

# A send later than this behind its scheduled time counts as late. asyncio sleeps with
# millisecond resolution (epoll), so lags below ~1 ms are the timer's, not the generator's.
LATE_NS = 2_000_000
# Rate mode never keeps more than this many requests in flight; beyond it, sends wait (and
# show up as late) instead of growing memory without bound against a stalled server.
MAX_OUTSTANDING = 10_000
# The server counts as gone once requests have failed as unavailable (RequestFailed.unavailable:
# refused or reset connections, gRPC UNAVAILABLE, HTTP 502-504) for OUTAGE_NS, at least
# OUTAGE_FAILURES of them, with no request answered in between. Long enough to ride out a
# reconnect, short enough that a dead server ends the run within a few seconds.
OUTAGE_NS = 2_000_000_000
OUTAGE_FAILURES = 3


class Record(NamedTuple):
    end_ns: int
    latency_ns: int
    send_ns: int
    recv_ns: int
    ok: int
    lag_ns: int


class OutageWatch:
    """Applies the OUTAGE_NS / OUTAGE_FAILURES rule to the outcomes of requests. Any answer
    (a success, or an error about the request such as INVALID_ARGUMENT) shows the server is
    up and starts the count again."""

    def __init__(self, after_ns: int = OUTAGE_NS, failures: int = OUTAGE_FAILURES) -> None:
        self.after_ns = after_ns
        self.min_failures = failures
        self.first_ns = 0  # when the current run of unavailable failures began
        self.count = 0
        self.last_error = ""

    @property
    def failing(self) -> bool:
        """The latest outcome was an unavailable failure."""
        return self.count > 0

    def answered(self) -> None:
        self.count = 0

    def unavailable(self, error: str, now_ns: int) -> None:
        if self.count == 0:
            self.first_ns = now_ns
        self.count += 1
        self.last_error = error

    def gone(self, now_ns: int) -> str | None:
        """The last error once the server counts as gone, else None."""
        if self.count >= self.min_failures and now_ns - self.first_ns >= self.after_ns:
            return self.last_error
        return None


class LoadGenerator:
    """Drives one transport; ``take(until_ns)`` hands over the records of requests that ended
    by ``until_ns`` (later ones stay for the next window)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.records: list[Record] = []
        self.sent = 0
        self.completed = 0
        self.failed = 0
        self.last_error = ""
        self.watch = OutageWatch()
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._index = 0
        self._wall_ns = time.monotonic_ns()
        self._cpu_ns = time.thread_time_ns()

    # --- running ------------------------------------------------------------------------
    async def start_concurrency(self, concurrency: int) -> None:
        await self._begin()
        for _ in range(concurrency):
            self._spawn(self._worker())

    async def start_rate(self, rate: float, distribution: str = "constant", seed: int = 0) -> None:
        if rate <= 0:
            raise ValueError("the request rate must be positive")
        await self._begin()
        self._spawn(self._schedule(rate, distribution == "poisson", np.random.default_rng(seed)))

    async def _begin(self) -> None:
        if self._running:
            await self.stop()
        await self.transport.start()
        self._running = True

    async def stop(self) -> None:
        """Stop sending and wait for every request in flight, so that counts stay exact."""
        self._running = False
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker(self) -> None:
        while self._running:
            await self._one(0)

    async def _schedule(self, rate: float, poisson: bool, rng: np.random.Generator) -> None:
        interval_ns = 1e9 / rate
        next_ns = time.monotonic_ns()
        while self._running:
            now = time.monotonic_ns()
            if next_ns > now:
                await asyncio.sleep((next_ns - now) / 1e9)
                continue
            if len(self._tasks) > MAX_OUTSTANDING:
                await asyncio.sleep(0.001)
                continue
            self._spawn(self._one(now - next_ns))
            next_ns += int(rng.exponential(interval_ns)) if poisson else int(interval_ns)
            # Yield now and then so bursts of catch-up sends do not starve the responses.
            if now - next_ns > LATE_NS:
                await asyncio.sleep(0)

    async def _one(self, lag_ns: int) -> None:
        index = self._index
        self._index += 1
        self.sent += 1
        start = time.monotonic_ns()
        unavailable = False
        try:
            send_ns, recv_ns = await self.transport.infer(index)
            ok = 1
        except RequestFailed as e:
            send_ns = recv_ns = ok = 0
            self.failed += 1
            self.last_error = str(e)
            unavailable = e.unavailable
        end = time.monotonic_ns()
        if unavailable:
            self.watch.unavailable(self.last_error, end)
        else:
            self.watch.answered()
        self.completed += 1
        self.records.append(Record(end, end - start, send_ns, recv_ns, ok, lag_ns))
        if not ok and self._running:
            await asyncio.sleep(0.001)  # failing fast against a broken server would spin

    async def outage(self) -> str | None:
        """The last error once the server counts as gone (see OutageWatch), else None."""
        return self.watch.gone(time.monotonic_ns())

    async def failing(self) -> bool:
        return self.watch.failing

    # --- collecting ---------------------------------------------------------------------
    async def collect(self, until_ns: int) -> tuple[list[Record], float]:
        """The records up to ``until_ns`` and the event-loop thread's CPU use since the last
        collect, as a fraction of one core: near 1.0, the generator itself is the bottleneck.
        (Call it from the loop's thread.)"""
        wall, cpu = time.monotonic_ns(), time.thread_time_ns()
        fraction = (cpu - self._cpu_ns) / (wall - self._wall_ns) if wall > self._wall_ns else 0.0
        self._wall_ns, self._cpu_ns = wall, cpu
        return self.take(until_ns), fraction

    def take(self, until_ns: int) -> list[Record]:
        records, self.records = self.records, []
        kept = [r for r in records if r.end_ns > until_ns]
        if kept:
            self.records = kept + self.records
            return [r for r in records if r.end_ns <= until_ns]
        return records
