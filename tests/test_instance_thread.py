"""An instance's thread: executions handed over from the event loop and their outcomes handed
back (through an eventfd where there is one), and the blocking Executor interface."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from inferd.server.scheduling import gc_policy, instance_thread
from inferd.server.scheduling.instance_thread import InstanceThread


@pytest.fixture
def thread() -> Any:
    t = InstanceThread("test-instance")
    yield t
    t.shutdown(wait=True)


async def test_runs_calls_in_order_on_its_own_thread(thread: InstanceThread) -> None:
    seen: list[tuple[int, str]] = []

    def call(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 2

    results = await asyncio.gather(*(thread.run_async(call, i) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test-instance"}


async def test_an_exception_reaches_the_caller(thread: InstanceThread) -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await thread.run_async(fail)
    with pytest.raises(RuntimeError, match="StopIteration"):  # which a future cannot carry
        await thread.run_async(next, iter(()))
    assert await thread.run_async(int, "7") == 7  # the thread goes on


async def test_a_call_cancelled_before_it_starts_is_skipped(thread: InstanceThread) -> None:
    release = threading.Event()
    ran: list[str] = []
    blocker = thread.run_async(release.wait, 10)
    skipped = thread.run_async(ran.append, "skipped")
    skipped.cancel()
    release.set()
    assert await blocker is True
    assert await thread.run_async(ran.append, "ran") is None
    assert ran == ["ran"]


async def test_outcomes_come_back_through_the_loops_eventfd(thread: InstanceThread) -> None:
    loop = asyncio.get_running_loop()
    assert await thread.run_async(int, "1") == 1
    channel = instance_thread._completions.get(loop)
    if not hasattr(os, "eventfd"):
        assert channel is None
        return
    assert channel is not None
    writes: list[int] = []
    real = os.eventfd_write

    def counted(fd: int, value: int) -> None:
        writes.append(fd)
        real(fd, value)

    try:
        os.eventfd_write = counted  # type: ignore[assignment]
        assert await thread.run_async(int, "2") == 2
    finally:
        os.eventfd_write = real  # type: ignore[assignment]
    assert writes == [channel._fd]
    other = InstanceThread("test-other")  # every thread of the loop shares its channel
    try:
        assert await other.run_async(int, "3") == 3
        assert instance_thread._completions.get(loop) is channel
    finally:
        other.shutdown()


async def test_without_eventfd_outcomes_go_through_call_soon_threadsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance_thread, "_completions", instance_thread.weakref.WeakKeyDictionary())
    monkeypatch.delattr(instance_thread.os, "eventfd", raising=False)
    t = InstanceThread("test-fallback")
    try:
        assert await t.run_async(sum, [1, 2, 3]) == 6
        with pytest.raises(KeyError):
            await t.run_async({}.__getitem__, "x")
        assert instance_thread._completions[asyncio.get_running_loop()] is None
    finally:
        t.shutdown()


def test_each_loop_gets_its_own_channel_and_a_closed_loop_releases_it(thread: InstanceThread) -> None:
    fds = []
    for _ in range(3):
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(_run(thread, pow, 2, 5)) == 32
            channel = instance_thread._completions.get(loop)
            if channel is not None:
                fds.append(channel._fd)
        finally:
            loop.close()
        del loop
    thread._loop = None  # the thread's cache holds the last loop
    gc.collect()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


async def _run(thread: InstanceThread, fn: Callable[..., Any], *args: Any) -> Any:
    return await thread.run_async(fn, *args)


def test_the_blocking_interface(thread: InstanceThread) -> None:
    assert thread.submit(pow, 3, 2).result(5) == 9
    assert thread.submit(lambda *, x: x, x=4).result(5) == 4
    with pytest.raises(ZeroDivisionError):
        thread.submit(lambda: 1 / 0).result(5)
    thread.shutdown(wait=True)
    assert not thread._thread.is_alive()
    with pytest.raises(RuntimeError, match="shut down"):
        thread.submit(pow, 1, 1)


def test_a_dropped_instance_thread_ends_its_thread() -> None:
    t = InstanceThread("test-dropped")
    assert t.submit(int, "5").result(5) == 5
    thread = t._thread
    del t
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_the_initializer_runs_on_the_thread_first() -> None:
    names: list[str] = []
    t = InstanceThread("test-init", initializer=lambda: names.append(threading.current_thread().name))
    try:
        assert t.submit(names.append, "call").result(5) is None
    finally:
        t.shutdown()
    assert names == ["test-init", "call"]


def test_a_round_trip_costs_less_cpu_than_run_in_executor() -> None:
    """What the eventfd buys, on one CPU where the thread runs below the loop's priority: the
    loop takes the GIL as it wakes instead of trading it back and forth with the thread. CPU is
    that of the loop's and the instance's threads only (other tests' servers may share the
    process)."""
    if not hasattr(os, "eventfd") or not hasattr(os, "sched_setaffinity"):
        pytest.skip("eventfd and CPU affinity are Linux-only")
    from concurrent.futures import ThreadPoolExecutor

    from inferd.server.scheduling.thread_priority import lower_thread_priority

    def cpu_ns(thread: threading.Thread) -> int:
        assert thread.ident is not None
        return time.thread_time_ns() + time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))

    async def per_trip(submit: Callable[[], asyncio.Future[Any]], thread: Callable[[], threading.Thread]) -> float:
        for _ in range(200):
            await submit()
        best = float("inf")
        for _ in range(5):
            c0 = cpu_ns(thread())
            for _ in range(500):
                await submit()
            best = min(best, (cpu_ns(thread()) - c0) / 500)
        return best

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1, initializer=lambda: lower_thread_priority(19))
        ours = InstanceThread("test-trip", initializer=lambda: lower_thread_priority(19))
        try:
            old = await per_trip(lambda: loop.run_in_executor(pool, int), lambda: next(iter(pool._threads)))
            new = await per_trip(lambda: ours.run_async(int), lambda: ours._thread)
        finally:
            pool.shutdown()
            ours.shutdown()
        return old, new

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        old, new = asyncio.run(main())
    finally:
        os.sched_setaffinity(0, cpus)
    assert new < old, f"{new / 1000:.1f} µs per round trip against run_in_executor's {old / 1000:.1f}"


# --- the garbage collector's freezing --------------------------------------------------------------
class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def clean_gc() -> Any:
    gc.collect()
    gc.unfreeze()
    yield
    gc_policy._pending = False
    gc.unfreeze()


def _tracked(obj: object) -> bool:
    """Whether the collector still walks ``obj`` (frozen objects are out of its generations)."""
    return any(o is obj for o in gc.get_objects())


def test_a_load_freezes_what_the_next_full_collection_leaves(clean_gc: None) -> None:
    survivor = _Cycle()
    gc_policy.models_loaded()
    gc.collect(1)
    assert gc.get_freeze_count() == 0  # a young collection does not count
    dead = weakref.ref(_Cycle())
    gc.collect()
    assert gc.get_freeze_count() > 0
    assert dead() is None  # collected by that collection, not frozen
    assert not _tracked(survivor)
    later = _Cycle()
    gc.collect()
    assert _tracked(later)  # once per load


def test_an_unload_lets_frozen_cycles_be_collected(clean_gc: None) -> None:
    model = _Cycle()
    ref = weakref.ref(model)
    gc_policy.models_loaded()
    gc.collect()
    del model  # an unloaded model's cycle: frozen, so no collection can free it ...
    gc.collect()
    assert ref() is not None
    gc_policy.models_unloaded()  # ... until the unload unfreezes
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None
    assert gc.get_freeze_count() > 0  # and what is left is frozen again
