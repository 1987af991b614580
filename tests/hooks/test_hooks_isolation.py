"""A hanging or failing plugin affects only its own tenant (reliability-plan F7).

Tenant A runs a plugin whose hooks hang (``asyncio.sleep(60)``) with A's hook timeout at its
maximum (30 s), so A's requests are certainly still waiting while the test runs; tenant B runs
the demo plugin on the same server. B's requests all complete while A's are pending, so B
never waits on A's hook or its timeout. The test then cancels A's hanging hooks itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest
from hooks_helpers import plugins_dir

from conftest import MakeServer
from kyc_host.logs import JsonFormatter
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc


def entered() -> list[asyncio.Task[None]]:
    """The hook tasks now inside the hanging plugin (its module is loaded on first use)."""
    module = sys.modules.get("kyc_host_plugins.hanging")
    return [] if module is None else list(module.ENTERED)


async def test_hanging_plugin_never_holds_up_another_tenant(make_server: MakeServer,
                                                             tmp_path: Path) -> None:
    srv = await make_server(
        kyc_doc("t1", ["a.test"], plugin="hanging", limits={"hook_timeout_seconds": 30}),
        kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
        plugins_dir=plugins_dir(tmp_path))
    stuck = [asyncio.ensure_future(Wallet(srv, "a.test", "t1").put(ALICE)) for _ in range(5)]
    stuck.append(asyncio.ensure_future(Wallet(srv, "a.test", "t1").get()))
    for _ in range(3000):  # until every A request is inside its hook (at most ~30 s)
        if len(entered()) == len(stuck):
            break
        await asyncio.sleep(0.01)
    assert len(entered()) == len(stuck)
    wallets = [Wallet(srv, "b.test", "t2") for _ in range(10)]
    for wallet in wallets:  # one after another...
        assert (await wallet.put(ALICE)).status == 202
        assert (await wallet.get()).json["status"] == "PROCESSING"
    together = await asyncio.gather(*[w.get() for w in wallets], *[
        Wallet(srv, "b.test", "t2").put(ALICE) for _ in range(10)])  # ...and all at once
    assert {r.status for r in together} == {200, 202}
    assert not any(task.done() for task in stuck)  # A is still waiting on its plugin
    for task in entered():
        task.cancel()
    replies = await asyncio.gather(*stuck)
    assert {(r.status, r.body) for r in replies} == {(500, b'{"error": "internal server error"}')}
    assert (await Wallet(srv, "a.test", "t1").call("GET", "/kyc/customer/files",
                                                   query={"file_id": "x"})).status == 200


async def test_failing_plugin_gives_generic_500_and_logs_no_pii(
        make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="broken"),
                            kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
                            plugins_dir=plugins_dir(tmp_path))
    wallet = Wallet(srv, "a.test", "t1")
    with caplog.at_level(logging.INFO):
        reply = await wallet.put({**ALICE, "first_name": "Piicanary"})
    assert (reply.status, reply.json) == (500, {"error": "internal server error"})
    assert await srv.services.store.tenant("t1", "customers").count({}) == 0  # nothing stored
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)  # as in production
    assert "Piicanary" not in logged
    failures = [r for r in caplog.records if "plugin hook put" in r.getMessage()]
    assert failures
    assert all(getattr(r, "tenant", None) == "t1" for r in failures)
    assert any(r.exc_info for r in failures)  # with the traceback, for the operator
    refused = await wallet.put({**ALICE, "last_name": "Refuse"})
    assert (refused.status, refused.json) == (400, {"error": "We do not serve this region yet."})
    other = Wallet(srv, "b.test", "t2")
    assert (await other.put(ALICE)).status == 202
    assert (await other.get()).status == 200


async def test_timeout_answers_without_waiting_for_a_stubborn_hook(
        make_server: MakeServer, tmp_path: Path) -> None:
    srv = await make_server(
        kyc_doc("t1", ["a.test"], plugin="stubborn", limits={"hook_timeout_seconds": 0.1}),
        plugins_dir=plugins_dir(tmp_path))
    wallet = Wallet(srv, "a.test", "t1")
    reply = await wallet.put(ALICE)
    assert (reply.status, reply.json) == (500, {"error": "internal server error"})
    assert "id" not in (await wallet.get()).json
    await asyncio.sleep(0.6)  # let the abandoned hook finish before the loop closes


@pytest.mark.parametrize("name", ["Approved", "Early", "Silent", "Ghost", "Dict"])
async def test_invalid_hook_output_never_reaches_the_wallet(make_server: MakeServer,
                                                            tmp_path: Path, name: str) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="nonsense"),
                            plugins_dir=plugins_dir(tmp_path))
    wallet = Wallet(srv, "a.test", "t1")
    if name == "Dict":
        reply = await wallet.put({**ALICE, "first_name": name})
        assert (reply.status, reply.json) == (500, {"error": "internal server error"})
        return
    data = {**ALICE, "first_name": name} if name != "Early" else {"first_name": name}
    assert (await wallet.put(data)).status == 202
    reply = await wallet.get()
    assert (reply.status, reply.json) == (500, {"error": "internal server error"})
    mobile = await wallet.put({"mobile_number": "+14155552671", "type": "business"})
    assert mobile.status == 500  # verification_fields returned a list, not a set
