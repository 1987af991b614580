"""Erasing a customer: crypto-shredding at once, or holding for a retention period first.

Every customer record and every file has its own data key, stored only beside it, wrapped by
the tenant's key-encryption key (crypto/records.py). Deleting the record destroys that key,
so every copy of the ciphertext -- a backup, a replica, a copied SQLite file -- can no
longer be decrypted with anything the platform holds (crypto-shredding, design.md §6).

:meth:`Erasures.erase` is the one erasure path (the wallet's DELETE and the management API's
both reach it through ``Sep12Service.erase_customer``). The tenant's ``[retention]`` policy
decides between:

- **shred now** (``keep_days = 0``, the default): an intent tombstone is written first, then
  identities, transaction bindings, the record (its data key) and its files and blobs go.
- **hold** (a retention period, or a legal hold on the customer): the still-encrypted record
  moves to the ``erasures`` collection, the customer disappears for the wallet at once (its
  identities go, files lose their uploader link), and the purge job shreds it after
  ``keep_days`` unless a legal hold pauses that. Held data is readable only through the
  audited auditor path (``kyc-host customer show-held``).

Every erasure writes a proof-of-deletion audit entry: customer id, time, the KEK version that
wrapped the destroyed data key and counts -- never a value. Shredding is idempotent: two
processes shredding one record at once both succeed (the second finds nothing left).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kyc_host import audit
from kyc_host.crypto.records import TenantCipher
from kyc_host.retention.config import Retention
from kyc_host.store.base import Doc, Store, fresh_batches, gte, in_, lte, ne
from kyc_host.store.customers import COLLECTION as CUSTOMERS
from kyc_host.store.customers import CustomerRecord, CustomerRepository
from kyc_host.store.files import FileRepository

DAY = 86400.0
#: Tombstones younger than this are re-checked for a record resurrected by a racing write
#: (a PUT that loaded the customer before the DELETE and saved after it).
RESURRECTION_WINDOW = DAY
BATCH = 200


@dataclass(frozen=True, slots=True)
class ErasureResult:
    customer_id: str
    held_until: float | None  # None: shredded at once
    kek_version: int
    files: int


@dataclass(slots=True)
class PurgeReport:
    """What one purge run did (or, with ``dry_run``, would do) for one tenant."""

    tenant: str
    shredded: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # interrupted erasures completed
    resurrected: list[str] = field(default_factory=list)  # racing writes removed again
    paused: list[str] = field(default_factory=list)  # due, but under legal hold (a batch)
    expired_files: int = 0
    attached_files: int = 0  # expired, but named by their customer's record: a PUT cut midway
    interrupted_files: int = 0  # leftover chunks of crashed file writes/deletes removed
    exposed: int = 0  # shredded customers whose KEK version was still held before this run
    kek_rotated: bool = False
    queue_repaired: list[str] = field(default_factory=list)  # review-queue rows rewritten

    def to_json(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "shredded": self.shredded, "finished": self.finished,
                "resurrected": self.resurrected, "legal_hold": self.paused,
                "expired_files": self.expired_files, "attached_files": self.attached_files,
                "interrupted_files": self.interrupted_files, "exposed": self.exposed,
                "kek_rotated": self.kek_rotated, "queue_repaired": self.queue_repaired}


#: The collections whose documents name a customer in ``customer_id`` and go with it (the
#: review-queue rows too: an erasure cut after the record's write, or a record a racing PUT
#: wrote back, left them behind).
_BY_CUSTOMER = ("identities", "transactions", "review_queue")


class Erasures:
    """Erasure, holding, legal holds and purging for one tenant."""

    def __init__(self, store: Store, tenant_id: str, cipher: TenantCipher,
                 retention: Retention) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.cipher = cipher
        self.retention = retention
        self.files = FileRepository(store, tenant_id, cipher)
        self._erasures = store.tenant(tenant_id, "erasures")
        self._customers = store.tenant(tenant_id, "customers")
        self._file_docs = store.tenant(tenant_id, "files")

    # --- erasing ---

    async def erase(self, customers: CustomerRepository, record: CustomerRecord, *,
                    actor: str, request_id: str | None = None) -> ErasureResult:
        """Erase ``record`` now or hold it, per the tenant's retention and any legal hold."""
        marker = await self._erasures.find_one({"_id": record.id})
        legal_hold = bool(marker and marker.get("legal_hold"))
        days = self.retention.days_for(record.types)
        file_ids = await self._file_ids(record.id, record.files.values())
        kek_version = int(record.wrapped_key.get("v", 0))
        if days > 0 or legal_hold:
            return await self._hold(customers, record, file_ids, days, legal_hold,
                                    actor=actor, request_id=request_id)
        now = time.time()
        await self._erasures.replace_one(
            {"_id": record.id},
            {"_id": record.id, "state": "shredding", "deleted_at": now, "shred_after": now,
             "kek_version": kek_version, "files": file_ids, "legal_hold": False}, upsert=True)
        await customers.delete(record.id)
        await self._shred(record.id, file_ids, kek_version, held_since=None, actor=actor,
                          request_id=request_id)
        return ErasureResult(record.id, None, kek_version, len(file_ids))

    async def _hold(self, customers: CustomerRepository, record: CustomerRecord,
                    file_ids: list[str], days: int, legal_hold: bool, *, actor: str,
                    request_id: str | None) -> ErasureResult:
        raw = await self._customers.find_one({"_id": record.id})
        now = time.time()
        until = now + days * DAY
        kek_version = int((raw or {}).get("key", record.wrapped_key).get("v", 0))
        held: Doc = {
            "_id": record.id, "state": "held", "deleted_at": now, "shred_after": until,
            "legal_hold": legal_hold, "types": sorted(record.types), "kek_version": kek_version,
            "files": file_ids, "record": raw,
        }
        # The held copy is written before anything is removed: a crash midway leaves the
        # customer either untouched or held, and the purge job finishes the removal.
        await self._erasures.replace_one({"_id": record.id}, held, upsert=True)
        for file_id in file_ids:
            # The uploader's link goes, so the wallet can no longer list or reuse the file.
            await self._file_docs.update_one({"_id": file_id},
                                             set={"owner": "", "owner_account": "",
                                                  "held": True})
        await customers.delete(record.id)
        await audit.record(self.store, self.tenant_id, actor=actor, action="customer.hold",
                           customer_id=record.id, fields=sorted(record.fields),
                           request_id=request_id,
                           details={"keep_days": days, "legal_hold": legal_hold,
                                    "shred_after": audit.iso(until),
                                    "kek_version": kek_version, "files": len(file_ids)})
        return ErasureResult(record.id, until, kek_version, len(file_ids))

    async def _shred(self, customer_id: str, file_ids: list[str], kek_version: int, *,
                     held_since: float | None, actor: str,
                     request_id: str | None = None) -> None:
        """Destroy every key of the customer (record and files), then leave a tombstone and
        the proof of deletion. Safe to repeat."""
        await self._customers.delete_one({"_id": customer_id})  # no-op unless resurrected
        file_ids = await self._file_ids(customer_id, file_ids)
        await self.files.delete(file_ids)
        now = time.time()
        await self._erasures.replace_one(
            {"_id": customer_id},
            {"_id": customer_id, "state": "shredded", "shredded_at": now, "shred_after": now,
             "kek_version": kek_version, "files": [], "legal_hold": False}, upsert=True)
        details: dict[str, Any] = {"kek_version": kek_version, "data_key": "destroyed",
                                   "files": len(file_ids)}
        if held_since is not None:
            details["held_since"] = audit.iso(held_since)
        await audit.record(self.store, self.tenant_id, actor=actor,
                           action="customer.erase" if held_since is None else "customer.shred",
                           customer_id=customer_id, request_id=request_id, details=details)

    async def _file_ids(self, customer_id: str, known: Iterable[str]) -> list[str]:
        attached = await self._file_docs.find({"customer_id": customer_id}, limit=10_000)
        return sorted({*known, *(str(d["_id"]) for d in attached)})

    # --- legal hold and the auditor path ---

    async def set_legal_hold(self, customer_id: str, on: bool) -> str | None:
        """Set or clear the legal hold; returns the customer's state ("live" or "held"), or
        None if there is no such customer (or it was shredded already)."""
        marker = await self._erasures.find_one({"_id": customer_id})
        if marker is not None and marker.get("state") in ("held", "live"):
            await self._erasures.update_one({"_id": customer_id}, set={"legal_hold": on})
            return str(marker["state"])
        if await self._customers.find_one({"_id": customer_id}) is None:
            return None
        # A live customer: the hold is remembered and applies if the customer is erased.
        await self._erasures.replace_one(
            {"_id": customer_id},
            {"_id": customer_id, "state": "live", "legal_hold": on, "shred_after": 0.0},
            upsert=True)
        return "live"

    async def held(self, customer_id: str | None = None) -> list[Doc]:
        """Held records (without their ciphertext), oldest deletion first."""
        flt: dict[str, Any] = {"state": "held"}
        if customer_id is not None:
            flt["_id"] = customer_id
        docs = await self._erasures.find(flt, sort=[("deleted_at", 1)], limit=10_000)
        return [{k: v for k, v in d.items() if k != "record"} for d in docs]

    async def open_held(self, customer_id: str) -> dict[str, str] | None:
        """The decrypted fields of a held record (auditor path; the caller audits)."""
        doc = await self._erasures.find_one({"_id": customer_id, "state": "held"})
        if doc is None or not doc.get("record"):
            return None
        raw = doc["record"]
        cipher = self.cipher.open_record(CUSTOMERS, customer_id, raw["key"])
        return {f["name"]: cipher.open_text(f"field:{f['name']}", f["value"])
                for f in raw.get("fields", [])}

    # --- purging ---

    async def purge(self, *, actor: str = "system", dry_run: bool = False,
                    now: float | None = None) -> PurgeReport:
        """Shred held records past their period (not under legal hold), finish interrupted
        erasures, remove records resurrected by racing writes, drop expired unattached
        uploads and the chunks of interrupted file writes and deletes. Idempotent; safe to
        run in every process at once."""
        at = time.time() if now is None else now
        report = PurgeReport(self.tenant_id)
        await self._shred_due(at, report, actor, dry_run)
        for doc in await self._erasures.find({"state": "shredding"}, limit=BATCH):
            report.finished.append(str(doc["_id"]))
            if not dry_run:
                await self._finish(doc, actor)
        await self._sweep_resurrected(at, report, dry_run)
        if not dry_run:
            report.expired_files, report.attached_files = await self.files.purge_expired(at)
            report.interrupted_files = await self.files.purge_interrupted(at)
        return report

    async def _shred_due(self, at: float, report: PurgeReport, actor: str,
                         dry_run: bool) -> None:
        """Shred the held records due at ``at``, a batch at a time until none is left.

        Legal holds are left out by the query, not skipped after it: due records under a
        legal hold (one with ``keep_days = 0`` is due at once) would otherwise come first in
        every batch, and once a batch's worth piled up no other customer of the tenant would
        be shredded again. ``ne(True)``: a marker without the field is not under a hold."""
        due = {"state": "held", "shred_after": lte(at)}
        report.paused = [str(d["_id"]) for d in await self._erasures.find(
            {**due, "legal_hold": True}, sort=[("shred_after", 1)], limit=BATCH, fields=[])]

        def batch() -> Awaitable[list[Doc]]:
            return self._erasures.find({**due, "legal_hold": ne(True)},
                                       sort=[("shred_after", 1)], limit=BATCH)

        async for docs in fresh_batches(batch, BATCH):
            for doc in docs:
                report.shredded.append(str(doc["_id"]))
                if not dry_run:
                    # Rotations re-wrapped the held key since: name the version that wraps it now.
                    wrapped: dict[str, Any] = (doc.get("record") or {}).get("key") or {}
                    await self._shred(str(doc["_id"]), list(doc.get("files", [])),
                                      int(wrapped.get("v") or doc.get("kek_version") or 0),
                                      held_since=float(doc.get("deleted_at", at)), actor=actor)
            if dry_run:  # it would read the same batch again
                return

    async def exposed(self, held_versions: list[int]) -> int:
        """Shredded customers whose data key was wrapped by a KEK version the tenant still
        holds (``held_versions``, read from the store: this cipher may be a version behind):
        a copy of the store taken before their erasure could still be opened with that KEK.
        Retiring it (a KEK rotation) closes that; the purge job does so."""
        return await self._erasures.count({"state": "shredded",
                                           "kek_version": in_(held_versions)})

    async def _finish(self, doc: Doc, actor: str) -> None:
        customer_id = str(doc["_id"])
        for name in _BY_CUSTOMER:
            await self.store.tenant(self.tenant_id, name).delete_many(
                {"customer_id": customer_id})
        await self._shred(customer_id, list(doc.get("files", [])),
                          int(doc.get("kek_version", 0)), held_since=None, actor=actor)

    async def _sweep_resurrected(self, at: float, report: PurgeReport, dry_run: bool) -> None:
        """A PUT that loaded a customer before its DELETE may write the record back after
        it: such a record is unreachable (its identities are gone) but would keep its data
        key. The ids erased within :data:`RESURRECTION_WINDOW` -- shredded at once, or held
        -- are checked against the live collection, every one of them (it used to be the
        first batch of each: a day with more erasures left the others unchecked), and a
        record found is removed again. Held records erased earlier were checked in the
        runs of their first day, and their shredding removes a live record too."""
        since = at - RESURRECTION_WINDOW
        # A shredded tombstone's shred_after is its shredding time: the (state, shred_after)
        # index serves the query.
        for state, key in (("shredded", "shred_after"), ("held", "deleted_at")):
            async for customer_id in self._erased_since(state, key, since):
                await self._remove_resurrected(customer_id, report, dry_run)

    async def _erased_since(self, state: str, key: str, since: float) -> AsyncIterator[str]:
        """The ids of the markers in ``state`` whose ``key`` is at or after ``since``, oldest
        first, a batch at a time."""
        seen: set[str] = set()
        while True:
            docs = await self._erasures.find({"state": state, key: gte(since)},
                                             sort=[(key, 1)], limit=BATCH, fields=[key])
            fresh = [str(d["_id"]) for d in docs if str(d["_id"]) not in seen]
            for customer_id in fresh:
                seen.add(customer_id)
                yield customer_id
            if len(docs) < BATCH or not fresh:
                return
            since = float(docs[-1][key])  # gte: the ones at this time again, seen
            await asyncio.sleep(0)

    async def _remove_resurrected(self, customer_id: str, report: PurgeReport,
                                  dry_run: bool) -> None:
        if await self._customers.find_one({"_id": customer_id}) is not None:
            report.resurrected.append(customer_id)
            if not dry_run:
                for name in _BY_CUSTOMER:
                    await self.store.tenant(self.tenant_id, name).delete_many(
                        {"customer_id": customer_id})
                await self._customers.delete_one({"_id": customer_id})
