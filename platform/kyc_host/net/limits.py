"""Bounded concurrency per key (a tenant id, an upstream URL), so that one tenant's slow or
hanging upstream cannot use up the capacity every other tenant needs (reliability-plan A6, L4).

Work that has to wait for a slot is held for a random part of its wait (:func:`spread`):
requests that queued together behind a hanging upstream would otherwise all be refused at
the same instant, and a client that retries at once sends them all back together -- the
noisy-neighbour benchmark's 50 hanging ``client_domain`` logins were refused in one burst
every 5 s, and each burst held the event loop long enough to slow the other tenant
(BENCHMARKS.md). The hook worker pools hold their waiting calls the same way.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: A held wait lasts between this share of its bound and all of it.
HOLD_JITTER = 0.5


def spread(wait: float) -> float:
    """``wait`` shortened by a random factor in [HOLD_JITTER, 1): how long to hold work that
    queued for a slot before refusing it (timing only, not security)."""
    return wait * random.uniform(HOLD_JITTER, 1.0)  # noqa: S311


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
        """Hold one of ``key``'s slots; raises NoSlot if none frees up within ``wait`` s
        (or within a random part of it, :func:`spread`, if none is free at once)."""
        sem, users = self._slots.get(key, (asyncio.Semaphore(self.per_key), 0))
        self._slots[key] = (sem, users + 1)
        try:
            if sem.locked():
                wait = spread(wait)
            try:
                async with asyncio.timeout(wait):
                    await sem.acquire()
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
