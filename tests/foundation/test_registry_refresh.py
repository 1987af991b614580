"""A running server picks up tenants written by another process within 5 s, without restart.

The "other process" is simulated by a second Store + TenantService opened on the same storage
URL and master key as the server (for SQLite: a second connection to the same file), so the
server only learns of the change through the store, exactly as across processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
from tornado.httpclient import HTTPResponse

from conftest import MakeServer, RunningServer, api_document, make_tenant_doc
from kyc_host.crypto.master import load_key_provider
from kyc_host.settings import PlatformSettings
from kyc_host.store import open_store
from kyc_host.tenancy.service import TenantService

TOML = "/.well-known/stellar.toml"
DEADLINE = 5.0


@pytest.fixture
async def other_process(settings: PlatformSettings) -> AsyncIterator[TenantService]:
    store = open_store(settings.storage_url)
    await store.start()
    # Same key source as the server under test (make_server reads os.environ too).
    keys = load_key_provider(settings.master_key_file, settings.master_key_env,
                             dev_mode=True, environ=dict(os.environ))
    yield TenantService(store, keys, {})
    await store.close()


async def eventually(srv: RunningServer, host: str,
                     until: Callable[[HTTPResponse], bool]) -> HTTPResponse:
    """Poll ``host`` until ``until`` holds; fail once the 5 s deadline has passed."""
    end = time.monotonic() + DEADLINE
    while True:
        response = await srv.fetch(host, TOML)
        if until(response):
            return response
        if time.monotonic() > end:
            pytest.fail(f"{host}: still {response.code} {response.body[:80]!r} after "
                        f"{DEADLINE} s")
        await asyncio.sleep(0.05)


def status(code: int) -> Callable[[HTTPResponse], bool]:
    return lambda response: response.code == code


async def test_tenant_applied_elsewhere_is_served_then_moved_then_suspended(
    make_server: MakeServer, other_process: TenantService
) -> None:
    # (test_process.py checks the same promise with the shipped 1 s refresh interval.)
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    assert (await srv.fetch("c.test", TOML)).code == 404

    await other_process.apply([api_document(make_tenant_doc("t3", ["c.test"]))])
    served = await eventually(srv, "c.test", status(200))
    assert "https://c.test/kyc" in served.body.decode()

    # Moving the tenant to another host: the new host answers, the old one is freed.
    await other_process.apply([api_document(make_tenant_doc("t3", ["d.test"]))])
    moved = await eventually(srv, "d.test", status(200))
    assert "https://d.test/kyc" in moved.body.decode()
    assert (await srv.fetch("c.test", TOML)).code == 404
    # Same tenant, same signing key after the move.
    assert served.body.split(b"SIGNING_KEY")[1][:60] == moved.body.split(b"SIGNING_KEY")[1][:60]

    assert await other_process.set_status("t3", "suspended")
    suspended = await eventually(srv, "d.test", status(503))
    assert b'"error"' in suspended.body
    assert (await srv.fetch("a.test", TOML)).code == 200

    assert await other_process.set_status("t3", "active")
    await eventually(srv, "d.test", status(200))


async def test_server_start_loads_existing_tenants(
    make_server: MakeServer, other_process: TenantService
) -> None:
    await other_process.apply([api_document(make_tenant_doc("t1", ["a.test"]))])
    srv = await make_server()
    assert (await srv.fetch("a.test", TOML)).code == 200
