"""The scheduler for models without dynamic batching: each request runs alone on the next free
instance, in arrival order. The wait for an instance is bounded by ``max_queue_size``."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from ...protocol.errors import InferdError, Unavailable
from ..stats import ModelStats
from .base import Scheduler
from .work import Work
from .worker import InstanceWorker

DEFAULT_MAX_QUEUE = 4096


class DirectScheduler(Scheduler):
    def __init__(
        self,
        workers: Sequence[InstanceWorker],
        stats: ModelStats,
        label: str,
        max_queue_size: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        super().__init__(workers, stats, label)
        # Free instances, and the requests waiting for one in arrival order (a plain list and
        # deque: this is every request's path, and asyncio.Queue costs several calls per use).
        self._idle: list[InstanceWorker] = list(self.workers)
        self._waiters: deque[asyncio.Future[InstanceWorker]] = deque()
        self.max_queue_size = max_queue_size

    def run_now(self, work: Work) -> dict[str, np.ndarray] | None:
        # A free instance that runs this request on the event loop finishes it before anything
        # else runs (no await), so it needs no queue and no in-flight count.
        if not self._idle or self._closed:
            return None
        worker = self._idle[-1]
        if not worker.runs_inline((work,)):
            return None
        started = time.monotonic_ns()
        if work.deadline_ns is not None and started >= work.deadline_ns:
            raise work.expired_error(self.label, "before execution")
        result, times = worker.execute_one_inline(work)
        self.stats.record_execution(times)
        self.record_success(work, times, started)
        return result

    async def _acquire(self) -> InstanceWorker:
        if len(self._waiters) >= self.max_queue_size:
            raise Unavailable(f"{self.label}: exceeds maximum queue size ({self.max_queue_size} waiting)")
        fut: asyncio.Future[InstanceWorker] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if not fut.cancelled():  # handed a worker just as it was cancelled
                self._release(fut.result())
            elif fut in self._waiters:  # _release may already have dropped it
                self._waiters.remove(fut)
            raise

    def _release(self, worker: InstanceWorker) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return
        self._idle.append(worker)

    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        worker = self._idle.pop() if self._idle else await self._acquire()
        started = time.monotonic_ns()
        if work.deadline_ns is not None and started >= work.deadline_ns:
            self._release(worker)
            raise work.expired_error(self.label, "before execution")
        items = [work]
        if worker.runs_inline(items):
            try:
                results, times = worker.execute(items, inline=True)
            finally:
                self._release(worker)
        else:
            fut = asyncio.get_running_loop().run_in_executor(worker.executor, worker.execute, items)
            # The worker is free only when its thread is: a cancelled caller does not free it early.
            fut.add_done_callback(lambda _: self._release(worker))
            results, times = await asyncio.shield(fut)
        self.stats.record_execution(times)
        result = results[0]
        if isinstance(result, InferdError):
            raise result
        self.record_success(work, times, started)
        return result
