"""The delivery worker: one per server process, started and stopped with the listeners.

Finding work. Every ``callbacks_poll_seconds`` the worker reads the platform ``outbox_wake``
marker (one indexed query: which tenants relayed events lately, in any process) and looks
at those tenants (while their marker is new) plus the ones whose next retry is due; every
``callbacks_sweep_seconds`` it looks at every tenant and relays events a crashed writer left
in customer records. A look reads the due events in batches, not once per attempt (a read is
a full scan on FerretDB, see ``_start_due``).

Exclusivity. An attempt is claimed by inserting the lease ``<event id>:<attempt>`` (unique):
two processes never hold one attempt, so an event is never sent twice at the same time. A
process that dies mid-attempt leaves its lease to expire (``callbacks_lease_seconds``); then
any process claims the next attempt. So an event is delivered at least once, and a second
delivery happens only after a lease expired, with the same event id (``Webhook-Id``) for
the receiver to drop.

Isolation (reliability-plan F6). Each tenant is drained by its own task with at most
:data:`PER_TENANT` attempts in flight, every attempt is cut at the attempt timeout, and the
worker's own outbound client (the platform's SSRF-safe one, a separate instance) bounds
requests per tenant: a receiver that hangs holds up only its own tenant's events, and never
the slots that SEP-10 client_domain fetches need. The pool of :data:`MAX_CONNECTIONS` is
shared: only that many tenants' receivers hanging at once (divided by PER_TENANT) would make
others' attempts wait, and then within their attempt timeout.

Order. A newer event for a customer waits while an older one of the same channel is still
pending (not yet given up), so a wallet never sees PROCESSING after ACCEPTED.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kyc_host.callbacks import events as ev
from kyc_host.callbacks.config import MIN_SECRET_BYTES
from kyc_host.callbacks.outbox import WAKE_EVERY, Outbox, woken_tenants
from kyc_host.callbacks.retry import Backoff, plan, retry_after
from kyc_host.callbacks.signing import sep12_signature, webhook_signature
from kyc_host.errors import ApiError
from kyc_host.net import FetchError, SafeHttpClient
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.base import Doc, StoreError
from kyc_host.tenancy.registry import Tenant

if TYPE_CHECKING:
    from kyc_host.services import Services

log = logging.getLogger(__name__)

PER_TENANT = 8  # attempts in flight per tenant
MAX_CONNECTIONS = 256  # outbound callback connections per process, all tenants
CANCEL_WAIT = 1.0  # how long shutdown waits for cancelled tasks to unwind
CLEANUP_SECONDS = 600.0  # expired leases and old delivered events are removed this often
BATCH = 100  # due events read per query
WAKE_MARGIN = 5.0  # seconds of clock skew tolerated between processes' wake-up markers
LEASE_SKEW = 5.0  # seconds of clock skew tolerated between a lease's holder and others
RECORD_GRACE = 2.0  # a record's own writer relays its events; the sweeper waits this long
MAX_RESPONSE_BYTES = 64 * 1024  # a receiver's answer is read (to reuse the connection), not kept


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt achieved."""

    state: ev.EventState  # DELIVERED, DISABLED, or PENDING (= failed, retry)
    error: str = ""
    http_status: int = 0
    retry_after: float | None = None
    clear_url: bool = False  # forget the customer's URL registered at ``url_set_at``
    url_set_at: float | None = None


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    headers: dict[str, str]
    own_url: bool = False  # the customer's own URL (registered at ``set_at``), not a default
    set_at: float | None = None


class CallbackWorker:
    """See the module docstring. ``start`` in the running loop; ``stop`` before the store
    closes."""

    def __init__(self, services: Services, *, environ: Mapping[str, str] | None = None) -> None:
        settings = services.settings
        self.services = services
        self.environ = os.environ if environ is None else environ
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.poll = settings.callbacks_poll_seconds
        self.sweep = settings.callbacks_sweep_seconds
        self.lease = settings.callbacks_lease_seconds
        self.timeout = settings.callbacks_attempt_timeout_seconds
        self.base = settings.callbacks_retry_base_seconds
        self.max_delay = settings.callbacks_retry_max_seconds
        self.metrics = services.callback_metrics
        # The platform's safe client (same SSRF rules, dev-mode switch and resolver), in its own
        # instance: hanging receivers then fill only the callbacks' connection pool and
        # per-tenant slots, never the ones SEP-10 client_domain fetches and plugins use.
        self.http = SafeHttpClient(dev_mode=services.http.dev_mode,
                                   resolver=services.http.resolver,
                                   per_key_limit=PER_TENANT, max_clients=MAX_CONNECTIONS)
        self._rng = random.Random()  # noqa: S311 - retry jitter, not a secret
        self._main: asyncio.Task[None] | None = None
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._stopping = False
        self._cleaned_at = float("-inf")  # time.monotonic()
        self._next_due: dict[str, float] = {}
        self._markers: dict[str, _Marker] = {}  # tenant -> the wake-up marker last acted on

    # --- lifecycle ---

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="callback-worker")

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop looking for work, let attempts in flight finish (bounded), cancel the rest.
        A cancelled attempt's lease expires and another process (or this one, restarted)
        takes the event over. Every wait here is bounded, so a store driver that is slow to
        honour a cancellation cannot hold up shutdown."""
        self._stopping = True
        main, self._main = self._main, None
        if main is not None:
            main.cancel()
        drains = list(self._drains.values())
        if drains:
            _, late = await asyncio.wait(drains, timeout=grace_seconds)
            for task in late:
                task.cancel()
        pending = [t for t in (main, *drains) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CANCEL_WAIT)
        self.http.close()

    async def _run(self) -> None:
        # Intervals on the monotonic clock (a wall clock stepped back stopped the sweep for
        # as long); store times on the wall clock, which every host shares.
        last_sweep = float("-inf")
        last_check = time.time() - WAKE_MARGIN
        while True:
            now, tick = time.time(), time.monotonic()
            try:
                if tick - last_sweep >= self.sweep:
                    tenants = {t.id for t in self.services.registry.served()}
                    await self._sweep_records(tenants, now)
                    last_sweep = tick
                else:
                    markers = await woken_tenants(self.services.store, last_check - WAKE_MARGIN)
                    tenants = self._woken(markers, now)
                    tenants |= {t for t, due in self._next_due.items() if due <= now}
                last_check = now
                for tenant_id in tenants:
                    # serve_tenants: another group of processes delivers the others'.
                    if self.services.registry.serves(tenant_id):
                        self._kick(tenant_id)
            except StoreError as exc:
                log.warning("callback worker: store unavailable: %s", exc)
            except Exception:  # never let one bad poll end delivery for every tenant
                log.exception("callback worker poll failed")
            await asyncio.sleep(self.poll)

    async def _sweep_records(self, tenant_ids: set[str], now: float) -> None:
        tick = time.monotonic()
        cleanup = tick - self._cleaned_at >= CLEANUP_SECONDS
        if cleanup:
            self._cleaned_at = tick
        for tenant_id in tenant_ids:
            outbox = Outbox(self.services.store, tenant_id)
            if cleanup:  # housekeeping writes, so not on every sweep
                await outbox.drop_expired_leases(now)
                await outbox.purge_delivered(
                    now, self.services.settings.callbacks_dead_retention_days * 86400.0)
            relayed = await outbox.sweep_records(now - RECORD_GRACE)
            if relayed:
                log.info("tenant %s: relayed %d callback event(s) left by an interrupted "
                         "write", tenant_id, relayed, extra={"tenant": tenant_id})

    def _woken(self, markers: Mapping[str, float], now: float) -> set[str]:
        """The tenants to look at for these wake-up markers (``woken_tenants``).

        A marker stays in the query's window for WAKE_MARGIN seconds, but a tenant is looked
        at only while the marker is new: at each poll for WAKE_EVERY seconds after this
        worker first saw it, then once more (a writer writes at most one marker per
        WAKE_EVERY, so events it relays just after a marker have none of their own). Each
        look is a read of the due list, a full scan on FerretDB; looking at every poll of the
        window made those reads, not the sending, the bottleneck.
        """
        woken: set[str] = set()
        for tenant_id, at in markers.items():
            marker = self._markers.get(tenant_id)
            if marker is None or marker.at != at:  # != not <: writers' clocks may differ
                self._markers[tenant_id] = _Marker(at, now)
        for tenant_id, marker in list(self._markers.items()):
            if marker.done:
                if tenant_id not in markers:
                    del self._markers[tenant_id]
                continue
            woken.add(tenant_id)
            marker.done = now - marker.seen_at >= WAKE_EVERY
        return woken

    def _kick(self, tenant_id: str) -> None:
        wake = self._wakes.get(tenant_id)
        if wake is not None:
            wake.set()  # the running drain looks again at once
            return
        self._drains[tenant_id] = asyncio.create_task(self._drain(tenant_id),
                                                      name=f"callbacks-{tenant_id}")

    # --- one tenant ---

    async def run_tenant(self, tenant_id: str) -> None:
        """Deliver everything of ``tenant_id`` that is due now (benchmarks, tests)."""
        await self._drain(tenant_id)

    async def _drain(self, tenant_id: str) -> None:
        """Keep up to PER_TENANT attempts of one tenant in flight until nothing is due.

        A slot is refilled as soon as an attempt ends, so one slow receiver of a tenant holds
        one slot, not the tenant's whole batch.
        """
        wake = self._wakes[tenant_id] = asyncio.Event()
        drain = _DrainState()
        outbox = Outbox(self.services.store, tenant_id)
        try:
            while True:
                woken = wake.is_set()
                wake.clear()
                tenant = self.services.registry.get(tenant_id)
                started = 0
                if tenant is not None and not self._stopping:
                    started = await self._start_due(tenant, outbox, drain, refresh=woken)
                if not drain.inflight and not started and not wake.is_set():
                    break
                await self._settle(drain, wake)
            await self._note_next_due(tenant_id, outbox)
            if wake.is_set():  # woken while winding down: look again at the next poll
                self._next_due[tenant_id] = time.time()
        except StoreError as exc:
            log.warning("tenant %s: callback delivery paused: %s", tenant_id, exc,
                        extra={"tenant": tenant_id})
            self._next_due[tenant_id] = time.time() + self.poll
        except Exception:
            log.exception("tenant %s: callback delivery failed", tenant_id,
                          extra={"tenant": tenant_id})
            self._next_due[tenant_id] = time.time() + self.poll
        finally:
            for task in drain.inflight.values():
                task.cancel()  # only on cancellation or an error: leases expire, others resume
            if drain.inflight:
                await asyncio.wait(drain.inflight.values(), timeout=CANCEL_WAIT)
            self._wakes.pop(tenant_id, None)
            self._drains.pop(tenant_id, None)

    async def _start_due(self, tenant: Tenant, outbox: Outbox, drain: _DrainState, *,
                         refresh: bool) -> int:
        """Start attempts for due events while slots are free: per customer and channel only
        the oldest, and none while an event of that customer and channel is in flight.

        Due events are read in batches, and read again on a wake-up, at once when a full
        batch is used up (more may be due) or has fewer events left than free slots, and
        otherwise only when nothing read can start and the last read is a poll interval
        old. Not while the batch still has events to start: on FerretDB the read is a scan
        of the whole outbox, and reading again after every attempt made the reads, not the
        sending, the bottleneck.
        """
        free = PER_TENANT - len(drain.inflight)
        if free <= 0:
            return 0
        now = time.time()
        ready = _startable(drain, now)
        used_up = drain.full and len(ready) < free and len(drain.queue) == len(ready)
        if refresh or used_up or (not ready and now - drain.queried_at >= self.poll):
            batch = await outbox.due(now, BATCH)
            drain.full = len(batch) >= BATCH
            drain.queried_at = time.time()
            # Events in flight come back while pending; their attempt's end decides on them.
            drain.queue = [e for e in batch if e["_id"] not in drain.inflight]
            ready = _startable(drain, now)
        started = 0
        for event in ready[:free]:
            event_id = event["_id"]
            drain.events[event_id] = event
            drain.inflight[event_id] = asyncio.create_task(self._deliver(tenant, outbox, event))
            started += 1
        if started:
            begun = {e["_id"] for e in ready[:started]}
            drain.queue = [e for e in drain.queue if e["_id"] not in begun]
        return started

    async def _settle(self, drain: _DrainState, wake: asyncio.Event) -> None:
        """Wait for an attempt to end, a wake-up, or one poll interval; reap ended attempts."""
        waiter = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({*drain.inflight.values(), waiter}, timeout=self.poll,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        now = time.time()
        for event_id, task in list(drain.inflight.items()):
            if not task.done():
                continue
            del drain.inflight[event_id]
            event = drain.events.pop(event_id)
            failed = task.cancelled() or task.exception() is not None
            if not task.cancelled() and task.exception() is not None:
                log.error("callback event %s: attempt failed", event_id,
                          exc_info=task.exception())
            # Blocked, busy or just attempted: not again within a poll (a due list read
            # while the attempt ran may still show it pending).
            drain.resting[event_id] = now + self.poll
            if failed or task.result() is _Start.BLOCKED:
                drain.queue.append(event)  # still due as read; TAKEN: the next read tells
            else:  # a copy read while it ran is stale now (claiming it again is wasted work)
                drain.queue = [e for e in drain.queue if e["_id"] != event_id]
        for event_id in [e for e, until in drain.resting.items() if until <= now]:
            del drain.resting[event_id]

    async def _note_next_due(self, tenant_id: str, outbox: Outbox) -> None:
        next_due = await outbox.next_due()
        if next_due is None:
            self._next_due.pop(tenant_id, None)
        else:  # blocked events (an older one pending) are looked at again after a poll
            self._next_due[tenant_id] = max(next_due, time.time() + self.poll)
        self.metrics.set_pending(tenant_id, await outbox.pending_count())

    # --- one event ---

    async def _deliver(self, tenant: Tenant, outbox: Outbox, event: Doc) -> _Start:
        if await outbox.has_older_pending(event):
            return _Start.BLOCKED
        claimed_at = time.time()  # claim() dates the lease no earlier than this
        attempt = await outbox.claim(event, self.lease, self.owner)
        if attempt is None:
            return _Start.TAKEN
        fresh = await outbox.get(event["_id"])
        if (fresh is None or fresh["state"] != ev.EventState.PENDING
                or int(fresh.get("attempt", 0)) >= attempt
                or float(fresh["due_at"]) > time.time()):
            # Another process attempted it since we read it (and finished or rescheduled).
            await outbox.release(event["_id"], attempt)
            return _Start.TAKEN
        outcome = await self._attempt(tenant, fresh)
        changes = self._record(tenant, fresh, attempt, outcome)
        # Other processes see the lease expire by their own clocks: up to LEASE_SKEW sooner.
        held_until = claimed_at + self.lease - min(LEASE_SKEW, self.lease / 2)
        if not await outbox.finish_attempt(fresh["_id"], attempt, changes,
                                           held_until=held_until):
            return _Start.SENT  # a later attempt (after our lease expired) recorded its result
        await self._after(tenant, outbox, fresh, attempt, outcome, changes)
        return _Start.SENT

    async def _attempt(self, tenant: Tenant, event: Doc) -> Outcome:
        try:
            target = await self._target(tenant, event)
        except (ApiError, StoreError) as exc:  # e.g. the tenant's plugin cannot load
            return Outcome(ev.EventState.PENDING, f"not sent: {type(exc).__name__}")
        if isinstance(target, Outcome):
            return target
        http = self.http
        try:
            http.check_url(target.url)
        except FetchError as exc:  # never becomes valid: a form refused outside dev mode
            return Outcome(ev.EventState.DISABLED, f"URL refused: {exc}")
        try:
            response = await http.fetch(
                target.url, method="POST", body=event["body"], headers=target.headers,
                timeout=self.timeout, max_bytes=MAX_RESPONSE_BYTES, limit_key=tenant.id)
        except FetchError as exc:
            return Outcome(ev.EventState.PENDING, str(exc))
        if 200 <= response.status < 300:
            final = event["kind"] == ev.SEP12 and event.get("status") in ev.FINAL_STATUSES
            return Outcome(ev.EventState.DELIVERED, "", response.status,
                           clear_url=final and target.own_url, url_set_at=target.set_at)
        if response.status == 410:  # the receiver says: this URL is gone for good
            return Outcome(ev.EventState.DISABLED, "receiver answered 410 Gone", 410,
                           clear_url=target.own_url, url_set_at=target.set_at)
        return Outcome(ev.EventState.PENDING, f"receiver answered {response.status}",
                       response.status, retry_after(response.headers, time.time()))

    async def _target(self, tenant: Tenant, event: Doc) -> Target | Outcome:
        timestamp = int(time.time())
        base = {"Content-Type": "application/json", "Webhook-Id": str(event["_id"])}
        if event["kind"] == ev.SEP12:
            return await self._sep12_target(tenant, event, base, timestamp)
        endpoint = next((e for e in tenant.config.webhooks if e.url == event["url"]), None)
        if endpoint is None:
            return Outcome(ev.EventState.DISABLED, "webhook endpoint removed from the tenant")
        secrets: list[bytes] = []
        for name in (endpoint.secret_env, endpoint.previous_secret_env):
            value = self.environ.get(name) if name else None
            if value and len(value.encode()) >= MIN_SECRET_BYTES:
                secrets.append(value.encode())
            elif name == endpoint.secret_env:
                return Outcome(ev.EventState.PENDING, f"webhook secret: environment variable "
                               f"{name} is not set (or shorter than {MIN_SECRET_BYTES} bytes)")
        headers = {**base, "Webhook-Timestamp": str(timestamp),
                   "Webhook-Signature": webhook_signature(secrets, event["body"], timestamp)}
        return Target(endpoint.url, headers)

    async def _sep12_target(self, tenant: Tenant, event: Doc, base: dict[str, str],
                            timestamp: int) -> Target | Outcome:
        """The URL the customer has registered now (or the tenant's default for its wallet),
        and the SEP-12 signature headers for it."""
        services = self.services
        service = service_for(tenant, services.store, services.settings, services.http,
                              services.metrics)
        record = await service.customers.load(str(event["customer_id"]))
        if record is None:
            return Outcome(ev.EventState.DISABLED, "customer erased")
        url = record.callback_url
        if not url:
            url = tenant.config.callbacks.default_url.get(record.client_domain or "")
        if not url:
            return Outcome(ev.EventState.DISABLED, "no callback URL registered")
        signature = sep12_signature(tenant.secrets.signing_keypair, url, event["body"], timestamp)
        # X-Stellar-Signature: the pre-v1.11 name, still read by older wallets (§4.8).
        headers = {**base, "Signature": signature, "X-Stellar-Signature": signature}
        return Target(url, headers, own_url=bool(record.callback_url),
                      set_at=record.callback_set_at)

    # --- bookkeeping ---

    def _record(self, tenant: Tenant, event: Doc, attempt: int,
                outcome: Outcome) -> dict[str, Any]:
        """The event fields to store after ``attempt`` (retry schedule, dead-letter)."""
        now = time.time()
        changes: dict[str, Any] = {"last_error": outcome.error[:ev.MAX_ERROR_CHARS],
                                   "last_status": outcome.http_status}
        if outcome.state is ev.EventState.DELIVERED:
            # The body is not kept once delivered: nothing can replay it, nothing needs it.
            changes.update(state=str(outcome.state), delivered_at=now, body=b"")
            return changes
        if outcome.state is ev.EventState.DISABLED:
            changes.update(state=str(outcome.state))
            return changes
        policy = tenant.config.callbacks
        if self.max_delay:  # the operator fixed the longest wait (tests use a short one)
            cap, limit = self.max_delay, policy.max_attempts
        else:
            cap, limit = plan(policy.horizon_seconds, policy.max_attempts, self.base)
        wait = Backoff(self.base, cap).delay(attempt, self._rng)
        if outcome.retry_after is not None:
            wait = max(wait, outcome.retry_after)
        due = now + wait
        started = float(event.get("cycle_at") or event["created_at"])
        horizon_end = started + policy.horizon_seconds
        if attempt >= limit or due > horizon_end:
            changes.update(state=str(ev.EventState.DEAD))
        else:
            changes.update(state=str(ev.EventState.PENDING), due_at=due)
        return changes

    async def _after(self, tenant: Tenant, outbox: Outbox, event: Doc, attempt: int,
                     outcome: Outcome, changes: Mapping[str, Any]) -> None:
        state = changes["state"]
        if state == ev.EventState.DELIVERED:
            self.metrics.observe_delivery(
                tenant.id, time.time() - float(event.get("cycle_at") or 0.0))
        elif state == ev.EventState.DISABLED:
            self.metrics.count(tenant.id, "disabled")
        elif state == ev.EventState.DEAD:
            self.metrics.count(tenant.id, "dead_lettered")
            log.warning("tenant %s: callback event %s dead-lettered after %d attempts",
                        tenant.id, event["_id"], attempt, extra={"tenant": tenant.id})
            await self._dead_lettered(tenant, outbox, event, attempt, str(changes["last_error"]))
        else:
            self.metrics.count(tenant.id, "retried")
        if outcome.clear_url and event["kind"] == ev.SEP12:
            # SEP-12 §callbacks: after ACCEPTED/REJECTED the wallet registers again; a 410
            # disables the URL. A URL registered since this one was used is kept.
            service = service_for(tenant, self.services.store, self.services.settings,
                                  self.services.http, self.services.metrics)
            await service.customers.clear_callback_url(str(event["customer_id"]),
                                                       outcome.url_set_at)

    async def _dead_lettered(self, tenant: Tenant, outbox: Outbox, event: Doc, attempts: int,
                             error: str) -> None:
        """Tell the anchor's backend (``callback.dead_lettered``), never about itself."""
        if event["type"] == "callback.dead_lettered":
            return
        for endpoint in tenant.config.webhooks:
            if "callback.dead_lettered" not in endpoint.events:
                continue
            data = {"event_id": event["_id"], "event_type": event["type"],
                    "customer_id": event.get("customer_id", ""), "attempts": attempts,
                    "last_error": error}
            event_id = ev.derived_id(tenant.id, str(event["_id"]), "dead", endpoint.url,
                                     repr(event.get("cycle_at")))
            await outbox.insert(ev.webhook_event(tenant.id, endpoint.url,
                                                 "callback.dead_lettered", data,
                                                 event_id=event_id))
        await outbox.wake()



@dataclass
class _DrainState:
    """One tenant's drain: attempts in flight, due events read but not started yet."""

    inflight: dict[str, asyncio.Task[_Start]] = field(default_factory=dict)
    events: dict[str, Doc] = field(default_factory=dict)  # the events in flight
    resting: dict[str, float] = field(default_factory=dict)  # id -> not before (blocked)
    queue: list[Doc] = field(default_factory=list)
    queried_at: float = 0.0
    full: bool = False  # the last read returned BATCH events: more may be due


class _Start(enum.Enum):
    """How an attempt of :meth:`CallbackWorker._deliver` ended."""

    SENT = "sent"  # attempted, whatever the receiver said: the store has the event's new state
    BLOCKED = "blocked"  # an older event of its customer and channel is pending: later
    TAKEN = "taken"  # another process holds or has attempted it since it was read


@dataclass(slots=True)
class _Marker:
    """A tenant's wake-up marker as this worker last saw it (CallbackWorker._woken)."""

    at: float  # the marker's own value (the writer's clock)
    seen_at: float  # when this worker first saw that value (its own clock)
    done: bool = False  # looked at for WAKE_EVERY after seen_at, then once more


def _startable(drain: _DrainState, now: float) -> list[Doc]:
    """The queued events that may start now: per customer and channel the oldest, unless an
    event of that customer and channel is in flight or the oldest is resting."""
    busy = {_order_key(e) for e in drain.events.values()}
    first: dict[tuple[str, str], Doc] = {}
    for event in drain.queue:
        key = _order_key(event)
        if key not in first or event["seq"] < first[key]["seq"]:
            first[key] = event
    return [event for key, event in first.items()
            if key not in busy and event["_id"] not in drain.inflight
            and drain.resting.get(event["_id"], 0) <= now]


def _order_key(event: Mapping[str, Any]) -> tuple[str, str]:
    """Events with one key are delivered one at a time, oldest first."""
    return (str(event.get("customer_id") or event["_id"]), str(event["channel"]))
