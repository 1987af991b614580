"""Per-tenant upload bandwidth in each process (``limits.upload_bytes_per_second``).

Storing an upload costs the server CPU for every byte (receiving, parsing, sealing and
writing it: tens of milliseconds per MiB on this project's benchmark machine), so one
tenant's stream of large uploads could take a process's CPU from every other tenant (the
noisy-neighbour benchmark, BENCHMARKS.md). The body bytes of a tenant's upload endpoints
pass through one token bucket per tenant and process; when it runs dry the handler stops
reading (Tornado's flow control: ``data_received`` returns an awaitable), so the client is
slowed down by TCP back-pressure and nothing extra is buffered.

A tenant's concurrent uploads share its bucket and queue behind each other. So that no
upload is paced into the body timeout and cut without an answer, an upload is admitted only
if the bytes already queued for its tenant plus its own ``Content-Length`` can pass within
half of ``body_timeout_seconds``; otherwise it is refused before any byte is read (429
naming the limit, with ``Retry-After``). A chunked body (no length) is paced but not queued.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kyc_host.errors import LimitExceeded

if TYPE_CHECKING:
    from kyc_host.tenancy.registry import Tenant

LIMIT = "upload_bytes_per_second"
_CACHE_KEY = "upload_pacer"


class BytePacer:
    """A token bucket of bytes (``rate`` per second, holding at most one second's worth) and
    the bytes of admitted uploads that have not arrived yet."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.queued = 0
        self._clock = clock
        self._tokens = float(rate)
        self._last = clock()

    def admit(self, size: int, max_wait: float) -> None:
        """Queue an upload of ``size`` bytes, or raise LimitExceeded (queuing nothing) if the
        tenant's queue would make its last byte wait more than ``max_wait`` seconds."""
        self._refill()
        wait = (self.queued + size - self._tokens) / self.rate
        if wait > max_wait:
            raise LimitExceeded(
                LIMIT, f"too many uploads for this anchor at once (limits.{LIMIT} = "
                f"{self.rate}); retry later", retry_after=max(1, math.ceil(wait - max_wait)))
        self.queued += size

    def take(self, size: int) -> float:
        """``size`` bytes arrived; returns how long to pause before reading more (0: none)."""
        self._refill()
        self._tokens -= size
        return max(0.0, -self._tokens / self.rate)

    def release(self, size: int) -> None:
        """``size`` admitted bytes left the queue (they arrived, or the upload ended short)."""
        self.queued = max(0, self.queued - size)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now


def upload_pacer(tenant: Tenant) -> BytePacer:
    """The tenant's bucket in this process (a new tenant version starts a new one)."""
    pacer = tenant.cache.get(_CACHE_KEY)
    if not isinstance(pacer, BytePacer):
        pacer = tenant.cache[_CACHE_KEY] = BytePacer(tenant.config.limits.upload_bytes_per_second)
    return pacer
