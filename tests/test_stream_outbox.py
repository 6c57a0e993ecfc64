"""The gRPC stream's outbox: FIFO, bounded, one consumer, producers that wait for room."""

from __future__ import annotations

import asyncio

import pytest
from inferd.server.frontends.stream_outbox import Outbox


async def test_items_come_out_in_order_and_get_waits_for_one() -> None:
    box: Outbox[int] = Outbox(4)
    got = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not got.done()
    await box.put(1)
    await box.put(2)
    assert await got == 1
    assert not box.empty()
    assert box.get_nowait() == 2
    assert box.empty()


async def test_a_full_outbox_holds_producers_until_the_consumer_takes() -> None:
    box: Outbox[int] = Outbox(2)
    await box.put(1)
    await box.put(2)
    third = asyncio.ensure_future(box.put(3))
    fourth = asyncio.ensure_future(box.put(4))
    await asyncio.sleep(0)
    assert not third.done() and not fourth.done()
    assert await box.get() == 1
    await asyncio.sleep(0)
    assert third.done() and not fourth.done()  # one taken: room for one
    assert [await box.get() for _ in range(2)] == [2, 3]
    await asyncio.sleep(0)
    assert fourth.done()
    assert await box.get() == 4


async def test_a_producer_cancelled_while_woken_passes_the_room_on() -> None:
    box: Outbox[int] = Outbox(1)
    await box.put(1)
    first = asyncio.ensure_future(box.put(2))
    second = asyncio.ensure_future(box.put(3))
    await asyncio.sleep(0)
    box.get_nowait()  # wakes ``first``...
    first.cancel()  # ...which is cancelled before it runs: ``second`` gets the room
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0)
    assert second.done()
    assert box.get_nowait() == 3


async def test_a_cancelled_waiting_producer_leaves_no_trace() -> None:
    box: Outbox[int] = Outbox(1)
    await box.put(1)
    waiting = asyncio.ensure_future(box.put(2))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert box.get_nowait() == 1
    assert box.empty()
    await box.put(5)  # room again, nobody else waits
    assert box.get_nowait() == 5
