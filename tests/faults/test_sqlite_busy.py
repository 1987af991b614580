"""The SQLite backend when its writer is held up: queued work is refused, not left to time out.

Another process holding the store's write lock (``<db>.writelock``, as a long transaction
or a stuck writer of another worker would) keeps this process's writer thread waiting; the
writes queued behind it wait too. A write that has waited longer than
``QUEUE_TIMEOUT_SECONDS`` for the thread is refused before it runs -- 503 + Retry-After
like an unreachable MongoDB (reliability-plan F1, and L2: shed with 503, not timeouts) --
and nothing of it is written. The one already inside the lock goes through once it is free.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pytest
from tests.conftest import MakeServer, make_tenant_doc
from tests.sep12.sep12_helpers import Wallet

from kyc_host.store import sqlite as sqlite_backend

ALICE = {"first_name": "Alice", "last_name": "Liddell", "email_address": "alice@example.com"}


@pytest.fixture
def backend(tmp_path: Path) -> str:
    """Overrides the conftest fixture: the write lock is SQLite's."""
    return f"sqlite:///{tmp_path}/store.db"


def hold_write_lock(path: str, seconds: float, held: threading.Event) -> None:
    """What another process's long write transaction looks like to this one."""
    fd = os.open(f"{path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.set()
        time.sleep(seconds)
    finally:
        os.close(fd)  # releases the lock


async def test_writes_queued_past_the_bound_get_503_and_nothing_is_written(
        make_server: MakeServer, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "QUEUE_TIMEOUT_SECONDS", 1.0)
    srv = await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))
    first, second = Wallet(srv, "a.test", "t1"), Wallet(srv, "b.test", "t2")
    held = threading.Event()
    holder = threading.Thread(target=hold_write_lock,
                              args=(backend.removeprefix("sqlite:///"), 3.0, held))
    holder.start()
    await asyncio.to_thread(held.wait, 10)
    # The writer thread is stuck on the lock (this process's first write, or a background
    # job's); the PUTs of both tenants queue behind it past the bound.
    answers = await asyncio.gather(first.put(ALICE), second.put(ALICE))
    await asyncio.to_thread(holder.join, 10)
    assert {a.status for a in answers} <= {202, 503}, answers
    assert 503 in {a.status for a in answers}, answers
    for wallet, answer in zip((first, second), answers, strict=True):
        if answer.status == 503:
            assert int(answer.headers["Retry-After"]) > 0
            assert json.loads(answer.body) == {"error": "service temporarily unavailable"}
            # Refused before it ran: nothing of it was written.
            assert (await wallet.get()).json["status"] == "NEEDS_INFO"
        # With the writer free again the same PUT goes through.
        assert (await wallet.put(ALICE)).status == 202
        assert (await wallet.get()).json["status"] != "NEEDS_INFO"
