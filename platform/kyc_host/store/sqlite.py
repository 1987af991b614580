"""The embedded SQLite backend: one file, no infrastructure.

Each collection is a table ``c_<name>(tenant, id, doc)`` with the document as JSON; indexes are
expression indexes over ``json_extract``. Every tenant-bound query carries ``tenant = ?``.

Threads and the event loop:

- Writes go through one dedicated thread per process (one connection, ``BEGIN IMMEDIATE`` so a
  read-modify-write is atomic across processes). Writers of *all* processes also take an
  exclusive ``flock`` on ``<db>.writelock`` around each transaction: SQLite's own busy handler
  sleeps (1, 2, 5 ... up to 100 ms) between retries, which put 0.5-1.4 s tails on concurrent
  PUTs with two workers; a blocked ``flock`` wakes the moment the other writer commits.
- Reads and writes are first tried inline on the event loop, on the loop's own connection:
  in WAL mode a reader never waits for a writer, a point query or one-row write takes tens of
  microseconds, and the hand-off to a thread cost ~2 ms of loop time per operation under load
  (thread-pool machinery was 15-30% of the CPU of a GET, a PUT or a SEP-10 login,
  BENCHMARKS.md). Inline work never waits and never runs long:
  - the inline connection has busy timeout 0, and an inline write only proceeds if it gets
    the cross-process ``flock`` without waiting (and no writer thread of this process is
    inside a transaction);
  - a progress handler interrupts inline work past ``INLINE_BUDGET_SECONDS`` (a scan, a big
    delete), and a document over ``INLINE_MAX_DOC_CHARS`` (a file chunk) is not written inline;
  - the inline connection never syncs a file: no connection checkpoints by itself; the
    writer thread checkpoints (a checkpoint fsyncs) after its own transactions once the WAL
    holds ``CHECKPOINT_BYTES`` and every ``CHECKPOINT_EVERY`` inline commits. A checkpoint
    that copied the whole WAL is followed at once, under the same locks, by a one-row write
    (table ``wal_restarts``): the first commit after such a checkpoint restarts the WAL
    from its start and syncs the WAL header (SQLite does at every ``synchronous`` level but
    OFF), and that write makes it the writer thread's. Left to whoever wrote next, it was
    the event loop's, three times a second in a soak, each ``fdatasync`` waiting behind the
    disk's queue of chunk writes (BENCHMARKS.md).
  Whatever did not finish inline is rolled back and done again on the reader or writer
  thread, which wait and report errors as before: same results, same exclusivity.
- A write that finds this process's writer thread inside a transaction (a file chunk's, a
  few milliseconds) does not queue behind the thread's other work: it waits on the loop for
  that transaction to end, and the writer thread, before its next transaction, lets the
  loop's waiting writes go first (for at most ``TURN_WAIT_SECONDS``). Queued on the thread,
  a JSON PUT's one-row writes waited behind every chunk of every upload in the queue (p95
  122-1,566 ms at 200 req/s of the L1 mix, BENCHMARKS.md); a second writer thread for them
  was tried and reverted after two stress runs with slower uploads.
  A collection of large documents (``CollectionSpec.large``: file chunks) never goes inline.

A large collection's documents keep their ``data`` bytes (a sealed file chunk) in a BLOB
column of their own, beside the rest of the document as JSON, in a rowid table: as base64
text inside the JSON of a WITHOUT ROWID table a 1 MiB chunk cost 11.1 ms of CPU to write and
7.3 ms to read, a third more bytes on disk and in the WAL, and ~4 ms of base64 with the GIL
held; now 2.9 and 1.4 ms (tests/benchmarks/sqlite_chunks.py, BENCHMARKS.md). Rows written
before the column existed keep ``data`` inside their JSON and read the same.

Thread work runs in the caller's context (contextvars), so what a store thread does for a
request (log lines, a ``trace``) is attributed to that request as inline work is.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import contextvars
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from kyc_host.store import bounded
from kyc_host.store.base import (
    Cmp,
    Collection,
    CollectionSpec,
    Doc,
    DuplicateKeyError,
    Filter,
    SortSpec,
    Store,
    StoreUnavailable,
    apply_update,
    check_field,
    new_doc_from_filter,
)
from kyc_host.store.schema import COLLECTIONS, spec_for

T = TypeVar("T")
PLATFORM = ""  # the tenant column value of platform-wide rows
#: Inline work running longer than this is interrupted and redone on a thread.
INLINE_BUDGET_SECONDS = 0.002
#: Documents larger than this (file chunks) are written on the writer thread.
INLINE_MAX_DOC_CHARS = 64 * 1024
#: Work that waited longer than this for its thread is refused (StoreUnavailable) unrun, like
#: a MongoDB operation past the client's timeoutMS (4 s; reliability-plan: 503 within 5 s).
QUEUE_TIMEOUT_SECONDS = bounded.QUEUE_TIMEOUT_SECONDS
#: Inline commits between two passive WAL checkpoints on the writer thread.
CHECKPOINT_EVERY = 500
#: The writer thread checkpoints after a transaction once the WAL file is larger than this
#: (SQLite's autocheckpoint default: 1,000 pages of 4 KiB), and a restarted WAL is cut back
#: to it (``journal_size_limit``), so the file's size says how far the WAL has grown.
CHECKPOINT_BYTES = 4 * 1024 * 1024
#: The one-row write that restarts the WAL on the writer thread after a full checkpoint.
_RESTART_WAL = ("INSERT INTO wal_restarts (id, n) VALUES (1, 1)"
                " ON CONFLICT (id) DO UPDATE SET n = n + 1")
#: How long the writer thread, between two transactions, waits for the loop's waiting writes.
TURN_WAIT_SECONDS = 0.05
#: The field a large collection's documents keep in their BLOB column when it holds bytes.
BLOB_FIELD = "data"
_OPS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "ne": "IS NOT"}


#: Bytes values at least this long skip the JSON encoder: their base64 text is spliced into
#: the encoded document instead. Base64 needs no escaping, and the encoder's per-character
#: escaping of a 1 MiB file chunk's base64 cost ~8 ms with the GIL held (it stalled every
#: other tenant's requests during uploads: the noisy-neighbour benchmark, BENCHMARKS.md).
SPLICE_MIN_BYTES = 4096


def _encode(doc: Mapping[str, Any] | list[Any]) -> str:
    spliced: dict[str, bytes] = {}
    nonce = ""

    def default(value: Any) -> Any:
        nonlocal nonce
        if isinstance(value, bytes) and len(value) >= SPLICE_MIN_BYTES:
            # A placeholder no stored text can contain by chance (a random 64-bit nonce).
            nonce = nonce or secrets.token_hex(8)
            mark = f"\x00{nonce}:{len(spliced)}\x00"
            spliced[mark] = value
            return mark
        return _encode_value(value)

    text = json.dumps(doc, default=default, separators=(",", ":"), ensure_ascii=False)
    for mark, value in spliced.items():
        encoded_mark = json.dumps(mark, ensure_ascii=False)
        text = text.replace(encoded_mark, '{"$bytes":"' + _base64_text(value) + '"}', 1)
    return text


#: Large values are base64-encoded this many bytes at a time (a multiple of 3, so the pieces
#: join into the encoding of the whole).
BASE64_PIECE_BYTES = 48 * 1024


def _base64_text(value: bytes) -> str:
    """``base64.b64encode(value)`` as text, one piece at a time. The encoder holds the GIL
    for the whole call: with a 1 MiB file chunk in one call (3 ms) the event loop waited 7.4
    ms (p50) for the GIL at every wake-up at Python's default switch interval, measured alone;
    in pieces it gets the GIL between them."""
    view = memoryview(value)
    return "".join([base64.b64encode(view[at:at + BASE64_PIECE_BYTES]).decode("ascii")
                    for at in range(0, len(view), BASE64_PIECE_BYTES)])


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    raise TypeError(f"cannot store {type(value).__name__}")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$bytes" in obj:
        return base64.b64decode(obj["$bytes"])
    return obj


def _decode(text: str) -> Doc:
    doc: Doc = json.loads(text, object_hook=_decode_hook)
    return doc


def _expr(field: str) -> str:
    if field == "_id":
        return "id"
    return f"json_extract(doc, '$.{check_field(field)}')"


def _sql_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return _encode(value)
    return value


def _where(flt: Filter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for field, value in flt.items():
        expr = _expr(field)
        if isinstance(value, Cmp):
            if value.op in ("in", "nin"):
                if not value.value:
                    clauses.append("0" if value.op == "in" else "1")
                    continue
                marks = ",".join("?" * len(value.value))
                negate = "" if value.op == "in" else f"{expr} IS NULL OR "
                keyword = "IN" if value.op == "in" else "NOT IN"
                clauses.append(f"({negate}{expr} {keyword} ({marks}))")
                params.extend(_sql_value(v) for v in value.value)
            else:
                clauses.append(f"{expr} {_OPS[value.op]} ?")
                params.append(_sql_value(value.value))
        elif value is None:
            clauses.append(f"{expr} IS NULL")
        elif isinstance(value, dict | list):
            # Matched literally, as MongoDB's $eq does; never interpreted as an operator.
            if field == "_id":
                clauses.append("0")
                continue
            path = f"'$.{field}'"
            clauses.append(f"(json_type(doc, {path}) IN ('object', 'array')"
                           f" AND {expr} = json(?))")
            params.append(_encode(value))
        else:
            clauses.append(f"{expr} = ?")
            params.append(value)
    return (" AND ".join(clauses) or "1"), params


def _top_level(field: str) -> str:
    if "." in check_field(field):
        raise ValueError(f"not a top-level field: {field!r}")
    return field


def _projection(fields: Sequence[str]) -> str:
    """A JSON object of ``_id`` and ``fields`` built by SQLite: only those values leave the
    database and get decoded (json_extract keeps nested values JSON, not strings)."""
    parts = ["'_id', id"]
    parts += [f"'{_top_level(f)}', {_expr(f)}" for f in fields if f != "_id"]
    return f"json_object({', '.join(parts)})"


def _order(sort: SortSpec) -> str:
    if not sort:
        return ""
    return " ORDER BY " + ", ".join(
        f"{_expr(f)} {'ASC' if d >= 0 else 'DESC'}" for f, d in sort)


#: :meth:`SqliteStore._write_inline`'s answer when this process's writer thread holds the lock.
_WRITER_BUSY = "writer-busy"
#: :meth:`SqliteStore._give_turn`'s answer to a waiting write that inline cannot do.
_TO_THREAD = object()


class _NotInline(Exception):
    """Raised inside an inline write: this one belongs on the writer thread."""


def _done(loop: asyncio.AbstractEventLoop, value: T) -> asyncio.Future[T]:
    future: asyncio.Future[T] = loop.create_future()
    future.set_result(value)
    return future


#: Observer of executed statements: called with each statement's text as SQLite runs it.
StatementTrace = Callable[[str], None]


class SqliteStore(Store):
    def __init__(self, url: str, *, trace: StatementTrace | None = None) -> None:
        """``trace``: registered with ``sqlite3``'s ``set_trace_callback`` on every connection
        this store opens (inline, reader and writer threads), so it sees every statement
        that runs, with bound parameters shown expanded, on the thread that runs it (in the
        caller's context). For tests and diagnosis: it is called with the GIL held on the
        hot path, so it must be cheap and must not raise."""
        self.url = url
        self._trace = trace
        self.path = Path(url.removeprefix("sqlite:///"))
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._inline: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        #: Held by whoever of this process is inside a write transaction (flock is per open
        #: file, so it cannot tell this process's writer thread from its event loop).
        self._txn_lock = threading.Lock()
        self._deadline = 0.0  # inline work is interrupted past this perf_counter() value
        self._writing_inline = False
        self._inline_commits = 0
        self._closed = False
        # Taking turns with the writer thread (see the module docstring): the loop's writes
        # waiting for its transaction to end (each with its request's context and the future
        # it waits on), and the event the writer thread waits on until they had their go.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn_queue: collections.deque[tuple[
            Callable[[sqlite3.Connection], Any], contextvars.Context, asyncio.Future[Any]]] = (
                collections.deque())
        self._turn_over = threading.Event()

    # -- connection handling (each executor thread has its own connection) --

    def _connect(self, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the writer thread checkpoints
        conn.execute(f"PRAGMA journal_size_limit={CHECKPOINT_BYTES}")
        conn.execute("PRAGMA foreign_keys=ON")
        # Deleted rows are overwritten with zeros (the default of Debian's SQLite, not of
        # every build): a deleted record's ciphertext must not linger in free pages while
        # the tenant key that opens it lives on. File chunks are the exception (their key is
        # deleted first): see SqliteCollection.delete_many.
        conn.execute("PRAGMA secure_delete=ON")
        if self._trace is not None:
            conn.set_trace_callback(self._trace)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect(timeout=4.0)
        return conn

    def _inline_conn(self) -> sqlite3.Connection:
        if self._inline is None:
            conn = self._connect(timeout=0)
            # Every 100 VM instructions: past the deadline, SQLite interrupts the statement.
            conn.set_progress_handler(lambda: time.perf_counter() > self._deadline, 100)
            self._inline = conn
        self._deadline = time.perf_counter() + INLINE_BUDGET_SECONDS
        return self._inline

    def read_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T | None:
        """Run a read on the loop's own connection; None means "retry on the thread"."""
        try:
            return fn(self._inline_conn())
        except sqlite3.OperationalError:
            # Interrupted (over budget), locked (e.g. a WAL restart) or I/O trouble: the
            # thread path decides.
            return None

    async def read_any(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` inline if it finishes within the budget, else on the reader thread.

        ``fn`` must be a pure read returning a non-None value."""
        found = self.read_inline(fn)
        return found if found is not None else await self.read(fn)

    def _write_inline(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[T] | str | None:
        """``(result,)`` if the transaction ran and committed inline; ``_WRITER_BUSY`` if
        this process's writer thread is inside a transaction; None if it must go to the
        writer thread (another process writing, over budget, document too large). Nothing
        is written unless committed. A duplicate key raises DuplicateKeyError, as on the
        thread."""
        if self._closed:
            return None
        if not self._txn_lock.acquire(blocking=False):
            return _WRITER_BUSY
        try:
            if not self._try_flock():
                return None
            try:
                return self._inline_txn(fn)
            finally:
                fcntl.flock(self._lock_file(), fcntl.LOCK_UN)
        finally:
            self._txn_lock.release()

    def _inline_txn(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[T] | None:
        conn = self._inline_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            # The progress handler can interrupt BEGIN *after* it took the write lock (its
            # step count runs on across executions of the cached statement): SQLite then
            # reports "interrupted" with the transaction open. Kept open, it would block
            # every writer of every process for good (found by tests/faults, F3).
            self._rollback(conn)
            return None
        self._writing_inline = True
        try:
            result = fn(conn)
            # Never interrupted: an interrupted COMMIT must not leave any doubt whether it
            # committed. (Without autocheckpoint it only appends the WAL frames.)
            self._deadline = float("inf")
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback(conn)
            raise DuplicateKeyError(str(exc)) from None
        except (sqlite3.OperationalError, _NotInline):
            self._rollback(conn)
            return None
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            self._writing_inline = False
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0:
            self._writer.submit(self._checkpoint_job)
        return (result,)

    def _rollback(self, conn: sqlite3.Connection) -> None:
        self._deadline = float("inf")  # the progress handler must not interrupt the ROLLBACK
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # Never leave a transaction (and SQLite's write lock) open on this connection:
            # closing it rolls back; the next inline operation opens a new one.
            conn.close()
            self._inline = None

    def _checkpoint_job(self) -> None:
        """Runs on the writer thread (queued every ``CHECKPOINT_EVERY`` inline commits)."""
        try:
            with self._txn_lock, self._write_lock():
                self._checkpoint(self._conn())
        except (OSError, sqlite3.Error):
            pass  # no lock file or connection (closing): nothing to checkpoint then
        finally:
            self._hand_over()

    def _checkpoint_if_due(self, conn: sqlite3.Connection) -> None:
        """After a transaction of the writer thread, still holding the write locks."""
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size > CHECKPOINT_BYTES:
            self._checkpoint(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """On the writer thread, holding the write locks (``_txn_lock`` and the flock): copy
        the WAL into the database as far as readers allow (PASSIVE never waits). If that
        copied all of it, restart the WAL here with a one-row write, before anyone else
        writes (the module docstring says why). A failure only leaves the WAL longer."""
        with contextlib.suppress(sqlite3.Error):
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or frames <= 0 or copied != frames:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_RESTART_WAL)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def check_inline_size(self, text: str) -> None:
        """Called with each encoded document a write stores: too large to write inline."""
        if self._writing_inline and len(text) > INLINE_MAX_DOC_CHARS:
            raise _NotInline()

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self._conn())
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(str(exc)) from None
            except sqlite3.OperationalError as exc:
                # "database is locked" past the busy timeout, disk I/O errors, a vanished file.
                raise StoreUnavailable(f"sqlite: {exc}") from None

        # Queued behind other work for too long (an overloaded writer): refused before it
        # runs, so nothing is half-done, and the request answers 503 + Retry-After as with an
        # unreachable MongoDB, instead of running into client timeouts (store/bounded.py).
        return await bounded.run_bounded(pool, call, bound=QUEUE_TIMEOUT_SECONDS,
                                         busy="sqlite: busy")

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return asyncio.ensure_future(self._run(self._reader, fn))

    def write(self, fn: Callable[[sqlite3.Connection], T], *,
              inline: bool = True) -> asyncio.Future[T]:
        """Run ``fn`` in one write transaction: inline if that can be done without waiting
        (see the module docstring), else on the writer thread. ``fn`` may run twice (the
        inline attempt was rolled back), so it must only work through ``conn``.
        ``inline=False``: on the writer thread only (work known to be long)."""
        loop = asyncio.get_running_loop()
        try:
            done = self._write_inline(fn) if inline else None
        except DuplicateKeyError as exc:
            failed: asyncio.Future[T] = loop.create_future()
            failed.set_exception(exc)
            return failed
        if isinstance(done, tuple):
            return _done(loop, done[0])
        if done == _WRITER_BUSY:
            return asyncio.ensure_future(self._write_in_turn(fn))
        return asyncio.ensure_future(self._write_on_thread(fn))

    async def _write_on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def in_txn(conn: sqlite3.Connection) -> T:
            try:
                with self._txn_lock, self._write_lock():
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        # Also when COMMIT itself failed: a transaction left open here would
                        # hold SQLite's write lock against every process until it exits.
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    self._checkpoint_if_due(conn)
                    return result
            finally:
                self._hand_over()

        return await self._run(self._writer, in_txn)

    async def _write_in_turn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Write inline as soon as the writer thread's transaction has ended (done by
        :meth:`_give_turn`), or on the writer thread if inline cannot do it. Refused
        (StoreUnavailable, nothing written) once the request has waited for store threads
        longer than ``QUEUE_TIMEOUT_SECONDS`` in all, as work queued on a thread is."""
        loop = asyncio.get_running_loop()
        budget = QUEUE_TIMEOUT_SECONDS - bounded.charge(0.0)
        done: asyncio.Future[Any] = loop.create_future()
        self._turn_queue.append((fn, contextvars.copy_context(), done))
        if not self._txn_lock.locked():
            # The thread ended its transaction after our attempt and may have seen nobody
            # waiting: nothing would hand over.
            self._give_turn()
        started = loop.time()
        try:
            if not done.done():
                await asyncio.wait([done], timeout=max(0.0, budget))
        finally:
            if not done.done():
                done.cancel()  # never run now (_give_turn skips it)
            bounded.charge(loop.time() - started)
        if done.cancelled():
            raise StoreUnavailable(f"sqlite: busy (waited over {QUEUE_TIMEOUT_SECONDS:g} s)")
        result = done.result()
        if result is _TO_THREAD:
            return await self._write_on_thread(fn)
        return cast(T, result)

    def _give_turn(self) -> None:
        """On the loop, with the writer thread between two transactions (or idle): run the
        waiting writes inline, in the order they came, each in its request's context; those
        inline cannot do are sent on to the writer thread. Then let the thread go on."""
        try:
            while self._turn_queue:
                fn, context, done = self._turn_queue[0]
                if done.done():  # refused after waiting too long, or its request is gone
                    self._turn_queue.popleft()
                    continue
                try:
                    ran = context.run(self._write_inline, fn)
                except Exception as exc:  # a duplicate key, or fn's own error
                    self._turn_queue.popleft()
                    done.set_exception(exc)
                    continue
                if ran == _WRITER_BUSY:
                    return  # the thread went on without waiting; it hands over again after
                self._turn_queue.popleft()
                done.set_result(ran[0] if isinstance(ran, tuple) else _TO_THREAD)
        finally:
            self._turn_over.set()

    def _hand_over(self) -> None:
        """On the writer thread, after a transaction: if writes of the loop wait for it to
        end, have the loop run them now and wait until it has (``TURN_WAIT_SECONDS`` at
        most)."""
        if not self._turn_queue or self._loop is None:
            return
        self._turn_over.clear()
        try:
            self._loop.call_soon_threadsafe(self._give_turn)
        except RuntimeError:  # the loop is closed
            return
        self._turn_over.wait(TURN_WAIT_SECONDS)

    def _lock_file(self) -> int:
        if self._lock_fd is None:
            self._lock_fd = os.open(f"{self.path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd

    def _try_flock(self) -> bool:
        try:
            fcntl.flock(self._lock_file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process is writing
        except OSError:
            return False  # the thread path reports it
        return True

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Exclusive across processes; runs on the writer thread, so blocking here is fine."""
        fd = self._lock_file()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # -- Store --

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: {exc.strerror}") from None

        def create(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS wal_restarts"
                         " (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            for spec in COLLECTIONS.values():
                table = f"c_{spec.name}"
                if spec.large:
                    # A rowid table: rows of a megabyte are cheaper to insert there than in
                    # a WITHOUT ROWID table (tests/benchmarks/sqlite_chunks.py).
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {table} (tenant TEXT NOT NULL,"
                        " id TEXT NOT NULL, doc TEXT NOT NULL, data BLOB,"
                        " PRIMARY KEY (tenant, id))")
                    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if "data" not in columns:  # a database from before the column
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN data BLOB")
                else:
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {table} (tenant TEXT NOT NULL,"
                        " id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tenant, id))"
                        " WITHOUT ROWID")
                for index in spec.indexes:
                    cols = ", ".join(["tenant", *(_expr(f) for f in index.fields)])
                    unique = "UNIQUE " if index.unique else ""
                    conn.execute(f"CREATE {unique}INDEX IF NOT EXISTS {table}_{index.name}"
                                 f" ON {table} ({cols})")
            _set_planner_statistics(conn)

        await self.write(create)

    async def close(self) -> None:
        """Close every connection; closing twice is a no-op (as on MongoDB)."""
        if self._closed:
            return
        self._closed = True

        def close_conn() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None

        for pool in (self._writer, self._reader):
            await asyncio.get_running_loop().run_in_executor(pool, close_conn)
            pool.shutdown(wait=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())

    def platform(self, name: str) -> Collection:
        return SqliteCollection(self, spec_for(name, "platform"), PLATFORM)

    def tenant(self, tenant_id: str, name: str) -> Collection:
        if not tenant_id:
            raise ValueError("tenant id required")
        return SqliteCollection(self, spec_for(name, "tenant"), tenant_id)

    async def prepare_tenant(self, tenant_id: str) -> None:
        """Nothing to do: tables and indexes are shared and were created at start."""

    async def drop_tenant(self, tenant_id: str) -> None:
        if not tenant_id:
            raise ValueError("tenant id required")

        def drop(conn: sqlite3.Connection) -> None:
            for spec in COLLECTIONS.values():
                if spec.scope == "tenant":
                    conn.execute(f"DELETE FROM c_{spec.name} WHERE tenant = ?", (tenant_id,))

        await self.write(drop)


#: The shape the query planner is told every table has (:func:`_set_planner_statistics`):
#: this many rows, this many per tenant, and per value of an indexed field.
PLANNED_ROWS, PLANNED_PER_TENANT = 1_000_000, 100_000
PLANNED_PER_VALUE = (10, 5, 2)


def _planner_statistics() -> list[tuple[str, str, str]]:
    """``sqlite_stat1`` rows (table, index, "rows, rows per prefix...") for every table:
    a tenant holds many rows, an indexed field's value few of them."""
    rows: list[tuple[str, str, str]] = []
    for spec in COLLECTIONS.values():
        table = f"c_{spec.name}"
        # The primary key (tenant, id): a WITHOUT ROWID table is its own primary key index.
        primary = f"sqlite_autoindex_{table}_1" if spec.large else table
        rows.append((table, primary, f"{PLANNED_ROWS} {PLANNED_PER_TENANT} 1"))
        for index in spec.indexes:
            per_value = [PLANNED_PER_VALUE[min(i, len(PLANNED_PER_VALUE) - 1)]
                         for i in range(len(index.fields))]
            if index.unique:
                per_value[-1] = 1
            numbers = [PLANNED_ROWS, PLANNED_PER_TENANT, *per_value]
            rows.append((table, f"{table}_{index.name}", " ".join(map(str, numbers))))
    return rows


def _set_planner_statistics(conn: sqlite3.Connection) -> None:
    """Tell SQLite's query planner what the tables look like in production.

    Without statistics the planner takes ``tenant = ?`` on the primary key (tenant, id) to
    be as selective as an indexed field, and it chose the primary key: every query by an
    indexed field (a count of an account's customers on each new customer, the callback
    worker's pending events, the review queue's filters, blind-index lookups) read and
    decoded every row of the tenant: 42 ms for a count at 100,000 rows, against 0.009 with
    the index (tests/benchmarks/sqlite_plans.py).
    ``ANALYZE`` would measure the real shape, but a new database has none to measure and
    the plans chosen then would stay. So the store writes fixed statistics (SQLite's
    documented way to steer its planner: "Manual Control Of Query Plans Using SQLITE_STAT
    Tables") at every start, replacing any from an ``ANALYZE`` an operator ran, and has the
    planner read them again. Connections opened later read them with the schema."""
    conn.execute("ANALYZE sqlite_master")  # creates sqlite_stat1 if missing
    wanted = _planner_statistics()
    have = conn.execute("SELECT tbl, idx, stat FROM sqlite_stat1 WHERE tbl LIKE 'c\\_%' "
                        "ESCAPE '\\'").fetchall()
    if sorted(have) == sorted(wanted):
        return
    conn.execute("DELETE FROM sqlite_stat1 WHERE tbl LIKE 'c\\_%' ESCAPE '\\'")
    conn.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", wanted)
    conn.execute("ANALYZE sqlite_master")  # this connection reads them again


class SqliteCollection(Collection):
    def __init__(self, store: SqliteStore, spec: CollectionSpec, tenant: str) -> None:
        self._store = store
        self._table = f"c_{spec.name}"
        self._tenant = tenant
        # A large collection's documents (file chunks) are never read or written on the
        # event loop: one 10 MiB file's ten chunks took 10 ms to delete (170 ms with their
        # pages zeroed), and the progress handler cannot interrupt a single row's delete.
        self._large = spec.large
        self._read = store.read if spec.large else store.read_any

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return self._store.write(fn, inline=not self._large)

    def _select(self, flt: Filter, what: str = "doc") -> tuple[str, list[Any]]:
        if self._large and BLOB_FIELD in flt:
            raise ValueError(f"{self._table}: {BLOB_FIELD!r} is stored apart and cannot be "
                             "queried")
        where, params = _where(flt)
        return (f"SELECT {what} FROM {self._table} WHERE tenant = ? AND {where}",
                [self._tenant, *params])

    @property
    def _doc_columns(self) -> str:
        """The columns a document is read from (see :meth:`_row_doc`)."""
        return "doc, data" if self._large else "doc"

    def _row_doc(self, row: Sequence[Any]) -> Doc:
        """A document from the columns of :attr:`_doc_columns` (from ``row[0]`` on)."""
        doc = _decode(row[0])
        if self._large and row[1] is not None:
            doc[BLOB_FIELD] = row[1]
        return doc

    def _columns(self, doc: Doc) -> tuple[str, bytes | None]:
        """The document's JSON text, and for a large collection its bytes apart."""
        blob = doc.get(BLOB_FIELD) if self._large else None
        if isinstance(blob, bytes):
            doc = {k: v for k, v in doc.items() if k != BLOB_FIELD}
        else:
            blob = None
        text = _encode(doc)
        self._store.check_inline_size(text)
        return text, blob

    async def insert_one(self, doc: Doc) -> str:
        doc = {"_id": uuid.uuid4().hex, **doc}
        await self._write(lambda conn: self._insert(conn, doc))
        return str(doc["_id"])

    def _insert(self, conn: sqlite3.Connection, doc: Doc) -> None:
        text, blob = self._columns(doc)
        if self._large:
            conn.execute(f"INSERT INTO {self._table} (tenant, id, doc, data)"
                         " VALUES (?, ?, ?, ?)", (self._tenant, str(doc["_id"]), text, blob))
        else:
            conn.execute(f"INSERT INTO {self._table} (tenant, id, doc) VALUES (?, ?, ?)",
                         (self._tenant, str(doc["_id"]), text))

    async def find_one(self, flt: Filter) -> Doc | None:
        sql, params = self._select(flt, self._doc_columns)
        sql += " LIMIT 1"

        def query(conn: sqlite3.Connection) -> tuple[tuple[Any, ...] | None]:
            return (conn.execute(sql, params).fetchone(),)  # wrapped: None is a valid answer

        row = (await self._read(query))[0]
        return self._row_doc(row) if row else None

    async def find(
        self, flt: Filter, *, sort: SortSpec = (), limit: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Doc]:
        # A projection naming a large collection's bytes reads whole documents instead.
        projected = fields is not None and not (self._large and BLOB_FIELD in fields)
        what = _projection(fields) if fields is not None and projected else self._doc_columns
        sql, params = self._select(flt, what)
        sql += _order(sort)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        if fields is None:
            return [self._row_doc(r) for r in rows]
        if projected:
            docs = [_decode(r[0]) for r in rows]
            return [{k: v for k, v in doc.items() if v is not None} for doc in docs]
        keep = {"_id", *fields}
        return [{k: v for k, v in self._row_doc(r).items() if k in keep and v is not None}
                for r in rows]

    async def count(self, flt: Filter) -> int:
        sql, params = self._select(flt, "COUNT(*)")
        row = await self._read(lambda conn: conn.execute(sql, params).fetchone())
        return int(row[0])

    def _modify(
        self,
        conn: sqlite3.Connection,
        flt: Filter,
        change: Callable[[Doc], Doc],
        upsert: bool,
        sort: SortSpec = (),
    ) -> Doc | None:
        sql, params = self._select(flt, f"id, {self._doc_columns}")
        row = conn.execute(sql + _order(sort) + " LIMIT 1", params).fetchone()
        if row is None:
            if not upsert:
                return None
            doc = change({"_id": uuid.uuid4().hex, **new_doc_from_filter(flt)})
            self._insert(conn, doc)
            return doc
        doc = change(self._row_doc(row[1:]))
        doc["_id"] = row[0]
        text, blob = self._columns(doc)
        if self._large:
            conn.execute(f"UPDATE {self._table} SET doc = ?, data = ? WHERE tenant = ? AND id = ?",
                         (text, blob, self._tenant, row[0]))
        else:
            conn.execute(f"UPDATE {self._table} SET doc = ? WHERE tenant = ? AND id = ?",
                         (text, self._tenant, row[0]))
        return doc

    async def update_one(
        self,
        flt: Filter,
        *,
        set: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
    ) -> int:
        doc = await self.find_one_and_update(flt, set=set, unset=unset, inc=inc, upsert=upsert)
        return 0 if doc is None else 1

    async def find_one_and_update(
        self,
        flt: Filter,
        *,
        set: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
        sort: SortSpec = (),
    ) -> Doc | None:
        def change(doc: Doc) -> Doc:
            return apply_update(doc, set, unset, inc)

        return await self._write(lambda conn: self._modify(conn, flt, change, upsert, sort))

    async def replace_one(self, flt: Filter, doc: Doc, *, upsert: bool = False) -> int:
        def change(old: Doc) -> Doc:
            return {**doc, "_id": old["_id"]}

        found = await self._write(lambda conn: self._modify(conn, flt, change, upsert))
        return 0 if found is None else 1

    async def delete_one(self, flt: Filter) -> int:
        sql, params = self._select(flt, "id")

        def delete(conn: sqlite3.Connection) -> int:
            row = conn.execute(sql + " LIMIT 1", params).fetchone()
            if row is None:
                return 0
            with self._deleting(conn):
                conn.execute(f"DELETE FROM {self._table} WHERE tenant = ? AND id = ?",
                             (self._tenant, row[0]))
            return 1

        return await self._write(delete)

    async def delete_many(self, flt: Filter) -> int:
        where, params = _where(flt)
        sql = f"DELETE FROM {self._table} WHERE tenant = ? AND {where}"
        params = [self._tenant, *params]

        def delete(conn: sqlite3.Connection) -> int:
            with self._deleting(conn):
                return int(conn.execute(sql, params).rowcount)

        return await self._write(delete)

    @contextlib.contextmanager
    def _deleting(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A large collection's rows are deleted with ``secure_delete=FAST``: their freed
        overflow pages are not overwritten. They hold file chunks sealed with the file's own
        data key, whose only copy (in the file object, a small row whose page is zeroed) is
        deleted first (store/files.py), so what stays in the free pages is ciphertext
        nobody can open. Zeroing them cost 13 MiB of writes and 170 ms per 10 MiB file, with
        the write lock of every tenant held meanwhile."""
        if not self._large:
            yield
            return
        conn.execute("PRAGMA secure_delete=FAST")
        try:
            yield
        finally:
            conn.execute("PRAGMA secure_delete=ON")
