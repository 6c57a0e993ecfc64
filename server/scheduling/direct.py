"""The scheduler for models without dynamic batching: each request runs alone on the next free
instance, in arrival order. The wait for an instance is bounded by ``max_queue_size``.

A request that finds an instance free which runs it on the event loop (placement.py) finishes
inside ``submit`` without suspending: no queue, no merge, no thread hop."""

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

    async def _acquire(self) -> InstanceWorker:
        if len(self._waiters) >= self.max_queue_size:
            raise Unavailable(
                f"{self.label}: exceeds maximum queue size ({self.max_queue_size} waiting; the server's cap for "
                "models without a dynamic batcher)"
            )
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
        try:
            done = worker.run((work,))
        except BaseException:
            self._release(worker)
            raise
        if isinstance(done, tuple):  # ran on the loop: nothing else ran meanwhile
            self._release(worker)
            results, times = done
        else:
            # The worker is free only when its thread is: a cancelled caller does not free it early.
            done.add_done_callback(lambda _: self._release(worker))
            results, times = await asyncio.shield(done)
        self.stats.record_execution(times)
        result = results[0]
        if isinstance(result, InferdError):
            raise result
        self.record_success(work, times, started)
        return result
