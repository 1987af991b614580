"""The SQLite backend: the event loop's writes and the writer thread take turns.

A write that finds this process's writer thread inside a transaction (a file chunk's) waits
on the loop for that one transaction, not behind every chunk queued on the thread after it;
the thread, between two transactions, lets the waiting writes go first. A JSON PUT queued on
the thread waited behind every upload's chunks (PUT JSON p95 122-1,566 ms at 200 req/s of
the L1 mix, BENCHMARKS.md).

The event loop never syncs the WAL; the writer thread restarts it. The first commit after
a checkpoint that copied the whole WAL restarts the WAL from its start and syncs the WAL
header (``fdatasync``) at SQLite's ``synchronous=NORMAL``. Left to whoever wrote next, that
was often an inline write on the event loop: in a soak the loop thread called ``fdatasync``
on the WAL about three times a second (strace), each waiting behind the disk's queue of
file-chunk writes (BENCHMARKS.md). Now the writer thread follows every complete checkpoint
with a one-row write of its own, so the restart is its. Checked through the WAL header (its
checkpoint sequence number and salts, which a restart changes,
https://www.sqlite.org/fileformat2.html#walformat): it does not change across a write done
on the event loop, and does across the writer thread's work, so restarts still happen; a
restarted WAL is cut back to ``CHECKPOINT_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kyc_host.store import bounded
from kyc_host.store import sqlite as sqlite_backend
from kyc_host.store.base import DuplicateKeyError, StoreUnavailable
from kyc_host.store.sqlite import CHECKPOINT_BYTES, SqliteStore

CHUNK = b"\x01" * (256 * 1024)
#: Over CHECKPOINT_BYTES, and over the 1,000 pages of SQLite's own autocheckpoint.
BIG_CHUNK = b"\x02" * (5 * 1024 * 1024)
REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="-")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(f"sqlite:///{tmp_path}/store.db")
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def chunk_writer(n: int, done: list[str], *, hold: threading.Event | None = None,
                 entered: threading.Event | None = None
                 ) -> Callable[[sqlite3.Connection], None]:
    """A transaction of tenant "a" writing a file chunk, noting in ``done`` when it ran;
    ``hold``: it stays inside the transaction until the event is set."""
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO c_blobs (tenant, id, doc, data) VALUES ('a', ?, '{}', ?)",
                     (f"chunk{n}", CHUNK))
        if entered is not None:
            entered.set()
        if hold is not None:
            assert hold.wait(10)
        done.append(f"chunk{n}")
    return write


async def inside_transaction(entered: threading.Event) -> None:
    for _ in range(1000):
        if entered.is_set():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the writer thread never started its transaction")


async def test_a_small_write_waits_for_one_chunk_not_for_the_queue(store: SqliteStore) -> None:
    done: list[str] = []
    hold, entered = threading.Event(), threading.Event()
    chunks = [store.write(chunk_writer(0, done, hold=hold, entered=entered), inline=False)]
    chunks += [store.write(chunk_writer(n, done), inline=False) for n in range(1, 6)]
    await inside_transaction(entered)

    # Another tenant's customer write, while chunk0's transaction holds the write lock. It
    # notes its turn inside its transaction, as the chunks do: the order of the notes is
    # the order of the transactions.
    def insert_customer(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO c_customers (tenant, id, doc) VALUES ('b', 'c1', ?)",
                     (json.dumps({"_id": "c1", "account": "GB"}),))
        done.append("customer")

    small = store.write(insert_customer)
    await asyncio.sleep(0.05)
    assert not small.done()  # it waits for the lock: one writer at a time
    hold.set()
    await small
    await asyncio.gather(*chunks)

    # chunk0 was in its transaction; the five chunks queued after it came after the customer.
    assert done.index("customer") == 1, done
    customers = store.tenant("b", "customers")
    assert await customers.find_one({"_id": "c1"}) == {"_id": "c1", "account": "GB"}
    assert await store.tenant("a", "customers").find_one({"_id": "c1"}) is None
    assert await store.tenant("a", "blobs").count({}) == 6


async def test_a_waiting_write_too_large_for_the_loop_goes_to_the_thread(
        store: SqliteStore) -> None:
    done: list[str] = []
    hold, entered = threading.Event(), threading.Event()
    chunk = store.write(chunk_writer(0, done, hold=hold, entered=entered), inline=False)
    await inside_transaction(entered)

    big = "x" * (sqlite_backend.INLINE_MAX_DOC_CHARS + 1)
    customers = store.tenant("b", "customers")
    write = asyncio.ensure_future(customers.insert_one({"_id": "c1", "note": big}))
    await asyncio.sleep(0.02)
    hold.set()
    await asyncio.gather(chunk, write)
    found = await customers.find_one({"_id": "c1"})
    assert found is not None
    assert found["note"] == big


async def test_waiting_for_a_stuck_writer_is_refused_with_nothing_written(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "QUEUE_TIMEOUT_SECONDS", 0.2)
    done: list[str] = []
    hold, entered = threading.Event(), threading.Event()
    chunk = store.write(chunk_writer(0, done, hold=hold, entered=entered), inline=False)
    await inside_transaction(entered)

    customers = store.tenant("b", "customers")
    try:
        with pytest.raises(StoreUnavailable, match="busy"):
            await customers.insert_one({"_id": "c1", "account": "GB"})
    finally:
        hold.set()
        await chunk
    assert await customers.find_one({"_id": "c1"}) is None
    # The refused write left nothing waiting: the next one goes straight through.
    await asyncio.wait_for(customers.insert_one({"_id": "c2"}), 5)
    assert await customers.count({}) == 1


async def test_the_loop_writing_all_the_time_does_not_starve_the_writer_thread(
        store: SqliteStore) -> None:
    done: list[str] = []
    chunks = asyncio.gather(*(store.write(chunk_writer(n, done), inline=False)
                              for n in range(20)))
    customers = store.tenant("b", "customers")
    written = 0

    async def keep_writing(lane: int) -> None:
        nonlocal written
        n = 0
        while not chunks.done():
            await customers.insert_one({"_id": f"l{lane}-{n}"})
            n += 1
            written += 1
            # A write done inline returns a finished future, which does not yield to the
            # loop; a request would now answer its client.
            await asyncio.sleep(0)

    writers = [asyncio.ensure_future(keep_writing(lane)) for lane in range(8)]
    await asyncio.wait_for(chunks, 30)
    await asyncio.gather(*writers)
    assert done == [f"chunk{n}" for n in range(20)]
    assert await customers.count({}) == written > 0


async def writer_held(store: SqliteStore, n: int = 0
                      ) -> tuple[threading.Event, asyncio.Future[None]]:
    """A chunk transaction on the writer thread, held until the returned event is set."""
    hold, entered = threading.Event(), threading.Event()
    chunk = store.write(chunk_writer(n, [], hold=hold, entered=entered), inline=False)
    await inside_transaction(entered)
    return hold, chunk


async def test_waiting_writes_run_in_their_own_requests_context_and_keep_their_errors(
        store: SqliteStore) -> None:
    hold, chunk = await writer_held(store)
    seen: dict[str, str] = {}

    def insert(name: str, row: str, *, fail: bool = False) -> Callable[[sqlite3.Connection], str]:
        def write(conn: sqlite3.Connection) -> str:
            seen[name] = REQUEST.get()  # log lines and traces name the request this way
            conn.execute("INSERT INTO c_customers (tenant, id, doc) VALUES ('b', ?, ?)",
                         (row, json.dumps({"_id": row})))
            if fail:
                raise ValueError(f"{name} failed")
            return name
        return write

    async def request(name: str, row: str, *, fail: bool = False) -> str:
        REQUEST.set(name)
        return await store.write(insert(name, row, fail=fail))

    tasks = [asyncio.ensure_future(request("r1", "c1")),
             asyncio.ensure_future(request("r2", "c2", fail=True)),
             asyncio.ensure_future(request("r3", "c1")),  # c1 again: a duplicate key
             asyncio.ensure_future(request("r4", "c4"))]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in tasks)
    hold.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await chunk

    assert results[0] == "r1"
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "r2 failed"
    assert isinstance(results[2], DuplicateKeyError)
    assert results[3] == "r4"
    assert seen == {"r1": "r1", "r2": "r2", "r3": "r3", "r4": "r4"}
    customers = store.tenant("b", "customers")
    assert sorted(doc["_id"] for doc in await customers.find({})) == ["c1", "c4"]


async def test_a_requests_waits_for_the_writer_count_together(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wait under the bound, together over it: the request's next write is refused."""
    monkeypatch.setattr(sqlite_backend, "QUEUE_TIMEOUT_SECONDS", 0.5)
    customers = store.tenant("b", "customers")

    async def request() -> None:
        bounded.start_request()
        for n in range(3):
            hold, chunk = await writer_held(store, n)
            asyncio.get_running_loop().call_later(0.3, hold.set)
            try:
                await customers.insert_one({"_id": f"c{n}"})
            finally:
                hold.set()
                await chunk

    with pytest.raises(StoreUnavailable, match="busy"):
        await request()
    # The first write waited 0.3 s, the second 0.3 s more (0.6 s in all: refused).
    assert [doc["_id"] for doc in await customers.find({})] == ["c0"]


async def test_the_wal_stays_small_while_chunks_and_loop_writes_take_turns(
        store: SqliteStore, tmp_path: Path) -> None:
    """Checkpoints keep up with the chunks written (the WAL is reused, not grown), and the
    loop's writes in between do not keep it from being reset."""
    blobs = store.tenant("a", "blobs")
    customers = store.tenant("b", "customers")
    chunks = asyncio.gather(*(blobs.insert_one({"_id": f"chunk{n}", "data": CHUNK})
                              for n in range(64)))  # 16 MiB
    n = 0
    while not chunks.done():
        await customers.insert_one({"_id": f"c{n}"})
        n += 1
        await asyncio.sleep(0.001)
    await chunks

    wal = tmp_path / "store.db-wal"
    assert wal.stat().st_size < 8 * 1024 * 1024
    found = await blobs.find_one({"_id": "chunk63"})
    assert found is not None
    assert found["data"] == CHUNK
    assert await store.tenant("b", "blobs").count({}) == 0
    assert await customers.count({}) == n > 0


# --- the WAL restarts on the writer thread -------------------------------------------


def wal_header(store: SqliteStore) -> bytes:
    """Checkpoint sequence number, salt-1 and salt-2 of the WAL header."""
    with open(f"{store.path}-wal", "rb") as wal:
        return wal.read(24)[12:24]


def restarts(store: SqliteStore) -> int:
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        row = conn.execute("SELECT n FROM wal_restarts WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


async def loop_write(store: SqliteStore, doc_id: str) -> bool:
    """A small document written the way a request's writes go; whether it was written on
    this thread, the event loop's (inline work past its 2 ms budget is redone on the writer
    thread, which a busy machine can cause now and then)."""
    threads: list[str] = []

    def insert(conn: sqlite3.Connection) -> None:
        threads.append(threading.current_thread().name)
        conn.execute("INSERT INTO c_customers (tenant, id, doc) VALUES ('t1', ?, '{}')",
                     (doc_id,))

    await store.write(insert)
    return threads[-1] == threading.current_thread().name


async def test_the_loop_never_restarts_the_wal_and_the_writer_thread_does(
        store: SqliteStore) -> None:
    chunks = store.tenant("t1", "blobs")
    on_loop = 0
    for round_ in range(3):
        before = wal_header(store)
        await chunks.insert_one({"_id": f"f{round_}.0", "data": BIG_CHUNK})  # writer thread
        assert wal_header(store) != before  # checkpointed and restarted there
        assert restarts(store) == round_ + 1
        header = wal_header(store)
        for i in range(5):
            on_loop += await loop_write(store, f"c{round_}.{i}")
            # Seen failing before the change: the first of these restarted the WAL (and
            # synced its header on the event loop's thread).
            assert wal_header(store) == header, (round_, i)
        # The restarted WAL was cut back: the chunk's 5 MiB of frames do not stay on disk.
        assert (store.path.parent / "store.db-wal").stat().st_size <= CHECKPOINT_BYTES
    assert on_loop >= 10  # of 15: the loop's path was the one tried
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
            commits = store._inline_commits
            await loop_write(store, f"c{written}")
            written += 1
            if store._inline_commits != commits and store._inline_commits % 10 == 0:
                break  # that inline commit queued a checkpoint...
            assert wal_header(store) == header, written  # ...the others restarted nothing
        await store.write(lambda conn: None, inline=False)  # after the queued checkpoint
        assert wal_header(store) != header
        assert restarts(store) == round_ + 1
    assert await store.tenant("t1", "customers").count({}) == written
