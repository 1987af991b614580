"""The SQLite backend and large documents (``CollectionSpec.large``: file chunks).

A file's chunks are read, written and deleted on the store's threads, never on the event
loop: one 10 MiB file's delete held the loop 10-170 ms, the progress handler that bounds
inline work cannot interrupt a single row's delete, and every tenant's requests wait for the
loop (the noisy-neighbour benchmark). Deleted rows are overwritten with zeros everywhere
except in large collections, whose chunks are sealed with a key deleted before them.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from kyc_host.store.schema import COLLECTIONS
from kyc_host.store.sqlite import SqliteStore

CHUNK = 1024 * 1024


class Threads:
    """The thread each statement on a table ran on (the store's trace callback)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def trace(self, statement: str) -> None:
        table = next((w for w in statement.replace("(", " ").split() if w.startswith("c_")),
                     "")
        self.seen.append((table, threading.current_thread().name))

    def of(self, table: str) -> set[str]:
        return {thread for t, thread in self.seen if t == table}


def marker(name: str, size: int) -> str:
    """A distinctive text of ``size`` characters (spans SQLite overflow pages)."""
    unit = f"<{name}-{os.urandom(4).hex()}>"
    return (unit * (size // len(unit) + 1))[:size]


def file_bytes(db: Path) -> bytes:
    """The database's bytes once the WAL's frames are in the file and the WAL is emptied."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


async def test_large_documents_never_touch_the_event_loop_and_small_ones_do(
        tmp_path: Path) -> None:
    assert COLLECTIONS["blobs"].large
    assert not COLLECTIONS["files"].large
    threads = Threads()
    store = SqliteStore(f"sqlite:///{tmp_path / 'kyc.db'}", trace=threads.trace)
    await store.start()
    # The tables are created at start, inline or on the writer thread, before any request:
    # what counts is every operation after that.
    threads.seen.clear()
    loop_thread = threading.current_thread().name
    try:
        for tenant in ("t1", "t2"):
            blobs, files = store.tenant(tenant, "blobs"), store.tenant(tenant, "files")
            await blobs.insert_one({"_id": "f.0", "data": marker("chunk", CHUNK)})
            await files.insert_one({"_id": "f", "size": CHUNK})
            found = await blobs.find_one({"_id": "f.0"})
            assert found is not None
            assert len(found["data"]) == CHUNK
            assert await blobs.count({}) == 1
            assert [d["_id"] for d in await blobs.find({})] == ["f.0"]
            await blobs.replace_one({"_id": "f.0"}, {"data": "short"})
            assert await files.find_one({"_id": "f"}) == {"_id": "f", "size": CHUNK}
        assert await store.tenant("t1", "blobs").delete_one({"_id": "f.0"}) == 1
        assert await store.tenant("t1", "blobs").find_one({"_id": "f.0"}) is None
        assert await store.tenant("t2", "blobs").delete_many({}) == 1
        assert await store.tenant("t1", "files").delete_many({}) == 1
        assert await store.tenant("t2", "files").find_one({"_id": "f"}) is not None
    finally:
        await store.close()
    assert threads.of("c_blobs"), "no statement on the blobs table was seen"
    assert loop_thread not in threads.of("c_blobs"), threads.of("c_blobs")
    # The point of the rule: other collections' small documents are worked on inline.
    assert loop_thread in threads.of("c_files"), threads.of("c_files")


async def test_deleted_records_are_zeroed_and_chunk_deletes_leave_that_on(
        tmp_path: Path) -> None:
    db = tmp_path / "kyc.db"
    store = SqliteStore(f"sqlite:///{db}")
    await store.start()
    record, after_chunks = marker("record", 20_000), marker("after", 20_000)
    try:
        customers, blobs = store.tenant("t1", "customers"), store.tenant("t1", "blobs")
        await customers.insert_one({"_id": "c1", "sealed": record})
        await blobs.insert_one({"_id": "f.0", "data": marker("chunk", CHUNK)})
        await customers.insert_one({"_id": "c2", "sealed": after_chunks})
        assert await customers.delete_one({"_id": "c1"}) == 1
        assert await blobs.delete_many({"_id": "f.0"}) == 1  # FAST for this one delete
        assert await customers.delete_one({"_id": "c2"}) == 1  # zeroed again
        # The writer thread's connection (it deleted the chunk) is back to zeroing too.
        assert await store.write(lambda conn: conn.execute("PRAGMA secure_delete").fetchone(),
                                 inline=False) == (1,)
    finally:
        await store.close()
    data = file_bytes(db)
    assert record[:40].encode() not in data
    assert after_chunks[:40].encode() not in data


def raw_rows(db: Path) -> list[tuple[str, str, str, str | None, int | None]]:
    """(tenant, id, doc, typeof(data), length(data)) of every file chunk row, as stored."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT tenant, id, doc, typeof(data), length(data) FROM c_blobs"
                            " ORDER BY tenant, id").fetchall()


async def test_chunk_bytes_are_stored_as_a_blob_beside_their_document(tmp_path: Path) -> None:
    db = tmp_path / "kyc.db"
    store = SqliteStore(f"sqlite:///{db}")
    await store.start()
    chunk, other = os.urandom(CHUNK + 28), os.urandom(1000)
    try:
        t1, t2 = store.tenant("t1", "blobs"), store.tenant("t2", "blobs")
        await t1.insert_one({"_id": "f.0", "data": chunk, "n": 0})
        await t2.insert_one({"_id": "f.0", "data": other, "n": 0})
        assert await t1.find_one({"_id": "f.0"}) == {"_id": "f.0", "data": chunk, "n": 0}
        assert await t2.find_one({"_id": "f.0"}) == {"_id": "f.0", "data": other, "n": 0}
        assert await t1.find({}, fields=["n"]) == [{"_id": "f.0", "n": 0}]
        assert await t2.find({}, fields=["data"]) == [{"_id": "f.0", "data": other}]
        # The bytes are not part of the JSON, so they cannot be queried by it.
        with pytest.raises(ValueError, match="data"):
            await t1.find_one({"data": chunk})
        changed = await t1.find_one_and_update({"_id": "f.0"}, set={"n": 1})
        assert changed == {"_id": "f.0", "data": chunk, "n": 1}
        assert await t1.find_one({"_id": "f.0"}) == changed
        await t2.replace_one({"_id": "f.0"}, {"data": "text, not bytes"})
        assert await t2.find_one({"_id": "f.0"}) == {"_id": "f.0", "data": "text, not bytes"}
    finally:
        await store.close()
    rows = raw_rows(db)
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("t1", "f.0", "blob", len(chunk)), ("t2", "f.0", "null", None)]
    assert json.loads(rows[0][2]) == {"_id": "f.0", "n": 1}  # no base64 copy in the JSON
    assert json.loads(rows[1][2]) == {"_id": "f.0", "data": "text, not bytes"}


async def test_a_database_from_before_the_blob_column_is_upgraded_and_reads_the_same(
        tmp_path: Path) -> None:
    """Databases written before the column keep their chunks as base64 inside the JSON:
    start adds the column, those rows read as before, and new and changed rows use it."""
    db = tmp_path / "kyc.db"
    old_chunk = os.urandom(5000)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE c_blobs (tenant TEXT NOT NULL, id TEXT NOT NULL,"
                     " doc TEXT NOT NULL, PRIMARY KEY (tenant, id)) WITHOUT ROWID")
        for chunk_id in ("old.0", "old.1"):
            doc = {"_id": chunk_id, "data": {"$bytes": base64.b64encode(old_chunk).decode()}}
            conn.execute("INSERT INTO c_blobs VALUES ('t1', ?, ?)", (chunk_id, json.dumps(doc)))
    store = SqliteStore(f"sqlite:///{db}")
    await store.start()
    new_chunk = os.urandom(CHUNK)
    try:
        blobs = store.tenant("t1", "blobs")
        assert await blobs.find_one({"_id": "old.0"}) == {"_id": "old.0", "data": old_chunk}
        assert await store.tenant("t2", "blobs").find_one({"_id": "old.0"}) is None
        await blobs.insert_one({"_id": "new.0", "data": new_chunk})
        await blobs.update_one({"_id": "old.1"}, set={"seen": True})
        assert [d["data"] for d in await blobs.find({}, sort=[("_id", 1)])] == [
            new_chunk, old_chunk, old_chunk]
        assert await blobs.find_one({"_id": "old.1"}) == {"_id": "old.1", "data": old_chunk,
                                                          "seen": True}
    finally:
        await store.close()
    kinds = {r[1]: r[3] for r in raw_rows(db)}
    assert kinds == {"new.0": "blob", "old.0": "null", "old.1": "blob"}
    # Started again: the column is there already, nothing changes.
    store = SqliteStore(f"sqlite:///{db}")
    await store.start()
    try:
        assert await store.tenant("t1", "blobs").count({}) == 3
    finally:
        await store.close()
