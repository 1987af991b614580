"""Rate limits that hold across processes and hosts, with a store write only where needed.

Design. Each limit is a sliding window: at most ``count`` events per key in any
``seconds``-long window. Two layers:

1. **In-process token bucket** per (tenant, limit, key), capacity ``count``, refilled at
   ``count/seconds``. It costs no I/O and refuses a key that *this process alone* has already
   let through ``count`` times, so a flood from one client turns into local 429s and never
   into store writes. On its own it would allow ``count`` per process (N workers, H hosts:
   N x H x count), which is why it is only a pre-filter.
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
#: Local buckets kept per process; the least recently used go first. Forgetting one only
#: makes the pre-filter laxer: the store still holds the count.
MAX_LOCAL_KEYS = 100_000


class RateLimited(LimitExceeded):
    """429 naming the limit, with ``Retry-After`` in whole seconds."""

    def __init__(self, limit: str, rate: Rate, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            limit, f"too many requests: limits.{limit} allows {rate.count} per "
                   f"{rate.seconds} s; retry after {seconds} s", retry_after=seconds)


@dataclass(slots=True)
class _Bucket:
    rate: Rate
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        per_second = self.rate.count / self.rate.seconds
        self.tokens = min(float(self.rate.count), self.tokens + (now - self.updated) * per_second)
        self.updated = now

    def wait(self) -> float:
        """Seconds until one token is available (0 if one is)."""
        return max(0.0, (1 - self.tokens) * self.rate.seconds / self.rate.count)


def event_key(secret: bytes, limit: str, subject: str) -> str:
    """The stored key of ``subject`` under ``limit``: a keyed hash, never the value itself."""
    return hmac.new(secret, f"rate|{limit}|{subject}".encode(), hashlib.sha256).hexdigest()[:32]


class RateLimiter:
    """One per process. Methods raise :class:`RateLimited`; store errors propagate."""

    def __init__(self, max_local_keys: int = MAX_LOCAL_KEYS) -> None:
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._max_local_keys = max_local_keys
        self._swept: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def hit(self, store: Store, tenant_id: str, limit: str, rate: Rate, key: str) -> None:
        """Count one request for ``key``; refuse it if the window already holds ``count``."""
        bucket = self._bucket(tenant_id, key, rate)
        if bucket.tokens < 1:
            raise RateLimited(limit, rate, bucket.wait())
        bucket.tokens -= 1
        events = store.tenant(tenant_id, COLLECTION)
        now = time.time()
        event_id = await events.insert_one({"key": key, "at": now,
                                            "expires_at": now + rate.seconds})
        seen = await events.count({"key": key, "at": gt(now - rate.seconds)})
        if seen > rate.count:
            retry_after = await _retry_after(events, key, rate, now, seen - rate.count)
            await events.delete_one({"_id": event_id})  # refused requests do not count
            raise RateLimited(limit, rate, retry_after)
        self._maybe_sweep(store, tenant_id)

    async def check_failures(self, store: Store, tenant_id: str, limit: str, rate: Rate,
                             key: str) -> None:
        """Refuse if ``key`` already has ``count`` failures in the window (reads only)."""
        bucket = self._bucket(tenant_id, key, rate)
        if bucket.tokens < 1:
            raise RateLimited(limit, rate, bucket.wait())
        events = store.tenant(tenant_id, COLLECTION)
        now = time.time()
        seen = await events.count({"key": key, "at": gt(now - rate.seconds)})
        if seen >= rate.count:
            raise RateLimited(limit, rate,
                              await _retry_after(events, key, rate, now, seen - rate.count + 1))

    async def record_failure(self, store: Store, tenant_id: str, rate: Rate, key: str) -> None:
        """Count one failure for ``key`` (a store error is logged, never raised: the request
        already has its own answer, which must not turn into a 503)."""
        bucket = self._bucket(tenant_id, key, rate)
        bucket.tokens = max(0.0, bucket.tokens - 1)
        now = time.time()
        try:
            await store.tenant(tenant_id, COLLECTION).insert_one(
                {"key": key, "at": now, "expires_at": now + rate.seconds})
        except StoreError as exc:
            log.warning("recording a failed login failed: %s", exc, extra={"tenant": tenant_id})
            return
        self._maybe_sweep(store, tenant_id)

    def _bucket(self, tenant_id: str, key: str, rate: Rate) -> _Bucket:
        now = time.monotonic()
        slot = (tenant_id, key)
        bucket = self._buckets.get(slot)
        if bucket is None or bucket.rate != rate:  # new key, or the tenant changed the rate
            bucket = _Bucket(rate, float(rate.count), now)
            self._buckets[slot] = bucket
            if len(self._buckets) > self._max_local_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(slot)
            bucket.refill(now)
        return bucket

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
