"""How late a queue-delay wait ends: the batcher's timer (precise_timer.py, a timerfd the loop
watches) against the event loop's own ``call_at``, on the server's loop kind, idle otherwise.

Each sample arms a wait ``delay_us`` ahead and records how long after its deadline the loop ran
the callback (negative: before it). The batcher arms its timer TIMER_LEAD_NS early, to cover
the loop's wake-up; "as the batcher arms it" measures that. The goal is to end
``max_queue_delay_microseconds`` within 100 µs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..server import event_loop
from ..server.scheduling.batcher import TIMER_LEAD_NS
from ..server.scheduling.precise_timer import PreciseTimer
from .stats import percentile


@dataclass(frozen=True)
class Lateness:
    how: str
    p50_us: float
    p99_us: float
    max_us: float


async def _sample(arm: Callable[[int, asyncio.Event], Callable[[], None]], delay_ns: int, n: int) -> list[int]:
    late: list[int] = []
    for _ in range(n):
        fired = asyncio.Event()
        deadline = time.monotonic_ns() + delay_ns
        cancel = arm(deadline, fired)
        await fired.wait()
        late.append(time.monotonic_ns() - deadline)
        cancel()
    return sorted(late)


async def _measure(delay_us: int, samples: int) -> list[Lateness]:
    loop = asyncio.get_running_loop()
    fired_now: list[asyncio.Event] = []
    timer = PreciseTimer(loop, lambda: fired_now[-1].set())

    def with_timer(deadline: int, fired: asyncio.Event, lead: int = 0) -> Callable[[], None]:
        fired_now.append(fired)
        timer.arm(deadline - lead)
        return fired_now.clear

    def as_batcher(deadline: int, fired: asyncio.Event) -> Callable[[], None]:
        return with_timer(deadline, fired, TIMER_LEAD_NS)

    def with_call_at(deadline: int, fired: asyncio.Event) -> Callable[[], None]:
        handle = loop.call_at(loop.time() + (deadline - time.monotonic_ns()) / 1e9, fired.set)
        return handle.cancel

    out = []
    try:
        kind = "timerfd" if timer.precise else "fallback"
        for how, arm in (
            (f"precise timer ({kind}) at the deadline", with_timer),
            (f"precise timer ({kind}) as the batcher arms it, {TIMER_LEAD_NS // 1000} µs early", as_batcher),
            ("the loop's call_at", with_call_at),
        ):
            late = await _sample(arm, delay_us * 1000, samples)
            out.append(Lateness(how, percentile(late, 50) / 1000, percentile(late, 99) / 1000, late[-1] / 1000))
    finally:
        timer.close()
    return out


def measure(delay_us: int = 500, samples: int = 300, loop_kind: str = "auto") -> list[Lateness]:
    """Lateness percentiles in µs for ``samples`` waits of ``delay_us`` on a fresh loop."""
    return event_loop.run(_measure(delay_us, samples), event_loop.resolve(loop_kind))


def render(rows: list[Lateness], delay_us: int) -> str:
    lines = [f"queue-delay wait of {delay_us} µs, lateness past the deadline (idle loop):"]
    lines += [f"  {r.how}: p50 {r.p50_us:,.0f} µs, p99 {r.p99_us:,.0f} µs, max {r.max_us:,.0f} µs" for r in rows]
    return "\n".join(lines)
