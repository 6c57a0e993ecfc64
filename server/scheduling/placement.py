"""Where an instance's executions run: on the event loop or on the instance's thread.

The hop to an instance thread and back costs more CPU than a small model's whole execution (two
thread wake-ups and the GIL changing hands; perf/reports/2026-12-04-batching-and-protocol.md has the figures). So an instance that
the loader allows to (loader.inline_execution: one CPU instance of a backend that is pure
computation) runs an execution on the event loop while executions are this short and its inputs
this small. Everything else runs on the thread.

How short is measured twice, because each way misleads alone: on the thread, as the thread's
CPU time (its wall time includes waiting for the GIL, which the loop holds while busy, so a tiny
model can look slow); on the loop, as wall time (a backend whose calling thread waits, for an
intra-op pool or anything else, shows it there). Once the loop's average is over the limit the
instance stays on its thread; that average fades by a tenth with every threaded execution, so
one unlucky inline sample is retried after a few, and a model that really is too slow on the
loop runs there about once in twenty executions. Wall time on the loop also counts the times
the kernel switched the loop thread out, so a loop sample moves the average at most to twice
itself: one preempted execution does not send the instance to its thread, a model that really
slowed down gets there within a few executions. Two executions within STALL_WINDOW inline ones
that each held the loop for more than INLINE_NEVER_NS (a model that sleeps or waits on I/O,
which its thread's CPU time cannot show) keep the instance on its thread for good; one alone
may be a full garbage collection or the kernel switching the loop out, which any code meets.

While a request is the server's only one (load.py), the limits are ALONE_MAX_NS and
ALONE_MAX_BYTES instead: nothing else waits for the loop, so the hop would only add latency.
They are the limits under load too for an instance without a dynamic batcher where the process
may run on one CPU only (``single_cpu``: its affinity, one_cpu(), as a cpuset, taskset or
Kubernetes' static CPU manager sets it). There an instance thread computes nothing in parallel
with the loop, it only takes turns with it, so the hop and the hand-back are extra work on the
one CPU (perf/reports/2026-12-08-tenth-session.md); other requests wait for an execution on the
loop as they would wait for the CPU. Only executions that compute, though: one whose time on the
loop is well over its CPU time on the thread waits for something, and goes back to its thread.
A dynamically batched instance keeps its thread: while the thread waits for the CPU its open
batch takes the requests the loop admits (open_batch.py), which makes larger batches. A CPU
quota (cgroup ``cpu.max``) is not looked at.

A request whose model's sends may wait for its consumer (a response channel with a window: an
ensemble step under max_inflight_requests) never runs on the loop: the consumer is the loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .work import Work

INLINE_MAX_NS = 100_000
INLINE_MAX_BYTES = 64 * 1024
# While the request is the server's only one (load.py), longer executions may hold the loop.
ALONE_MAX_NS = 2_000_000
ALONE_MAX_BYTES = 64 * 1024 * 1024
INLINE_NEVER_NS = 20_000_000
STALL_WINDOW = 50
_EWMA = 0.2
_FADE = 0.9


def one_cpu() -> bool:
    """Whether this process may run on one CPU only (see the module's docstring)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return affinity is not None and len(affinity(0)) == 1


def _average(old: float | None, new: int, clip: bool = False) -> float:
    if old is None:
        return float(new)
    if clip and new > 2 * old:
        new = int(2 * old)
    return old + _EWMA * (new - old)


class ExecutionPlacement:
    """Decides, per execution, whether it runs on the loop; learns from what executions cost."""

    def __init__(self, inline_allowed: bool, single_cpu: bool = False) -> None:
        self.inline_allowed = inline_allowed  # decided once at load (loader.inline_execution)
        # Decided at load too: the limits of a lone request apply under load as well.
        self.single_cpu = single_cpu
        self.thread_cpu_ns: float | None = None  # moving average on the thread; None = unmeasured
        self.inline_wall_ns: float | None = None  # moving average on the loop
        self._thread_runs = 0
        self._loop_runs = 0
        self._stalled_at: int | None = None  # the inline run that last held the loop too long

    def on_loop(self, batch: Sequence[Work]) -> bool:
        if self.single_cpu:
            return self._waits_little() and self.on_loop_alone(batch)
        if not self.inline_allowed or self.thread_cpu_ns is None or self.thread_cpu_ns > INLINE_MAX_NS:
            return False
        if self.inline_wall_ns is not None and self.inline_wall_ns > INLINE_MAX_NS:
            return False
        return sum(w.nbytes() for w in batch) <= INLINE_MAX_BYTES and not _sends_may_wait(batch)

    def on_loop_alone(self, batch: Sequence[Work]) -> bool:
        """Whether ``batch`` may hold the loop given that nothing else is waiting for it."""
        if not self.inline_allowed or self.thread_cpu_ns is None or self.thread_cpu_ns > ALONE_MAX_NS:
            return False
        if self.inline_wall_ns is not None and self.inline_wall_ns > ALONE_MAX_NS:
            return False
        return sum(w.nbytes() for w in batch) <= ALONE_MAX_BYTES and not _sends_may_wait(batch)

    def _waits_little(self) -> bool:
        """Whether executions on the loop took about the CPU time they take on the thread: one
        that waits (I/O, a lock, a sleep) would hold the loop with the one CPU idle, where on
        its thread other requests use the CPU meanwhile."""
        wall, cpu = self.inline_wall_ns, self.thread_cpu_ns
        return wall is None or cpu is None or wall <= max(2 * cpu, INLINE_MAX_NS)

    def ran_on_loop(self, wall_ns: int) -> None:
        self._loop_runs += 1
        if wall_ns > INLINE_NEVER_NS:
            if self._stalled_at is not None and self._loop_runs - self._stalled_at <= STALL_WINDOW:
                self.inline_allowed = False
            self._stalled_at = self._loop_runs
        self.inline_wall_ns = _average(self.inline_wall_ns, wall_ns, clip=True)

    def ran_on_thread(self, cpu_ns: int) -> None:
        self._thread_runs += 1
        if self._thread_runs == 1:  # the first is cold (lazy initialisation, a new thread): no measure
            return
        self.thread_cpu_ns = _average(self.thread_cpu_ns, cpu_ns)
        if self.inline_wall_ns is not None:
            self.inline_wall_ns *= _FADE


def _sends_may_wait(batch: Sequence[Work]) -> bool:
    return any(w.info is not None and w.info.responses is not None and w.info.responses.window for w in batch)
