"""Helpers for the key-lifecycle tests (tests/keys, tests/crypto).

- :func:`snapshot`: a raw copy of the store as an attacker holding a backup would have it:
  the SQLite files copied (database, WAL) and read back, or every MongoDB document dumped
  with pymongo. Returns ``{(tenant or "", collection): {id: doc}}``.
- :func:`raw_dump`: the raw bytes of the store (SQLite files, BSON of every Mongo document).
- :func:`job_context`: a JobContext for in-process runs of the CLI's rotation functions.
- :func:`current_cipher`: the tenant's cipher from the secrets stored *now*.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import bson
from pymongo import AsyncMongoClient

from conftest import RunningServer
from kyc_host.crypto.jobs import BatchHook
from kyc_host.crypto.records import TenantCipher
from kyc_host.crypto.rotation import JobContext
from kyc_host.crypto.tenant_keys import read_secrets
from kyc_host.store.mongo import MongoStore
from kyc_host.store.sqlite import _decode

Snapshot = dict[tuple[str, str], dict[str, dict[str, Any]]]


def _sqlite_path(srv: RunningServer) -> Path:
    return Path(srv.services.settings.storage_url.removeprefix("sqlite:///"))


async def snapshot(srv: RunningServer) -> Snapshot:
    store = srv.services.store
    out: Snapshot = {}
    if store.backend_name == "sqlite":
        db = _sqlite_path(srv)
        with tempfile.TemporaryDirectory(prefix="kyc-backup-") as copy:
            copy_dir = Path(copy)
            for part in db.parent.glob(db.name + "*"):
                shutil.copy(part, copy_dir / part.name)  # the file and its -wal, as cp would
            conn = sqlite3.connect(copy_dir / db.name)
            try:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'c_%'")]
                for table in tables:
                    # A large collection's rows keep their bytes in a column of their own.
                    has_data = any(col[1] == "data" for col in conn.execute(
                        f"PRAGMA table_info({table})"))
                    data = "data" if has_data else "NULL"
                    for tenant, doc_id, doc, blob in conn.execute(
                            f"SELECT tenant, id, doc, {data} FROM {table}"):  # noqa: S608 - own tables
                        record = _decode(doc)
                        if blob is not None:
                            record["data"] = blob
                        out.setdefault((tenant, table[2:]), {})[doc_id] = record
            finally:
                conn.close()
        return out
    assert isinstance(store, MongoStore)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url)
    try:
        for name in await client.list_database_names():
            if name == store.db_name:
                tenant = ""
            elif name.startswith(store.db_name + "_t_"):
                tenant = name.removeprefix(store.db_name + "_t_")
            else:
                continue
            for collection in await client[name].list_collection_names():
                async for doc in client[name][collection].find({}):
                    out.setdefault((tenant, collection), {})[str(doc["_id"])] = {
                        k: (bytes(v) if isinstance(v, bytes | bson.Binary) else v)
                        for k, v in doc.items()}
    finally:
        await client.close()
    return out


async def raw_dump(srv: RunningServer) -> bytes:
    """Every byte the store holds (SQLite: database and WAL files; Mongo: BSON documents)."""
    store = srv.services.store
    if store.backend_name == "sqlite":
        db = _sqlite_path(srv)
        return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))
    assert isinstance(store, MongoStore)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url)
    dump = bytearray()
    try:
        for name in await client.list_database_names():
            if not name.startswith(store.db_name):
                continue
            for collection in await client[name].list_collection_names():
                async for doc in client[name][collection].find({}):
                    dump += bson.encode(doc)
    finally:
        await client.close()
    return bytes(dump)


def job_context(srv: RunningServer, *, batch: int = 5,
                on_batch: BatchHook | None = None) -> JobContext:
    services = srv.services
    return JobContext(services.store, services.keys, services.settings.tenant_refresh_seconds,
                      actor="cli", batch=batch, progress=False, on_batch=on_batch)


async def current_cipher(srv: RunningServer, tenant_id: str) -> TenantCipher:
    secrets = await read_secrets(srv.services.store, srv.services.keys, tenant_id)
    return TenantCipher.from_secrets(tenant_id, secrets)
