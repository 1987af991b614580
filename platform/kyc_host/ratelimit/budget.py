"""The upload bytes one process holds at once (platform setting ``upload_bytes_in_flight``).

An upload's body is held in memory from the first byte read until its request is answered:
received, put together, parsed, sealed and written (about two copies at the peak: under the
L2 stress a process held its baseline plus twice this bound, BENCHMARKS.md). Each
tenant's ``upload_bytes_per_second`` (ratelimit/pacing.py) bounds what *that tenant* has
coming, but not the sum over tenants, nor a tenant whose operator raised its rate: without a
process-wide bound, memory grew with connections x body size (2 GiB in the L2 stress run
with pacing off, BENCHMARKS.md), and a process that runs out of memory fails every tenant.

So every upload (a body over :data:`SMALL_BYTES`) reserves its declared ``Content-Length``
(a chunked one: its endpoint's largest body) here after its tenant's pacer admitted it and
before any byte of it is read, and gives it back when its request ends. An upload that does
not fit waits, its body unread in the client's socket buffers (as in the pacer's line), and
the waiting uploads are let in fairly across tenants: the next is one of the tenant holding
the fewest bytes, among equals the tenant let in longest ago, and within a tenant the one
that came first. So a tenant with many uploads waiting cannot keep another tenant's single
upload behind its line. And no tenant holds more than half the bound (one upload of a tenant
holding nothing may be larger): bodies that arrive slowly hold their bytes until they end or
the body timeout cuts them, so without that share one tenant's slow uploads (a wallet
trickling bodies on purpose) could keep every other tenant's uploads waiting. With the
default pacing a tenant cannot reach the share anyway (4 MiB/s x 30 s of admitted bytes).
An upload that is larger than the whole budget starts when nothing else is held (it could
never fit otherwise). An upload whose turn does not come within its
wait (the handler gives the pacer's half of the body timeout, minus the time it waited
there), or beyond :data:`MAX_WAITING` of its tenant waiting, is answered 503 with
``Retry-After``: the server, not the client, is short.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable

from kyc_host.errors import ApiError, ServiceUnavailable
from kyc_host.ratelimit.pacing import CHECK_SECONDS, MAX_WAITING, SMALL_BYTES

SETTING = "upload_bytes_in_flight"
#: Retry-After of a refusal: long enough not to come back into the same line at once.
RETRY_AFTER_SECONDS = 5


class NoRoom(ServiceUnavailable):
    """No room for an upload in its process's ``upload_bytes_in_flight`` came in time."""


class _Waiter:
    __slots__ = ("granted", "order", "size", "tenant_id", "woken")

    def __init__(self, tenant_id: str, size: int, order: int) -> None:
        self.tenant_id = tenant_id
        self.size = size
        self.order = order
        self.granted = False
        self.woken = asyncio.Event()


class UploadBudget:
    """``limit`` upload bytes for one process (0: no limit), shared fairly by tenants."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.held = 0
        self._clock = clock
        self._held_by: Counter[str] = Counter()
        self._let_in_at: dict[str, int] = {}  # tenant -> order of its last upload let in
        self._line: list[_Waiter] = []
        self._orders = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._line)

    def held_by(self, tenant_id: str) -> int:
        return self._held_by[tenant_id]

    def waiting_of(self, tenant_id: str) -> int:
        return sum(1 for w in self._line if w.tenant_id == tenant_id)

    async def reserve(self, tenant_id: str, size: int, max_wait: float,
                      give_up: Callable[[], ApiError | None] = lambda: None) -> int:
        """Hold ``size`` bytes for an upload of ``tenant_id``; returns what it must give back
        with :meth:`release` (0 for a small body or without a limit). Waits its turn for at
        most ``max_wait`` seconds, asking ``give_up`` every :data:`CHECK_SECONDS`; raises
        :class:`NoRoom` (a 503), holding nothing, when its turn does not come."""
        if not self.limit or size <= SMALL_BYTES:
            return 0
        if not self._line and self._fits(tenant_id, size):
            self._let_in(tenant_id, size, next(self._orders))
            return size
        if self.waiting_of(tenant_id) >= MAX_WAITING:
            raise self._refusal()
        me = _Waiter(tenant_id, size, next(self._orders))
        self._line.append(me)
        deadline = self._clock() + max_wait
        try:
            self._grant()
            while not me.granted:
                left = deadline - self._clock()
                if left <= 0:
                    raise self._refusal()
                me.woken.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, CHECK_SECONDS)):
                        await me.woken.wait()
                error = None if me.granted else give_up()
                if error is not None:
                    raise error
        except BaseException:
            if me.granted:  # let in as it was cancelled or gave up: hand the bytes on
                self.release(tenant_id, size)
            else:
                self._line.remove(me)
                self._grant()  # it may have been the next one, blocking those behind
            raise
        return size

    def release(self, tenant_id: str, size: int) -> None:
        """An upload holding ``size`` bytes ended (answered, cut, or its client left)."""
        if size <= 0:
            return
        self.held -= size
        self._held_by[tenant_id] -= size
        if self._held_by[tenant_id] <= 0:
            del self._held_by[tenant_id]
        self._grant()

    def _fits(self, tenant_id: str, size: int) -> bool:
        return self._within_share(tenant_id, size) and (
            self.held == 0 or self.held + size <= self.limit)

    def _within_share(self, tenant_id: str, size: int) -> bool:
        """A tenant holds at most half the bound (more only with one upload alone)."""
        held = self._held_by[tenant_id]
        return held == 0 or held + size <= self.limit // 2

    def _let_in(self, tenant_id: str, size: int, order: int) -> None:
        self.held += size
        self._held_by[tenant_id] += size
        self._let_in_at[tenant_id] = order
        if len(self._let_in_at) > 4 * (len(self._held_by) + len(self._line)) + 64:
            self._forget_idle_tenants()

    def _grant(self) -> None:
        """Let in the next waiting uploads while the next one fits (the next one only: a
        smaller one behind it does not pass it, or a large upload would never start).
        Uploads of a tenant holding its half are passed over until it gives some back."""
        while True:
            eligible = [w for w in self._line if self._within_share(w.tenant_id, w.size)]
            if not eligible:
                return
            nxt = min(eligible, key=lambda w: (self._held_by[w.tenant_id],
                                               self._let_in_at.get(w.tenant_id, -1), w.order))
            if not self._fits(nxt.tenant_id, nxt.size):
                return
            self._line.remove(nxt)
            self._let_in(nxt.tenant_id, nxt.size, next(self._orders))
            nxt.granted = True
            nxt.woken.set()

    def _forget_idle_tenants(self) -> None:
        busy = set(self._held_by) | {w.tenant_id for w in self._line}
        self._let_in_at = {t: o for t, o in self._let_in_at.items() if t in busy}

    def _refusal(self) -> NoRoom:
        return NoRoom(
            f"this server is receiving as many uploads as it can hold ({SETTING} = "
            f"{self.limit} bytes); retry later", retry_after=RETRY_AFTER_SECONDS)
