"""store/bounded.py: store work queued too long is refused unrun, per operation and per request.

A one-thread pool held busy by a blocker stands in for a busy SQLite writer (the HTTP-level
cases are tests/faults/test_sqlite_busy.py and test_upload_busy.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kyc_host.store import bounded
from kyc_host.store.base import StoreUnavailable

BOUND = 2.0
#: Each operation below waits about this long for the thread: under the bound alone, over
#: it twice.
HELD = 1.2


async def queued_behind_blocker(pool: ThreadPoolExecutor, ran: list[str], name: str) -> None:
    """Run one operation that first waits ``HELD`` seconds behind a blocker."""
    release = threading.Event()
    started = threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(10)

    loop = asyncio.get_running_loop()
    blocked = loop.run_in_executor(pool, blocker)
    await asyncio.to_thread(started.wait, 10)
    loop.call_later(HELD, release.set)
    try:
        await bounded.run_bounded(pool, lambda: ran.append(name), bound=BOUND, busy="test busy")
    finally:
        release.set()
        await blocked


async def two_operations(ran: list[str], *, in_request: bool) -> None:
    with ThreadPoolExecutor(1) as pool:
        if in_request:
            bounded.start_request()
        await queued_behind_blocker(pool, ran, "first")
        await queued_behind_blocker(pool, ran, "second")


async def test_a_request_whose_operations_waited_over_the_bound_in_all_is_refused() -> None:
    ran: list[str] = []
    with pytest.raises(StoreUnavailable) as refused:
        # In a task of its own, as Tornado runs each request: the count ends with it.
        await asyncio.create_task(two_operations(ran, in_request=True),
                                  context=contextvars.copy_context())
    assert ran == ["first"]  # the second was refused before it ran
    assert "test busy (waited over 2 s)" in str(refused.value)


async def test_outside_a_request_only_each_operation_is_bounded() -> None:
    ran: list[str] = []
    await asyncio.create_task(two_operations(ran, in_request=False),
                              context=contextvars.copy_context())
    assert ran == ["first", "second"]


async def test_each_request_counts_its_own_waits() -> None:
    ran: list[str] = []
    # Two requests one after the other, each with one wait under the bound: both run.
    for name in ("one", "two"):
        async def request(name: str = name) -> None:
            bounded.start_request()
            with ThreadPoolExecutor(1) as pool:
                await queued_behind_blocker(pool, ran, name)
        await asyncio.create_task(request(), context=contextvars.copy_context())
    assert ran == ["one", "two"]
