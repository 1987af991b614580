"""The SQLite backend: the event loop never syncs the WAL; the writer thread restarts it.

The first commit after a checkpoint that copied the whole WAL restarts the WAL from its
start and syncs the WAL header (``fdatasync``) at SQLite's ``synchronous=NORMAL``. Left to
whoever wrote next, that was often an inline write on the event loop: in a soak the loop
thread called ``fdatasync`` on the WAL about three times a second (strace), each waiting
behind the disk's queue of file-chunk writes (BENCHMARKS.md). Now the writer thread follows
every complete checkpoint with a one-row write of its own, so the restart is its.

What is checked: the WAL header (its checkpoint sequence number and salts, which a restart
changes, https://www.sqlite.org/fileformat2.html#walformat) does not change across a write
done on the event loop, and it does change across the writer thread's work, so restarts
still happen; a restarted WAL is cut back to ``CHECKPOINT_BYTES``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kyc_host.store import sqlite as sqlite_backend
from kyc_host.store.sqlite import CHECKPOINT_BYTES, SqliteStore

#: Over CHECKPOINT_BYTES, and over the 1,000 pages of SQLite's own autocheckpoint.
BIG_CHUNK = b"\x02" * (5 * 1024 * 1024)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(f"sqlite:///{tmp_path}/store.db")
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def wal_header(store: SqliteStore) -> bytes:
    """Checkpoint sequence number, salt-1 and salt-2 of the WAL header."""
    with open(f"{store.path}-wal", "rb") as wal:
        return wal.read(24)[12:24]


def restarts(store: SqliteStore) -> int:
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        row = conn.execute("SELECT n FROM wal_restarts WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


async def loop_write(store: SqliteStore, doc_id: str) -> None:
    """A small document written the way a request's writes go: inline, on this thread."""
    threads: list[str] = []

    def insert(conn: sqlite3.Connection) -> None:
        threads.append(threading.current_thread().name)
        conn.execute("INSERT INTO c_customers (tenant, id, doc) VALUES ('t1', ?, '{}')",
                     (doc_id,))

    await store.write(insert)
    assert threads[-1] == threading.current_thread().name  # it ran on the event loop


async def test_the_loop_never_restarts_the_wal_and_the_writer_thread_does(
        store: SqliteStore) -> None:
    chunks = store.tenant("t1", "blobs")
    for round_ in range(3):
        before = wal_header(store)
        await chunks.insert_one({"_id": f"f{round_}.0", "data": BIG_CHUNK})  # writer thread
        assert wal_header(store) != before  # checkpointed and restarted there
        assert restarts(store) == round_ + 1
        header = wal_header(store)
        for i in range(5):
            await loop_write(store, f"c{round_}.{i}")
            # Seen failing before the change: the first of these restarted the WAL (and
            # synced its header on the event loop's thread).
            assert wal_header(store) == header, (round_, i)
        # The restarted WAL was cut back: the chunk's 5 MiB of frames do not stay on disk.
        assert (store.path.parent / "store.db-wal").stat().st_size <= CHECKPOINT_BYTES
    found = await chunks.find_one({"_id": "f2.0"})
    assert found is not None
    assert found["data"] == BIG_CHUNK


async def test_checkpoints_for_the_loops_commits_restart_on_the_writer_thread(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only small writes: every CHECKPOINT_EVERY inline commits the writer thread
    checkpoints, and restarts the WAL itself."""
    monkeypatch.setattr(sqlite_backend, "CHECKPOINT_EVERY", 10)
    written = 0
    for round_ in range(3):
        header = wal_header(store)
        while True:
            await loop_write(store, f"c{written}")
            written += 1
            if store._inline_commits % 10 == 0:  # that one queued a checkpoint...
                break
            assert wal_header(store) == header, written  # ...the others restarted nothing
        await store.write(lambda conn: None, inline=False)  # after the queued checkpoint
        assert wal_header(store) != header
        assert restarts(store) == round_ + 1
    assert await store.tenant("t1", "customers").count({}) == written
