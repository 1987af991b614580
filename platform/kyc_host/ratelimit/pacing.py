"""Per-tenant upload bandwidth in each process (``limits.upload_bytes_per_second``).

Storing an upload costs the server CPU for every byte (receiving, parsing, sealing and
writing it: tens of milliseconds per MiB on this project's benchmark machine), so one
tenant's stream of large uploads could take a process's CPU from every other tenant (the
noisy-neighbour benchmark, BENCHMARKS.md). The body bytes of a tenant's upload endpoints
pass through one token bucket per tenant and process; when it runs dry the handler stops
reading (Tornado's flow control: ``data_received`` returns an awaitable), so the client is
slowed down by TCP back-pressure and nothing extra is buffered.

A tenant's concurrent uploads share its bucket and queue behind each other. So that no
upload is paced into the body timeout and cut without an answer, an upload starts only when
the bytes already queued for its tenant plus its own ``Content-Length`` can pass within half
of ``body_timeout_seconds``. Until then it waits its turn (first come, first served, for at
most that same half) before any byte of its body is read: the client's body stays in its own
socket buffers, and a client that sent ``Expect: 100-continue`` gets its ``100`` only once it
is admitted. Waiting costs the server nothing but the connection. An upload is refused with
a 429 naming the limit, with ``Retry-After``, only when its turn did not come in time, when
:data:`MAX_WAITING` uploads of the tenant already wait in this process, or when it could not
arrive in time even alone. Refusing at once instead (as before) answered a 10 MiB upload
while its client was still sending: the connection was closed with its body unread, the
client saw a reset instead of the 429, retried at once, and 20 such clients kept a server
process busy refusing them (the noisy-neighbour benchmark, BENCHMARKS.md). A chunked body
(no length) is paced but not queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kyc_host.errors import LimitExceeded

if TYPE_CHECKING:
    from kyc_host.tenancy.registry import Tenant

LIMIT = "upload_bytes_per_second"
_CACHE_KEY = "upload_pacer"
#: Uploads of one tenant that may wait for their turn in one process; more are refused (429).
MAX_WAITING = 64
#: Bodies this small (a JSON PUT, a form) never wait in line: they are queued at once.
SMALL_BYTES = 64 * 1024


class _Waiter:
    """An upload waiting for its turn; ``woken`` is set when the queue moved."""

    __slots__ = ("size", "woken")

    def __init__(self, size: int) -> None:
        self.size = size
        self.woken = asyncio.Event()


class BytePacer:
    """A token bucket of bytes (``rate`` per second, holding at most one second's worth), the
    bytes of admitted uploads that have not arrived yet, and the uploads waiting to start."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.queued = 0
        self._clock = clock
        self._tokens = float(rate)
        self._last = clock()
        self._line: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Uploads waiting for their turn."""
        return len(self._line)

    def lateness(self, size: int, max_wait: float) -> float:
        """Seconds by which the last byte of an upload of ``size`` bytes, queued now behind
        the admitted ones, would miss ``max_wait`` (0 or less: it would not)."""
        self._refill()
        return (self.queued + size - self._tokens) / self.rate - max_wait

    async def admit(self, size: int, max_wait: float) -> None:
        """Queue an upload of ``size`` bytes so that its last byte can arrive within
        ``max_wait`` seconds: at once if it fits and nobody waits, else after waiting its turn
        for at most ``max_wait``. Raises LimitExceeded, queuing nothing, when it cannot."""
        if size > self.rate * (max_wait + 1):  # not even alone, with a full bucket
            raise self._refusal(math.inf)
        if size <= SMALL_BYTES or (not self._line and self.lateness(size, max_wait) <= 0):
            self.queued += size
            return
        if len(self._line) >= MAX_WAITING:
            raise self._refusal(self.lateness(size, max_wait))
        me = _Waiter(size)
        self._line.append(me)
        deadline = time.monotonic() + max_wait
        try:
            while True:
                late = self.lateness(size, max_wait)
                if self._line[0] is me and late <= 0:
                    self.queued += size
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._refusal(late)
                # The head also looks again when the bucket alone has refilled enough.
                pause = min(left, max(late, 0.01)) if self._line[0] is me else left
                me.woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(me.woken.wait(), pause)
        finally:
            self._line.remove(me)
            self._wake_head()

    def _refusal(self, late: float) -> LimitExceeded:
        if math.isinf(late):
            return LimitExceeded(
                LIMIT, f"this upload cannot arrive within half the body timeout at this "
                f"anchor's limits.{LIMIT} = {self.rate}, even alone")
        return LimitExceeded(
            LIMIT, f"too many uploads for this anchor at once (limits.{LIMIT} = "
            f"{self.rate}); retry later", retry_after=max(1, math.ceil(late)))

    def _wake_head(self) -> None:
        if self._line:
            self._line[0].woken.set()

    def take(self, size: int) -> float:
        """``size`` bytes arrived; returns how long to pause before reading more (0: none)."""
        self._refill()
        self._tokens -= size
        return max(0.0, -self._tokens / self.rate)

    def release(self, size: int) -> None:
        """``size`` admitted bytes left the queue (they arrived, or the upload ended short)."""
        self.queued = max(0, self.queued - size)
        self._wake_head()

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
