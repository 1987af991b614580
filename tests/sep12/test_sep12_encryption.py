"""Encryption at rest: the raw store never holds a submitted value in clear (design.md §6).

After PUTs with planted canaries (names, email, phone, an address, file bytes, a callback
URL, a memo), the raw SQLite files (database and WAL) and every document of the MongoDB
databases (read with pymongo directly, BSON-encoded) are searched for each canary. The
Stellar accounts themselves are blind-indexed and must not appear either.
"""

from __future__ import annotations

from pathlib import Path

import bson
import pytest
from pymongo import AsyncMongoClient

from conftest import MakeServer, RunningServer
from kyc_host.crypto.aead import DecryptionError
from kyc_host.crypto.records import TenantCipher
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.mongo import MongoStore
from sep12.sep12_helpers import Wallet, png_of_size, tenant_of, two_kyc_tenants

CANARIES = {
    "first_name": "Zqcanaryfirst",
    "last_name": "Xkcanarylast",
    "email_address": "zq.canary.mail@canary-example.org",
    "mobile_number": "+14155550123",
    "address_country_code": "NZL",  # three letters are common; checked below in context only
}
FILE_CANARY = b"FILECANARY-7f3a9e"
URL_CANARY = "https://canary-hook.example/cb-zq81"


async def raw_bytes(srv: RunningServer) -> bytes:
    store = srv.services.store
    if store.backend_name == "sqlite":
        db = Path(srv.services.settings.storage_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))
    assert isinstance(store, MongoStore)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(store.url)
    try:
        dump = bytearray()
        for name in await client.list_database_names():
            if not name.startswith(store.db_name):
                continue
            db = client[name]
            for collection in await db.list_collection_names():
                async for doc in db[collection].find({}):
                    dump += bson.encode(doc)
        return bytes(dump)
    finally:
        await client.close()


async def test_raw_store_holds_no_plaintext(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    shared = wallet.other(memo=987654321)
    picture = png_of_size(4096)
    picture = picture[:100] + FILE_CANARY + picture[100 + len(FILE_CANARY):]  # in the padding
    fields = {k: v for k, v in CANARIES.items() if k != "address_country_code"}
    customer_id = await wallet.create(fields)
    await shared.create(fields)
    parts: list[tuple[str, str | bytes, str | None]] = [("photo_id_front", picture, "c.png")]
    assert (await wallet.put_multipart(parts)).status == 202
    assert (await wallet.upload(picture)).status == 200
    assert (await wallet.call("PUT", "/kyc/customer/callback",
                              json_body={"url": URL_CANARY})).status == 200
    assert (await Wallet(srv, "b.test", "t2", keypair=wallet.keypair).put(fields)).status == 202
    dump = await raw_bytes(srv)
    assert customer_id.encode() in dump, "the dump must contain the stored documents"
    planted = [*fields.values(), URL_CANARY, wallet.account, "987654321"]
    for canary in planted:
        assert canary.encode() not in dump, canary
        assert canary.encode("utf-16-le") not in dump, canary
    assert FILE_CANARY not in dump
    # The data is there, and decrypts through the platform.
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    record = await service.customers.load(customer_id)
    assert record is not None
    assert record.fields["first_name"] == CANARIES["first_name"]
    file_id = record.files["photo_id_front"]
    assert await service.files.read(file_id) == picture


async def test_ciphertext_does_not_open_elsewhere(make_server: MakeServer) -> None:
    """A value sealed for one record fails to open for another record or another tenant."""
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    one = await wallet.create()
    two = await wallet.other(memo=2).create()
    raw = srv.services.store.tenant("t1", "customers")
    doc_one, doc_two = await raw.find_one({"_id": one}), await raw.find_one({"_id": two})
    assert doc_one is not None
    assert doc_two is not None
    # Swap record one's sealed first name into record two: it no longer decrypts.
    swapped = dict(doc_two)
    swapped["fields"] = doc_one["fields"]
    await raw.replace_one({"_id": two}, swapped)
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    with pytest.raises(DecryptionError):
        await service.customers.load(two)
    # Tenant 2's key-encryption key does not unwrap tenant 1's data key.
    t2 = tenant_of(srv, "t2")
    other = TenantCipher("t1", t2.secrets.data_kek, t2.secrets.index_key)
    with pytest.raises(DecryptionError):
        other.open_record("customers", one, doc_one["key"])
