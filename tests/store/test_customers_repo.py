"""Customer, identity and file repositories on both backends (store/customers.py, files.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kyc_host.crypto.aead import DecryptionError
from kyc_host.crypto.records import TenantCipher
from kyc_host.sep.sep12_types import CustomerStatus, Decision, FieldDecision, FieldStatus
from kyc_host.store import files as files_module
from kyc_host.store.base import Store
from kyc_host.store.customers import CustomerRepository, Verification, new_id
from kyc_host.store.files import CHUNK_BYTES, FileRepository

G1 = "GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJVSGZ"
G2 = "GBBD47IF6LWK7P7MDEVSCWR7DPUWV3NY3DTQEVFL4NAT4AQH3ZLLFLA5"


def cipher(tenant_id: str) -> TenantCipher:
    return TenantCipher(tenant_id, os.urandom(32), os.urandom(32))


async def test_record_round_trip_and_tenant_binding(store: Store) -> None:
    repo = CustomerRepository(store, "t1", cipher("t1"))
    record = repo.new()
    record.identities[repo.identity_index(f"{G1}|")] = f"{G1}|"
    record.fields.update({"first_name": "Ada", "organization.name": "Analytical Engines"})
    record.files["photo_id_front"] = new_id()
    record.verifications["mobile_number"] = Verification("123456", attempts=2)
    record.type_state("individual").decision = Decision(
        CustomerStatus.PROCESSING, "Under review",
        {"first_name": FieldDecision(FieldStatus.REJECTED, "Does not match the ID")})
    record.callback_url = "https://wallet.example/cb"
    await repo.save(record)
    loaded = await repo.load(record.id)
    assert loaded is not None
    for name in ("identities", "fields", "files", "verifications", "types", "callback_url"):
        assert getattr(loaded, name) == getattr(record, name), name
    other_tenant = CustomerRepository(store, "t2", cipher("t2"))
    assert await other_tenant.load(record.id) is None
    assert await repo.verification_code(record.id, "mobile_number") == "123456"
    assert await repo.callback_url(record.id) == "https://wallet.example/cb"


async def test_set_decision(store: Store) -> None:
    repo = CustomerRepository(store, "t1", cipher("t1"))
    record = repo.new()
    await repo.save(record)
    assert not await repo.set_decision(new_id(), "individual", Decision(CustomerStatus.ACCEPTED))
    with pytest.raises(ValueError, match="message"):
        await repo.set_decision(record.id, "individual", Decision(CustomerStatus.REJECTED))
    decision = Decision(CustomerStatus.REJECTED, "Sanctions match")
    assert await repo.set_decision(record.id, "individual", decision)
    loaded = await repo.load(record.id)
    assert loaded is not None
    assert loaded.types["individual"].decision == decision
    assert await repo.set_decision(record.id, "individual", None)
    cleared = await repo.load(record.id)
    assert cleared is not None
    assert cleared.types["individual"].decision is None


async def test_identity_claims_converge_and_link(store: Store) -> None:
    repo = CustomerRepository(store, "t1", cipher("t1"))
    key = f"{G1}|id:5"
    candidates = [new_id() for _ in range(20)]
    winners = await asyncio.gather(*[repo.claim_identity(key, G1, c) for c in candidates])
    assert len(set(winners)) == 1
    assert winners[0] in candidates
    record = repo.new(winners[0])
    await repo.save(record)
    assert await repo.link_identity(record.id, f"{G2}|", G2)
    assert await repo.customer_id_for(f"{G2}|") == record.id
    assert await repo.reachable(record.id, account=G2)
    assert await repo.reachable(record.id, identity_key=key)
    assert not await repo.reachable(record.id, identity_key=f"{G1}|id:6")
    other = repo.new()
    await repo.save(other)
    assert not await repo.link_identity(other.id, key, G1)  # already someone else's
    assert await repo.delete(record.id)
    assert await repo.customer_id_for(key) is None
    assert await repo.customer_id_for(f"{G2}|") is None


async def test_transaction_binding(store: Store) -> None:
    repo = CustomerRepository(store, "t1", cipher("t1"))
    one, two = new_id(), new_id()
    assert await repo.bind_transaction("tx-1", one)
    assert await repo.bind_transaction("tx-1", one)
    assert not await repo.bind_transaction("tx-1", two)
    assert await repo.transaction_owner("tx-1") == one
    assert await repo.transaction_owner("tx-2") is None


async def test_files_are_chunked_sealed_and_bound(store: Store) -> None:
    tenant_cipher = cipher("t1")
    files = FileRepository(store, "t1", tenant_cipher)
    data = os.urandom(2 * CHUNK_BYTES + 17)
    info = await files.create(data, "application/pdf", owner_ix="o", account_ix="a")
    assert info.expires_at is not None
    assert info.customer_id is None
    assert await files.read(info.id) == data
    small = await files.create(b"%PDF-small", "application/pdf", owner_ix="o",
                               account_ix="a", customer_id="c")
    assert small.expires_at is not None
    await files.attach(small.id, "c")
    attached = await files.get(small.id)
    assert attached is not None
    assert attached.expires_at is None
    # Swapping two chunks (or moving one to another file) breaks authentication.
    blobs = store.tenant("t1", "blobs")
    first, second = (await blobs.find_one({"_id": f"{info.id}.0"}),
                     await blobs.find_one({"_id": f"{info.id}.1"}))
    assert first is not None
    assert second is not None
    await blobs.replace_one({"_id": f"{info.id}.0"}, {**second, "_id": f"{info.id}.0"})
    with pytest.raises(DecryptionError):
        await files.read(info.id)
    assert await files.purge_expired(time.time() + 48 * 3600) == (1, 0)
    assert await files.get(info.id) is None
    assert await blobs.count({}) == 1
    assert await files.read(small.id) == b"%PDF-small"


class _ClaimedAfterListing:
    """The files collection of a FileRepository, running ``between`` right after the purge
    listed the expired files: the interleaving a PUT linking an old upload can meet."""

    def __init__(self, inner: Any, between: Callable[[], Awaitable[None]]) -> None:
        self.inner, self.between = inner, between

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def find(self, flt: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
        docs = await self.inner.find(flt, **kw)
        if "expires_at" in flt:
            await self.between()
        return list(docs)


async def test_a_file_claimed_while_the_purge_runs_is_kept_and_a_purged_one_cannot_be_claimed(
        store: Store) -> None:
    """A wallet links its upload a day later (it has just expired): the PUT claims it (which
    renews the expiry), writes the record naming it, then attaches it. A purge that listed the
    file as expired before the claim must not delete it afterwards; a file the purge deleted
    first cannot be claimed (the PUT answers 404 instead of naming a missing file)."""
    files = FileRepository(store, "t1", cipher("t1"))
    customers = store.tenant("t1", "customers")
    linked = await files.create(b"%PDF-linked", "application/pdf", owner_ix="o", account_ix="a")
    stale = await files.create(b"%PDF-stale", "application/pdf", owner_ix="o", account_ix="a")
    theirs = FileRepository(store, "t2", cipher("t2"))
    t2_file = await theirs.create(b"%PDF-t2", "application/pdf", owner_ix="o", account_ix="a")
    past = time.time() - 1
    for repo, info in ((files, linked), (files, stale), (theirs, t2_file)):
        await store.tenant(repo.tenant_id, "files").update_one(
            {"_id": info.id}, set={"expires_at": past})

    async def put_links_the_file() -> None:
        assert await files.claim(linked.id, "c1")
        await customers.insert_one(
            {"_id": "c1", "files": [{"name": "photo_id_front", "file_id": linked.id}]})

    files._files = _ClaimedAfterListing(files._files, put_links_the_file)  # type: ignore[assignment]
    assert await files.purge_expired() == (1, 0)  # the stale one only
    kept = await files.get(linked.id)
    assert kept is not None
    assert kept.customer_id == "c1"
    assert kept.expires_at is not None
    assert kept.expires_at > time.time() + 23 * 3600
    assert await files.read(linked.id) == b"%PDF-linked"
    assert await store.tenant("t1", "blob_journal").count({}) == 0
    await files.attach(linked.id, "c1")
    assert await files.get(stale.id) is None
    assert not await files.claim(stale.id, "c1")
    assert await files.get(stale.id) is None
    # t2's expired file: not t1's purge's, and t1 cannot claim it.
    assert not await files.claim(t2_file.id, "c1")
    assert await theirs.read(t2_file.id) == b"%PDF-t2"
    assert await theirs.purge_expired() == (1, 0)


async def test_expired_files_their_customers_record_names_are_attached_not_deleted(
        store: Store) -> None:
    """What a PUT cut between its record's write and attaching its files leaves: files that
    expire although the record names them. The purge attaches those (and only those: a file
    named by another customer's record, or by a record of another tenant, is no reference)."""
    later = time.time() + 48 * 3600
    files = FileRepository(store, "t1", cipher("t1"))
    named = await files.create(b"%PDF-named", "application/pdf", owner_ix="o", account_ix="a",
                               customer_id="c1")
    unnamed = await files.create(b"%PDF-unnamed", "application/pdf", owner_ix="o",
                                 account_ix="a", customer_id="c1")
    foreign = await files.create(b"%PDF-foreign", "application/pdf", owner_ix="o",
                                 account_ix="a", customer_id="c1")
    await store.tenant("t1", "customers").insert_one(
        {"_id": "c1", "files": [{"name": "photo_id_front", "file_id": named.id}]})
    await store.tenant("t1", "customers").insert_one(
        {"_id": "c2", "files": [{"name": "photo_id_front", "file_id": foreign.id}]})
    await store.tenant("t2", "customers").insert_one(
        {"_id": "c1", "files": [{"name": "photo_id_back", "file_id": unnamed.id}]})
    other_tenant = FileRepository(store, "t2", cipher("t2"))
    theirs = await other_tenant.create(b"%PDF-t2", "application/pdf", owner_ix="o",
                                       account_ix="a", customer_id="c1")

    assert await files.purge_expired(later) == (2, 1)
    kept = await files.get(named.id)
    assert kept is not None
    assert kept.expires_at is None
    assert kept.customer_id == "c1"
    assert await files.read(named.id) == b"%PDF-named"
    assert await files.get(unnamed.id) is None
    assert await files.get(foreign.id) is None
    assert await files.purge_expired(later) == (0, 0)
    # t2's file was not t1's purge's to touch; t2's own purge deletes it (no record names it).
    assert await other_tenant.get(theirs.id) is not None
    assert await other_tenant.purge_expired(later) == (1, 0)


async def test_the_purge_goes_through_every_expired_file_a_batch_at_a_time(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch per run (an hour) let a tenant whose wallets leave more uploads unattached
    fall behind for good. With batches of 3: every expired file of t1 goes in one run, the
    ones t1's records name are attached instead, an unexpired one stays, and t2's expired
    file is not t1's purge's."""
    monkeypatch.setattr(files_module, "PURGE_BATCH", 3)
    files, theirs = FileRepository(store, "t1", cipher("t1")), FileRepository(store, "t2",
                                                                            cipher("t2"))
    expired = [await files.create(f"%PDF-{n}".encode(), "application/pdf", owner_ix="o",
                                  account_ix="a", customer_id="c1" if n < 2 else None)
               for n in range(8)]
    fresh = await files.create(b"%PDF-fresh", "application/pdf", owner_ix="o", account_ix="a")
    t2_file = await theirs.create(b"%PDF-t2", "application/pdf", owner_ix="o", account_ix="a")
    past = time.time() - 1
    for repo, info in [*((files, f) for f in expired), (theirs, t2_file)]:
        await store.tenant(repo.tenant_id, "files").update_one(
            {"_id": info.id}, set={"expires_at": past})
    await store.tenant("t1", "customers").insert_one(  # names two: a PUT cut before attaching
        {"_id": "c1", "files": [{"name": "photo_id_front", "file_id": expired[0].id},
                                {"name": "photo_id_back", "file_id": expired[1].id}]})
    assert await files.purge_expired() == (6, 2)
    left = [await files.get(f.id) for f in expired]
    assert [info is not None for info in left] == [True] * 2 + [False] * 6
    assert [info.expires_at for info in left[:2] if info is not None] == [None, None]
    assert await files.read(fresh.id) == b"%PDF-fresh"
    assert await theirs.read(t2_file.id) == b"%PDF-t2"
    assert await files.purge_expired() == (0, 0)
