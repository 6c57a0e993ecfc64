"""Measurement: for each step of the sweep, run the load, cut contiguous windows, read the
server's statistics around each one, stop when the last windows agree (perf_analyzer's
stability rule) or after ``max_trials``, and merge the last windows into one result. A server
that stops answering ends the sweep with :class:`ServerGone`, which keeps the steps done."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .loadgen import LATE_NS, OUTAGE_NS, Record
from .stats import STABILITY_WINDOWS, ServerCounters, StepResult, Window, is_stable, merge
from .transport import RequestFailed, Transport

# How often, within a window, the profiler asks the generator whether the server is gone.
OUTAGE_POLL_S = 0.2


class Generator(Protocol):
    sent: int
    failed: int
    last_error: str

    async def start_concurrency(self, concurrency: int) -> None: ...
    async def start_rate(self, rate: float, distribution: str = ..., seed: int = ...) -> None: ...
    async def stop(self) -> None: ...
    async def outage(self) -> str | None: ...
    async def failing(self) -> bool: ...
    async def collect(self, until_ns: int) -> tuple[list[Record], float]: ...


class ServerGone(RequestFailed):
    """The server stopped answering during the sweep (loadgen.OutageWatch's rule). ``value``
    is the step it interrupted, ``results`` the steps completed before it."""

    def __init__(self, last_error: str) -> None:
        super().__init__(last_error, unavailable=True)
        self.last_error = last_error
        self.value = 0.0
        self.results: list[StepResult] = []


@dataclass
class ProfileSettings:
    model: str
    version: str = ""
    mode: str = "concurrency"  # concurrency | rate
    distribution: str = "constant"
    batch_size: int = 1
    measurement_ms: int = 5000
    stability: float = 0.10
    max_trials: int = 10
    percentile: int | None = None
    latency_threshold_ms: float | None = None
    server_stats: bool = True
    seed: int = 0


class Progress(Protocol):
    """Where the profiler reports as it goes (the terminal progress line)."""

    def window(
        self, label: str, trial: int, max_trials: int, window: Window, batch_size: int, stable: bool
    ) -> None: ...
    def step(self, result: StepResult) -> None: ...


def window_of(
    records: Sequence[Record], start_ns: int, end_ns: int, cpu: float, server: ServerCounters | None
) -> Window:
    """A window from the records that ended in (start_ns, end_ns]."""
    inside = [r for r in records if r.end_ns > start_ns]
    ok = [r for r in inside if r.ok]
    return Window(
        duration_ns=end_ns - start_ns,
        latencies_ns=[r.latency_ns for r in ok],
        send_ns=sum(r.send_ns for r in ok),
        recv_ns=sum(r.recv_ns for r in ok),
        errors=len(inside) - len(ok),
        late_sends=sum(1 for r in inside if r.lag_ns > LATE_NS),
        max_lag_ns=max((r.lag_ns for r in inside), default=0),
        cpu_fraction=cpu,
        server=server,
    )


class Profiler:
    def __init__(
        self, transport: Transport, generator: Generator, settings: ProfileSettings, progress: Progress | None = None
    ) -> None:
        self.transport = transport
        self.gen = generator
        self.s = settings
        self.progress = progress
        self._sent_so_far = 0

    async def _stats(self) -> ServerCounters | None:
        if not self.s.server_stats:
            return None
        try:
            return await self.transport.statistics(self.s.model, self.s.version)
        except RequestFailed:
            return None

    async def step(self, value: float) -> StepResult:
        s = self.s
        if s.mode == "concurrency":
            await self.gen.start_concurrency(int(value))
        else:
            await self.gen.start_rate(value, s.distribution, s.seed)
        windows: list[Window] = []
        stable = False
        try:
            before = await self._stats()
            start = time.monotonic_ns()
            await self.gen.collect(start)  # drop what ended before the first window
            for trial in range(1, s.max_trials + 1):
                await self._wait(s.measurement_ms / 1000)
                end = time.monotonic_ns()
                after = await self._stats()
                records, cpu = await self.gen.collect(end)
                delta = after - before if after is not None and before is not None else None
                w = window_of(records, start, end, cpu, delta)
                windows.append(w)
                start, before = end, after
                stable = is_stable(
                    [x.throughput(s.batch_size) for x in windows],
                    [x.stabilizing_latency_ns(s.percentile) for x in windows],
                    s.stability,
                )
                if self.progress is not None:
                    self.progress.window(f"{value:g}", trial, s.max_trials, w, s.batch_size, stable)
                if stable:
                    break
            await self._settle()
        finally:
            await self.gen.stop()
        last = windows[-STABILITY_WINDOWS:]
        result = merge(last, s.mode, value, s.batch_size, s.percentile, stable, len(windows))
        result.requests_sent = self.gen.sent - self._sent_so_far
        self._sent_so_far = self.gen.sent
        self._annotate(result)
        return result

    async def _wait(self, seconds: float) -> None:
        """Sleep through a window, raising ServerGone as soon as the generator says so."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, OUTAGE_POLL_S))
            error = await self.gen.outage()
            if error is not None:
                raise ServerGone(error)

    async def _settle(self) -> None:
        """Before a step ends while requests are failing as unavailable, keep the load on until
        the server answers again or counts as gone: a step must not end as a measurement of a
        dead server because its windows were shorter than the outage rule."""
        deadline = time.monotonic() + OUTAGE_NS / 1e9 + 1.0
        while await self.gen.failing() and time.monotonic() < deadline:
            await self._wait(OUTAGE_POLL_S)

    def _annotate(self, r: StepResult) -> None:
        s = self.s
        if not r.stable:
            r.notes.append(f"unstable after {r.windows_measured} windows (try a longer -p or a larger -s)")
        if r.errors:
            r.notes.append(f"{r.errors} failed requests, e.g. {self.gen.last_error}")
        if s.mode == "rate":
            sent = r.latency.count + r.errors
            if sent and r.late_sends / sent > 0.01:
                r.notes.append(
                    f"generator behind schedule: {100 * r.late_sends / sent:.1f}% of sends more than "
                    f"{LATE_NS / 1e6:g} ms late (max {r.max_lag_ns / 1e6:.1f} ms)"
                )
            elif r.throughput < 0.9 * r.value * r.batch_size:
                r.notes.append("the server answered below the requested rate (requests queue up)")
        if r.cpu_fraction > 0.9:
            r.notes.append(
                f"load generator at {100 * r.cpu_fraction:.0f}% of a core: it may be the bottleneck (try --processes N)"
            )

    async def sweep(self, values: Sequence[float]) -> list[StepResult]:
        results: list[StepResult] = []
        for value in values:
            try:
                r = await self.step(value)
            except ServerGone as e:
                e.value, e.results = value, results
                raise
            results.append(r)
            over = self._over_limit(r)
            if self.progress is not None:
                self.progress.step(r)
            if over:
                break
        return results

    def _over_limit(self, r: StepResult) -> bool:
        limit = self.s.latency_threshold_ms
        if limit is None or limit <= 0:
            return False
        latency = r.latency.percentiles_ns.get(self.s.percentile or -1, r.latency.avg_ns)
        if latency / 1e6 < limit:
            return False
        r.notes.append(f"latency over the -l limit of {limit:g} ms: sweep stopped")
        return True
