"""Envelope encryption details: AAD binding (fields and files), KEK versions, blind indexes."""

from __future__ import annotations

import os

import pytest

from kyc_host.crypto.aead import DecryptionError
from kyc_host.crypto.records import IndexPlan, RecordCipher, TenantCipher
from kyc_host.store.base import Store
from kyc_host.store.files import CHUNK_BYTES, FileRepository


def cipher(tenant_id: str = "t1", keks: dict[int, bytes] | None = None,
           kek_version: int | None = None) -> TenantCipher:
    return TenantCipher(tenant_id, keks or {1: os.urandom(32)}, os.urandom(32),
                        kek_version=kek_version)


def test_field_ciphertext_is_bound_to_tenant_collection_field_and_record() -> None:
    key = os.urandom(32)
    mine = RecordCipher("t1", "customers", "id-1", key)
    blob = mine.seal_text("field:first_name", "Alice")
    assert mine.open_text("field:first_name", blob) == "Alice"
    for other in (RecordCipher("t1", "customers", "id-2", key),   # another record
                  RecordCipher("t2", "customers", "id-1", key),   # another tenant
                  RecordCipher("t1", "files", "id-1", key)):      # another collection
        with pytest.raises(DecryptionError):
            other.open_text("field:first_name", blob)
    with pytest.raises(DecryptionError):
        mine.open_text("field:last_name", blob)  # another field


def test_data_key_is_bound_to_its_record_and_tenant() -> None:
    keks = {1: os.urandom(32)}
    t1 = cipher("t1", keks)
    _, wrapped = t1.new_record("customers", "id-1")
    t1.open_record("customers", "id-1", wrapped)
    with pytest.raises(DecryptionError):
        t1.open_record("customers", "id-2", wrapped)
    with pytest.raises(DecryptionError):
        cipher("t2", keks).open_record("customers", "id-1", wrapped)  # same KEK, other tenant


async def test_file_chunks_cannot_move_between_files_or_tenants(store: Store) -> None:
    t1 = cipher("t1")
    files = FileRepository(store, "t1", t1)
    data_a = os.urandom(CHUNK_BYTES + 10)  # two chunks
    data_b = os.urandom(CHUNK_BYTES + 10)
    a = await files.create(data_a, "image/png", owner_ix="o", account_ix="a")
    b = await files.create(data_b, "image/png", owner_ix="o", account_ix="a")
    blobs = store.tenant("t1", "blobs")
    chunk_a = await blobs.find_one({"_id": f"{a.id}.0"})
    assert chunk_a is not None
    await blobs.replace_one({"_id": f"{b.id}.0"}, {"_id": f"{b.id}.0", "data": chunk_a["data"]})
    with pytest.raises(DecryptionError):
        await files.read(b.id)  # a chunk of file A moved into file B
    assert await files.read(a.id) == data_a
    # Swapping chunk order within one file fails as well.
    first = await blobs.find_one({"_id": f"{a.id}.0"})
    second = await blobs.find_one({"_id": f"{a.id}.1"})
    assert first is not None
    assert second is not None
    await blobs.replace_one({"_id": f"{a.id}.0"}, {"_id": f"{a.id}.0", "data": second["data"]})
    await blobs.replace_one({"_id": f"{a.id}.1"}, {"_id": f"{a.id}.1", "data": first["data"]})
    with pytest.raises(DecryptionError):
        await files.read(a.id)
    # The whole file object copied into tenant 2 does not open with tenant 2's keys.
    c = await files.create(b"%PDF-1.4 tenant one", "application/pdf", owner_ix="o",
                           account_ix="a")
    doc = await store.tenant("t1", "files").find_one({"_id": c.id})
    chunk = await blobs.find_one({"_id": f"{c.id}.0"})
    assert doc is not None
    assert chunk is not None
    await store.tenant("t2", "files").insert_one(doc)
    await store.tenant("t2", "blobs").insert_one(chunk)
    with pytest.raises(DecryptionError):
        await FileRepository(store, "t2", cipher("t2")).read(c.id)


def test_kek_versions_unwrap_old_and_rewrap_to_current() -> None:
    v1, v2 = os.urandom(32), os.urandom(32)
    old = cipher("t1", {1: v1})
    record, wrapped = old.new_record("customers", "id-1")
    assert wrapped["v"] == 1
    both = cipher("t1", {1: v1, 2: v2}, kek_version=2)
    opened = both.open_record("customers", "id-1", wrapped)  # an old record still opens
    assert opened.key == record.key
    rewrapped = both.current_wrapping("customers", "id-1", opened, wrapped)
    assert rewrapped["v"] == 2
    assert both.current_wrapping("customers", "id-1", opened, rewrapped) == rewrapped
    only_new = cipher("t1", {2: v2})
    assert only_new.open_record("customers", "id-1", rewrapped).key == record.key
    with pytest.raises(DecryptionError):
        only_new.open_record("customers", "id-1", wrapped)  # v1 retired: unreadable
    with pytest.raises(ValueError, match="KEK v2"):
        cipher("t1", {1: v1}, kek_version=2)


def test_blind_indexes_normalize_and_separate_purposes_and_versions() -> None:
    keys = {1: os.urandom(32), 2: os.urandom(32)}
    c = TenantCipher("t1", os.urandom(32), keys, index_plan=IndexPlan.settled(1))
    assert c.email_index(" Alice@Example.COM ") == c.email_index("alice@example.com")
    assert c.phone_index("+1 415-555-0123") == c.phone_index("+14155550123")
    assert c.blind_index("email", "x") != c.blind_index("phone", "x")
    assert c.blind_index("identity", "G|") != c.blind_index("identity", "G|", version=2)
    other_tenant = TenantCipher("t2", os.urandom(32), os.urandom(32))
    assert other_tenant.email_index("alice@example.com") != c.email_index("alice@example.com")


def test_index_plan_stages() -> None:
    assert IndexPlan.for_stage(1, None, None) == IndexPlan((1,), 1, (1,))
    # read: everyone learns v2, nothing is written with it yet
    assert IndexPlan.for_stage(1, 2, "read") == IndexPlan((2, 1), 1, (1,))
    # write: new values use v2; unique claims are still decided under v1, then copied
    assert IndexPlan.for_stage(1, 2, "write") == IndexPlan((2, 1), 2, (1, 2))
