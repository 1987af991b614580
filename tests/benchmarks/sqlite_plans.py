"""What a query by an indexed field costs the SQLite backend with and without the planner
statistics the store writes at start (``_set_planner_statistics`` in store/sqlite.py).

    python tests/benchmarks/sqlite_plans.py                      # 100,000 customers
    python tests/benchmarks/sqlite_plans.py --rows 20000 --json plans.json

A real :class:`SqliteStore` is started on a fresh database and one tenant is given
``--rows`` identities (as store/customers.py writes them: a customer id and an account's
blind index, three identities per account) plus a few in a second tenant. Then the
statements the store sends for two hot queries -- the count of an account's customers made
on every new customer, and a find by customer id -- are taken from its trace callback and
timed on a connection of their own, first with the statistics, then on a copy of the database
whose statistics were removed (what the store did before). Prints each plan and the
milliseconds per query. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "platform"))

from kyc_host.store.base import in_  # noqa: E402
from kyc_host.store.sqlite import SqliteStore  # noqa: E402


async def fill(db: Path, rows: int) -> list[str]:
    """The database with ``rows`` identities in tenant t1; the statements of the queries."""
    seen: list[str] = []
    store = SqliteStore(f"sqlite:///{db}", trace=seen.append)
    await store.start()
    try:
        for tenant, count in (("t1", rows), ("t2", 100)):
            identities = store.tenant(tenant, "identities")
            docs = [{"_id": uuid.uuid4().hex, "customer_id": uuid.uuid4().hex,
                     "account_ix": f"acct-{i // 3}", "version": 1} for i in range(count)]

            def insert(conn: sqlite3.Connection, tenant: str = tenant,
                       docs: list[dict[str, Any]] = docs) -> None:
                conn.executemany("INSERT INTO c_identities (tenant, id, doc) VALUES (?, ?, ?)",
                                 [(tenant, d["_id"], json.dumps(d)) for d in docs])

            await store.write(insert, inline=False)
        identities = store.tenant("t1", "identities")
        seen.clear()
        await identities.count({"account_ix": in_([f"acct-{rows // 6}", "acct-none"])})
        await identities.find({"customer_id": "no-such-customer"})
        return [s for s in seen if "FROM c_identities" in s]
    finally:
        await store.close()


def measure(db: Path, statement: str, repeat: int) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + statement))
        conn.execute(statement).fetchall()  # the pages into the cache
        started = time.perf_counter()
        for _ in range(repeat):
            conn.execute(statement).fetchall()
        ms = (time.perf_counter() - started) * 1000 / repeat
    return {"plan": plan, "ms_per_query": round(ms, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kyc-plans-") as tmp:
        db = Path(tmp) / "with.db"
        statements = asyncio.run(fill(db, opts.rows))
        bare = Path(tmp) / "without.db"
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy(db, bare)
        with sqlite3.connect(bare) as conn:
            conn.execute("DELETE FROM sqlite_stat1")
        results = []
        for statement in statements:
            results.append({"statement": statement,
                            "with_statistics": measure(db, statement, opts.repeat),
                            "without": measure(bare, statement, opts.repeat)})
    lines = [f"{opts.rows:,} identities in one tenant (SQLite {sqlite3.sqlite_version}, "
             f"{platform.machine()}, Python {platform.python_version()})"]
    for r in results:
        lines.append(r["statement"][:110])
        lines += [f"  {key:16} {r[key]['ms_per_query']:>10.4f} ms  {r[key]['plan']}"
                  for key in ("with_statistics", "without")]
    sys.stdout.write("\n".join(lines) + "\n")
    if opts.json:
        opts.json.write_text(json.dumps({"rows": opts.rows, "results": results}, indent=2))


if __name__ == "__main__":
    main()
