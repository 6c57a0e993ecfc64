"""What every scheduler offers a model version: submit work, wait for its outputs, drain."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ...protocol.errors import Unavailable
from ..stats import ExecutionTimes, ModelStats
from .load import ServerLoad, current
from .work import Work
from .worker import InstanceWorker


class Scheduler(ABC):
    # Whether a request inside this scheduler counts in the server's load (load.py's ``busy``).
    # An ensemble's does not: its steps' requests count, in their own schedulers, so a lone
    # ensemble request is still alone while a step runs.
    counts_in_load = True

    def __init__(self, workers: Sequence[InstanceWorker], stats: ModelStats, label: str) -> None:
        self.workers = list(workers)
        self.stats = stats
        self.label = label  # "model 'x' version 1", used in messages
        self._inflight = 0
        self._drained: asyncio.Future[None] | None = None  # made by drain(), done at zero in flight
        self._closed = False
        self._load: ServerLoad | None = None  # the server's, once a request came in on its loop

    @abstractmethod
    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        """Queue ``work`` and return its outputs once executed."""

    async def submit(self, work: Work) -> dict[str, np.ndarray]:
        """Run ``work`` and return its outputs: the one way into a scheduler."""
        if self._closed:
            raise Unavailable(f"{self.label} is unloading and takes no new requests")
        load = self._load
        if load is None:
            load = self._load = current()
        self._inflight += 1
        counted = self.counts_in_load
        load.busy += counted
        try:
            return await self._run(work)
        finally:
            load.busy -= counted
            self._inflight -= 1
            if self._inflight == 0 and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def record_success(self, work: Work, times: ExecutionTimes, started_ns: int) -> None:
        self.stats.record_success(time.monotonic_ns() - work.enqueue_ns, started_ns - work.enqueue_ns, times)
        if work.trace is not None:  # the spans reuse the timestamps the statistics took
            work.trace.compute(work.enqueue_ns, started_ns, times)

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop taking requests and wait for queued and running ones; True if all finished."""
        self._closed = True
        if self._inflight == 0:
            return True
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def retire(self, timeout: float | None = None) -> bool:
        """Drain, stop background tasks and release the instances; True if nothing was cut off."""
        finished = await self.drain(timeout)
        await self._stop()
        await asyncio.get_running_loop().run_in_executor(None, self.close)
        return finished

    async def _stop(self) -> None:
        """Stop the scheduler's own tasks (none by default)."""

    def close(self) -> None:
        for w in self.workers:
            w.close()
