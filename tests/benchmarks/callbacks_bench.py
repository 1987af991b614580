"""Callback delivery benchmark: how fast pending events go out after a (re)start, and how many
events per second one worker process sustains.

    python tests/benchmarks/callbacks_bench.py [--backend sqlite|mongo] [--events 2000]

Three processes on this machine: ``kyc-host serve`` (one worker process), a receiver (a tiny
Tornado app answering 200, or 503 on demand) and this script, which writes the events
straight through the platform's own code path (``CustomerRepository.save`` -> outbox) while
the server is stopped, so they are all due when it starts.

Scenarios:
  backlog   N events pending, server started: time from "ready" to the last delivery,
            and N / that time = events per second.
  kill9     the receiver fails (503) while the server retries; the server is killed with
            SIGKILL mid-attempts; the receiver recovers; the server is started again:
            time from "ready" to the last delivery (includes the lease expiry of the
            attempts the kill cut, and each event's remaining backoff).

Nothing here is asserted; the numbers go to stdout (and ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "tests")]

import tomli_w  # noqa: E402
from tornado.httpclient import AsyncHTTPClient  # noqa: E402

from conftest import FerretDB, build_ferretdb, make_tenant_doc  # noqa: E402
from kyc_host.app import build_services  # noqa: E402
from kyc_host.sep.sep12_tenant import service_for  # noqa: E402
from kyc_host.settings import load_settings  # noqa: E402

RECEIVER = '''
import json, sys
from tornado.ioloop import IOLoop
from tornado.web import Application, RequestHandler
state = {"status": 200, "ids": set(), "total": 0, "first": None, "last": None}
class Hook(RequestHandler):
    def post(self, _):
        import time
        state["total"] += 1
        if state["status"] == 200:
            state["ids"].add(self.request.headers.get("Webhook-Id", ""))
            state["first"] = state["first"] or time.time()
            state["last"] = time.time()
        self.set_status(state["status"]); self.finish("ok")
class Control(RequestHandler):
    def get(self):
        self.finish(json.dumps({"unique": len(state["ids"]), "total": state["total"],
                                "first": state["first"], "last": state["last"]}))
    def put(self):
        state["status"] = int(self.get_argument("status"))
        self.finish("{}")
Application([(r"/_control", Control), (r"/(.*)", Hook)]).listen(int(sys.argv[1]), "127.0.0.1")
IOLoop.current().start()
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bench:
    def __init__(self, root: Path, storage_url: str, settings: dict[str, Any]) -> None:
        self.root = root
        self.admin_port = free_port()
        self.receiver_port = free_port()
        self.config = root / "kyc-host.toml"
        self.config.write_text(tomli_w.dumps({
            "storage_url": storage_url, "master_key_file": str(root / "master.key"),
            "tenants_dir": str(root / "tenants"), "dev_mode": True, "log_level": "warning",
            "rate_limits": False,  # all wallets share 127.0.0.1
            "public_listen": f"127.0.0.1:{free_port()}",
            "admin_listen": f"127.0.0.1:{self.admin_port}", **settings}))
        (root / "tenants").mkdir()
        (root / "tenants" / "t1.toml").write_text(
            tomli_w.dumps(make_tenant_doc("t1", ["a.test"])))
        self.server: subprocess.Popen[bytes] | None = None
        self.receiver = subprocess.Popen([sys.executable, "-c", RECEIVER,
                                          str(self.receiver_port)])
        self.http = AsyncHTTPClient(force_instance=True)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_HOST_")}
        with (self.root / "serve.log").open("ab") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "kyc_host", "serve", "--config", str(self.config)],
                env=env, stdout=log, stderr=subprocess.STDOUT)

    async def ready(self) -> float:
        while True:
            try:
                reply = await self.http.fetch(f"http://127.0.0.1:{self.admin_port}/readyz",
                                              raise_error=False, request_timeout=2)
                if reply.code == 200:
                    return time.monotonic()
            except OSError:
                pass
            await asyncio.sleep(0.01)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.server is not None:
            self.server.send_signal(signum)
            self.server.wait(60)
            self.server = None

    async def received(self) -> dict[str, Any]:
        while True:
            try:
                reply = await self.http.fetch(
                    f"http://127.0.0.1:{self.receiver_port}/_control", request_timeout=5)
                result: dict[str, Any] = json.loads(reply.body)
                return result
            except OSError:
                await asyncio.sleep(0.05)

    async def receiver_status(self, status: int) -> None:
        await self.http.fetch(f"http://127.0.0.1:{self.receiver_port}/_control?status={status}",
                              method="PUT", body=b"")

    async def wait_for(self, key: str, count: int) -> None:
        """Until the receiver counts ``count`` (``unique`` deliveries or ``total`` requests)."""
        while True:
            if (await self.received())[key] >= count:
                return
            await asyncio.sleep(0.05)

    async def make_events(self, count: int) -> None:
        """``count`` customers, each with a callback URL, each changing status once: the
        platform's own save path writes and relays one event per customer."""
        settings = load_settings(self.config, environ={})
        services = await build_services(settings, apply_tenant_files=True)
        try:
            tenant = services.registry.get("t1")
            assert tenant is not None
            service = service_for(tenant, services.store, settings)
            url = f"http://127.0.0.1:{self.receiver_port}/cb"
            for _ in range(count):
                record = service.customers.new()
                record.callback_url, record.callback_set_at = url, time.time()
                record.fields.update(first_name="Ann", last_name="Lee",
                                     email_address="ann@example.com")
                record.type_state("individual")
                await service.customers.save(record)
        finally:
            await services.store.close()

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
        self.receiver.kill()
        self.http.close()


async def backlog(bench: Bench, events: int) -> dict[str, float]:
    await bench.make_events(events)
    bench.start()
    ready = await bench.ready()
    await bench.wait_for("unique", events)
    seconds = time.monotonic() - ready
    bench.stop()
    return {"events": events, "seconds_after_ready": round(seconds, 3),
            "events_per_second": round(events / seconds, 1)}


async def kill9(bench: Bench, events: int, already: int) -> dict[str, float]:
    await bench.receiver_status(503)
    await bench.make_events(events)
    bench.start()
    await bench.ready()
    await bench.wait_for("total", events)  # every event attempted at least once
    bench.stop(signal.SIGKILL)
    await bench.receiver_status(200)
    bench.start()
    ready = await bench.ready()
    await bench.wait_for("unique", already + events)
    seconds = time.monotonic() - ready
    bench.stop()
    return {"events": events, "seconds_after_ready": round(seconds, 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = {"callbacks_poll_seconds": 0.2, "callbacks_lease_seconds": 5.0,
                "callbacks_retry_base_seconds": 0.5, "callbacks_retry_max_seconds": 2.0}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ferret = None
        if args.backend == "mongo":
            build_ferretdb()
            ferret = FerretDB(free_port(), root / "ferretdb")
            ferret.state_dir.mkdir()
            ferret.start()
            url = ferret.url("bench")
        else:
            url = f"sqlite:///{root}/store.db"
        bench = Bench(root, url, settings)
        try:
            report = {
                "machine": f"{os.cpu_count()} cores, {platform.system()} "
                           f"{platform.machine()}, Python {platform.python_version()}",
                "backend": args.backend, "settings": settings,
                "backlog": await backlog(bench, args.events),
                "kill9": await kill9(bench, min(args.events, 500), args.events),
            }
        finally:
            bench.close()
            if ferret is not None:
                ferret.stop()
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
