"""The scheduler for models without dynamic batching: requests wait for a free instance in
arrival order, the wait is bounded, and a request cancelled while waiting takes no instance."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from inferd.backends.base import Backend
from inferd.protocol.errors import Unavailable
from inferd.server.scheduling.direct import DirectScheduler
from inferd.server.scheduling.work import Work
from inferd.server.scheduling.worker import InstanceWorker
from inferd.server.stats import ModelStats


class Gate(Backend):
    """Y = X; each execution waits until the test opens the gate, and records X."""

    name = "gate"
    default_filename = "none"

    def __init__(self) -> None:
        self.seen: list[float] = []
        self.gate = threading.Semaphore(0)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.gate.acquire()
        self.seen.append(float(inputs["X"][0, 0]))
        return {"Y": inputs["X"]}


def work(value: float) -> Work:
    return Work({"X": np.full((1, 1), value, np.float32)}, ["Y"], 1, 0, None)


def scheduler(backend: Gate, max_queue_size: int = 8) -> DirectScheduler:
    return DirectScheduler(
        [InstanceWorker(backend, "inst0", False)], ModelStats("m", "1"), "model 'm' version 1", max_queue_size
    )


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_waiting_requests_run_in_arrival_order() -> None:
    backend = Gate()
    s = scheduler(backend)
    tasks = [asyncio.ensure_future(s.submit(work(v))) for v in range(5)]
    await until(lambda: len(s._waiters) == 4)
    for _ in range(5):
        backend.gate.release()
    results = await asyncio.gather(*tasks)
    assert [float(r["Y"][0, 0]) for r in results] == [0, 1, 2, 3, 4]
    assert backend.seen == [0, 1, 2, 3, 4]
    s.close()


async def test_the_wait_is_bounded_and_the_overflow_rejected() -> None:
    backend = Gate()
    s = scheduler(backend, max_queue_size=2)
    tasks = [asyncio.ensure_future(s.submit(work(v))) for v in range(3)]  # 1 runs, 2 wait
    await until(lambda: len(s._waiters) == 2)
    with pytest.raises(Unavailable, match="exceeds maximum queue size"):
        await s.submit(work(9))
    for _ in range(3):
        backend.gate.release()
    await asyncio.gather(*tasks)
    s.close()


async def test_a_cancelled_waiter_takes_no_instance() -> None:
    backend = Gate()
    s = scheduler(backend)
    running = asyncio.ensure_future(s.submit(work(0)))
    cancelled = asyncio.ensure_future(s.submit(work(1)))
    after = asyncio.ensure_future(s.submit(work(2)))
    await until(lambda: len(s._waiters) == 2)
    cancelled.cancel()
    await until(lambda: len(s._waiters) == 1)
    backend.gate.release()
    backend.gate.release()
    await asyncio.gather(running, after)
    assert backend.seen == [0, 2]  # the cancelled request never executed
    assert s._idle == s.workers  # and the instance came back
    s.close()
