"""What one file chunk costs the SQLite backend: as a BLOB column of a rowid table (how chunks
are stored now), of a WITHOUT ROWID table, and as base64 text inside the document's JSON (how
they were stored before, still read).

    python tests/benchmarks/sqlite_chunks.py                 # 200 chunks of 1 MiB
    python tests/benchmarks/sqlite_chunks.py --chunks 50 --json chunks.json

Each way writes ``--chunks`` sealed-size chunks (1 MiB + 28 bytes of nonce and tag), one
transaction each, into a fresh database with the store's pragmas (WAL, synchronous=NORMAL,
secure_delete), then reads each back by id; the JSON way through the store's own encoder and
decoder (``store/sqlite.py``). Prints CPU and wall milliseconds per chunk (this thread: the
store's writer or reader thread does this work) and the database's size after a checkpoint.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "platform"))

from kyc_host.store.sqlite import _decode, _encode  # noqa: E402

CHUNK = 1024 * 1024 + 28

def _write_blob(conn: sqlite3.Connection, key: str, data: bytes) -> None:
    conn.execute("INSERT INTO c VALUES ('t', ?, ?, ?)", (key, json.dumps({"_id": key}), data))


def _read_blob(conn: sqlite3.Connection, key: str) -> Any:
    return conn.execute("SELECT doc, data FROM c WHERE tenant = 't' AND id = ?",
                        (key,)).fetchone()


def _write_json(conn: sqlite3.Connection, key: str, data: bytes) -> None:
    conn.execute("INSERT INTO c VALUES ('t', ?, ?)", (key, _encode({"_id": key, "data": data})))


def _read_json(conn: sqlite3.Connection, key: str) -> Any:
    return _decode(conn.execute("SELECT doc FROM c WHERE tenant = 't' AND id = ?",
                                (key,)).fetchone()[0])


_COLUMNS = "tenant TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL"
LAYOUTS: dict[str, tuple[str, Callable[..., None], Callable[..., Any]]] = {
    # name: (CREATE TABLE, write one chunk, read one chunk)
    "blob column (rowid table, now)": (
        f"CREATE TABLE c ({_COLUMNS}, data BLOB, PRIMARY KEY (tenant, id))",
        _write_blob, _read_blob),
    "blob column (WITHOUT ROWID table)": (
        f"CREATE TABLE c ({_COLUMNS}, data BLOB, PRIMARY KEY (tenant, id)) WITHOUT ROWID",
        _write_blob, _read_blob),
    "base64 in JSON (WITHOUT ROWID, before)": (
        f"CREATE TABLE c ({_COLUMNS}, PRIMARY KEY (tenant, id)) WITHOUT ROWID",
        _write_json, _read_json),
}


def per_chunk(count: int, fn: Callable[[int], Any]) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        fn(i)
    return {"cpu_ms": round(1000 * (time.process_time() - cpu) / count, 2),
            "wall_ms": round(1000 * (time.perf_counter() - wall) / count, 2)}


def measure(name: str, count: int, workdir: Path) -> dict[str, Any]:
    create, write, read = LAYOUTS[name]
    db = workdir / f"{len(list(workdir.iterdir()))}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "secure_delete=ON"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(create)
    data = os.urandom(CHUNK)

    def write_one(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        write(conn, f"f{i}.0", data)
        conn.execute("COMMIT")

    writes = per_chunk(count, write_one)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    reads = per_chunk(count, lambda i: read(conn, f"f{i}.0"))
    conn.close()
    return {"layout": name, "write": writes, "read": reads,
            "db_bytes_per_chunk": db.stat().st_size // count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the figures here")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kyc-chunks-") as tmp:
        results = [measure(name, opts.chunks, Path(tmp)) for name in LAYOUTS]
    lines = [f"{'1 MiB chunk, per chunk':<42}{'write CPU':>10}{'wall':>8}{'read CPU':>10}"
             f"{'wall':>8}{'DB bytes':>11}"]
    lines += [f"{r['layout']:<42}{r['write']['cpu_ms']:>10}{r['write']['wall_ms']:>8}"
              f"{r['read']['cpu_ms']:>10}{r['read']['wall_ms']:>8}{r['db_bytes_per_chunk']:>11}"
              for r in results]
    sys.stdout.write("\n".join(lines) + "\n")
    if opts.json:
        report = {"benchmark": "sqlite_chunks", "chunks": opts.chunks, "results": results,
                  "sqlite": sqlite3.sqlite_version, "python": platform.python_version()}
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
