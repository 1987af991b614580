"""The review queue of one tenant: customers by status and type, paged by ``updated_at``.

One row per (customer, customer type) in the tenant's ``review_queue`` collection::

    {"_id": "<customer id>|<type>", "customer_id", "type", "status", "updated_us"}

``status`` is that type's last computed SEP-12 status ("" before the first computation);
``updated_us`` is the customer's ``updated_at`` in whole microseconds (integers compare exactly
on every backend; a float re-parsed by SQLite's JSON functions might not). Rows hold no PII, so
admins filter and page without decrypting a record. :class:`CustomerRepository` rewrites a
customer's rows on every save and removes them before it erases the customer.

Paging. Rows are ordered by ``(updated_us, customer_id, type)``, newest first or oldest
first. A position is the ``(updated_us, customer_id)`` of the last customer shown; the next
page is the rows at the same time with a later id, then the rows strictly past that time. Store
filters are conjunctions only, so that is two queries. A walk over a queue that does not
change meanwhile never repeats or skips a customer, even when customers share a timestamp; a
customer with several matching types has adjacent rows (one save writes them all with one
time) and is shown once. A customer updated during a walk moves to its new place (it may then
be met again, or not at all, as with any cursor over a changing sort key).

Repair. A save writes the record, then its rows. A request cut between the two -- its store
budget spent (store/bounded.py), the store failing, ``kill -9`` -- leaves rows that no
longer match the record, and an identical retry writes nothing, so the customer would stay
in the wrong place of the queue (e.g. missing from ``status=PROCESSING``). :meth:`repair`,
run by the purge job, compares the rows with the records saved since its last run (a
checkpoint in the tenant's ``checkpoints`` collection) and rewrites stale ones. It reads
only clear fields (``updated_at`` and the types' statuses): no record is decrypted.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from kyc_host.store.base import Doc, DuplicateKeyError, Store, gt, gte, in_, lt

if TYPE_CHECKING:
    from kyc_host.store.customers import CustomerRecord

COLLECTION = "review_queue"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(timestamp: float) -> int:
    """A Unix time in whole microseconds (the queue's sort key), rounded exactly as the
    ISO-8601 times the API shows are, so ``updated_since=<a shown time>`` includes it."""
    return moment_micros(datetime.fromtimestamp(timestamp, UTC))


def moment_micros(moment: datetime) -> int:
    """An aware datetime in whole microseconds since the epoch (integer arithmetic)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ends: the last customer shown and its row time."""

    updated_us: int
    customer_id: str


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Which rows a listing wants. ``customer_ids`` None means any customer."""

    status: str | None = None
    type: str | None = None
    customer_ids: tuple[str, ...] | None = None
    since_us: int | None = None


COLLECTION_CHECKPOINTS = "checkpoints"
_CHECKPOINT = "review_queue_repair"
#: Records saved this recently are left to the save writing them (its rows may be on the way).
REPAIR_GRACE_SECONDS = 60.0
#: Records compared per store round trip.
REPAIR_PAGE = 500
#: A row this close to its record's time was written by the save that wrote the record: the
#: SQLite store keeps a float to 15 significant digits (about 10 us for today's times), so
#: the time read back may differ from the one the save put in its rows by a few us.
_SAME_SAVE_US = 100


def rows_for(record: CustomerRecord) -> list[Doc]:
    """The queue rows of a record as it is about to be saved."""
    return _rows(record.id, record.updated_at,
                 ((type_name, state.status) for type_name, state in record.types.items()))


def _rows(customer_id: str, updated_at: float,
          statuses: Iterable[tuple[str, str | None]]) -> list[Doc]:
    updated = micros(updated_at)
    return [{"_id": f"{customer_id}|{type_name}", "customer_id": customer_id,
             "type": type_name, "status": status or "", "updated_us": updated}
            for type_name, status in statuses]


def _stored_rows(doc: Doc) -> list[Doc]:
    """The rows a stored customer document should have (its clear fields only)."""
    return _rows(str(doc["_id"]), float(doc["updated_at"]),
                 ((str(t["type"]), t.get("status")) for t in doc.get("types") or ()))


class ReviewQueue:
    """The queue rows of one tenant."""

    def __init__(self, store: Store, tenant_id: str) -> None:
        self._rows = store.tenant(tenant_id, COLLECTION)
        self._customers = store.tenant(tenant_id, "customers")
        self._erasures = store.tenant(tenant_id, "erasures")
        self._checkpoints = store.tenant(tenant_id, COLLECTION_CHECKPOINTS)

    async def put(self, record: CustomerRecord) -> None:
        """Write the record's rows (after the record itself was written)."""
        for row in rows_for(record):
            try:
                await self._rows.replace_one({"_id": row["_id"]}, row, upsert=True)
            except DuplicateKeyError:
                # Two upserts of a new row raced; the other created it, so replace it now.
                await self._rows.replace_one({"_id": row["_id"]}, row)

    async def remove(self, customer_id: str) -> None:
        await self._rows.delete_many({"customer_id": customer_id})

    async def repair(self, *, now: float | None = None, dry_run: bool = False) -> list[str]:
        """Rewrite the rows of customers saved since the last repair (and more than
        REPAIR_GRACE_SECONDS ago) that do not match their records; returns those customers'
        ids. Idempotent, and safe beside saves and other processes' repairs: a row is only
        ever moved forward in time, never over a newer one."""
        until = (time.time() if now is None else now) - REPAIR_GRACE_SECONDS
        mark = await self._checkpoints.find_one({"_id": _CHECKPOINT})
        since = float(mark["through"]) if mark else 0.0
        repaired: list[str] = []
        while since < until:
            docs = await self._customers.find({"updated_at": gte(since)},
                                              sort=[("updated_at", 1)], limit=REPAIR_PAGE,
                                              fields=["updated_at", "types"])
            due = [d for d in docs if float(d["updated_at"]) < until]
            repaired += await self._repair_page(due, dry_run)
            if len(due) < REPAIR_PAGE:
                since = until  # everything saved before ``until`` is compared
            else:
                last = float(due[-1]["updated_at"])
                # The next page starts at the last time seen (its records are compared
                # again, harmlessly); past it if a whole page shared that time.
                since = last if last > since else math.nextafter(last, math.inf)
            if not dry_run:
                await self._checkpoints.replace_one({"_id": _CHECKPOINT},
                                                    {"_id": _CHECKPOINT, "through": since},
                                                    upsert=True)
        return repaired

    async def _repair_page(self, docs: list[Doc], dry_run: bool) -> list[str]:
        if not docs:
            return []
        ids = [str(d["_id"]) for d in docs]
        # A customer being erased (or held) is the erasure's to finish, rows included.
        erasing = {str(d["_id"]) for d in await self._erasures.find({"_id": in_(ids)},
                                                                     fields=[])}
        have = {str(r["_id"]): int(r.get("updated_us", 0))
                for r in await self._rows.find({"customer_id": in_(ids)},
                                               fields=["updated_us"])}
        repaired: list[str] = []
        for doc in docs:
            if str(doc["_id"]) in erasing:
                continue
            stale = [row for row in _stored_rows(doc)
                     if have.get(row["_id"], -1) < row["updated_us"] - _SAME_SAVE_US]
            if not stale:
                continue
            repaired.append(str(doc["_id"]))
            if dry_run:
                continue
            for row in stale:
                if row["_id"] not in have:
                    with contextlib.suppress(DuplicateKeyError):  # a save wrote it meanwhile
                        await self._rows.insert_one(row)
                    continue
                fields = {k: v for k, v in row.items() if k != "_id"}
                # Conditional: a save that wrote a newer row meanwhile is left alone.
                await self._rows.update_one(
                    {"_id": row["_id"], "updated_us": lt(row["updated_us"] - _SAME_SAVE_US)},
                    set=fields)
        return repaired

    async def page(self, flt: QueueFilter, *, limit: int, newest_first: bool = True,
                   after: Position | None = None) -> tuple[list[Position], Position | None]:
        """Up to ``limit`` customers in queue order after ``after``; returns them and the
        position to continue from (None when this was the last page)."""
        found: list[Position] = []
        seen: set[str] = set()
        at = after
        size = limit + 1
        while len(found) <= limit:
            rows, more = await self._batch(flt, at, newest_first, size)
            for row in rows:
                position = Position(int(row["updated_us"]), str(row["customer_id"]))
                if position.customer_id not in seen:
                    seen.add(position.customer_id)
                    found.append(position)
            if not more or not rows:
                break
            at = Position(int(rows[-1]["updated_us"]), str(rows[-1]["customer_id"]))
        if len(found) > limit:
            return found[:limit], found[limit - 1]
        return found, None

    async def _batch(self, flt: QueueFilter, at: Position | None, newest: bool,
                     size: int) -> tuple[list[Doc], bool]:
        """The next ``size`` rows after ``at``; the flag says whether more may follow."""
        since = flt.since_us
        if at is not None and since is not None and at.updated_us < since:
            if newest:
                return [], False  # everything after the cursor is older than ``since``
            at = None  # oldest first: ``since`` is further on than the cursor
        direction = -1 if newest else 1
        base = self._base(flt)
        rows: list[Doc] = []
        if at is not None:
            same = {**base, "updated_us": at.updated_us,
                    "customer_id": self._ids_after(flt, at.customer_id, newest)}
            rows = await self._rows.find(same, sort=[("customer_id", direction),
                                                     ("type", direction)], limit=size)
            if len(rows) == size:
                return rows, True
        rest = dict(base)
        if at is not None:
            rest["updated_us"] = lt(at.updated_us) if newest else gt(at.updated_us)
        elif since is not None:
            rest["updated_us"] = gte(since)
        wanted = size - len(rows)
        later = await self._rows.find(rest, sort=[("updated_us", direction),
                                                  ("customer_id", direction),
                                                  ("type", direction)], limit=wanted)
        rows += later
        more = len(later) == wanted
        if newest and since is not None:
            kept = [r for r in rows if int(r["updated_us"]) >= since]  # a prefix: rows descend
            if len(kept) < len(rows):
                return kept, False
        return rows, more

    @staticmethod
    def _base(flt: QueueFilter) -> dict[str, Any]:
        base: dict[str, Any] = {}
        if flt.status is not None:
            base["status"] = flt.status
        if flt.type is not None:
            base["type"] = flt.type
        if flt.customer_ids is not None:
            base["customer_id"] = in_(list(flt.customer_ids))
        return base

    @staticmethod
    def _ids_after(flt: QueueFilter, customer_id: str, newest: bool) -> Any:
        """The customer-id condition for rows sharing the cursor's time.

        With an id filter the set is narrowed here (a filter holds one condition per field).
        Python compares str by code point, which is the byte order both backends use for
        these ASCII ids."""
        if flt.customer_ids is None:
            return lt(customer_id) if newest else gt(customer_id)
        return in_(_beyond(flt.customer_ids, customer_id, newest))


def _beyond(ids: Sequence[str], customer_id: str, newest: bool) -> list[str]:
    return [i for i in ids if (i < customer_id if newest else i > customer_id)]
