"""SEP-12 throughput: GET and PUT /kyc/customer against a real ``kyc-host serve`` process.

    python tests/benchmarks/sep12_throughput.py                    # SQLite, 1 worker, 10 s each
    python tests/benchmarks/sep12_throughput.py --backend mongo    # FerretDB (tests/ferretdb)
    python tests/benchmarks/sep12_throughput.py --workers 2 --concurrency 32 --seconds 5

Starts the server in a temporary directory with one tenant (the demo plugin, two customer
types), mints SEP-10 tokens with the tenant's own issuer, then drives keep-alive HTTP/1.1
connections from this process (the load generator shares the machine with the server):

- ``put_new``: PUT /kyc/customer JSON, every request a new customer (its own token);
- ``put_same``: the same PUT repeated by known customers (idempotent: no write);
- ``put_update``: known customers change a field every time (a real write);
- ``get``: GET /kyc/customer of known customers.

A ``toml`` row (GET /.well-known/stellar.toml, no store, no crypto) is measured first as the
HTTP stack's baseline on the same machine. Prints requests/s, latency percentiles and non-2xx
counts. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))

from stellar_sdk import Keypair  # noqa: E402

from kyc_host.app import build_services  # noqa: E402
from kyc_host.sep.sep10_tokens import issue_token  # noqa: E402
from kyc_host.settings import load_settings  # noqa: E402

HOST = "bench.localhost"
TENANT = f'''
id = "bench"
hosts = ["{HOST}"]
home_domain = "{HOST}"
network = "testnet"
plugin = "demo_anchor"
default_customer_type = "individual"

[customer_types.individual]
required = ["first_name", "last_name", "email_address"]
optional = ["mobile_number", "birth_date", "photo_id_front"]

[customer_types.business]
required = ["organization.name", "organization.registration_number"]
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {seconds} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def ferretdb(state: Path) -> Iterator[str]:
    binary = ROOT / "tests" / "ferretdb" / "bin" / "ferretdb-embedded"
    if not binary.exists():
        subprocess.run(["bash", str(ROOT / "tests" / "ferretdb" / "build.sh")], check=True)
    port = free_port()
    with (state / "ferretdb.log").open("wb") as log:
        process = subprocess.Popen([str(binary), "-listen-addr", f"127.0.0.1:{port}",
                                    "-state-dir", str(state)], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_port(port, process)
        yield f"mongodb://127.0.0.1:{port}/sep12bench"
    finally:
        stop(process)


@contextmanager
def server(workdir: Path, storage_url: str, workers: int) -> Iterator[tuple[int, dict[str, str]]]:
    (workdir / "tenants").mkdir()
    (workdir / "tenants" / "bench.toml").write_text(TENANT)
    public, admin = free_port(), free_port()
    env = {**os.environ,
           "KYC_HOST_MASTER_KEY": "1:" + base64.b64encode(os.urandom(32)).decode(),
           "KYC_HOST_STORAGE_URL": storage_url,
           "KYC_HOST_PUBLIC_LISTEN": f"127.0.0.1:{public}",
           "KYC_HOST_ADMIN_LISTEN": f"127.0.0.1:{admin}",
           "KYC_HOST_TENANTS_DIR": str(workdir / "tenants"),
           "KYC_HOST_PLUGINS_DIR": str(ROOT / "plugins"),
           "KYC_HOST_DEV_MODE": "true",
           "KYC_HOST_RATE_LIMITS": "false",  # all wallets share 127.0.0.1
           "KYC_HOST_LOG_LEVEL": "warning"}
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kyc_host", "serve", "--workers", str(workers)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(admin, process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz",
                                            timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        yield public, env
    finally:
        stop(process)


async def mint_tokens(env: dict[str, str], how_many: int) -> list[str]:
    """Tokens for new wallets, signed by the tenant's own key (read from the store)."""
    settings = load_settings(None, environ=env)
    services = await build_services(settings, environ=env, apply_tenant_files=False)
    try:
        tenant = services.registry.get("bench")
        if tenant is None:
            raise RuntimeError("the bench tenant was not applied")
        return [issue_token(tenant, sub=Keypair.random().public_key, jti=uuid.uuid4().hex,
                            home_domain=tenant.home_domains[0]) for _ in range(how_many)]
    finally:
        await services.store.close()


def request(method: str, token: str, body: dict[str, str] | None = None,
            query: str = "") -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} /kyc/customer{query} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


def person(n: int) -> dict[str, str]:
    return {"first_name": f"Ada{n}", "last_name": "Lovelace",
            "email_address": f"ada{n}@example.org", "birth_date": "1815-12-10"}


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def row(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return f"{self.name:<11} no requests"

        def pct(p: float) -> float:
            return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))]

        bad = sum(n for s, n in self.statuses.items() if s >= 300)
        return (f"{self.name:<11} {len(lat):>8} {len(lat) / self.seconds:>9.0f} "
                f"{pct(0.5):>8.2f} {pct(0.95):>8.2f} {pct(0.99):>8.2f} {bad:>7}")


async def read_reply(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def load(port: int, name: str, make: Callable[[], bytes], seconds: float,
               concurrency: int) -> Result:
    result = Result(name)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(make())
                status = await read_reply(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    result.seconds = time.perf_counter() - started
    return result


async def scenarios(port: int, env: dict[str, str], seconds: float,
                    concurrency: int) -> list[Result]:
    toml = f"GET /.well-known/stellar.toml HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    baseline = await load(port, "toml", lambda: toml, seconds, concurrency)
    fresh = await mint_tokens(env, int(4000 * seconds))
    serial = count()
    new_tokens = iter(fresh)
    made: list[tuple[str, dict[str, str]]] = []

    def put_new() -> bytes:
        token, data = next(new_tokens), person(next(serial))
        made.append((token, data))
        return request("PUT", token, data)

    results = [baseline, await load(port, "put_new", put_new, seconds, concurrency)]
    known = made[: max(1, len(made))]
    cycle = count()

    def pick() -> tuple[str, dict[str, str]]:
        return known[next(cycle) % len(known)]

    def put_same() -> bytes:
        token, data = pick()
        return request("PUT", token, data)

    def put_update() -> bytes:
        token, data = pick()
        return request("PUT", token, {**data, "last_name": f"L{next(serial)}"})

    def get() -> bytes:
        return request("GET", pick()[0])

    for name, make in (("get", get), ("put_same", put_same), ("put_update", put_update)):
        results.append(await load(port, name, make, seconds, concurrency))
    return results


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sep12-bench-") as tmp:
        workdir = Path(tmp)
        if args.backend == "mongo":
            (workdir / "ferretdb").mkdir()
            storage_cm = ferretdb(workdir / "ferretdb")
        else:
            storage_cm = _const(f"sqlite:///{workdir / 'store.db'}")
        with storage_cm as storage_url, server(workdir, storage_url, args.workers) as (
                port, env):
            results = asyncio.run(scenarios(port, env, args.seconds, args.concurrency))
    sys.stdout.write(f"backend={args.backend} workers={args.workers} "
                     f"concurrency={args.concurrency} seconds={args.seconds:g}\n"
                     f"machine: {machine()} (load generator on the same machine)\n")
    sys.stdout.write(f"{'scenario':<11} {'requests':>8} {'req/s':>9} {'p50 ms':>8} "
                     f"{'p95 ms':>8} {'p99 ms':>8} {'non-2xx':>7}\n")
    for result in results:
        sys.stdout.write(result.row() + "\n")
    return 0


@contextmanager
def _const(value: str) -> Iterator[str]:
    yield value


if __name__ == "__main__":
    sys.exit(main())
