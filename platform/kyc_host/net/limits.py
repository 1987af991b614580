"""Bounded concurrency per key (a tenant id, an upstream URL), so that one tenant's slow or
hanging upstream cannot use up the capacity every other tenant needs (reliability-plan A6, L4).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class NoSlot(Exception):
    """No slot of the key became free within the wait."""


class KeyedLimiter:
    """At most ``per_key`` holders per key; a key's semaphore is dropped when unused, so
    thousands of idle tenants cost nothing."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def slot(self, key: str, wait: float) -> AsyncIterator[None]:
        """Hold one of ``key``'s slots; raises NoSlot if none frees up within ``wait`` s."""
        sem, users = self._slots.get(key, (asyncio.Semaphore(self.per_key), 0))
        self._slots[key] = (sem, users + 1)
        try:
            try:
                await asyncio.wait_for(sem.acquire(), wait)
            except TimeoutError:
                raise NoSlot(f"no free slot for {key!r} within {wait:.1f} s") from None
            try:
                yield
            finally:
                sem.release()
        finally:
            self._forget(key)

    def _forget(self, key: str) -> None:
        sem, users = self._slots[key]
        if users <= 1:
            del self._slots[key]
        else:
            self._slots[key] = (sem, users - 1)
