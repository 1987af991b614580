"""Rate limits that hold across processes and hosts, with a store write only where needed.

Design. Each limit is a sliding window: at most ``count`` events per key in any
``seconds``-long window. Two layers:

1. **In-process count** per (tenant, limit, key) of the events *this process* has stored
   and that are still inside the window (:class:`_LocalWindow`). Every one of them is in the
   store's count too, so when they alone reach ``count`` the store would refuse as well: the
   request is refused here, with no I/O. A flood from one client therefore turns into local
   429s, not into store writes, for the whole window (a token bucket, refilled at
   ``count/seconds``, would let one request per refill through to the store and its
   insert + count + delete only to be refused there). It never refuses what the store would
   admit, so it loosens nothing and tightens nothing across processes; on its own it would
   allow ``count`` per process, which is why it only ever decides refusals.
2. **Store-backed sliding log** (``rate_events``, one tenant-bound document per admitted
   event: ``{key, at, expires_at}``): insert the event, then count the key's events inside
   the window; over ``count`` -> delete our event again and refuse. This is the authority.
   Why a log rather than a counter document: FerretDB v1 has no atomic ``$inc`` or
   compare-and-set (store/base.py), so concurrent increments would be lost; an insert with a
   fresh ``_id`` is atomic on both backends and a count over inserted documents cannot lose
   one. Insert-then-count is safe under races: every event is visible before anyone counts,
   so at most ``count`` requests ever see a total <= ``count``; two racing requests can at
   worst both see the other and both be refused (briefly stricter, never looser).

The cost is an insert and an indexed count per limited request, paid only on ``/auth``,
``PUT /kyc/customer`` and uploads, which already write to the store (challenge consumption,
customer records) or are rare. ``GET /kyc/customer`` (the polling hot path) is not limited
and touches nothing here. Failed logins write only when a login fails; before each
``POST /auth`` one count query checks that the client has failures left.

Keys are an HMAC of the limit name and the subject (client IP, account) under the tenant's
blind-index key: no IP address or account id is stored in clear. Events carry
``expires_at`` and each process deletes a tenant's expired events at most once a minute (the
test backend has no TTL index).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from kyc_host.errors import LimitExceeded
from kyc_host.ratelimit.config import Rate
from kyc_host.store.base import Collection, Store, StoreError, gt, lt

log = logging.getLogger(__name__)

COLLECTION = "rate_events"
SWEEP_INTERVAL_SECONDS = 60.0
#: Local counts kept per process; the least recently used go first. Forgetting one only
#: sends that key's next requests to the store, which holds the count.
MAX_LOCAL_KEYS = 100_000
#: Counts with nothing left in their window are dropped as the process goes (oldest used
#: first, at most this many per request), so a process keeps counts for the keys active
#: lately rather than for the last 100,000 ever seen (~450 bytes each).
EXPIRE_PER_CALL = 16
#: Slots per window of a local count: its refusals start at most one slot (a tenth of the
#: window) late at the window's trailing edge; those requests are decided by the store.
SLOTS = 10
#: Slots this close to the trailing edge are no longer counted (float rounding of slot
#: boundaries must never make the local count exceed the store's).
EDGE_MARGIN_SECONDS = 0.001


class RateLimited(LimitExceeded):
    """429 naming the limit, with ``Retry-After`` in whole seconds."""

    def __init__(self, limit: str, rate: Rate, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            limit, f"too many requests: limits.{limit} allows {rate.count} per "
                   f"{rate.seconds} s; retry after {seconds} s", retry_after=seconds)


@dataclass(slots=True)
class _LocalWindow:
    """The events of one key that this process stored, counted per slot of the window.

    Slot ``n`` holds the events whose ``at`` (the ``time.time()`` stored with them) lies in
    ``[n * width, (n + 1) * width)``, ``width = rate.seconds / SLOTS``: O(SLOTS) memory per
    key whatever the rate. :meth:`known` counts only the slots that start after
    ``now - rate.seconds`` (less a safety margin), so every event it counts is inside the
    store's window (``at > now - seconds``): a lower bound of what the store would count.
    """

    rate: Rate
    first: int  # slot number of counts[0]
    counts: list[int]

    @property
    def width(self) -> float:
        return self.rate.seconds / SLOTS

    def _trim(self, now: float) -> None:
        oldest = math.floor((now - self.rate.seconds + EDGE_MARGIN_SECONDS) / self.width) + 1
        if oldest > self.first:
            del self.counts[:oldest - self.first]
            self.first = oldest

    def known(self, now: float) -> int:
        """How many of this key's events are certainly inside the window at ``now``."""
        self._trim(now)
        return sum(self.counts)

    def add(self, at: float) -> None:
        """Count one stored event with timestamp ``at``."""
        slot = math.floor(at / self.width)
        if slot < self.first:  # the clock went back: not countable safely, so not counted
            return
        if not self.counts:
            self.first = slot
        self.counts.extend([0] * (slot - self.first + 1 - len(self.counts)))
        self.counts[slot - self.first] += 1

    def wait(self, now: float) -> float:
        """Seconds until this count no longer refuses on its own (enough slots have reached
        the window's trailing edge); from then on the store decides, exactly."""
        remaining = self.known(now)
        for index, n in enumerate(self.counts):
            remaining -= n
            if remaining < self.rate.count:
                start = (self.first + index) * self.width
                return min(float(self.rate.seconds), start + self.rate.seconds - now)
        return 0.0


def event_key(secret: bytes, limit: str, subject: str) -> str:
    """The stored key of ``subject`` under ``limit``: a keyed hash, never the value itself."""
    return hmac.new(secret, f"rate|{limit}|{subject}".encode(), hashlib.sha256).hexdigest()[:32]


class RateLimiter:
    """One per process. Methods raise :class:`RateLimited`; store errors propagate."""

    def __init__(self, max_local_keys: int = MAX_LOCAL_KEYS) -> None:
        self._local: OrderedDict[tuple[str, str], _LocalWindow] = OrderedDict()
        self._max_local_keys = max_local_keys
        self._swept: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def hit(self, store: Store, tenant_id: str, limit: str, rate: Rate, key: str) -> None:
        """Count one request for ``key``; refuse it if the window already holds ``count``."""
        local = self._window(tenant_id, key, rate)
        now = time.time()
        if local.known(now) >= rate.count:  # the store holds at least these: no I/O needed
            raise RateLimited(limit, rate, local.wait(now))
        events = store.tenant(tenant_id, COLLECTION)
        event_id = await events.insert_one({"key": key, "at": now,
                                            "expires_at": now + rate.seconds})
        seen = await events.count({"key": key, "at": gt(now - rate.seconds)})
        if seen > rate.count:
            retry_after = await _retry_after(events, key, rate, now, seen - rate.count)
            await events.delete_one({"_id": event_id})  # refused requests do not count
            raise RateLimited(limit, rate, retry_after)
        local.add(now)  # admitted: its event stays in the store until it expires
        self._maybe_sweep(store, tenant_id)

    async def check_failures(self, store: Store, tenant_id: str, limit: str, rate: Rate,
                             key: str) -> None:
        """Refuse if ``key`` already has ``count`` failures in the window (reads only)."""
        local = self._window(tenant_id, key, rate)
        now = time.time()
        if local.known(now) >= rate.count:
            raise RateLimited(limit, rate, local.wait(now))
        events = store.tenant(tenant_id, COLLECTION)
        seen = await events.count({"key": key, "at": gt(now - rate.seconds)})
        if seen >= rate.count:
            raise RateLimited(limit, rate,
                              await _retry_after(events, key, rate, now, seen - rate.count + 1))

    async def record_failure(self, store: Store, tenant_id: str, rate: Rate, key: str) -> None:
        """Count one failure for ``key`` (a store error is logged, never raised: the request
        already has its own answer, which must not turn into a 503)."""
        now = time.time()
        try:
            await store.tenant(tenant_id, COLLECTION).insert_one(
                {"key": key, "at": now, "expires_at": now + rate.seconds})
        except StoreError as exc:
            log.warning("recording a failed login failed: %s", exc, extra={"tenant": tenant_id})
            return
        self._window(tenant_id, key, rate).add(now)
        self._maybe_sweep(store, tenant_id)

    def __len__(self) -> int:
        """Local counts held."""
        return len(self._local)

    def _window(self, tenant_id: str, key: str, rate: Rate) -> _LocalWindow:
        self._expire(time.time())
        slot = (tenant_id, key)
        window = self._local.get(slot)
        if window is None or window.rate != rate:  # new key, or the tenant changed the rate
            window = _LocalWindow(rate, 0, [])
            self._local[slot] = window
            if len(self._local) > self._max_local_keys:
                self._local.popitem(last=False)
        else:
            self._local.move_to_end(slot)
        return window

    def _expire(self, now: float) -> None:
        """Drop the least recently used counts while they hold nothing in their window (an
        empty count is what a new key starts with)."""
        for _ in range(EXPIRE_PER_CALL):
            oldest = next(iter(self._local.values()), None)
            if oldest is None or oldest.known(now) > 0:
                return
            self._local.popitem(last=False)

    def _maybe_sweep(self, store: Store, tenant_id: str) -> None:
        now = time.monotonic()
        if now - self._swept.get(tenant_id, -SWEEP_INTERVAL_SECONDS) < SWEEP_INTERVAL_SECONDS:
            return
        self._swept[tenant_id] = now
        task = asyncio.get_running_loop().create_task(_sweep(store, tenant_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _retry_after(events: Collection, key: str, rate: Rate, now: float,
                       must_expire: int) -> float:
    """Seconds until ``must_expire`` of the key's events in the window have left it."""
    oldest = await events.find({"key": key, "at": gt(now - rate.seconds)}, sort=[("at", 1)],
                               limit=max(1, must_expire))
    if not oldest:
        return 1.0
    return float(oldest[-1]["at"]) + rate.seconds - now


async def _sweep(store: Store, tenant_id: str) -> None:
    try:
        await store.tenant(tenant_id, COLLECTION).delete_many({"expires_at": lt(time.time())})
    except StoreError as exc:
        log.warning("deleting expired rate events failed: %s", exc, extra={"tenant": tenant_id})
