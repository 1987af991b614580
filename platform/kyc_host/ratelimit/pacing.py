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
a 429 naming the limit, with ``Retry-After``, only when its turn did not come in time or when
:data:`MAX_WAITING` uploads of the tenant already wait in this process; one larger than the
tenant's rate times that half is refused at once (it could start only alone with a full
bucket). A waiting upload whose client left, or whose server started draining, stops
waiting within :data:`CHECK_SECONDS` (the handler decides: sep/sep12.py).

Refusing at once instead (as before) answered a 10 MiB upload while its client was still
sending: the connection was closed with its body unread, the client saw a reset instead of
the 429, retried at once, and 20 such clients kept a server process busy refusing them (the
noisy-neighbour benchmark, BENCHMARKS.md). A refusal after waiting still closes the
connection with the body unread (a client without ``Expect: 100-continue`` may see a reset),
but only after the wait. A chunked body (no length) is paced but not queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kyc_host.errors import ApiError, LimitExceeded

if TYPE_CHECKING:
    from kyc_host.tenancy.registry import Tenant

LIMIT = "upload_bytes_per_second"
#: Uploads of one tenant that may wait for their turn in one process; more are refused (429).
MAX_WAITING = 64
#: Bodies this small (a JSON PUT, a form) never wait in line: they are queued at once.
SMALL_BYTES = 64 * 1024
#: A waiting upload checks this often whether to give up (its client left, the server drains).
CHECK_SECONDS = 1.0
#: How often a process forgets the buckets of tenants with no upload going on.
PRUNE_SECONDS = 300.0


class _Waiter:
    """An upload waiting for its turn; ``woken`` is set when the queue moved."""

    __slots__ = ("woken",)

    def __init__(self) -> None:
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

    def idle(self) -> bool:
        """Nothing admitted or waiting and the bucket full again: no different from a new
        bucket, so it can be forgotten."""
        self._refill()
        return not self._line and self.queued == 0 and self._tokens >= self.rate

    def lateness(self, size: int, max_wait: float) -> float:
        """Seconds by which the last byte of an upload of ``size`` bytes, queued now behind
        the admitted ones, would miss ``max_wait`` (0 or less: it would not)."""
        self._refill()
        return (self.queued + size - self._tokens) / self.rate - max_wait

    async def admit(self, size: int, max_wait: float,
                    give_up: Callable[[], ApiError | None] = lambda: None) -> None:
        """Queue an upload of ``size`` bytes so that its last byte can arrive within
        ``max_wait`` seconds: at once if it fits and nobody waits, else after waiting its turn
        for at most ``max_wait``. Raises LimitExceeded, queuing nothing, when it cannot.
        While it waits, ``give_up`` is asked every :data:`CHECK_SECONDS`: an error it returns
        (the client left, the server is draining) is raised at once."""
        if size > self.rate * max_wait:  # could start only alone with a full bucket: refuse
            raise self._refusal(math.inf)
        if size <= SMALL_BYTES or (not self._line and self.lateness(size, max_wait) <= 0):
            self.queued += size
            return
        if len(self._line) >= MAX_WAITING:
            raise self._refusal(self.lateness(size, max_wait))
        me = _Waiter()
        self._line.append(me)
        deadline = self._clock() + max_wait
        try:
            while True:
                late = self.lateness(size, max_wait)
                if self._line[0] is me and late <= 0:
                    self.queued += size
                    return
                left = deadline - self._clock()
                if left <= 0:
                    raise self._refusal(late)
                # The head also looks again when the bucket alone has refilled enough.
                pause = min(left, max(late, 0.01)) if self._line[0] is me else left
                me.woken.clear()
                # (asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation
                # that arrives as the event is set, and the cancelled waiter would stay.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(pause, CHECK_SECONDS)):
                        await me.woken.wait()
                error = give_up()
                if error is not None:
                    raise error
        finally:
            self._line.remove(me)
            self._wake_head()

    def _refusal(self, late: float) -> LimitExceeded:
        if math.isinf(late):
            return LimitExceeded(
                LIMIT, "this upload cannot arrive within half the body timeout at this "
                f"anchor's limits.{LIMIT} = {self.rate}")
        return LimitExceeded(
            LIMIT, f"too many uploads for this anchor at once (limits.{LIMIT} = "
            f"{self.rate}); retry later", retry_after=max(1, math.ceil(late)))

    def _wake_head(self) -> None:
        if self._line:
            self._line[0].woken.set()

    def arrived(self, size: int, admitted: int) -> float:
        """``size`` body bytes arrived, ``admitted`` of them queued at admission; returns how
        long to pause before reading more (0: none). Wakes nobody: the bytes leave the queue
        and the bucket alike, so the line's prospects are unchanged (the head's own timer
        covers the refill)."""
        self.queued = max(0, self.queued - admitted)
        self._refill()
        self._tokens -= size
        return max(0.0, -self._tokens / self.rate)

    def take(self, size: int) -> float:
        """``size`` bytes arrived that were never queued (a chunked body); see arrived()."""
        return self.arrived(size, 0)

    def release(self, size: int) -> None:
        """``size`` admitted bytes will not come (the upload ended or ended short)."""
        self.queued = max(0, self.queued - size)
        self._wake_head()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now


class UploadPacers:
    """The tenants' buckets in one process, by tenant id: a new version of a tenant keeps its
    bucket and line (with the new rate), so a tenant file change neither doubles the share
    for a while nor lets newcomers pass the uploads already waiting. Every
    :data:`PRUNE_SECONDS` the idle buckets are dropped, so a process keeps buckets only for
    the tenants uploading lately (not for every tenant it ever served, offboarded ones
    included)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_tenant: dict[str, BytePacer] = {}
        self._clock = clock
        self._pruned = clock()

    def __len__(self) -> int:
        return len(self._by_tenant)

    def get(self, tenant_id: str) -> BytePacer | None:
        """The tenant's bucket if it has one in this process (for tests and diagnostics)."""
        return self._by_tenant.get(tenant_id)

    def of(self, tenant: Tenant) -> BytePacer:
        return self.pacer(tenant.id, tenant.config.limits.upload_bytes_per_second)

    def pacer(self, tenant_id: str, rate: int) -> BytePacer:
        """The bucket of ``tenant_id``, made now if it has none, at ``rate``."""
        if self._clock() - self._pruned >= PRUNE_SECONDS:
            self._prune()
        pacer = self._by_tenant.get(tenant_id)
        if pacer is None:
            pacer = self._by_tenant[tenant_id] = BytePacer(rate, self._clock)
        pacer.rate = rate
        return pacer

    def _prune(self) -> None:
        self._pruned = self._clock()
        for tenant_id in [tenant_id for tenant_id, pacer in self._by_tenant.items()
                          if pacer.idle()]:
            del self._by_tenant[tenant_id]
