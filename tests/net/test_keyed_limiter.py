"""KeyedLimiter (net/limits.py): bounded slots per key, and waiters held for a random part of
their wait, so that work queued together behind a hanging upstream is not refused -- and
retried by its clients -- all at the same instant."""

from __future__ import annotations

import asyncio
import time

import pytest

from kyc_host.net.limits import HOLD_JITTER, KeyedLimiter, NoSlot, spread


async def test_waiters_for_a_taken_key_are_refused_spread_over_the_second_half_of_the_wait(
        ) -> None:
    limiter = KeyedLimiter(1)
    wait = 1.0
    taken = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot("t1", wait):
            taken.set()
            await release.wait()

    async def waiter() -> float:
        started = time.monotonic()
        with pytest.raises(NoSlot):
            async with limiter.slot("t1", wait):
                pass
        return time.monotonic() - started

    holding = asyncio.ensure_future(holder())
    await taken.wait()
    refused_after = await asyncio.gather(*(waiter() for _ in range(20)))
    release.set()
    await holding
    assert all(HOLD_JITTER * wait - 0.02 <= s <= wait + 0.5 for s in refused_after), \
        refused_after
    # Not one instant for all: spread over most of the half-second window.
    assert max(refused_after) - min(refused_after) > 0.2, refused_after


async def test_a_free_slot_is_taken_at_once_and_a_freed_one_by_a_waiter() -> None:
    limiter = KeyedLimiter(1)
    async with limiter.slot("t1", 0.0):  # free: no waiting at all, even with no time given
        pass
    order: list[str] = []
    taken = asyncio.Event()

    async def first() -> None:
        async with limiter.slot("t1", 1.0):
            taken.set()
            await asyncio.sleep(0.1)
            order.append("first done")

    async def second() -> None:
        await taken.wait()
        async with limiter.slot("t1", 1.0):  # waits at least half of 1 s: enough for 0.1 s
            order.append("second in")

    await asyncio.gather(first(), second())
    assert order == ["first done", "second in"]


async def test_keys_do_not_share_slots_and_unused_keys_are_dropped() -> None:
    limiter = KeyedLimiter(1)
    # t1's slot is taken; t2's is its own, free at once.
    async with limiter.slot("t1", 1.0), limiter.slot("t2", 0.0):
        pass
    assert limiter._slots == {}  # nothing kept for idle keys


def test_spread_stays_within_its_bounds() -> None:
    values = [spread(2.0) for _ in range(2000)]
    assert all(2.0 * HOLD_JITTER <= v <= 2.0 for v in values)
    assert max(values) - min(values) > 0.8  # uses the range, not one point of it
