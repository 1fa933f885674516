"""Fetch slots go to the newest waiting job first; a cancelled waiter leaves the queue."""

from __future__ import annotations

import trio

from fednode.daemon.slots import NewestFirstSlots


async def test_a_freed_slot_goes_to_the_newest_waiter() -> None:
    slots = NewestFirstSlots(1)
    order: list[int] = []
    release = trio.Event()

    async def job(priority: int) -> None:
        async with slots.slot(priority):
            order.append(priority)
            await release.wait()

    async with trio.open_nursery() as nursery:
        for priority in (1, 3, 5, 4, 2):  # 1 takes the slot; the others wait
            nursery.start_soon(job, priority)
            await trio.sleep(0.01)
        assert order == [1] and slots.free == 0
        release.set()  # each holder leaves at once; the waiters follow, newest first
    assert order == [1, 5, 4, 3, 2]  # first in, first out would be [1, 3, 5, 4, 2]
    assert slots.free == 1


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = NewestFirstSlots(1)
    got: list[int] = []
    hold = trio.Event()

    async def holder() -> None:
        async with slots.slot(0):
            await hold.wait()

    async def waiter(priority: int) -> None:
        async with slots.slot(priority):
            got.append(priority)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.sleep(0.01)
        with trio.CancelScope() as gone:
            nursery.start_soon(waiter, 9)  # outside `gone`: it stays
            await trio.sleep(0.01)
        async with trio.open_nursery() as inner:
            inner.start_soon(waiter, 7)
            await trio.sleep(0.01)
            inner.cancel_scope.cancel()  # 7 gives up while waiting
        assert len(slots._waiting) == 1 and not gone.cancelled_caught
        hold.set()
    assert got == [9] and slots.free == 1  # the slot went to 9, then back; 7 never got one
