"""Crypto-shredding: a copy of the store taken before a DELETE cannot be read afterwards.

The copy is what an attacker with an old backup holds: the SQLite files copied (database and
WAL) or every MongoDB document dumped with pymongo. After the wallet's DELETE and the purge
run that retires the KEK version which wrapped the erased customer's data key, no key the
platform still holds (every KEK version of the tenant) unwraps the copied data keys of the
customer's record or files. The tenant's own secrets inside such a copy stay unwrappable
with the master key until ``keys rotate-master`` retires that master key version; the last
test shows both halves of that, and the same for an offboarded tenant.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import MakeServer, RunningServer
from keys.keys_helpers import Snapshot, current_cipher, job_context, snapshot
from kyc_host import audit
from kyc_host.crypto.aead import DecryptionError
from kyc_host.crypto.master import (
    LocalKeyProvider,
    add_key_version,
    parse_key_lines,
    remove_key_version,
)
from kyc_host.crypto.records import TenantCipher
from kyc_host.crypto.rotation import rotate_master
from kyc_host.retention.purge import purge_tenant
from kyc_host.tenancy.secrets import unwrap_secrets
from sep12.sep12_helpers import Wallet, png_of_size, tenant_of, two_kyc_tenants

CANARY = {"first_name": "Shredfirst", "last_name": "Shredlast",
          "email_address": "shred.canary@example.org", "mobile_number": "+14155550199"}


async def kyc_customer(srv: RunningServer, host: str = "a.test",
                       tenant_id: str = "t1") -> tuple[Wallet, str]:
    wallet = Wallet(srv, host, tenant_id)
    customer_id = await wallet.create(CANARY)
    reply = await wallet.put_multipart([("photo_id_front", png_of_size(3000, 7), "id.png")])
    assert reply.status == 202, reply.body
    return wallet, customer_id


def customer_files(copy: Snapshot, tenant_id: str, customer_id: str) -> list[dict[str, Any]]:
    return [d for d in copy.get((tenant_id, "files"), {}).values()
            if d.get("customer_id") == customer_id]


def readable(cipher: TenantCipher, collection: str, doc: dict[str, Any]) -> bool:
    """Whether any KEK version ``cipher`` holds unwraps the copied document's data key."""
    for version in cipher.kek_versions:
        attempt = {**doc["key"], "v": version}  # whatever the stored label says: try all
        try:
            cipher.open_record(collection, str(doc["_id"]), attempt)
            return True
        except DecryptionError:
            continue
    return False


async def test_copy_taken_before_delete_cannot_be_decrypted(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet, customer_id = await kyc_customer(srv)
    _, neighbour_id = await kyc_customer(srv, host="a.test")  # another customer of t1
    _, other_tenant_id = await kyc_customer(srv, host="b.test", tenant_id="t2")
    backup = await snapshot(srv)
    copied = backup[("t1", "customers")][customer_id]
    copied_files = customer_files(backup, "t1", customer_id)
    assert len(copied_files) == 1
    # Before the DELETE the copy is readable with the platform's keys (the test can fail).
    before = await current_cipher(srv, "t1")
    assert readable(before, "customers", copied)
    record = before.open_record("customers", customer_id, copied["key"])
    first = next(f for f in copied["fields"] if f["name"] == "first_name")
    assert record.open_text("field:first_name", first["value"]) == CANARY["first_name"]

    assert (await wallet.delete()).status == 200
    # Online: record, files and blobs are gone at once; the wallet sees no customer.
    assert await srv.services.store.tenant("t1", "customers").find_one(
        {"_id": customer_id}) is None
    for doc in copied_files:
        assert await srv.services.store.tenant("t1", "files").find_one(
            {"_id": doc["_id"]}) is None
        assert await srv.services.store.tenant("t1", "blobs").find_one(
            {"_id": f"{doc['_id']}.0"}) is None
    status = (await wallet.get()).json
    assert status["status"] == "NEEDS_INFO"
    assert "id" not in status
    assert (await wallet.delete()).status == 404

    # The purge job retires the KEK version that wrapped the erased customer's data key.
    report = await purge_tenant(srv.services, tenant_of(srv, "t1"))
    assert report.kek_rotated
    after = await current_cipher(srv, "t1")
    assert 1 not in after.kek_versions
    assert not readable(after, "customers", copied)
    for doc in copied_files:
        assert not readable(after, "files", doc)
    # Everyone else is unaffected: the neighbour (re-wrapped) and the other tenant.
    service = srv.services
    live = await service.store.tenant("t1", "customers").find_one({"_id": neighbour_id})
    assert live is not None
    assert readable(after, "customers", live)
    t2_doc = await service.store.tenant("t2", "customers").find_one({"_id": other_tenant_id})
    assert t2_doc is not None
    assert readable(await current_cipher(srv, "t2"), "customers", t2_doc)
    # The proof of deletion names the customer and the destroyed key version, no values.
    entries, _ = await audit.entries(service.store, "t1", action="customer.erase")
    assert [e["customer_id"] for e in entries] == [customer_id]
    assert entries[0]["details"]["kek_version"] == 1
    assert CANARY["first_name"] not in str(entries)
    rotated, _ = await audit.entries(service.store, "t1", action="key.rotate_kek")
    assert rotated
    assert rotated[0]["details"]["retired"] == [1]
    assert (await audit.verify(service.store, "t1")).ok
    # Nothing exposed any more: the next purge run does not rotate again.
    assert not (await purge_tenant(srv.services, tenant_of(srv, "t1"))).kek_rotated


async def test_old_tenant_secrets_in_a_copy_need_master_rotation(
        make_server: MakeServer) -> None:
    """The documented limit, and how rotate-master closes it (customers and offboarding)."""
    srv = await two_kyc_tenants(make_server)
    wallet, customer_id = await kyc_customer(srv)
    _, t2_customer = await kyc_customer(srv, host="b.test", tenant_id="t2")
    backup = await snapshot(srv)
    assert (await wallet.delete()).status == 200
    await purge_tenant(srv.services, tenant_of(srv, "t1"))
    # Offboard tenant 2: its secrets are overwritten in the store.
    assert await srv.services.tenants.offboard("t2") is not None
    stored_t2 = await srv.services.store.platform("tenants").find_one({"_id": "t2"})
    assert stored_t2 is not None
    assert "blob" not in stored_t2["secrets"]

    keys = srv.services.keys
    assert isinstance(keys, LocalKeyProvider)
    old_t1 = backup[("", "tenants")]["t1"]["secrets"]
    old_t2 = backup[("", "tenants")]["t2"]["secrets"]
    # Limit: the copy's own wrapped tenant secrets still open with the current master key,
    # and with them the copy's data (for t1: the KEK retired since; for t2: everything).
    old_cipher = TenantCipher.from_secrets("t1", unwrap_secrets(keys, "t1", old_t1))
    assert readable(old_cipher, "customers", backup[("t1", "customers")][customer_id])
    t2_cipher = TenantCipher.from_secrets("t2", unwrap_secrets(keys, "t2", old_t2))
    assert readable(t2_cipher, "customers", backup[("t2", "customers")][t2_customer])

    # rotate-master: a new master version, every live tenant re-wrapped, the old one removed.
    key_file = srv.services.settings.master_key_file
    assert add_key_version(key_file) == 2
    assert keys.reload_if_changed()
    await rotate_master(job_context(srv))
    remove_key_version(key_file, 1)
    remaining = LocalKeyProvider(parse_key_lines(key_file.read_text(), str(key_file)))
    assert remaining.versions == (2,)
    live_t1 = await srv.services.store.platform("tenants").find_one({"_id": "t1"})
    assert live_t1 is not None
    unwrap_secrets(remaining, "t1", live_t1["secrets"])  # the live tenant still works
    for tenant_id, old in (("t1", old_t1), ("t2", old_t2)):
        with pytest.raises(DecryptionError):
            unwrap_secrets(remaining, tenant_id, old)
    entries, _ = await audit.entries(srv.services.store, None, action="key.rotate_master")
    assert entries
    assert entries[0]["details"]["master_version"] == 2
