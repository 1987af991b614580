"""The store lost while serving: 503 JSON with Retry-After, then recovery without a restart.

MongoDB only. The test gets its own FerretDB (not the session one) and freezes it with
SIGSTOP, which is what a hung or partitioned database looks like to the client: connections
stay open, nothing answers. There is no SQLite variant: SQLite is embedded in the server
process, so "the store is unreachable while the process runs" has no faithful equivalent
(making the file unreadable does not affect already-open connections, and a full disk or
I/O error cannot be produced reliably in a test); its failure paths map to the same
StoreUnavailable -> 503 translation in store/sqlite.py.

At the time of writing no public (tenant-host) endpoint of the foundation touches the store
(stellar.toml is rendered from the in-memory registry), so the store-touching request is the
admin /readyz plus the tenant-registry refresh; SEP-10/12 endpoints get the same behaviour
through BaseHandler.write_error (StoreUnavailable -> 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import HTTPResponse

from conftest import (
    FerretDB,
    MakeServer,
    RunningServer,
    api_document,
    ferretdb_port,
    make_tenant_doc,
)

pytestmark = pytest.mark.mongo

TOML = "/.well-known/stellar.toml"


@pytest.fixture
def private_ferretdb(ferretdb: FerretDB, tmp_path: Path) -> Iterator[FerretDB]:
    """A FerretDB of this test alone (``ferretdb`` is requested so the binary is built)."""
    server = FerretDB(ferretdb_port(), tmp_path / "ferretdb")
    server.state_dir.mkdir()
    server.start()
    yield server
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)
    server.stop()


@pytest.fixture
def backend(private_ferretdb: FerretDB) -> str:
    """Overrides the conftest fixture: only the MongoDB backend, on the private FerretDB."""
    return private_ferretdb.url("kstorelost")


async def fetch_within(srv: RunningServer, host: str, path: str, *, admin: bool = False,
                       seconds: float = 5.0) -> HTTPResponse:
    """One request that must be answered (whatever the status) within ``seconds``."""
    return await asyncio.wait_for(srv.fetch(host, path, admin=admin), seconds)


async def poll_until_ready(srv: RunningServer, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while (await srv.fetch("localhost", "/readyz", admin=True)).code != 200:
        if time.monotonic() > end:
            pytest.fail(f"/readyz not 200 within {deadline} s after the store came back")
        await asyncio.sleep(0.1)


async def test_store_frozen_then_back(
    make_server: MakeServer, private_ferretdb: FerretDB
) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))
    assert (await srv.fetch("localhost", "/readyz", admin=True)).code == 200
    process = private_ferretdb.process
    assert process is not None

    process.send_signal(signal.SIGSTOP)
    try:
        # Several concurrent store-touching requests: each is answered, promptly and cleanly.
        answers = await asyncio.gather(*(fetch_within(srv, "localhost", "/readyz", admin=True)
                                         for _ in range(3)))
        for ready in answers:
            assert ready.code == 503
            assert json.loads(ready.body) == {"error": "service temporarily unavailable"}
            assert int(ready.headers["Retry-After"]) > 0
        # stellar.toml does not touch the store: it keeps working, including for a tenant
        # whose keys were never unwrapped before the outage.
        toml = await fetch_within(srv, "b.test", TOML)
        assert toml.code == 200
        assert b"SIGNING_KEY" in toml.body
        assert (await fetch_within(srv, "nope.test", TOML)).code == 404
        # /healthz is liveness only: the process is up.
        assert (await fetch_within(srv, "localhost", "/healthz", admin=True)).code == 200
    finally:
        process.send_signal(signal.SIGCONT)

    await poll_until_ready(srv)
    # Writes work again and the (same, never restarted) server serves them.
    await srv.services.tenants.apply([api_document(make_tenant_doc("t3", ["c.test"]))])
    end = time.monotonic() + 5.0
    while (await srv.fetch("c.test", TOML)).code != 200:
        if time.monotonic() > end:
            pytest.fail("tenant applied after recovery not served within 5 s")
        await asyncio.sleep(0.05)


async def test_stop_completes_while_the_store_is_frozen(
    make_server: MakeServer, private_ferretdb: FerretDB
) -> None:
    # SIGTERM during a database outage: every shutdown step that talks to the store (the
    # callback worker, the tenant refresh, closing the client) is bounded, so the process
    # still gets to exit (F9). The bound here is liveness (stop returns), not a figure.
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    assert (await srv.fetch("localhost", "/readyz", admin=True)).code == 200
    process = private_ferretdb.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        pending = asyncio.ensure_future(srv.fetch("localhost", "/readyz", admin=True))
        await asyncio.sleep(0.2)  # a request is waiting on the frozen store
        srv.client.close()
        await asyncio.wait_for(srv.server.stop(1.0), 60)
        pending.cancel()
    finally:
        process.send_signal(signal.SIGCONT)
