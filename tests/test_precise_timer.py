"""The batcher's queue-delay timer: a timerfd the event loop watches, so a delay is waited out
without spinning. How exact it is lives in the batching benchmark; here, what it does."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from inferd.server.scheduling import precise_timer
from inferd.server.scheduling.batcher import TIMER_LEAD_NS
from inferd.server.scheduling.precise_timer import PreciseTimer

from .test_batcher import GatedDouble, batcher, work

linux_only = pytest.mark.skipif(precise_timer._LIBC is None, reason="timerfd is Linux-only")


async def fired_after(timer_deadline_ns: int, timer: PreciseTimer, fired: asyncio.Event) -> int:
    fired.clear()
    timer.arm(timer_deadline_ns)
    await asyncio.wait_for(fired.wait(), 5)
    return time.monotonic_ns()


@linux_only
async def test_fires_at_its_deadline_and_rearming_replaces_it() -> None:
    fired = asyncio.Event()
    timer = PreciseTimer(asyncio.get_running_loop(), fired.set)
    assert timer.precise
    try:
        deadline = time.monotonic_ns() + 3_000_000
        assert await fired_after(deadline, timer, fired) >= deadline
        # Re-armed before it fires: only the later deadline counts.
        fired.clear()
        timer.arm(time.monotonic_ns() + 1_000_000)
        later = time.monotonic_ns() + 20_000_000
        timer.arm(later)
        await asyncio.wait_for(fired.wait(), 5)
        assert time.monotonic_ns() >= later
        # A deadline already past (or 0) fires at the loop's next turn.
        assert await fired_after(0, timer, fired) > 0
        assert await fired_after(time.monotonic_ns() - 1_000_000, timer, fired) > 0
    finally:
        fd = timer._fd
        timer.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # the descriptor is released


async def test_without_timerfd_it_falls_back_to_the_loops_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precise_timer, "_LIBC", None)
    fired = asyncio.Event()
    timer = PreciseTimer(asyncio.get_running_loop(), fired.set)
    assert not timer.precise
    deadline = time.monotonic_ns() + 5_000_000
    assert await fired_after(deadline, timer, fired) >= deadline - 1_000_000  # the loop's ms resolution
    timer.close()


@linux_only
async def test_a_batcher_waiting_out_its_delays_burns_no_cpu() -> None:
    """100 lone requests each wait the whole 2 ms queue delay: 200 ms of waiting, which a
    spinning wait would spend on the CPU."""
    b = batcher(GatedDouble(), max_batch=8, max_queue_delay_microseconds=2000)
    try:
        cpu0, t0 = time.thread_time_ns(), time.monotonic_ns()
        for i in range(100):
            await b.submit(work(i))
        cpu, wall = time.thread_time_ns() - cpu0, time.monotonic_ns() - t0
    finally:
        await b.retire(5)
    assert wall >= 100 * (2_000_000 - TIMER_LEAD_NS)  # the delay is waited out, less the wake-up lead
    assert cpu < wall / 4, f"the loop thread used {cpu / 1e6:.0f} ms of CPU over {wall / 1e6:.0f} ms"
