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
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hooks_helpers import plugins_dir
from tornado.simple_httpclient import HTTPStreamClosedError

from conftest import FerretDB, MakeServer, RunningServer
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
from kyc_host.hooks.isolation import NICENESS, pools_of
from kyc_host.settings import PlatformSettings
from kyc_host.store.schema import COLLECTIONS
from kyc_host.tenancy.schema import parse_tenant
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc, png_of_size

GENERIC_500 = (500, b'{"error": "internal server error"}')

#: Misbehaves according to the first name of the PUT; logs ``entered`` with the name and its
#: pid just before, so the test knows the worker is inside the hook (the worker may not
#: write files: hooks/confine.py).
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
        ctx.log.warning("entered", extra={"marker": name, "worker_pid": os.getpid()})
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


class Markers(logging.Handler):
    """Collects the ``entered`` lines of MISBEHAVE, which the server logs for its worker."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[tuple[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        marker, pid = getattr(record, "marker", None), getattr(record, "worker_pid", None)
        if record.getMessage() == "entered" and isinstance(marker, str) and isinstance(pid, int):
            self.seen.append((marker, pid))


@pytest.fixture
def markers() -> Iterator[Markers]:
    handler = Markers()
    logger = logging.getLogger("kyc_host.plugins")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def untrusted(tenant_id: str, host: str, plugin: str, timeout: float = 8.0,
              settings: dict[str, Any] | None = None, **isolation: Any) -> dict[str, Any]:
    """A tenant whose plugin runs isolated (one worker unless told otherwise)."""
    return kyc_doc(tenant_id, [host], plugin=plugin,
                   plugin_isolation={"mode": "process", "workers": 1, **isolation},
                   limits={"hook_timeout_seconds": timeout},
                   plugin_settings=settings or {})


async def entered(markers: Markers, name: str) -> int:
    """The pid of the worker once it is inside the hook for ``name`` (waits up to 60 s)."""
    for _ in range(6000):
        found = [pid for marker, pid in markers.seen if marker == name]
        if found:
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"the hook for {name} never started")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def autogroup_nice(pid: int) -> int | None:
    """The nice of ``pid``'s scheduler autogroup ("/autogroup-N nice K"); None without."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except OSError:
        return None


def worker_pids(srv: RunningServer) -> set[int]:
    return {pid for pool in pools_of(srv.services.store) for pid in pool.pids}


async def test_a_relative_plugins_dir_is_found_by_workers_too(
        make_server: MakeServer, plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``plugins_dir`` is relative by default ("plugins", against the directory the server
    starts from); workers run in ``/``, and used to look for ``/plugins`` (503 for every
    request of an untrusted tenant). t2's in-process plugin comes from the same directory."""
    monkeypatch.chdir(plugins.parent)
    isolated = kyc_doc("t1", ["a.test"], plugin="demo_anchor",
                       plugin_isolation={"mode": "process", "memory_mib": 192})
    srv = await make_server(isolated, kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
                            plugins_dir=Path(plugins.name))
    sanctioned = {**ALICE, "first_name": "Ivan", "last_name": "Sanctioned"}
    for host, tenant in (("a.test", "t1"), ("b.test", "t2")):
        wallet = Wallet(srv, host, tenant)
        assert (await wallet.put(sanctioned)).status == 202
        assert (await wallet.get()).json["status"] == "REJECTED"
        assert (await Wallet(srv, host, tenant, keypair=wallet.keypair).get()).json["id"]
    assert len(worker_pids(srv)) == 1


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
    # At the lowest CPU priority, its scheduler group included (where the kernel has groups).
    for pid in worker_pids(srv):
        assert os.getpriority(os.PRIO_PROCESS, pid) == NICENESS
        assert autogroup_nice(pid) in (None, NICENESS)
    other = Wallet(srv, "b.test", "t2")
    assert (await other.put(ALICE)).status == 202
    assert (await other.get()).json["status"] == "PROCESSING"  # t2 accepts no domain
    assert (await Wallet(srv, "b.test", "t2").get(id=(await accepted.get()).json["id"])
            ).status == 404


async def test_get_hook_runs_in_the_worker_and_sees_platform_data_only_via_rpc(
        make_server: MakeServer, plugins: Path, markers: Markers,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("KYC_CANARY_SECRET", "do-not-leak")  # the server's environment
    caplog.set_level(logging.INFO, logger="kyc_host.plugins")
    srv = await make_server(untrusted("t1", "a.test", "misbehave"),
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
                                                     markers: Markers, kind: str) -> None:
    """t1's only worker is stuck in its hook (timeout 30 s, so it certainly still is while
    the test runs); t2 (in-process plugin) and t3 (its own isolated workers) are answered,
    one by one and all at once. Then the stuck worker dies: t1's request fails cleanly."""
    srv = await make_server(untrusted("t1", "a.test", "misbehave", timeout=30),
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
        make_server: MakeServer, plugins: Path, markers: Markers, kind: str) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave", timeout=1),
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
        make_server: MakeServer, plugins: Path, markers: Markers) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave"),
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
                                             markers: Markers) -> None:
    """With a cap above the allocation, the same hook completes."""
    srv = await make_server(untrusted("t1", "a.test", "misbehave", memory_mib=1024),
                            plugins_dir=plugins)
    wallet = Wallet(srv, "a.test", "t1")
    assert (await wallet.put({**ALICE, "first_name": "Hog"})).status == 202
    assert (await wallet.get()).json["status"] == "ACCEPTED"


async def test_raising_and_refusing_hooks_map_like_in_process(
        make_server: MakeServer, plugins: Path, markers: Markers,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave"),
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
                                                  markers: Markers) -> None:
    srv = await make_server(untrusted("t1", "a.test", "misbehave", workers=2),
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
#: Prints the worker's pid, then the pid of MISBEHAVE's ``entered`` line.
PARENT = """
import asyncio, json, logging, sys
from pathlib import Path
from kyc_host.hooks import Caller, PutRequest
from kyc_host.hooks.isolation import WorkerProcess, WorkerSpec

class Entered(logging.Handler):
    def emit(self, record):
        print(getattr(record, "worker_pid", "?"), flush=True)

logging.getLogger("kyc_host.plugins").addHandler(Entered(logging.WARNING))

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


async def test_worker_dies_with_a_killed_server(plugins: Path) -> None:
    """``kill -9`` of the server leaves no worker behind, even one blocked in a hook."""
    doc = untrusted("t1", "a.test", "misbehave")
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, str(plugins), json.dumps(doc),
        stdout=asyncio.subprocess.PIPE)
    assert parent.stdout is not None
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        worker = int(line)
        assert int(await asyncio.wait_for(parent.stdout.readline(), 60)) == worker  # entered
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


# --- escape attempts (reliability-plan F8: another tenant's data, the store, egress) --------

#: An untrusted plugin that tries everything it can reach, then logs ``probe`` with the
#: outcome of each attempt (JSON). Targets come from its settings and the PUT: ``last_name``
#: is "<another tenant's customer id> <that customer's file id>".
SNOOP = '''
import asyncio
import json
import os
import socket
import sqlite3

from kyc_host.hooks import CustomerHooks, CustomerStatus, Decision, wire


def attempt(action):
    try:
        result = action()
    except Exception as exc:
        return "refused: " + type(exc).__name__
    return "DONE: " + repr(result)[:200]


async def forged(channel, method, args, **extra):
    """A raw rpc message, with whatever extra keys a rogue worker may add."""
    call_id = next(channel.ids)
    future = asyncio.get_running_loop().create_future()
    channel.pending[call_id] = future
    channel.send({"op": "rpc", "id": call_id, "method": method,
                  "args": wire.encode(tuple(args)), **extra})
    reply = await future
    return "refused: " + reply["error"] if "error" in reply else wire.decode(reply.get("value"))


def read(path):
    with open(path, "rb") as handle:
        return len(handle.read(64))


def connect_tcp(host, port):
    with socket.create_connection((host, port), timeout=2):
        return "connected"


def send_udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return sock.sendto(b"leak", (host, port))


def query_sqlite(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("select name from sqlite_master").fetchall()


def create(directory):
    with open(os.path.join(directory, "planted"), "wb") as handle:
        return handle.write(b"x")


class Hooks(CustomerHooks):
    async def put(self, ctx, request):
        if request.data.get("first_name") != "Snoop":
            return None
        other_id, other_file = request.data["last_name"].split()
        s = ctx.settings
        out = {}
        # 1. Through the platform: ids of another tenant, a forged tenant, unknown methods.
        out["customers.get"] = repr(await ctx.customers.get(other_id))
        out["file_contents"] = repr(await ctx.customers.file_contents(other_file))
        out["set_decision"] = repr(await ctx.customers.set_decision(
            other_id, "individual", Decision(CustomerStatus.ACCEPTED)))
        channel = ctx.customers._channel
        out["rpc tenant arg"] = await forged(channel, "customers.get", ("t2", other_id))
        out["rpc tenant key"] = repr(await forged(channel, "customers.get", (other_id,),
                                                  tenant="t2", tenant_id="t2"))
        out["rpc store"] = await forged(channel, "store.find", ("customers", {}))
        # 2. Around the platform: the environment, the server's /proc, keys, settings, store.
        out["env"] = repr(sorted(k for k in os.environ if k.startswith("KYC")))
        for name, path in s["paths"].items():
            out["read " + name] = attempt(lambda p=path: read(p))
        out["list store dir"] = attempt(lambda: os.listdir(s["store_dir"]))
        out["write store dir"] = attempt(lambda: create(s["store_dir"]))
        if s["sqlite"]:
            out["sqlite"] = attempt(lambda: query_sqlite(s["sqlite"]))
        out["signal server"] = attempt(lambda: os.kill(os.getppid(), 0))
        # 3. Egress: the store's port, a canary listener, anywhere, DNS.
        if s["store_port"]:
            out["tcp store"] = attempt(lambda: connect_tcp("127.0.0.1", s["store_port"]))
        out["tcp canary"] = attempt(lambda: connect_tcp("127.0.0.1", s["canary_port"]))
        out["udp canary"] = attempt(lambda: send_udp("127.0.0.1", s["canary_port"]))
        out["tcp 10.0.0.1"] = attempt(lambda: connect_tcp("10.0.0.1", 80))
        out["dns"] = attempt(lambda: socket.getaddrinfo("example.com", 443))
        ctx.log.warning("probe", extra={"outcome": json.dumps(out)})
        return Decision(CustomerStatus.REJECTED, message="probed")
'''


class Canary:
    """A TCP listener and a UDP socket on one loopback port that count what reaches them."""

    def __init__(self) -> None:
        self.connections = 0
        self.datagrams = 0
        self.server: asyncio.Server | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        canary = self

        class Count(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                canary.datagrams += 1

        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(Count, ("127.0.0.1", self.port))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.udp is not None:
            self.udp.close()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    instance = Canary()
    await instance.start()
    yield instance
    await instance.stop()


class Probes(logging.Handler):
    """Collects SNOOP's ``probe`` outcomes as the server logs them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.outcomes: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "probe":
            self.outcomes.append(json.loads(getattr(record, "outcome", "{}")))


async def snapshot(srv: RunningServer, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every document of the tenant, by collection."""
    store = srv.services.store
    return {spec.name: sorted(await store.tenant(tenant_id, spec.name).find({}),
                              key=lambda d: str(d["_id"]))
            for spec in COLLECTIONS.values() if spec.scope == "tenant"}


def store_file(settings: PlatformSettings, request: pytest.FixtureRequest) -> tuple[str, int]:
    """The file on disk holding T2's data (the SQLite store, or T2's database of FerretDB's
    SQLite handler, once written), and the store's port (0 for SQLite)."""
    url = settings.storage_url
    if url.startswith("sqlite:"):
        return url.removeprefix("sqlite:///"), 0
    server: FerretDB = request.getfixturevalue("ferretdb")
    database = url.rsplit("/", 1)[1]
    return str(server.state_dir / f"{database}_t_t2.sqlite"), server.port


async def test_untrusted_plugin_reaches_no_other_tenant_no_store_and_no_network(
        make_server: MakeServer, plugins: Path, canary: Canary, settings: PlatformSettings,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    """T1's untrusted plugin tries to read T2's customer and file through the RPC channel
    (T2's ids, a forged tenant as argument and as message key, an unknown method), the
    server's environment and ``/proc``, the master key, tenant and store files, the store
    itself (SQLite file or FerretDB port), and the network (a canary's TCP and UDP, a
    non-local address, DNS). Everything is refused; T2's data is untouched; the canary saw
    nothing. Controls: this test process reaches the same paths and canary."""
    monkeypatch.setenv("KYC_CANARY_SECRET", "do-not-leak")
    (plugins / "snoop.py").write_text(textwrap.dedent(SNOOP))
    t2_file, store_port = store_file(settings, request)
    server_pid = os.getpid()  # make_server runs the server in this process
    paths = {"master key": str(settings.master_key_file),
             "server environ": f"/proc/{server_pid}/environ",
             "server cmdline": f"/proc/{server_pid}/cmdline",
             "server memory": f"/proc/{server_pid}/mem",
             "store file": t2_file,
             "passwd": "/etc/passwd"}
    probe = {"paths": paths, "store_dir": str(Path(t2_file).parent), "sqlite": t2_file,
             "store_port": store_port, "canary_port": canary.port}
    srv = await make_server(untrusted("t1", "a.test", "snoop", settings=probe),
                            kyc_doc("t2", ["b.test"]), plugins_dir=plugins)
    victim = Wallet(srv, "b.test", "t2")
    victim_id = await victim.create()
    photo = png_of_size(500, 7)
    assert (await victim.put_multipart([("photo_id_front", photo, "id.png")])).status == 202
    [victim_file] = [str(d["_id"]) for d in await srv.services.store.tenant("t2", "files").find({})]
    before = await snapshot(srv, "t2")
    for path in paths.values():  # controls: the paths exist and this process may read them
        if not path.endswith("/mem"):
            assert await asyncio.to_thread(Path(path).read_bytes)
    with socket.create_connection(("127.0.0.1", canary.port)):
        pass
    for _ in range(500):  # the canary counts what reaches it
        if canary.connections:
            break
        await asyncio.sleep(0.01)
    assert canary.connections == 1
    canary.connections = 0

    snooper = Wallet(srv, "a.test", "t1")
    probes = Probes()
    logging.getLogger("kyc_host.plugins").addHandler(probes)
    try:
        reply = await snooper.put(
            {**ALICE, "first_name": "Snoop", "last_name": f"{victim_id} {victim_file}"})
    finally:
        logging.getLogger("kyc_host.plugins").removeHandler(probes)
    assert reply.status == 202, reply.body
    [outcome] = probes.outcomes
    print(f"\nescape attempts: {json.dumps(outcome, indent=1)}")  # noqa: T201
    # Through the platform: the RPC runs with T1's own context, whatever the worker sends.
    assert outcome.pop("customers.get") == "None"
    assert outcome.pop("file_contents") == "None"
    assert outcome.pop("set_decision") == "False"
    assert outcome.pop("rpc tenant arg") == "refused: bad request to customers.get: WireError"
    assert outcome.pop("rpc tenant key") == "None"  # looked up in T1: no such customer
    assert outcome.pop("rpc store") == "refused: bad request to store.find: WireError"
    assert outcome.pop("env") == "[]"
    # Around it and out: every other attempt was refused by the kernel.
    assert {k: v for k, v in outcome.items() if not v.startswith("refused: ")} == {}
    assert canary.connections == 0
    assert canary.datagrams == 0
    assert not (Path(t2_file).parent / "planted").exists()
    assert await snapshot(srv, "t2") == before
    assert (await victim.get()).json["status"] != "ACCEPTED"
    assert "weaker isolation" not in caplog.text  # this machine confines workers fully
    # The plugin still did its legitimate work: its decision reached T1's customer.
    body = (await snooper.get()).json
    assert (body["status"], body["message"]) == ("REJECTED", "probed")


#: Applies one confinement layer of hooks/confine.py alone, then tries a TCP connection to
#: the canary (argv[2]) and reads a file (argv[3]); prints the outcomes as JSON.
ONE_LAYER = """
import json, socket, sys
from pathlib import Path
from kyc_host.hooks import confine

if sys.argv[1] == "network":
    confine.isolate_network()
else:
    confine.restrict_filesystem(Path(sys.argv[3]).parent / "plugins")
out = {}
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2).close()
    out["tcp"] = "connected"
except OSError as exc:
    out["tcp"] = exc.strerror
try:
    out["read"] = Path(sys.argv[3]).read_text()
except OSError as exc:
    out["read"] = exc.strerror
print(json.dumps(out))
"""


@pytest.mark.parametrize(("layer", "expected"), [
    ("network", {"tcp": "Network is unreachable", "read": "secret"}),
    ("filesystem", {"tcp": "Permission denied", "read": "Permission denied"}),
])
async def test_each_confinement_layer_holds_on_its_own(
        canary: Canary, tmp_path: Path, layer: str, expected: dict[str, str]) -> None:
    """The network namespace and Landlock each stop egress without the other (the escape
    test above sees them together): a regression in one is not hidden by the other."""
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ONE_LAYER, layer, str(canary.port), str(secret),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == expected
    assert canary.connections == 0


class HookErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_calls_queued_behind_a_stuck_worker_fail_spread_out(
        make_server: MakeServer, plugins: Path, markers: Markers) -> None:
    """Calls that wait for a worker are held for a random part (half to all) of the hook
    timeout, so a flood's calls that queued together do not all fail, and come back, at the
    same instant (the noisy-neighbour benchmark's bursts)."""
    timeout = 2.0
    srv = await make_server(untrusted("t1", "a.test", "misbehave", timeout=timeout),
                            plugins_dir=plugins)
    assert (await Wallet(srv, "a.test", "t1").put(ALICE)).status == 202  # a worker is up
    errors = HookErrors()
    logger = logging.getLogger("kyc_host.hooks")
    logger.addHandler(errors)
    try:
        stuck = asyncio.ensure_future(
            Wallet(srv, "a.test", "t1").put({**ALICE, "first_name": "Sleep"}))
        await entered(markers, "Sleep")
        queued = await asyncio.gather(*[Wallet(srv, "a.test", "t1").put(ALICE)
                                        for _ in range(12)])
        await stuck
    finally:
        logger.removeHandler(errors)
    assert {r.status for r in queued} <= {202, 500}
    held = [float(m.rsplit(" ", 1)[-1].removesuffix("s")) for m in errors.messages
            if "stayed busy for" in m]
    assert len(held) >= 6, errors.messages
    assert all(timeout / 2 <= h <= timeout for h in held), held
    assert len(set(held)) > 1, held  # not one instant for all
