"""The SQLite backend when the event loop stalls: every inline attempt runs over its budget.

A stall (CPU starvation on a busy host, as when a killed worker is replaced during a write
load in test_kill9_writes.py) makes SQLite's progress handler interrupt inline work. It may
interrupt ``BEGIN IMMEDIATE`` itself *after* the write lock was taken; that transaction must
be rolled back, or the loop's connection keeps the lock and every writer of every process
fails with "database is locked" from then on. Here the stall is made permanent (the inline
budget is negative) so the interrupt lands wherever the step counter says, deterministically.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from kyc_host.store import open_store
from kyc_host.store import sqlite as sqlite_backend


async def test_writes_go_on_when_every_inline_attempt_is_interrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    store = open_store(url)
    await store.start()
    await store.prepare_tenant("t1")
    other = open_store(url)  # another process's store, on the same file
    await other.start()
    try:
        monkeypatch.setattr(sqlite_backend, "INLINE_BUDGET_SECONDS", -1.0)
        coll = store.tenant("t1", "transactions")
        for n in range(60):  # the cached BEGIN's step count crosses 100 several times
            await asyncio.wait_for(coll.insert_one({"_id": f"x{n}", "customer_id": "c"}), 10)
        assert await coll.count({}) == 60
        # Nothing holds the write lock now: another connection can write at once.
        await asyncio.wait_for(other.tenant("t1", "transactions").insert_one(
            {"_id": "y", "customer_id": "c"}), 10)
        probe = sqlite3.connect(tmp_path / "store.db", timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        finally:
            probe.close()
    finally:
        await other.close()
        await store.close()
