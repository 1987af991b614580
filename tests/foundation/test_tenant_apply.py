"""TenantService.apply, the one write path for tenants, on both backends.

Checks the created/unchanged/updated cycle, host ownership (nothing written when any document
of a batch is refused), managers, signing keys from the environment, and that tenant secrets
are only ever stored wrapped under the master key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from stellar_sdk import Keypair

from conftest import MakeServer, api_document, make_tenant_doc
from kyc_host.crypto.aead import DecryptionError
from kyc_host.crypto.master import LocalKeyProvider, load_key_provider
from kyc_host.errors import ConfigError
from kyc_host.settings import PlatformSettings
from kyc_host.store import open_store
from kyc_host.store.base import Store
from kyc_host.tenancy.registry import TenantRegistry
from kyc_host.tenancy.schema import parse_tenant
from kyc_host.tenancy.secrets import TenantSecrets, unwrap_secrets
from kyc_host.tenancy.service import TenantDocument, TenantService

SEED_ENV = "T_SIGNING_SEED"


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyProvider:
    return load_key_provider(tmp_path / "master.key", "UNSET_MASTER_KEY_ENV", dev_mode=True,
                             environ={})


@pytest.fixture
async def raw_store(backend: str) -> AsyncIterator[Store]:
    store = open_store(backend)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
def environ() -> dict[str, str]:
    return {}


@pytest.fixture
def service(raw_store: Store, keys: LocalKeyProvider, environ: dict[str, str]) -> TenantService:
    return TenantService(raw_store, keys, environ)


def file_document(doc: dict[str, Any], path: str) -> TenantDocument:
    return TenantDocument(parse_tenant(doc, path), dict(doc), f"file:{path}")


async def snapshot(service: TenantService) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Everything apply writes on the platform side, in a comparable form."""
    tenants = await service.tenants.find({}, sort=[("_id", 1)])
    hosts = await service.hosts.find({}, sort=[("_id", 1)])
    return tenants, hosts


async def actions(service: TenantService, *docs: TenantDocument) -> list[str]:
    return [r.action for r in await service.apply(list(docs))]


# --- created / unchanged / updated --------------------------------------------------------


async def test_create_unchanged_update(service: TenantService) -> None:
    doc = make_tenant_doc("t1", ["a.test"])
    assert await actions(service, api_document(doc)) == ["created"]
    first = await service.tenants.find_one({"_id": "t1"})
    assert first is not None
    assert await actions(service, api_document(doc)) == ["unchanged"]
    assert await service.tenants.find_one({"_id": "t1"}) == first  # not even rewritten

    changed = make_tenant_doc("t1", ["a.test"], name="Renamed Anchor")
    assert await actions(service, api_document(changed)) == ["updated"]
    second = await service.tenants.find_one({"_id": "t1"})
    assert second is not None
    assert second["rev"] != first["rev"]
    assert second["config"]["name"] == "Renamed Anchor"
    assert second["created_at"] == first["created_at"]
    # The keys survive an update: same signing key before and after.
    before = unwrap_secrets(service.keys, "t1", first["secrets"])
    after = unwrap_secrets(service.keys, "t1", second["secrets"])
    assert before.signing_seed == after.signing_seed
    assert after.data_kek == before.data_kek


async def test_each_tenant_gets_its_own_keys(service: TenantService) -> None:
    await service.apply([api_document(make_tenant_doc("t1", ["a.test"])),
                         api_document(make_tenant_doc("t2", ["b.test"]))])
    one, two = (unwrap_secrets(service.keys, r["_id"], r["secrets"])
                for r in await service.tenants.find({}, sort=[("_id", 1)]))
    assert one.signing_seed != two.signing_seed
    assert one.jwt_hs256_secret != two.jwt_hs256_secret
    assert one.data_kek != two.data_kek
    assert one.index_key != two.index_key


# --- host ownership -------------------------------------------------------------------------


async def test_two_tenants_claiming_one_host_in_one_batch_write_nothing(
    service: TenantService,
) -> None:
    docs = [api_document(make_tenant_doc("t1", ["a.test"])),
            api_document(make_tenant_doc("t2", ["b.test", "A.Test"]))]
    with pytest.raises(ConfigError) as info:
        await service.apply(docs)
    assert "hosts" in str(info.value)
    assert "'a.test'" in str(info.value)
    assert "'t1'" in str(info.value)
    assert await snapshot(service) == ([], [])


async def test_claiming_an_existing_tenants_host_writes_nothing(service: TenantService) -> None:
    await service.apply([api_document(make_tenant_doc("t1", ["a.test"])),
                         api_document(make_tenant_doc("t2", ["b.test"]))])
    before = await snapshot(service)
    batch = [
        api_document(make_tenant_doc("t2", ["b.test"], name="changed")),  # a valid update
        api_document(make_tenant_doc("t3", ["c.test"])),  # a valid new tenant
        api_document(make_tenant_doc("t4", ["d.test", "a.test"])),  # steals t1's host
    ]
    with pytest.raises(ConfigError) as info:
        await service.apply(batch)
    assert "already served by tenant 't1'" in str(info.value)
    assert "'a.test'" in str(info.value)
    # Neither t2's update nor t3 nor any host claim was written.
    assert await snapshot(service) == before
    with pytest.raises(ConfigError):
        await service.apply([api_document(make_tenant_doc("t2", ["b.test", "a.test"]))])
    assert await snapshot(service) == before


async def test_removed_host_is_freed_for_another_tenant(service: TenantService) -> None:
    await service.apply([api_document(make_tenant_doc("t1", ["a.test", "old.a.test"]))])
    with pytest.raises(ConfigError):
        await service.apply([api_document(make_tenant_doc("t2", ["old.a.test"]))])
    assert await actions(service, api_document(make_tenant_doc("t1", ["a.test"]))) == [
        "updated"]
    assert await actions(service, api_document(make_tenant_doc("t2", ["old.a.test"]))) == [
        "created"]
    _, hosts = await snapshot(service)
    assert {h["_id"]: h["tenant"] for h in hosts} == {"a.test": "t1", "old.a.test": "t2"}


# --- managers ---------------------------------------------------------------------------------


async def test_file_managed_tenant_cannot_be_changed_through_the_api(
    service: TenantService,
) -> None:
    path = "/etc/kyc/tenants/t1.toml"
    await service.apply([file_document(make_tenant_doc("t1", ["a.test"]), path)])
    before = await snapshot(service)
    with pytest.raises(ConfigError) as info:
        await service.apply([api_document(make_tenant_doc("t1", ["a.test"], name="x"))])
    assert path in str(info.value)
    assert await snapshot(service) == before
    # Another file may manage it (the file was moved), the API may not; the move is reported.
    [moved] = await service.apply([file_document(make_tenant_doc("t1", ["a.test"], name="y"),
                                                 "/elsewhere/t1.toml")])
    assert (moved.action, moved.moved_from) == ("updated", f"file:{path}")
    [again] = await service.apply([file_document(make_tenant_doc("t1", ["a.test"], name="z"),
                                                 "/elsewhere/t1.toml")])
    assert (again.action, again.moved_from) == ("updated", None)
    # A plain move (same content) is a change of manager too, recorded and reported.
    same = make_tenant_doc("t1", ["a.test"], name="z")
    [moved_back] = await service.apply([file_document(same, path)])
    assert (moved_back.action, moved_back.moved_from) == ("updated", "file:/elsewhere/t1.toml")
    record = await service.tenants.find_one({"_id": "t1"})
    assert record is not None
    assert record["manager"] == f"file:{path}"
    assert await actions(service, file_document(same, path)) == ["unchanged"]


async def test_api_managed_tenant_cannot_be_changed_by_a_file(service: TenantService) -> None:
    await service.apply([api_document(make_tenant_doc("t1", ["a.test"]))])
    before = await snapshot(service)
    with pytest.raises(ConfigError) as info:
        await service.apply([file_document(make_tenant_doc("t1", ["a.test"]), "/x/t1.toml")])
    assert "management API" in str(info.value)
    assert str(info.value).startswith("/x/t1.toml: id: ")
    assert await snapshot(service) == before


# --- signing keys from the environment -------------------------------------------------------


async def test_signing_seed_from_env(service: TenantService, environ: dict[str, str]) -> None:
    seed = Keypair.random().secret
    environ[SEED_ENV] = seed
    doc = make_tenant_doc("t1", ["a.test"], signing_key_env=SEED_ENV)
    assert await actions(service, api_document(doc)) == ["created"]
    record = await service.tenants.find_one({"_id": "t1"})
    assert record is not None
    assert unwrap_secrets(service.keys, "t1", record["secrets"]).signing_seed == seed
    # Later applies without the variable keep the stored key.
    del environ[SEED_ENV]
    assert await actions(service, api_document(doc)) == ["unchanged"]
    # A new seed in the variable rotates the key.
    rotated = Keypair.random().secret
    environ[SEED_ENV] = rotated
    assert await actions(service, api_document(doc)) == ["updated"]
    record = await service.tenants.find_one({"_id": "t1"})
    assert record is not None
    assert unwrap_secrets(service.keys, "t1", record["secrets"]).signing_seed == rotated


async def test_missing_signing_env_at_first_apply_writes_nothing(service: TenantService) -> None:
    docs = [api_document(make_tenant_doc("t0", ["zero.test"])),
            api_document(make_tenant_doc("t1", ["a.test"], signing_key_env=SEED_ENV))]
    with pytest.raises(ConfigError) as info:
        await service.apply(docs)
    assert "signing_key_env" in str(info.value)
    assert SEED_ENV in str(info.value)
    assert await snapshot(service) == ([], [])


@pytest.mark.parametrize("bad", ["not-a-seed", Keypair.random().public_key,
                                 "S" + "A" * 55])
async def test_invalid_signing_seed_is_refused(
    service: TenantService, environ: dict[str, str], bad: str
) -> None:
    environ[SEED_ENV] = bad
    with pytest.raises(ConfigError) as info:
        await service.apply([api_document(make_tenant_doc("t1", ["a.test"],
                                                          signing_key_env=SEED_ENV))])
    assert SEED_ENV in str(info.value)
    assert bad not in str(info.value)  # the (maybe real) seed is never echoed
    assert await snapshot(service) == ([], [])


async def test_served_signing_key_is_the_env_seeds_public_key(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keypair = Keypair.random()
    monkeypatch.setenv(SEED_ENV, keypair.secret)
    srv = await make_server(make_tenant_doc("t1", ["a.test"], signing_key_env=SEED_ENV))
    response = await srv.fetch("a.test", "/.well-known/stellar.toml")
    assert response.code == 200
    assert f'SIGNING_KEY = "{keypair.public_key}"' in response.body.decode()


# --- secrets at rest ----------------------------------------------------------------------


def secret_needles(secrets: TenantSecrets) -> dict[str, bytes]:
    """Byte strings that must never appear in the store, however it encodes documents."""
    raw = {
        "signing_seed_raw": secrets.signing_keypair.raw_secret_key(),
        "jwt_ed25519_seed": secrets.jwt_ed25519_seed,
        "jwt_hs256_secret": secrets.jwt_hs256_secret,
        "data_kek": secrets.data_kek,
        "index_key": secrets.index_key,
    }
    needles = {"signing_seed": secrets.signing_seed.encode()}
    for name, value in raw.items():
        needles[name] = value
        needles[name + "_b64"] = base64.b64encode(value)
        needles[name + "_hex"] = value.hex().encode()
    return needles


async def raw_store_bytes(backend: str) -> bytes:
    """Every byte the backend holds for this test, read around the store abstraction."""
    if backend.startswith("sqlite:///"):
        db = Path(backend.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))
    import bson
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(backend)
    try:
        prefix = backend.rsplit("/", 1)[1]
        chunks: list[bytes] = []
        for name in await client.list_database_names():
            if name == prefix or name.startswith(prefix + "_t_"):
                for coll in await client[name].list_collection_names():
                    async for doc in client[name][coll].find({}):
                        chunks.append(bson.encode(doc))
        return b"".join(chunks)
    finally:
        await client.close()


async def test_secrets_are_not_stored_in_clear(
    service: TenantService, raw_store: Store, backend: str, environ: dict[str, str]
) -> None:
    environ[SEED_ENV] = Keypair.random().secret
    await service.apply([api_document(make_tenant_doc("t1", ["a.test"],
                                                      signing_key_env=SEED_ENV)),
                         api_document(make_tenant_doc("t2", ["b.test"]))])
    records = await service.tenants.find({}, sort=[("_id", 1)])
    assert [r["_id"] for r in records] == ["t1", "t2"]
    await raw_store.close()  # flush everything to disk (SQLite WAL checkpoint on close)
    stored = await raw_store_bytes(backend)
    assert b"a.test" in stored  # the check really reads the tenant data
    for record in records:
        for name, needle in secret_needles(unwrap_secrets(service.keys, record["_id"],
                                                          record["secrets"])).items():
            assert needle not in stored, f"{record['_id']} {name} found in the raw store"


async def test_secrets_blob_copied_to_another_tenant_fails_to_unwrap(
    service: TenantService, keys: LocalKeyProvider, settings: PlatformSettings
) -> None:
    await service.apply([api_document(make_tenant_doc("t1", ["a.test"])),
                         api_document(make_tenant_doc("t2", ["b.test"]))])
    t1 = await service.tenants.find_one({"_id": "t1"})
    assert t1 is not None
    await service.tenants.update_one({"_id": "t2"}, set={"secrets": t1["secrets"]})
    t2 = await service.tenants.find_one({"_id": "t2"})
    assert t2 is not None
    with pytest.raises(DecryptionError):
        unwrap_secrets(keys, "t2", t2["secrets"])
    # The process-wide registry refuses it the same way; t1 is unaffected.
    registry = TenantRegistry(service, keys, settings)
    await registry.refresh()
    tenant_two, tenant_one = registry.get("t2"), registry.get("t1")
    assert tenant_two is not None
    assert tenant_one is not None
    with pytest.raises(DecryptionError):
        _ = tenant_two.secrets
    assert tenant_one.secrets.signing_keypair.public_key.startswith("G")


async def test_operator_suspension_survives_edits_of_the_file_until_resumed(
    store: Store, tenant_doc: Callable[..., dict[str, Any]]
) -> None:
    """`kyc-host tenant suspend` is an operational hold: changing the tenant's document does
    not lift it; only an explicit resume does."""
    service = TenantService(store, LocalKeyProvider({1: os.urandom(32)}), {})
    doc = tenant_doc("t1", ["a.test"])
    await service.apply([TenantDocument(parse_tenant(doc, "f.toml"), doc, "file:f.toml")])
    assert await service.set_status("t1", "suspended")
    edited = {**doc, "name": "Renamed"}
    results = await service.apply([TenantDocument(parse_tenant(edited, "f.toml"), edited,
                                                  "file:f.toml")])
    assert results[0].action == "updated"
    assert (await service.get("t1"))["status"] == "suspended"  # type: ignore[index]
    assert await service.set_status("t1", "active")
    assert (await service.get("t1"))["status"] == "active"  # type: ignore[index]
    renamed_again = {**doc, "name": "Again"}
    await service.apply([TenantDocument(parse_tenant(renamed_again, "f.toml"), renamed_again,
                                        "file:f.toml")])
    assert (await service.get("t1"))["status"] == "active"  # type: ignore[index]
