"""Untrusted plugins run in worker processes (``[plugin_isolation] mode = "process"``).

Reliability-plan F7/F8 and issue 9 item 4: a tenant's plugin that hangs, blocks its own event
loop with synchronous work (``time.sleep``, a busy loop), raises, exits or allocates past its
memory cap fails only that tenant's call (generic 500, like an in-process hook error); its
worker is killed and replaced, the next call works, and another tenant on the same server
keeps being answered while the worker is stuck. The plugin is real source text in a temporary
plugins directory, loaded by the real worker process; requests go over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hooks_helpers import plugins_dir
from tornado.simple_httpclient import HTTPStreamClosedError

from conftest import MakeServer, RunningServer
from kyc_host.errors import ConfigError
from kyc_host.hooks import (
    Caller,
    CustomerStatus,
    Decision,
    FieldDecision,
    FieldStatus,
    FileRef,
    PutRequest,
    wire,
)
from kyc_host.hooks.isolation import pools_of
from kyc_host.tenancy.schema import parse_tenant
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc

GENERIC_500 = (500, b'{"error": "internal server error"}')

#: Misbehaves according to the first name of the PUT; writes ``<name>-<pid>`` into the
#: ``marker_dir`` setting just before, so the test knows the worker is inside the hook.
MISBEHAVE = '''
import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

from kyc_host.hooks import CustomerHooks, CustomerStatus, Decision, HookRejected


class Hooks(CustomerHooks):
    async def get(self, ctx, request, result):
        if result.status is CustomerStatus.REJECTED:
            return result
        return dataclasses.replace(result, message=f"served by {os.getpid()}")

    async def put(self, ctx, request):
        name = request.data.get("first_name", "")
        Path(ctx.settings["marker_dir"], f"{name}-{os.getpid()}").write_text("")
        if name == "Hang":
            await asyncio.sleep(600)
        if name == "Sleep":
            time.sleep(600)  # blocks the worker's event loop
        if name == "Spin":
            while True:  # so does pure CPU work
                pass
        if name == "Hog":
            hoard = bytes(512 * 1024 ** 2)  # twice the default cap (calloc: pages untouched)
            return Decision(CustomerStatus.ACCEPTED, message=str(len(hoard)))
        if name == "Raise":
            raise ValueError("cannot handle " + request.data.get("last_name", ""))
        if name == "Exit":
            sys.exit(3)
        if name == "Vanish":
            os._exit(3)
        if name == "Refuse":
            raise HookRejected("We do not serve this region yet.")
        if name == "Env":
            leaked = sorted(k for k in os.environ if k.startswith("KYC_"))
            return Decision(CustomerStatus.REJECTED, message="env:" + ",".join(leaked))
        if name == "Lookup":
            before = await ctx.customers.get(request.customer_id)
            ctx.log.info("looked up a customer", extra={"customer_id": request.customer_id})
            return Decision(CustomerStatus.REJECTED,
                            message="was " + before.fields["first_name"])
        return None
'''


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = plugins_dir(tmp_path)
    (directory / "misbehave.py").write_text(textwrap.dedent(MISBEHAVE))
    (directory / "unloadable.py").write_text("raise ImportError('vendor SDK missing')\n")
    return directory


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    directory = tmp_path / "markers"
    directory.mkdir()
    return directory


def untrusted(tenant_id: str, host: str, plugin: str, markers: Path | None = None,
              timeout: float = 8.0, **isolation: Any) -> dict[str, Any]:
    """A tenant whose plugin runs isolated (one worker unless told otherwise)."""
    return kyc_doc(tenant_id, [host], plugin=plugin,
                   plugin_isolation={"mode": "process", "workers": 1, **isolation},
                   limits={"hook_timeout_seconds": timeout},
                   plugin_settings={"marker_dir": str(markers or "/nonexistent")})


async def entered(markers: Path, name: str) -> int:
    """The pid of the worker once it is inside the hook for ``name`` (waits up to 60 s)."""
    for _ in range(6000):
        found = [p for p in os.listdir(markers) if p.startswith(f"{name}-")]
        if found:
            return int(found[0].rsplit("-", 1)[1])
        await asyncio.sleep(0.01)
    raise AssertionError(f"the hook for {name} never started")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_pids(srv: RunningServer) -> set[int]:
    return {pid for pool in pools_of(srv.services.store) for pid in pool.pids}


async def test_untrusted_demo_plugin_decides_end_to_end(make_server: MakeServer,
                                                        plugins: Path) -> None:
    doc = kyc_doc("t1", ["a.test"], plugin="demo_anchor",
                  plugin_isolation={"mode": "process", "memory_mib": 192},
                  plugin_settings={"auto_accept_email_domains": ["example.com"]})
    srv = await make_server(doc, kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
                            plugins_dir=plugins)
    accepted = Wallet(srv, "a.test", "t1")
    assert (await accepted.put(ALICE)).status == 202
    assert (await accepted.get()).json["status"] == "ACCEPTED"
    screened = Wallet(srv, "a.test", "t1")
    assert (await screened.put({**ALICE, "first_name": "Ivan",
                                "last_name": "Sanctioned"})).status == 202
    body = (await screened.get()).json
    assert (body["status"], body["message"]) == ("REJECTED",
                                                 "We cannot offer this service to you.")
    pending = Wallet(srv, "a.test", "t1")
    assert (await pending.put({**ALICE, "email_address": "a@elsewhere.org"})).status == 202
    body = (await pending.get(lang="es")).json
    assert (body["status"], body["message"]) == ("PROCESSING",
                                                 "Gracias. Estamos revisando su información.")
    # The plugin ran in a worker process of t1, not in the server; t2 (in-process) has none.
    assert len(worker_pids(srv)) == 1
    assert all(pid != os.getpid() and alive(pid) for pid in worker_pids(srv))
    other = Wallet(srv, "b.test", "t2")
    assert (await other.put(ALICE)).status == 202
    assert (await other.get()).json["status"] == "PROCESSING"  # t2 accepts no domain
    assert (await Wallet(srv, "b.test", "t2").get(id=(await accepted.get()).json["id"])
            ).status == 404


async def test_get_hook_runs_in_the_worker_and_sees_platform_data_only_via_rpc(
        make_server: MakeServer, plugins: Path, markers: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("KYC_CANARY_SECRET", "do-not-leak")  # the server's environment
    caplog.set_level(logging.INFO, logger="kyc_host.plugins")
    srv = await make_server(untrusted("t1", "a.test", "misbehave", markers),
                            plugins_dir=plugins)
    wallet = Wallet(srv, "a.test", "t1")
    assert (await wallet.put(ALICE)).status == 202
    body = (await wallet.get()).json
    served_by = int(body["message"].rsplit(" ", 1)[1])
    assert served_by in worker_pids(srv)
    assert served_by != os.getpid()
    assert (await wallet.put({**ALICE, "first_name": "Lookup"})).status == 202
    body = (await wallet.get()).json  # ctx.customers.get answered by the platform
    assert (body["status"], body["message"]) == ("REJECTED", "was Alice")
    logged = [r for r in caplog.records if r.getMessage() == "looked up a customer"]
    assert [(r.name, getattr(r, "tenant", None), getattr(r, "customer_id", None))
            for r in logged] == [("kyc_host.plugins.misbehave", "t1", body["id"])]
    snoop = Wallet(srv, "a.test", "t1")
    assert (await snoop.put({**ALICE, "first_name": "Env"})).status == 202
    assert (await snoop.get()).json["message"] == "env:"  # no KYC_* variable reached it


@pytest.mark.parametrize("kind", ["Hang", "Sleep", "Spin"])
async def test_stuck_worker_holds_up_no_other_tenant(make_server: MakeServer, plugins: Path,
                                                     markers: Path, kind: str) -> None:
    """t1's only worker is stuck in its hook (timeout 30 s, so it certainly still is while
    the test runs); t2 (in-process plugin) and t3 (its own isolated workers) are answered,
    one by one and all at once. Then the stuck worker dies: t1's request fails cleanly."""
    srv = await make_server(untrusted("t1", "a.test", "misbehave", markers, timeout=30),
                            untrusted("t3", "c.test", "demo_anchor", workers=2),
                            kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
                            plugins_dir=plugins)
    stuck = asyncio.ensure_future(Wallet(srv, "a.test", "t1").put({**ALICE, "first_name": kind}))
    pid = await entered(markers, kind)
    for host, tenant in (("b.test", "t2"), ("c.test", "t3")):
        wallet = Wallet(srv, host, tenant)
        assert (await wallet.put(ALICE)).status == 202
        assert (await wallet.get()).json["status"] == "PROCESSING"
        together = await asyncio.gather(*[Wallet(srv, host, tenant).put(ALICE)
                                          for _ in range(5)], wallet.get())
        assert {r.status for r in together} == {200, 202}
    assert not stuck.done()  # t1's request is still waiting for its hook
    os.kill(pid, signal.SIGKILL)  # the worker crashes
    reply = await stuck
    assert (reply.status, reply.body) == GENERIC_500
    again = Wallet(srv, "a.test", "t1")
    assert (await again.put(ALICE)).status == 202  # a new worker took over
    assert pid not in worker_pids(srv)


@pytest.mark.parametrize("kind", ["Hang", "Sleep", "Spin"])
async def test_stuck_worker_is_killed_at_the_timeout_and_replaced(
        make_server: MakeServer, plugins: Path, markers: Path, kind: str) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave", markers, timeout=1),
                            plugins_dir=plugins)
    wallet = Wallet(srv, "a.test", "t1")
    assert (await wallet.put(ALICE)).status == 202
    (pid,) = worker_pids(srv)
    reply = await Wallet(srv, "a.test", "t1").put({**ALICE, "first_name": kind})
    assert (reply.status, reply.body) == GENERIC_500
    assert not alive(pid)  # killed at the timeout...
    assert (await wallet.put({**ALICE, "last_name": "Again"})).status == 202  # ...and replaced
    body = (await wallet.get()).json
    assert body["status"] == "PROCESSING"
    assert body["message"] == f"served by {worker_pids(srv).pop()}"
    assert worker_pids(srv) != {pid}


async def test_memory_hog_hits_the_cap_and_the_worker_is_replaced(
        make_server: MakeServer, plugins: Path, markers: Path) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave", markers),
                            plugins_dir=plugins)
    reply = await Wallet(srv, "a.test", "t1").put({**ALICE, "first_name": "Hog"})
    assert (reply.status, reply.body) == GENERIC_500
    pid = await entered(markers, "Hog")
    assert not alive(pid)
    wallet = Wallet(srv, "a.test", "t1")
    assert (await wallet.put(ALICE)).status == 202
    body = (await wallet.get()).json
    assert body["status"] == "PROCESSING"
    assert body["message"] != f"served by {pid}"
    assert (await wallet.get()).json["id"] == (await wallet.put(ALICE)).json["id"]


async def test_memory_cap_is_the_tenants_own(make_server: MakeServer, plugins: Path,
                                             markers: Path) -> None:
    """With a cap above the allocation, the same hook completes."""
    srv = await make_server(untrusted("t1", "a.test", "misbehave", markers, memory_mib=1024),
                            plugins_dir=plugins)
    wallet = Wallet(srv, "a.test", "t1")
    assert (await wallet.put({**ALICE, "first_name": "Hog"})).status == 202
    assert (await wallet.get()).json["status"] == "ACCEPTED"


async def test_raising_and_refusing_hooks_map_like_in_process(
        make_server: MakeServer, plugins: Path, markers: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave", markers),
                            plugins_dir=plugins)
    wallet = Wallet(srv, "a.test", "t1")
    reply = await wallet.put({**ALICE, "first_name": "Raise", "last_name": "Secretname"})
    assert (reply.status, reply.body) == GENERIC_500
    assert "raised ValueError" in caplog.text
    assert "Secretname" not in caplog.text
    raised_in = await entered(markers, "Raise")
    assert alive(raised_in)  # an ordinary exception does not cost the worker
    refused = await wallet.put({**ALICE, "first_name": "Refuse"})
    assert (refused.status, refused.json) == (400, {"error": "We do not serve this region yet."})
    nothing = (await wallet.get()).json  # nothing was stored by either PUT
    assert nothing["status"] == "NEEDS_INFO"
    assert "id" not in nothing
    for kind in ("Exit", "Vanish"):
        reply = await Wallet(srv, "a.test", "t1").put({**ALICE, "first_name": kind})
        assert (reply.status, reply.body) == GENERIC_500
        assert not alive(await entered(markers, kind))
    assert (await wallet.put(ALICE)).status == 202


async def test_workers_are_gone_after_server_stop(make_server: MakeServer, plugins: Path,
                                                  markers: Path) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave", markers, workers=2),
                            untrusted("t2", "b.test", "demo_anchor"), plugins_dir=plugins)
    stuck = asyncio.ensure_future(Wallet(srv, "a.test", "t1").put({**ALICE, "first_name": "Hang"}))
    busy = await entered(markers, "Hang")
    assert (await Wallet(srv, "b.test", "t2").put(ALICE)).status == 202
    pids = worker_pids(srv)
    assert busy in pids
    assert len(pids) == 2
    await srv.server.stop(0.1)
    assert not any(alive(pid) for pid in pids)
    (cut,) = await asyncio.gather(stuck, return_exceptions=True)
    assert isinstance(cut, HTTPStreamClosedError)  # cut by the stop, never left hanging


async def test_unloadable_plugin_makes_only_its_tenant_unavailable(
        make_server: MakeServer, plugins: Path) -> None:
    srv = await make_server(untrusted("t1", "a.test", "unloadable"),
                            untrusted("t2", "b.test", "demo_anchor"), plugins_dir=plugins)
    reply = await Wallet(srv, "a.test", "t1").get()
    assert (reply.status, reply.json) == (503, {
        "error": "the KYC service of this anchor is unavailable"})
    other = Wallet(srv, "b.test", "t2")
    assert (await other.put(ALICE)).status == 202
    assert (await other.get()).json["status"] == "PROCESSING"


#: A stand-in server process: starts one worker with the real code, sends it a PUT hook
#: call that blocks in ``time.sleep`` (so the worker cannot notice its pipe closing), waits.
PARENT = """
import asyncio, json, sys
from pathlib import Path
from kyc_host.hooks import Caller, PutRequest
from kyc_host.hooks.isolation import WorkerProcess, WorkerSpec

async def rpc(message):
    return {"op": "reply", "id": message["id"], "error": "none"}

async def main():
    spec = WorkerSpec("t1", "misbehave", Path(sys.argv[1]), json.loads(sys.argv[2]),
                      256 * 1024 * 1024, False)
    worker = await WorkerProcess.start(spec)
    request = PutRequest(Caller("G", None, None), None, "individual", None, {},
                         {"first_name": "Sleep"}, {}, ())
    call = asyncio.ensure_future(worker.call("put", (request,), rpc))
    print(worker.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def test_worker_dies_with_a_killed_server(plugins: Path, markers: Path) -> None:
    """``kill -9`` of the server leaves no worker behind, even one blocked in a hook."""
    doc = untrusted("t1", "a.test", "misbehave", markers)
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, str(plugins), json.dumps(doc),
        stdout=asyncio.subprocess.PIPE)
    assert parent.stdout is not None
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        worker = int(line)
        assert await entered(markers, "Sleep") == worker
        assert not gone(worker)
    finally:
        parent.kill()
        await parent.wait()
    for _ in range(1000):
        if gone(worker):
            break
        await asyncio.sleep(0.01)
    assert gone(worker)


def test_wire_round_trips_the_contract_and_rebuilds_nothing_else() -> None:
    request = PutRequest(Caller("G" + "A" * 55, "7", None), None, "individual", None,
                         MappingProxyType({"first_name": "Ada"}), {"first_name": "Ada"},
                         {"photo_id_front": FileRef(None, "image/png", 3)}, ("last_name",))
    decision = Decision(CustomerStatus.REJECTED, "no",
                        MappingProxyType({"first_name": FieldDecision(FieldStatus.REJECTED)}))
    for value in (request, decision, frozenset({"a"}), b"\x00\xff", None):
        assert wire.decode(json.loads(json.dumps(wire.encode(value)))) == value
    for rogue in ({"$dc": "Path", "f": {}}, {"$dc": "Decision", "f": {"evil": 1}},
                  {"$enum": "Signals", "v": 9}, {"$bytes": "%%"}, {"$x": 1},
                  {"a": 1, "b": 2, "c": 3}):
        with pytest.raises(wire.WireError):
            wire.decode(rogue)
    with pytest.raises(wire.WireError):
        wire.encode(Path("/etc/passwd"))


@pytest.mark.parametrize(("isolation", "problem"), [
    ({"mode": "sandbox"}, "plugin_isolation.mode"),
    ({"mode": "process", "memory_mib": 16}, "plugin_isolation.memory_mib"),
    ({"mode": "process", "workers": 0}, "plugin_isolation.workers"),
    ({"mode": "process", "cpu": 1}, "plugin_isolation.cpu"),
])
def test_isolation_settings_are_validated(isolation: dict[str, Any], problem: str) -> None:
    doc = kyc_doc("t1", ["a.test"], plugin="demo_anchor", plugin_isolation=isolation)
    with pytest.raises(ConfigError) as caught:
        parse_tenant(doc, "tenant file")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
