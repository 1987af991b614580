"""The transactional outbox without transactions: events travel inside the customer record.

Neither backend offers a multi-document transaction we may rely on (FerretDB v1 has none), so
"the change and its event in one write" is done with one document (design.md §8):

1. ``before_save`` (called by ``CustomerRepository.save``) recomputes every customer type's
   status with the platform's rules, compares it with the status last notified (kept in the
   record itself, ``record.events["notified"]``) and, for a change, appends the events to
   ``record.events["pending"]``. The record write that stores the change stores its events.
2. ``after_save`` relays them: ``insert_one`` into ``outbox`` with ``_id`` = event id (a second
   relay of the same event is a DuplicateKeyError, i.e. a no-op), then clears them from the
   record with a field update guarded by ``pending_token``: a concurrent save that added
   events of its own has a new token, so its events are never cleared unrelayed.
3. A process that died between 1 and 2 leaves ``has_pending_events`` set; every worker sweeps
   such records (an indexed query) and relays them. So a change acknowledged to a client
   always has its event, and a relay never creates a second one.

Only a status change makes an event: an identical PUT writes nothing, and a save that leaves
every status as it was emits nothing (unless the tenant opted in to field changes). So 100
identical PUTs give at most one event (reliability-plan F4).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kyc_host.callbacks import events as ev
from kyc_host.errors import Conflict, NotFound
from kyc_host.sep.sep12_status import assess, missing_required
from kyc_host.store.base import Doc, DuplicateKeyError, Store, StoreError, gte, in_, lt, lte
from kyc_host.store.customers import CustomerRecord
from kyc_host.tenancy.schema import TenantConfig

log = logging.getLogger(__name__)

#: The SEP-12 GET body of a record for one customer type (Sep12Service.callback_body).
BodyBuilder = Callable[[CustomerRecord, str], Awaitable[Mapping[str, Any]]]
#: Keyed digest (TenantCipher.digest): field fingerprints without storing a hash of PII.
Digest = Callable[[str, bytes], str]
EVENT_NOT_FOUND = "callback event not found"
#: How long delivered events stay listed (then Outbox.purge_delivered removes them).
DELIVERED_RETENTION = 7 * 86400.0
#: Seconds between two wake-up marker writes of one Outbox (see Outbox.wake).
WAKE_EVERY = 1.0
#: Room for the events of one change in the per-customer order (``seq``).
EVENTS_PER_CHANGE = 64
#: ``seq`` of a customer's deletion events: after everything else of that customer.
LAST_SEQ = 2**60


class Outbox:
    """One tenant's outbox: events, attempt leases, and the platform wake-up marker."""

    def __init__(self, store: Store, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.events = store.tenant(tenant_id, "outbox")
        self.leases = store.tenant(tenant_id, "outbox_leases")
        self.customers = store.tenant(tenant_id, "customers")
        self._wake = store.platform("outbox_wake")
        self._woke_at = float("-inf")  # time.monotonic()

    # --- relaying (record -> outbox) ---

    async def insert(self, event: Doc) -> bool:
        """Insert unless it is already there (idempotent by ``_id``); True if inserted."""
        try:
            await self.events.insert_one(dict(event))
        except DuplicateKeyError:
            return False
        return True

    async def relay(self, customer_id: str, pending: list[Doc], token: str) -> int:
        """Move a record's pending events to the outbox, then clear them from the record."""
        inserted = sum([await self.insert(event) for event in pending])
        await self.wake()
        await self.customers.update_one(
            {"_id": customer_id, "pending_token": token},
            set={"events.pending": [], "events.token": "", "has_pending_events": False,
                 "pending_token": ""})
        return inserted

    async def wake(self) -> None:
        """Tell every process's worker that this tenant has new events.

        Workers look at markers of the last few seconds (worker.WAKE_MARGIN) on every poll, so
        one marker write per second per tenant and process is enough.
        """
        tick, now = time.monotonic(), time.time()
        if tick - self._woke_at < WAKE_EVERY:
            return
        self._woke_at = tick
        try:
            await self._wake.update_one({"_id": self.tenant_id}, set={"at": now}, upsert=True)
        except DuplicateKeyError:  # two first upserts raced (FerretDB): it exists now
            await self._wake.update_one({"_id": self.tenant_id}, set={"at": now})

    async def sweep_records(self, older_than: float, limit: int = 100) -> int:
        """Relay the events of records whose writer died before relaying (indexed query)."""
        docs = await self.customers.find(
            {"has_pending_events": True, "updated_at": lt(older_than)}, limit=limit)
        relayed = 0
        for doc in docs:
            state = doc.get("events") or {}
            relayed += await self.relay(str(doc["_id"]), list(state.get("pending") or []),
                                        str(doc.get("pending_token", "")))
        return relayed

    # --- delivery bookkeeping (worker) ---

    async def get(self, event_id: str) -> Doc | None:
        return await self.events.find_one({"_id": event_id})

    async def due(self, now: float, limit: int) -> list[Doc]:
        return await self.events.find({"state": str(ev.EventState.PENDING), "due_at": lte(now)},
                                      sort=[("due_at", 1)], limit=limit)

    async def next_due(self) -> float | None:
        first = await self.events.find({"state": str(ev.EventState.PENDING)},
                                       sort=[("due_at", 1)], limit=1)
        return float(first[0]["due_at"]) if first else None

    async def pending_count(self) -> int:
        return await self.events.count({"state": str(ev.EventState.PENDING)})

    async def has_older_pending(self, event: Doc) -> bool:
        """Whether the previous event of the same customer and channel (``after``) is still
        pending: then this one waits, so a wallet never sees a newer status before an older
        one. Given-up events (dead, disabled) no longer hold anything up. One ``_id`` lookup
        (the chain makes it transitive: the previous one waited for its own predecessor)."""
        after = event.get("after")
        if not after:
            return False
        previous = await self.events.find_one({"_id": after})
        return previous is not None and previous["state"] == ev.EventState.PENDING

    async def claim(self, event: Doc, lease_seconds: float, owner: str) -> int | None:
        """Claim the next attempt of ``event``; the attempt number, or None if busy.

        The claim is ``insert_one`` of ``<event id>:<attempt>``: unique, so two processes can
        never hold the same attempt (the one exclusivity primitive that works on FerretDB
        v1). A lease whose holder died expires; the next claimer then takes attempt + 1.
        """
        attempt = int(event.get("attempt", 0)) + 1
        now = time.time()
        for _ in range(10):
            lease = {"_id": f"{event['_id']}:{attempt}", "event_id": event["_id"],
                     "owner": owner, "expires_at": now + lease_seconds}
            try:
                await self.leases.insert_one(lease)
                return attempt
            except DuplicateKeyError:
                held = await self.leases.find_one({"_id": lease["_id"]})
                if held is not None and float(held["expires_at"]) > now:
                    return None  # another process is on it
                attempt += 1  # its holder died (or finished and we read an old event)
        return None

    async def release(self, event_id: str, attempt: int) -> None:
        await self.leases.delete_one({"_id": f"{event_id}:{attempt}"})

    async def finish_attempt(self, event_id: str, attempt: int, changes: Mapping[str, Any],
                             *, held_until: float = 0.0) -> bool:
        """Record attempt ``attempt``'s outcome, unless a later attempt already did (a holder
        whose lease had expired must not overwrite its successor's result).

        ``held_until``: until then (this process's clock, the tolerated clock skew already
        taken off) the lease of ``attempt`` surely holds. A later attempt can only be claimed
        once it expired (:meth:`claim`), so before then there is no successor and the read
        that looks for one is skipped (one store round trip less per delivered event).

        The lease stays until it expires (the next attempt claims ``attempt + 1``) and is
        then removed by :meth:`drop_expired_leases`: one write per attempt instead of two.
        """
        if time.time() >= held_until:
            current = await self.events.find_one({"_id": event_id})
            if current is None or int(current.get("attempt", 0)) >= attempt:
                return False
        # Read, then write by _id alone: a filter on _id plus another field is a full scan on
        # FerretDB (and no more atomic there); the lease makes a concurrent writer of the
        # same event possible only after a lease expiry, and then the check above stops it.
        fields = {**changes, "attempt": attempt, "updated_at": time.time()}
        return await self.events.update_one({"_id": event_id}, set=fields) == 1

    async def purge_delivered(self, now: float, dead_retention: float = 0.0) -> int:
        """Delivered events are kept :data:`DELIVERED_RETENTION` seconds (for the delivery
        log), then removed, so the outbox does not grow without bound. Dead and disabled
        events (a body each, kept for an admin's replay) are removed ``dead_retention``
        seconds after they became so (0: they stay until replayed)."""
        removed = await self.events.delete_many({"state": str(ev.EventState.DELIVERED),
                                                 "updated_at": lt(now - DELIVERED_RETENTION)})
        if dead_retention > 0:
            removed += await self.events.delete_many(
                {"state": in_([str(ev.EventState.DEAD), str(ev.EventState.DISABLED)]),
                 "updated_at": lt(now - dead_retention)})
        return removed

    async def drop_expired_leases(self, now: float) -> int:
        """Expired leases decide nothing any more (a claimer skips past them), so they go."""
        return await self.leases.delete_many({"expires_at": lt(now)})

    # --- operators and tenant admins ---

    async def list(self, *, state: str | None = None, customer_id: str | None = None,
                   before: float | None = None, limit: int = 50) -> list[Doc]:
        """Newest first; ``before`` is the ``created_at`` cursor of the previous page."""
        flt: dict[str, Any] = {}
        if state is not None:
            flt["state"] = state
        if customer_id is not None:
            flt["customer_id"] = customer_id
        if before is not None:
            flt["created_at"] = lt(before)
        return await self.events.find(flt, sort=[("created_at", -1)], limit=limit)

    async def replay(self, event_id: str) -> Doc:
        """A dead (or disabled) event back to pending, due now, with a fresh retry horizon.

        Raises NotFound for an unknown id and Conflict for an event that is not given up.
        """
        event = await self.get(event_id)
        if event is None:
            raise NotFound(EVENT_NOT_FOUND)
        if event["state"] not in (ev.EventState.DEAD, ev.EventState.DISABLED):
            raise Conflict(f"only dead or disabled events can be replayed; this one is "
                           f"{event['state']}")
        if not event.get("body"):
            raise Conflict("this event's body was erased with its customer")
        await self.leases.delete_many({"event_id": event_id})
        now = time.time()
        changes = {"state": str(ev.EventState.PENDING), "attempt": 0, "due_at": now,
                   "cycle_at": now, "updated_at": now, "last_error": "", "last_status": 0}
        await self.events.update_one({"_id": event_id, "state": event["state"]}, set=changes)
        await self.wake()
        return {**event, **changes}

    async def scrub_customer(self, customer_id: str) -> None:
        """At erasure: the customer's undelivered SEP-12 callbacks are dropped (their URL is
        erased with the record) and every SEP-12 body of that customer is blanked, so no
        decision message outlives the customer."""
        events = await self.events.find({"customer_id": customer_id, "created_at": gte(0.0)})
        for event in (e for e in events if e["kind"] == ev.SEP12):
            changes: dict[str, Any] = {"body": b"", "updated_at": time.time()}
            if event["state"] == ev.EventState.PENDING:
                changes.update(state=str(ev.EventState.DISABLED),
                               last_error="customer erased")
            await self.events.update_one({"_id": event["_id"]}, set=changes)


def chain(state: dict[str, Any], events: list[Doc]) -> None:
    """Point each new event at the previous event of its customer and channel (``after``),
    and remember the newest one per channel in the record's outbox state."""
    last = {p["channel"]: p["id"] for p in state.get("last") or []}
    for event in events:
        event["after"] = last.get(event["channel"], "")
        last[event["channel"]] = event["_id"]
    if events:
        state["last"] = [{"channel": c, "id": i} for c, i in last.items()]


async def woken_tenants(store: Store, since: float) -> dict[str, float]:
    """Tenants that relayed events at or after ``since``, with their marker's ``at`` (one
    indexed platform query)."""
    docs = await store.platform("outbox_wake").find({"at": gte(since)})
    return {str(d["_id"]): float(d["at"]) for d in docs}


@dataclass(frozen=True, slots=True)
class Change:
    """What one save did to one customer type."""

    type_name: str
    previous: str | None
    status: str
    submitted: bool  # all required fields are provided now, and were not before
    fields_changed: bool

    @property
    def status_changed(self) -> bool:
        return self.previous != self.status


class OutboxObserver:
    """Writes a tenant's events with the record change that causes them (module docstring).

    Installed on the tenant's CustomerRepository by the SEP-12 service builder, so every
    path that saves a customer (wallet PUTs, verification codes, reviewer decisions through
    the SEP-12 service, plugins) emits events the same way.
    """

    def __init__(self, tenant_id: str, config: TenantConfig, outbox: Outbox,
                 body: BodyBuilder, digest: Digest) -> None:
        self.tenant_id = tenant_id
        self.config = config
        self.outbox = outbox
        self._body = body
        self._digest = digest

    # --- RecordObserver ---

    async def before_save(self, record: CustomerRecord) -> None:
        events: list[Doc] = []
        for change in self._changes(record):
            events.extend(await self._events_for(record, change))
        chain(record.events, events)
        if events:
            pending = list(record.events.get("pending") or [])
            record.events["pending"] = pending + events
            # A new token per save that adds events: a relay of an older save clears only
            # what it relayed (see Outbox.relay).
            record.events["token"] = uuid.uuid4().hex

    async def after_save(self, record: CustomerRecord) -> None:
        pending = list(record.events.get("pending") or [])
        if not pending:
            return
        try:
            await self.outbox.relay(record.id, pending, str(record.events.get("token", "")))
        except StoreError as exc:
            # The events are durable in the record already; the sweeper relays them later.
            log.warning("tenant %s: outbox relay deferred: %s", self.tenant_id, exc,
                        extra={"tenant": self.tenant_id})
            return
        record.events["pending"] = []
        record.events["token"] = ""

    async def before_delete(self, customer_id: str) -> None:
        raw = await self.outbox.customers.find_one({"_id": customer_id})
        if raw is not None and raw.get("has_pending_events"):
            state = raw.get("events") or {}
            await self.outbox.relay(customer_id, list(state.get("pending") or []),
                                    str(raw.get("pending_token", "")))
        deleted = [
            ev.webhook_event(self.tenant_id, endpoint.url, "customer.deleted",
                             {"customer_id": customer_id}, customer_id=customer_id,
                             seq=LAST_SEQ, event_id=ev.derived_id(self.tenant_id, customer_id,
                                                                  "deleted", endpoint.url))
            for endpoint in self.config.webhooks if "customer.deleted" in endpoint.events]
        chain(dict((raw or {}).get("events") or {}), deleted)
        for event in deleted:
            await self.outbox.insert(event)
        await self.outbox.scrub_customer(customer_id)
        await self.outbox.wake()

    # --- what changed ---

    def _changes(self, record: CustomerRecord) -> list[Change]:
        notified = {n["type"]: n for n in record.events.get("notified") or []}
        fields_changed = self._fields_changed(record)
        changes: list[Change] = []
        for type_name, state in record.types.items():
            ctype = self.config.customer_types.get(type_name)
            if ctype is None:
                continue  # a type the tenant no longer offers
            status = str(assess(ctype, record).status)
            state.status = status  # keep TypeState.status in step for every type
            complete = not missing_required(ctype, record)
            before = notified.get(type_name) or {}
            change = Change(type_name, before.get("status"), status,
                            complete and not before.get("complete", False), fields_changed)
            if change.status_changed or change.submitted or change.fields_changed:
                changes.append(change)
            notified[type_name] = {"type": type_name, "status": status, "complete": complete}
        record.events["notified"] = list(notified.values())
        return changes

    def _fields_changed(self, record: CustomerRecord) -> bool:
        """With ``notify_on_field_change``: whether field values or files changed since the
        last save (a keyed digest, so the record holds no plain hash of PII)."""
        if not self.config.callbacks.notify_on_field_change:
            record.events.pop("fingerprint", None)
            return False
        canonical = ev.serialize({"fields": sorted(record.fields.items()),
                                  "files": sorted(record.files.items())})
        fingerprint = self._digest("callback-fields", canonical)
        before = record.events.get("fingerprint")
        record.events["fingerprint"] = fingerprint
        return before is not None and before != fingerprint

    # --- which events ---

    def has_target(self, record: CustomerRecord) -> bool:
        """A SEP-12 callback goes only where this customer's wallet asked (or the tenant's
        default for that wallet); with neither, no callback event is written."""
        if record.callback_url:
            return True
        return bool(record.client_domain
                    and record.client_domain in self.config.callbacks.default_url)

    async def _events_for(self, record: CustomerRecord, change: Change) -> list[Doc]:
        """The events of one change. Their ids are derived from the change itself (customer,
        type, sequence number, old and new status), so two writers that make the same change
        from the same stored state -- 20 concurrent identical PUTs on two processes -- write
        one event, not two (reliability-plan F4)."""
        seq = int(record.events.get("seq", 0)) + 1
        out: list[Doc] = []

        def order() -> int:
            # Events of one change are ordered too (status_changed before submitted).
            return seq * EVENTS_PER_CHANGE + len(out)

        def event_id(channel: str) -> str:
            return ev.derived_id(self.tenant_id, record.id, change.type_name, channel, str(seq),
                                 str(change.previous), change.status,
                                 str(record.events.get("fingerprint", "")))

        wallet_wants = change.status_changed or (
            change.fields_changed and self.config.callbacks.notify_on_field_change)
        if wallet_wants and self.has_target(record):
            body = await self._body(record, change.type_name)
            out.append(ev.sep12_event(record.id, change.type_name, order(), body,
                                      event_id=event_id(ev.SEP12)))
        for endpoint in self.config.webhooks:
            for kind, wanted in (("customer.status_changed", change.status_changed),
                                 ("customer.submitted", change.submitted)):
                if not wanted or kind not in endpoint.events:
                    continue
                data: dict[str, str | None] = {
                    "customer_id": record.id, "customer_type": change.type_name,
                    "status": change.status}
                if kind == "customer.status_changed":
                    data["previous_status"] = change.previous
                out.append(ev.webhook_event(
                    self.tenant_id, endpoint.url, kind, data, customer_id=record.id,
                    customer_type=change.type_name, status=change.status, seq=order(),
                    event_id=event_id(f"{kind}|{endpoint.url}")))
        if out:
            record.events["seq"] = seq
        return out
