"""Customers of one tenant: identities, encrypted records, decisions, transaction bindings.

Written once against :class:`~kyc_host.store.base.Collection`, so it runs on every backend.

Data model (all collections tenant-bound):

- ``identities``: one document per (account, memo) a customer is known by. ``_id`` is the
  blind index of the identity key (``"G...|"`` or ``"G...|id:123"``), ``customer_id`` points
  at the customer and ``account_ix`` is the blind index of the bare account (so a token for
  ``G`` can reach the memo customers under it, SEP-12 §4.3). The store never holds an
  account or memo in clear. Inserting an identity is the exclusivity primitive: two first
  PUTs for one identity race on its ``_id`` and the loser adopts the winner's customer.
  One customer may hold several identities (linked by the management API or plugins).
- ``customers``: the record, with its own data key wrapped by the tenant key; every field
  value, verification code, identity and callback URL is sealed under that key. Per-type
  state (last computed status and the review decision) is kept in clear: it holds no PII.
- ``transactions``: ``_id`` = blind index of a SEP-12 ``transaction_id`` -> ``customer_id``;
  the first customer to use a transaction id owns it.

A record is always written whole (``replace``), so a document is self-consistent even when
two writers race: the last full write wins.

Callbacks (kyc_host.callbacks): ``CustomerRepository.observer`` sees every save and delete.
Before a save it puts the events of a status change into ``record.events`` (state it owns;
no PII), so the change and its events are one write (an outbox); after the save it relays
them to the ``outbox`` collection. ``has_pending_events`` / ``pending_token`` are top-level
copies so a sweeper finds records whose relay was interrupted with one indexed query.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from kyc_host.crypto.records import RecordCipher, TenantCipher, normalize_email, normalize_phone
from kyc_host.sep.sep12_types import Decision
from kyc_host.store.base import Doc, DuplicateKeyError, Store, in_
from kyc_host.store.review_queue import ReviewQueue

COLLECTION = "customers"
#: Fields the management API can look customers up by: field -> (index purpose, normalizer).
_LOOKUPS = {"email_address": ("email", normalize_email),
            "mobile_number": ("phone", normalize_phone)}


def new_id() -> str:
    """An unguessable id (UUID4: 122 random bits from the OS CSPRNG)."""
    return str(uuid.uuid4())


@dataclass(slots=True)
class Verification:
    """A field waiting for (or done with) a verification code (SEP-12 ``_verification``)."""

    code: str | None
    verified: bool = False
    attempts: int = 0


@dataclass(slots=True)
class TypeState:
    """What the platform knows about a customer for one customer type."""

    status: str | None = None  # last computed status; lets callbacks see a change
    decision: Decision | None = None


@dataclass(slots=True)
class CustomerRecord:
    """A customer with its values decrypted. Mutate it, then ``CustomerRepository.save``."""

    id: str
    cipher: RecordCipher
    wrapped_key: dict[str, Any]
    created_at: float
    updated_at: float
    identities: dict[str, str] = field(default_factory=dict)  # identity index -> identity key
    fields: dict[str, str] = field(default_factory=dict)  # SEP-9 name -> normalized value
    files: dict[str, str] = field(default_factory=dict)  # binary SEP-9 name -> file id
    verifications: dict[str, Verification] = field(default_factory=dict)
    types: dict[str, TypeState] = field(default_factory=dict)
    callback_url: str | None = None
    callback_set_at: float | None = None
    #: SEP-10 client_domain of the wallet that last sent data (selects a default callback URL).
    client_domain: str | None = None
    #: Outbox state owned by kyc_host.callbacks: pending events, last notified statuses.
    events: dict[str, Any] = field(default_factory=dict)

    def type_state(self, type_name: str) -> TypeState:
        return self.types.setdefault(type_name, TypeState())


class RecordObserver(Protocol):
    """Sees every write of a customer record (the callbacks outbox implements it)."""

    async def before_save(self, record: CustomerRecord) -> None:
        """Called before the record is written; may add to ``record.events``."""

    async def after_save(self, record: CustomerRecord) -> None:
        """Called once the record is written (relays its pending events)."""

    async def before_delete(self, customer_id: str) -> None:
        """Called before a customer is erased (writes its deletion events first)."""


class CustomerRepository:
    """The customers of one tenant. Every method is bound to that tenant's collections."""

    def __init__(self, store: Store, tenant_id: str, cipher: TenantCipher) -> None:
        self.tenant_id = tenant_id
        self.cipher = cipher
        #: Set by the tenant's SEP-12 service builder; None writes no events.
        self.observer: RecordObserver | None = None
        self._customers = store.tenant(tenant_id, "customers")
        self._identities = store.tenant(tenant_id, "identities")
        self._transactions = store.tenant(tenant_id, "transactions")
        self.queue = ReviewQueue(store, tenant_id)

    # --- identities ---

    def identity_index(self, identity_key: str) -> str:
        return self.cipher.blind_index("identity", identity_key)

    def account_index(self, account: str) -> str:
        return self.cipher.blind_index("account", account)

    def identity_indexes(self, identity_key: str) -> list[str]:
        """The identity's index under every version lookups read (newest first): during a
        reindex (``kyc-host keys reindex``) an identity may exist under either."""
        return self.cipher.blind_indexes("identity", identity_key)

    def account_indexes(self, account: str) -> list[str]:
        return self.cipher.blind_indexes("account", account)

    async def customer_id_for(self, identity_key: str) -> str | None:
        for ix in self.identity_indexes(identity_key):
            doc = await self._identities.find_one({"_id": ix})
            if doc is not None:
                return str(doc["customer_id"])
        return None

    @staticmethod
    def has_identity(record: CustomerRecord, identity_key: str) -> bool:
        """Whether the record lists this identity. Compared by identity key, never by label:
        a label is the identity's index under the version current when it was added, and a
        reindex leaves it as it was (its old index key is gone once the reindex is done)."""
        return identity_key in record.identities.values()

    @staticmethod
    def add_identity(record: CustomerRecord, label: str, identity_key: str) -> None:
        """Remember an identity in the record once (its label may be an older index)."""
        if identity_key not in record.identities.values():
            record.identities[label] = identity_key

    async def claim_identity(self, identity_key: str, account: str, customer_id: str) -> str:
        """Point the identity at ``customer_id`` unless it already points somewhere.

        Returns the customer id the identity points at afterwards (the winner's, if another
        request claimed it first). Insert-with-unique-``_id`` is atomic on every backend.
        """
        claims = self.cipher.claim_indexes("identity", identity_key)
        deciding, *others = claims
        doc = self._identity_doc(deciding, identity_key, account, customer_id)
        try:
            await self._identities.insert_one(doc)
        except DuplicateKeyError:
            winner = await self.customer_id_for(identity_key)
            if winner is None:  # deleted in between: try once more
                await self._identities.insert_one(doc)
            else:
                return winner
        for version, ix in others:  # mid-reindex: the same claim under the next version
            other = self._identity_doc((version, ix), identity_key, account, customer_id)
            try:
                await self._identities.insert_one(other)
            except DuplicateKeyError:
                # The next version already decided it (a process one stage ahead): adopt
                # that customer and withdraw our claim under the deciding version.
                taken = await self._identities.find_one({"_id": ix})
                if taken is not None and taken["customer_id"] != customer_id:
                    await self._identities.delete_one({"_id": doc["_id"],
                                                       "customer_id": customer_id})
                    return str(taken["customer_id"])
        return customer_id

    def _identity_doc(self, claim: tuple[int, str], identity_key: str, account: str,
                      customer_id: str) -> Doc:
        version, ix = claim
        return {"_id": ix, "customer_id": customer_id, "v": version,
                "account_ix": self.cipher.blind_index("account", account, version),
                "created_at": time.time()}

    async def link_identity(self, customer_id: str, identity_key: str, account: str) -> bool:
        """Add an identity to an existing customer (management API, plugins).

        False if the identity already belongs to another customer.
        """
        record = await self.load(customer_id)
        if record is None:
            return False
        owner = await self.claim_identity(identity_key, account, customer_id)
        if owner != customer_id:
            return False
        self.add_identity(record, self.identity_index(identity_key), identity_key)
        await self.save(record)
        return True

    async def unlink_identity(self, customer_id: str, identity_key: str) -> bool:
        """Remove one identity from a customer (management API); False if it is not the
        customer's. The identity document goes first, so the identity stops reaching the
        customer before the record changes. The caller keeps at least one identity."""
        removed = await self._identities.delete_many(
            {"_id": in_(self.identity_indexes(identity_key)), "customer_id": customer_id})
        record = await self.load(customer_id)
        labels = [] if record is None else [label for label, key in record.identities.items()
                                            if key == identity_key]
        if record is not None and labels:
            for label in labels:
                del record.identities[label]
            await self.save(record)
        # An unlink cut between the two steps left the record naming the identity: finish it.
        return removed >= 1 or bool(labels)

    async def customers_of_account(self, account: str, limit: int) -> list[str]:
        """Ids of the customers known by ``account`` with or without a memo (blind index
        lookup, at most ``limit`` identities read)."""
        docs = await self._identities.find({"account_ix": in_(self.account_indexes(account))},
                                           limit=limit)
        return sorted({str(d["customer_id"]) for d in docs})

    async def identities_of_account(self, account: str) -> int:
        """How many identities (memos) of ``account`` are known: the customers it holds,
        for the ``limits.max_customers_per_account`` quota."""
        return await self._identities.count({"account_ix": in_(self.account_indexes(account))})

    async def customers_with(self, field_name: str, value: str, limit: int = 100) -> list[str]:
        """Ids of customers whose ``email_address`` or ``mobile_number`` equals ``value``
        after normalization (blind-index lookup; the store never sees the value)."""
        purpose, normalize = _LOOKUPS[field_name]
        docs = await self._customers.find(
            {f"{purpose}_ix": in_(self.cipher.blind_indexes(purpose, normalize(value)))},
            limit=limit)
        return sorted(str(d["_id"]) for d in docs)

    async def summaries(self, customer_ids: list[str]) -> dict[str, CustomerSummary]:
        """What a listing shows of these customers, read without decrypting anything."""
        if not customer_ids:
            return {}
        docs = await self._customers.find({"_id": in_(customer_ids)})
        return {str(d["_id"]): _summary(d) for d in docs}

    async def reachable(self, customer_id: str, *, identity_key: str | None = None,
                        account: str | None = None) -> bool:
        """Whether the customer is known by this identity (or by any identity of ``account``)."""
        flt: dict[str, Any] = {"customer_id": customer_id}
        if identity_key is not None:
            flt["_id"] = in_(self.identity_indexes(identity_key))
        elif account is not None:
            flt["account_ix"] = in_(self.account_indexes(account))
        else:
            raise ValueError("identity_key or account is required")
        return await self._identities.find_one(flt) is not None

    # --- records ---

    def new(self, customer_id: str | None = None) -> CustomerRecord:
        """A new, unsaved record with a fresh data key."""
        record_id = customer_id or new_id()
        cipher, wrapped = self.cipher.new_record(COLLECTION, record_id)
        now = time.time()
        return CustomerRecord(id=record_id, cipher=cipher, wrapped_key=wrapped,
                              created_at=now, updated_at=now)

    async def load(self, customer_id: str) -> CustomerRecord | None:
        doc = await self._customers.find_one({"_id": customer_id})
        return None if doc is None else self._decode(doc)

    async def save(self, record: CustomerRecord) -> None:
        """Write the whole record (create or replace), with the events of its status change."""
        if self.observer is not None:
            await self.observer.before_save(record)
        record.updated_at = time.time()
        doc = self._encode(record)
        try:
            await self._customers.replace_one({"_id": record.id}, doc, upsert=True)
        except DuplicateKeyError:
            # Two upserts of a new id raced; the other one created it, so replace it now.
            await self._customers.replace_one({"_id": record.id}, doc)
        if self.observer is not None:
            await self.observer.after_save(record)
        await self.queue.put(record)

    async def delete(self, customer_id: str) -> bool:
        """Erase the customer, its identities and transaction bindings (not its files).

        Identities go first, so the customer stops being reachable before its data goes.
        Deletion events (tenant webhooks) are written before anything is erased.
        """
        if self.observer is not None:
            await self.observer.before_delete(customer_id)
        await self._identities.delete_many({"customer_id": customer_id})
        await self._transactions.delete_many({"customer_id": customer_id})
        await self.queue.remove(customer_id)
        return await self._customers.delete_one({"_id": customer_id}) == 1

    async def set_decision(self, customer_id: str, type_name: str,
                           decision: Decision | None) -> bool:
        """Store (or clear, with None) the review decision for one customer type.

        The management API calls this; returns False if the customer does not exist.
        Raises ValueError for a malformed decision.
        """
        if decision is not None:
            decision.check()
        record = await self.load(customer_id)
        if record is None:
            return False
        record.type_state(type_name).decision = decision
        await self.save(record)
        return True

    async def callback_url(self, customer_id: str) -> str | None:
        """The registered SEP-12 callback URL, decrypted (for the callback worker)."""
        record = await self.load(customer_id)
        return None if record is None else record.callback_url

    async def clear_callback_url(self, customer_id: str, set_at: float | None) -> bool:
        """Forget the callback URL registered at ``set_at`` (SEP-12 §callbacks: after a final
        status the wallet registers again; a URL answering 410 is disabled). A URL registered
        since then is kept. One field update, so a concurrent save's other changes survive."""
        flt = {"_id": customer_id, "callback.set_at": set_at}
        return await self._customers.update_one(flt, set={"callback": None}) == 1

    async def verification_code(self, customer_id: str, field_name: str) -> str | None:
        """The pending verification code of a field (for plugins and tests); None if none."""
        record = await self.load(customer_id)
        if record is None:
            return None
        pending = record.verifications.get(field_name)
        return None if pending is None or pending.verified else pending.code

    # --- transactions ---

    async def bind_transaction(self, transaction_id: str, customer_id: str,
                               cipher: RecordCipher | None = None) -> bool:
        """Bind a transaction id to the customer on first use; False if another owns it.

        With the customer's ``cipher`` the id is also kept sealed under the customer's data
        key, so a reindex can recompute its blind index (and erasure shreds it).
        """
        sealed = None if cipher is None else cipher.seal_text("transaction_id", transaction_id)
        for n, (version, ix) in enumerate(self.cipher.claim_indexes("transaction",
                                                                    transaction_id)):
            doc = {"_id": ix, "customer_id": customer_id, "v": version, "tid": sealed}
            try:
                await self._transactions.insert_one(doc)
            except DuplicateKeyError:
                found = await self._transactions.find_one({"_id": ix})
                if n == 0 and found is not None and found["customer_id"] != customer_id:
                    return False
        return True

    async def transaction_owner(self, transaction_id: str) -> str | None:
        for ix in self.cipher.blind_indexes("transaction", transaction_id):
            doc = await self._transactions.find_one({"_id": ix})
            if doc is not None:
                return str(doc["customer_id"])
        return None

    # --- encoding ---

    def _encode(self, record: CustomerRecord) -> Doc:
        seal = record.cipher.seal_text
        callback = None
        if record.callback_url is not None:
            callback = {"url": seal("callback_url", record.callback_url),
                        "set_at": record.callback_set_at}
        record.wrapped_key = self.cipher.current_wrapping(COLLECTION, record.id, record.cipher,
                                                          record.wrapped_key)
        email, phone = record.fields.get("email_address"), record.fields.get("mobile_number")
        return {
            "_id": record.id,
            "v": 1,
            "key": record.wrapped_key,
            # Blind indexes for the management API's lookups (never the values themselves).
            "email_ix": "" if email is None else self.cipher.email_index(email),
            "phone_ix": "" if phone is None else self.cipher.phone_index(phone),
            "ix_v": self.cipher.index_plan.write,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "identities": [{"ix": ix, "value": seal(f"identity:{ix}", key)}
                           for ix, key in record.identities.items()],
            "fields": [{"name": n, "value": seal(f"field:{n}", v)}
                       for n, v in record.fields.items()],
            "files": [{"name": n, "file_id": f} for n, f in record.files.items()],
            "verifications": [
                {"field": n, "verified": v.verified, "attempts": v.attempts,
                 "code": None if v.code is None else seal(f"verification:{n}", v.code)}
                for n, v in record.verifications.items()],
            "types": [{"type": t, "status": s.status,
                       "decision": None if s.decision is None else s.decision.to_doc()}
                      for t, s in record.types.items()],
            "callback": callback,
            "client_domain": record.client_domain or "",
            "events": record.events,
            "has_pending_events": bool(record.events.get("pending")),
            "pending_token": str(record.events.get("token", "")),
        }

    def _decode(self, doc: Doc) -> CustomerRecord:
        cipher = self.cipher.open_record(COLLECTION, str(doc["_id"]), doc["key"])
        opened = cipher.open_text
        callback = doc.get("callback")
        return CustomerRecord(
            id=str(doc["_id"]),
            cipher=cipher,
            wrapped_key=doc["key"],
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            identities={i["ix"]: opened(f"identity:{i['ix']}", i["value"])
                        for i in doc.get("identities", [])},
            fields={f["name"]: opened(f"field:{f['name']}", f["value"])
                    for f in doc.get("fields", [])},
            files={f["name"]: f["file_id"] for f in doc.get("files", [])},
            verifications={v["field"]: _verification(cipher, v)
                           for v in doc.get("verifications", [])},
            types={t["type"]: TypeState(t.get("status"), _decision(t.get("decision")))
                   for t in doc.get("types", [])},
            callback_url=None if not callback else opened("callback_url", callback["url"]),
            callback_set_at=None if not callback else callback.get("set_at"),
            client_domain=doc.get("client_domain") or None,
            events=dict(doc.get("events") or {}),
        )


@dataclass(frozen=True, slots=True)
class CustomerSummary:
    """A customer as a listing shows it: ids, times, per-type status, field *names* only."""

    id: str
    created_at: float
    updated_at: float
    statuses: dict[str, str | None]  # customer type -> last computed status
    provided: tuple[str, ...]  # names of the text and binary fields provided, sorted


def _summary(doc: Doc) -> CustomerSummary:
    names = {f["name"] for f in doc.get("fields", [])} | {f["name"] for f in doc.get("files", [])}
    return CustomerSummary(
        id=str(doc["_id"]), created_at=float(doc["created_at"]),
        updated_at=float(doc["updated_at"]),
        statuses={t["type"]: t.get("status") for t in doc.get("types", [])},
        provided=tuple(sorted(names)))


def _verification(cipher: RecordCipher, doc: dict[str, Any]) -> Verification:
    code = doc.get("code")
    return Verification(
        code=None if code is None else cipher.open_text(f"verification:{doc['field']}", code),
        verified=bool(doc.get("verified")), attempts=int(doc.get("attempts", 0)))


def _decision(doc: dict[str, Any] | None) -> Decision | None:
    return None if doc is None else Decision.from_doc(doc)

