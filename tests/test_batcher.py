"""The dynamic batcher in pure asyncio, with a real (tiny) backend whose executions are gated
by events, so grouping is decided by what is queued, never by sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from inferd.backends.base import Backend, LoadContext
from inferd.protocol.errors import Internal, Unavailable
from inferd.protocol.model_spec import dynamic_batching
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.server.scheduling.batcher import DynamicBatcher
from inferd.server.scheduling.open_batch import OPEN_BATCH_MIN_NICE
from inferd.server.scheduling.work import Work
from inferd.server.scheduling.worker import InstanceWorker
from inferd.server.stats import ModelStats


class GatedDouble(Backend):
    """Doubles X; each execution waits for the test to open the gate."""

    name = "gated"
    default_filename = "none"

    def __init__(self, context: LoadContext | None = None) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[float]] = []
        self.started = threading.Semaphore(0)
        self.fail = False

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.started.release()
        self.gate.wait(10)
        x = inputs["X"]
        self.batches.append(x[:, 0].tolist())
        if self.fail:
            raise RuntimeError("kaboom")
        return {"Y": x * 2}


def batcher(
    backend: GatedDouble, max_batch: int = 8, instances: int = 1, nice_steps: int = 0, **dyn: object
) -> DynamicBatcher:
    config = mc.ModelDynamicBatching()
    for key, value in dyn.items():
        if key == "policy":
            config.default_queue_policy.CopyFrom(value)  # type: ignore[arg-type]
        elif key == "preferred":
            config.preferred_batch_size.extend(value)  # type: ignore[arg-type]
        else:
            setattr(config, key, value)
    workers = [InstanceWorker(backend, f"w{i}", batching=True, nice_steps=nice_steps) for i in range(instances)]
    return DynamicBatcher(workers, ModelStats("m", "1"), "model 'm' version 1", max_batch, dynamic_batching(config))


def work(value: float, rows: int = 1, width: int = 1, priority: int = 0) -> Work:
    x = np.full((rows, width), value, np.float32)
    return Work({"X": x}, ["Y"], rows, time.monotonic_ns(), None, priority=priority)


async def started(backend: GatedDouble) -> None:
    """Wait until the backend has begun an execution (off the loop, without sleeping)."""
    assert await asyncio.to_thread(backend.started.acquire, True, 10)


async def queued(b: DynamicBatcher, n: int) -> None:
    while b._queued < n:  # the queue length is observable state; yield until submits landed
        await asyncio.sleep(0)


async def blocked(b: DynamicBatcher, backend: GatedDouble, rows: int = 1) -> asyncio.Task:  # type: ignore[type-arg]
    """Occupy the only instance with one request held at the gate."""
    backend.gate.clear()
    task = asyncio.ensure_future(b.submit(work(-1, rows=rows)))
    await started(backend)
    return task


async def test_requests_queued_while_busy_form_one_batch() -> None:
    backend = GatedDouble()
    b = batcher(backend)
    first = await blocked(b, backend)
    tasks = [asyncio.ensure_future(b.submit(work(i))) for i in range(5)]
    await queued(b, 5)
    backend.gate.set()
    results = await asyncio.gather(first, *tasks)
    assert backend.batches == [[-1], [0, 1, 2, 3, 4]]
    # every request gets exactly its own rows back
    assert [r["Y"][0, 0] for r in results[1:]] == [0, 2, 4, 6, 8]
    assert b.stats.execution_count == 2 and b.stats.inference_count == 6
    assert sorted(b.stats.batch_stats) == [1, 5]
    await b.retire(1)


async def test_max_queue_delay_waits_for_more_from_the_oldest() -> None:
    backend = GatedDouble()
    b = batcher(backend, max_queue_delay_microseconds=200_000)
    t0 = time.monotonic()
    first = asyncio.ensure_future(b.submit(work(1)))
    await queued(b, 1)
    second = asyncio.ensure_future(b.submit(work(2)))
    await asyncio.gather(first, second)
    assert backend.batches == [[1, 2]]
    assert time.monotonic() - t0 >= 0.2  # sent when the oldest request had waited the delay
    await b.retire(1)


async def test_full_batch_is_sent_without_waiting_for_the_delay() -> None:
    backend = GatedDouble()
    b = batcher(backend, max_batch=4, max_queue_delay_microseconds=60_000_000)
    results = await asyncio.gather(*(b.submit(work(i)) for i in range(4)))
    assert backend.batches == [[0, 1, 2, 3]] and len(results) == 4
    await b.retire(1)


async def test_preferred_batch_size_is_sent_at_once() -> None:
    backend = GatedDouble()
    b = batcher(backend, preferred=[2], max_queue_delay_microseconds=60_000_000)
    first = await blocked(b, backend, rows=2)  # a preferred size itself, so it goes at once
    tasks = [asyncio.ensure_future(b.submit(work(i))) for i in range(3)]
    await queued(b, 3)
    backend.gate.set()
    await asyncio.gather(first, tasks[0], tasks[1])
    assert backend.batches[-1] == [0, 1]
    assert not tasks[2].done()  # alone it is not a preferred size: it waits for the delay
    tasks.append(asyncio.ensure_future(b.submit(work(3))))
    await asyncio.gather(*tasks)
    assert backend.batches[-1] == [2, 3]
    await b.retire(1)


async def test_requests_count_by_their_own_batch_size() -> None:
    backend = GatedDouble()
    b = batcher(backend, max_batch=4)
    first = await blocked(b, backend)
    t3 = asyncio.ensure_future(b.submit(work(3, rows=3)))
    t2 = asyncio.ensure_future(b.submit(work(2, rows=2)))
    await queued(b, 2)
    backend.gate.set()
    r3, r2 = (await asyncio.gather(first, t3, t2))[1:]
    assert backend.batches[1:] == [[3, 3, 3], [2, 2]]  # 3 + 2 > max_batch_size: two executions
    assert r3["Y"].shape == (3, 1) and r2["Y"].shape == (2, 1)
    await b.retire(1)


async def test_different_shapes_do_not_merge() -> None:
    backend = GatedDouble()
    b = batcher(backend)
    first = await blocked(b, backend)
    tasks = [asyncio.ensure_future(b.submit(work(i, width=1 + i % 2))) for i in range(4)]
    await queued(b, 4)
    backend.gate.set()
    await asyncio.gather(first, *tasks)
    assert sorted(backend.batches[1:]) == [[0, 2], [1, 3]]
    await b.retire(1)


async def test_error_fans_out_to_every_request_of_the_batch() -> None:
    backend = GatedDouble()
    b = batcher(backend)
    first = await blocked(b, backend)
    tasks = [asyncio.ensure_future(b.submit(work(i))) for i in range(3)]
    await queued(b, 3)
    backend.fail = True
    backend.gate.set()
    outcomes = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert all(isinstance(o, Internal) and "kaboom" in str(o) for o in outcomes)
    backend.fail = False
    assert (await b.submit(work(5)))["Y"][0, 0] == 10  # and the model keeps serving
    await b.retire(1)


async def test_cancelled_member_never_executes() -> None:
    backend = GatedDouble()
    b = batcher(backend)
    first = await blocked(b, backend)
    tasks = [asyncio.ensure_future(b.submit(work(i))) for i in range(3)]
    await queued(b, 3)
    tasks[1].cancel()
    await asyncio.sleep(0)
    assert b._queued == 2  # removed at once, freeing its queue slot
    backend.gate.set()
    await asyncio.gather(first, tasks[0], tasks[2])
    assert backend.batches[1] == [0, 2]
    assert tasks[1].cancelled()
    await b.retire(1)


async def test_full_queue_rejects_exactly_the_overflow() -> None:
    backend = GatedDouble()
    policy = mc.ModelQueuePolicy(max_queue_size=2)
    b = batcher(backend, policy=policy)
    first = await blocked(b, backend)
    tasks = [asyncio.ensure_future(b.submit(work(i))) for i in range(2)]
    await queued(b, 2)
    with pytest.raises(Unavailable, match="exceeds maximum queue size"):
        await b.submit(work(9))
    backend.gate.set()
    await asyncio.gather(first, *tasks)
    assert [9.0] not in backend.batches
    await b.retire(1)


async def test_the_server_cap_says_so_when_the_config_sets_no_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Triton's max_queue_size 0 is unbounded; inferd's server-wide cap names itself.
    from inferd.server.scheduling import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "DEFAULT_MAX_QUEUE", 1)
    backend = GatedDouble()
    b = batcher(backend)
    first = await blocked(b, backend)
    task = asyncio.ensure_future(b.submit(work(1)))
    await queued(b, 1)
    with pytest.raises(Unavailable, match=r"exceeds maximum queue size \(1\) \(the server's cap: the config sets no"):
        await b.submit(work(9))
    backend.gate.set()
    await asyncio.gather(first, task)
    await b.retire(1)


async def test_priority_order() -> None:
    backend = GatedDouble()
    b = batcher(backend, max_batch=1, priority_levels=2, default_priority_level=2)
    first = await blocked(b, backend)
    low = asyncio.ensure_future(b.submit(work(20, priority=2)))
    default = asyncio.ensure_future(b.submit(work(21)))
    high = asyncio.ensure_future(b.submit(work(10, priority=1)))
    await queued(b, 3)
    backend.gate.set()
    await asyncio.gather(first, low, default, high)
    assert backend.batches[1:] == [[10], [20], [21]]
    await b.retire(1)


async def test_timeout_rejects_when_it_expires_not_when_a_slot_frees() -> None:
    backend = GatedDouble()
    policy = mc.ModelQueuePolicy(default_timeout_microseconds=50_000)
    b = batcher(backend, policy=policy)
    first = await blocked(b, backend)
    expired = asyncio.ensure_future(b.submit(work(7)))
    with pytest.raises(Unavailable, match="timeout"):
        await asyncio.wait_for(expired, 5)  # the instance is still busy here
    assert b._queued == 0
    backend.gate.set()
    await first
    assert [7.0] not in backend.batches
    await b.retire(1)


async def test_timeout_override_and_delay_action() -> None:
    backend = GatedDouble()
    policy = mc.ModelQueuePolicy(
        default_timeout_microseconds=1_000, timeout_action=mc.ModelQueuePolicy.DELAY, allow_timeout_override=True
    )
    b = batcher(backend, max_batch=1, policy=policy)
    first = await blocked(b, backend)
    late = asyncio.ensure_future(b.submit(work(1)))
    await queued(b, 1)
    while not b.levels[1].delayed:  # its timeout passes: delayed, not rejected
        await asyncio.sleep(0.001)
    punctual = asyncio.ensure_future(b.submit(work(2)))
    await queued(b, 2)
    backend.gate.set()
    await asyncio.gather(first, late, punctual)
    assert backend.batches[1:] == [[2], [1]]  # the expired one runs after the one in time
    await b.retire(1)


async def test_preserve_ordering_across_instances() -> None:
    slow, fast = GatedDouble(), GatedDouble()
    config = mc.ModelDynamicBatching(preserve_ordering=True)
    workers = [InstanceWorker(slow, "slow", True), InstanceWorker(fast, "fast", True)]
    b = DynamicBatcher(workers, ModelStats("m", "1"), "m", 1, dynamic_batching(config))
    slow.gate.clear()
    done: list[int] = []

    async def go(i: int) -> None:
        await b.submit(work(i))
        done.append(i)

    t0 = asyncio.ensure_future(go(0))
    await started(slow)
    t1 = asyncio.ensure_future(go(1))
    await asyncio.to_thread(fast.started.acquire, True, 10)
    await asyncio.sleep(0.05)
    assert done == []  # finished second, held back until the first is answered
    slow.gate.set()
    await asyncio.gather(t0, t1)
    assert done == [0, 1]
    await b.retire(1)


# --- open batches: handed to an instance whose thread has not started it yet ---------------------


def hold_thread(b: DynamicBatcher) -> threading.Event:
    """Keep the instance's thread busy, so a batch handed to it waits, open, behind this job."""
    release = threading.Event()
    b.workers[0].executor.submit(release.wait, 10)
    return release


async def open_with(b: DynamicBatcher, *later: Work) -> tuple[threading.Event, asyncio.Future, list[asyncio.Future]]:  # type: ignore[type-arg]
    """Hand work(0) to the held instance thread, then submit ``later`` while its batch is open."""
    release = hold_thread(b)
    first = asyncio.ensure_future(b.submit(work(0)))
    while not b._open:  # observable state: the batch is out of the queue, not yet started
        await asyncio.sleep(0)
    return release, first, [asyncio.ensure_future(b.submit(w)) for w in later]


async def test_requests_join_a_batch_whose_execution_has_not_started() -> None:
    backend = GatedDouble()
    b = batcher(backend, max_batch=3, nice_steps=19)
    release, first, later = await open_with(b, work(1), work(2), work(3))
    while b._queued < 1:  # the third late request no longer fits (max 3 rows): queued
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(first, *later)
    assert backend.batches == [[0, 1, 2], [3]]
    assert [r["Y"][0, 0] for r in results] == [0, 2, 4, 6]  # each its own rows
    assert b.stats.execution_count == 2 and b.stats.inference_count == 4
    await b.retire(1)


async def test_batches_stay_closed_below_the_nice_threshold_and_with_preferred_sizes() -> None:
    for kwargs in ({"nice_steps": OPEN_BATCH_MIN_NICE - 1}, {"nice_steps": 19, "preferred": [1]}):
        backend = GatedDouble()
        b = batcher(backend, **kwargs)  # type: ignore[arg-type]
        release, first, later = await open_with(b, work(1), work(2))
        await queued(b, 2)
        release.set()
        await asyncio.gather(first, *later)
        assert backend.batches[0] == [0], kwargs
        await b.retire(1)


async def test_cancelled_member_of_an_open_batch_never_executes() -> None:
    backend = GatedDouble()
    b = batcher(backend, nice_steps=19)
    release, first, later = await open_with(b, work(1), work(2))
    while b._open[0].rows < 3:
        await asyncio.sleep(0)
    first.cancel()  # one dispatched with the batch, and one that joined it
    later[0].cancel()
    await asyncio.sleep(0)
    assert b._open[0].rows == 1
    release.set()
    assert (await later[1])["Y"][0, 0] == 4
    assert backend.batches == [[2]]
    assert first.cancelled() and later[0].cancelled()
    await b.retire(1)


async def test_member_expired_when_its_execution_starts_is_rejected_not_run() -> None:
    backend = GatedDouble()
    b = batcher(backend, nice_steps=19)
    late = work(1)
    release, first, (joined,) = await open_with(b, late)
    while b._open[0].rows < 2:
        await asyncio.sleep(0)
    late.deadline_ns = time.monotonic_ns()  # due now: the start comes after it
    release.set()
    assert (await first)["Y"][0, 0] == 0
    with pytest.raises(Unavailable, match="timeout expired in the queue"):
        await joined
    assert backend.batches == [[0]]
    await b.retire(1)
