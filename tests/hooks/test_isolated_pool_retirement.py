"""An untrusted tenant's worker processes end with its last isolated version.

A tenant's pool of plugin workers (hooks/isolation.py) used to be retired only when the
tenant's next version built its own, so a tenant that was offboarded, suspended (it answers
503 and never builds a service again) or switched to an in-process plugin kept its idle
workers (~37 MB each) until the server stopped. Now the tenant registry retires the pool when
it loads such a change: the idle workers exit within seconds, a hook call in flight on the old
pool still gets its answer (its worker exits after it), and another tenant's workers keep
running and serving. Real worker processes, checked by pid; requests over real HTTP.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from test_isolated_plugins import (  # noqa: F401 - fixtures
    Markers,
    alive,
    entered,
    markers,
    plugins,
    untrusted,
)

from conftest import MakeServer, RunningServer
from kyc_host.hooks.isolation import pools_of
from kyc_host.management.tenants import offboard_tenant
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc

#: ``put`` with first name "Wait" logs ``entered`` (marker: the last name), waits until the
#: test creates ``gate`` in the plugins directory (workers may read it: hooks/confine.py),
#: logs ``entered`` again (marker: "<last name> done") and accepts; ``get`` names its pid.
GATED = '''
import asyncio
import dataclasses
import os
from pathlib import Path

from kyc_host.hooks import CustomerHooks, CustomerStatus, Decision

GATE = Path(__file__).with_name("gate")


class Hooks(CustomerHooks):
    async def get(self, ctx, request, result):
        return dataclasses.replace(result, message=f"served by {os.getpid()}")

    async def put(self, ctx, request):
        if request.data.get("first_name") != "Wait":
            return None
        name = request.data.get("last_name", "")
        ctx.log.warning("entered", extra={"marker": name, "worker_pid": os.getpid()})
        while not GATE.exists():
            await asyncio.sleep(0.01)
        ctx.log.warning("entered", extra={"marker": name + " done", "worker_pid": os.getpid()})
        return Decision(CustomerStatus.ACCEPTED)
'''

#: How long a retired pool's workers may take to exit (they are killed and reaped at once).
EXIT_BOUND = 5.0


async def offboard(srv: RunningServer) -> None:
    assert await offboard_tenant(srv.services, "t1", "test") is not None  # refreshes too


async def suspend(srv: RunningServer) -> None:
    assert await srv.services.tenants.set_status("t1", "suspended")
    await srv.services.registry.refresh()


async def in_process(srv: RunningServer) -> None:
    await srv.apply(kyc_doc("t1", ["a.test"], plugin="gated"))  # no [plugin_isolation]


CHANGES: dict[str, Callable[[RunningServer], Awaitable[None]]] = {
    "offboarded": offboard, "suspended": suspend, "switched to in-process": in_process}


def pids_of(srv: RunningServer, tenant_id: str) -> set[int]:
    return {pid for pool in pools_of(srv.services.store) if pool.spec.tenant_id == tenant_id
            for pid in pool.pids}


async def exit_within(pids: set[int], seconds: float) -> None:
    for _ in range(int(seconds * 100)):
        if not any(alive(pid) for pid in pids):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"workers {sorted(p for p in pids if alive(p))} still run "
                         f"{seconds:g}s after their tenant changed")


async def two_workers_each(srv: RunningServer, directory: Path, seen: Markers) -> None:
    """Both tenants' two workers started: two calls of each held in their hooks at once."""
    calls = [asyncio.ensure_future(Wallet(srv, host, tenant).put(
        {**ALICE, "first_name": "Wait", "last_name": f"{tenant}-{i}"}))
        for tenant, host in (("t1", "a.test"), ("t2", "b.test")) for i in range(2)]
    try:
        for tenant in ("t1", "t2"):
            assert await entered(seen, f"{tenant}-0") != await entered(seen, f"{tenant}-1")
    finally:
        (directory / "gate").touch()
        replies = await asyncio.gather(*calls, return_exceptions=True)
    assert [getattr(reply, "status", reply) for reply in replies] == [202] * 4
    (directory / "gate").unlink()


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_tenants_workers_exit_when_it_leaves_process_isolation(
        make_server: MakeServer, plugins: Path, markers: Markers,  # noqa: F811 - the fixtures
        change: str) -> None:
    (plugins / "gated.py").write_text(textwrap.dedent(GATED))
    srv = await make_server(untrusted("t1", "a.test", "gated", workers=2),
                            untrusted("t2", "b.test", "gated", workers=2), plugins_dir=plugins)
    await two_workers_each(srv, plugins, markers)
    old, neighbours = pids_of(srv, "t1"), pids_of(srv, "t2")
    assert len(old) == len(neighbours) == 2
    # A call in flight on one of t1's workers when the change is loaded.
    in_flight = asyncio.ensure_future(Wallet(srv, "a.test", "t1").put(
        {**ALICE, "first_name": "Wait", "last_name": "in flight"}))
    try:
        busy = await entered(markers, "in flight")
        await CHANGES[change](srv)
        await exit_within(old - {busy}, EXIT_BOUND)  # the idle one
        assert alive(busy)  # the busy one is not cut...
        assert pids_of(srv, "t1") == set()  # ...and the pool is forgotten
    finally:
        (plugins / "gate").touch()  # on a failure too: no request is left hanging
        (reply,) = await asyncio.gather(in_flight, return_exceptions=True)
    assert await entered(markers, "in flight done") == busy  # the hook call completed
    assert not isinstance(reply, BaseException), reply  # answered, not cut
    if change != "offboarded":  # (offboarding drops the tenant's data under the request)
        assert reply.status == 202, reply.body
    await exit_within({busy}, EXIT_BOUND)  # ...it ends once its call is answered

    # The other tenant's workers never stopped, and they still serve it.
    assert pids_of(srv, "t2") == neighbours
    assert all(alive(pid) for pid in neighbours)
    other = Wallet(srv, "b.test", "t2")
    together = await asyncio.gather(*[Wallet(srv, "b.test", "t2").put(ALICE)
                                      for _ in range(4)], other.put(ALICE))
    assert {r.status for r in together} == {202}
    served_by = int((await other.get()).json["message"].rsplit(" ", 1)[1])
    assert served_by in neighbours
    assert pids_of(srv, "t2") == neighbours

    if change == "offboarded":
        assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 404
        return
    wallet = Wallet(srv, "a.test", "t1")
    if change == "suspended":
        assert (await wallet.put(ALICE)).status == 503
        # Resumed, it gets a new pool, started on its first call.
        assert await srv.services.tenants.set_status("t1", "active")
        await srv.services.registry.refresh()
        assert (await wallet.put(ALICE)).status == 202
        served_by = int((await wallet.get()).json["message"].rsplit(" ", 1)[1])
        assert served_by in pids_of(srv, "t1") - old
    else:
        assert (await wallet.put(ALICE)).status == 202
        assert (await wallet.get()).json["message"] == f"served by {os.getpid()}"
        assert pids_of(srv, "t1") == set()
