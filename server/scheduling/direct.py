"""The scheduler for models without dynamic batching: each request runs alone on the next free
instance, in arrival order. The wait for an instance is bounded by ``max_queue_size``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from ..errors import InferdError, Unavailable
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
        self._idle: asyncio.Queue[InstanceWorker] = asyncio.Queue()
        for w in self.workers:
            self._idle.put_nowait(w)
        self._waiting = 0
        self.max_queue_size = max_queue_size

    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        if self._idle.empty():
            if self._waiting >= self.max_queue_size:
                raise Unavailable(
                    f"{self.label}: exceeds maximum queue size ({self.max_queue_size} waiting)"
                )
            self._waiting += 1
            try:
                worker = await self._idle.get()
            finally:
                self._waiting -= 1
        else:
            worker = self._idle.get_nowait()
        started = time.monotonic_ns()
        if work.deadline_ns is not None and started >= work.deadline_ns:
            self._idle.put_nowait(worker)
            raise work.expired_error(self.label, "before execution")
        if worker.runs_inline([work]):
            try:
                results, times = worker.execute([work], inline=True)
            finally:
                self._idle.put_nowait(worker)
        else:
            fut = asyncio.get_running_loop().run_in_executor(worker.executor, worker.execute, [work])
            # The worker is free only when its thread is: a cancelled caller does not free it early.
            fut.add_done_callback(lambda _: self._idle.put_nowait(worker))
            results, times = await asyncio.shield(fut)
        self.stats.record_execution(times)
        result = results[0]
        if isinstance(result, InferdError):
            raise result
        self.record_success(work, times, started)
        return result
