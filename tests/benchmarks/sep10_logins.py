"""SEP-10 round trips per second against a real ``kyc-host serve`` process.

    python tests/benchmarks/sep10_logins.py --seconds 10 --concurrency 16 [--workers 2]

Starts ``kyc-host serve`` (SQLite, dev mode, everything in a temp dir, one tenant whose
``horizon_url`` points at a Horizon stand-in in this script that answers 404 at once), then
runs ``--concurrency`` wallets, each on one keep-alive connection, doing GET challenge ->
sign with stellar-sdk -> POST, and prints logins/second with p50/p99 of a whole login.
The client and the Horizon stand-in share this process; the server has its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from stellar_sdk import Keypair, TransactionEnvelope
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

PASSPHRASE = "Test SDF Network ; September 2015"
HOST = "bench.localhost"


class NotFound(RequestHandler):
    def get(self, account: str) -> None:
        self.set_status(404)
        self.finish({"status": 404})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_tenant(directory: Path, horizon_url: str) -> None:
    directory.mkdir()
    (directory / "bench.toml").write_text(f"""
id = "bench"
hosts = ["{HOST}"]
home_domain = "{HOST}"
network = "testnet"
horizon_url = "{horizon_url}"

[customer_types.individual]
required = ["first_name"]
""")


class Connection:
    """A minimal HTTP/1.1 keep-alive client: enough for JSON requests to our server."""

    def __init__(self, port: int, host: str) -> None:
        self.port = port
        self.host = host
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      content_type: str = "application/json") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        data = await self.reader.readexactly(length)
        return int(status_line.split()[1]), data


async def wallet(port: int, host: str, deadline: float, latencies: list[float],
                 errors: list[int]) -> None:
    connection = Connection(port, host)
    keypair = Keypair.random()
    query = urlencode({"account": keypair.public_key})
    while time.monotonic() < deadline:
        start = time.perf_counter()
        status, data = await connection.request("GET", f"/auth?{query}")
        if status != 200:
            errors.append(status)
            continue
        envelope = TransactionEnvelope.from_xdr(json.loads(data)["transaction"], PASSPHRASE)
        envelope.sign(keypair)
        body = json.dumps({"transaction": envelope.to_xdr()}).encode()
        status, data = await connection.request("POST", "/auth", body)
        if status != 200 or b"token" not in data:
            errors.append(status)
            continue
        latencies.append(time.perf_counter() - start)


async def wait_until_serving(port: int, host: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise SystemExit(f"kyc-host serve exited with {process.returncode}")
        try:
            status, _ = await Connection(port, host).request("GET", "/.well-known/stellar.toml")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("kyc-host serve did not come up within 60 s")


async def main(seconds: float, concurrency: int, workers: int) -> int:
    horizon_sockets = bind_sockets(0, "127.0.0.1")
    horizon = HTTPServer(Application([(r"/accounts/([A-Z0-9]+)", NotFound)],
                                     log_function=lambda handler: None))
    horizon.add_sockets(horizon_sockets)
    horizon_url = f"http://127.0.0.1:{horizon_sockets[0].getsockname()[1]}"
    with tempfile.TemporaryDirectory(prefix="kyc-bench-") as tmp:
        root = Path(tmp)
        write_tenant(root / "tenants", horizon_url)
        port = free_port()
        command = [sys.executable, "-m", "kyc_host", "serve", "--dev",
                   "--storage-url", f"sqlite:///{root}/store.db",
                   "--master-key-file", str(root / "master.key"),
                   "--tenants-dir", str(root / "tenants"),
                   "--public-listen", f"127.0.0.1:{port}",
                   "--admin-listen", f"127.0.0.1:{free_port()}", "--log-level", "warning",
                   "--workers", str(workers)]
        with (root / "server.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "KYC_HOST_MASTER_KEY": "",
                     "KYC_HOST_RATE_LIMITS": "false"})  # all wallets share 127.0.0.1
        host = f"{HOST}:{port}"
        try:
            await wait_until_serving(port, host, process)
            latencies: list[float] = []
            errors: list[int] = []
            began = time.monotonic()
            await asyncio.gather(*(wallet(port, host, began + seconds, latencies, errors)
                                   for _ in range(concurrency)))
            elapsed = time.monotonic() - began
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
            horizon.stop()
        report(latencies, errors, elapsed, concurrency, workers)
        return 1 if errors or not latencies else 0


def report(latencies: list[float], errors: list[int], elapsed: float, concurrency: int,
           workers: int) -> None:
    ms = sorted(1000 * x for x in latencies)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan")
    p50 = statistics.median(ms) if ms else float("nan")
    sys.stdout.write(
        f"SEP-10 logins (GET challenge + sign + POST): {len(ms)} in {elapsed:.1f} s with "
        f"{concurrency} concurrent wallets, {workers} server worker(s), {os.cpu_count()} CPUs\n"
        f"  {len(ms) / elapsed:.0f} logins/s   p50 {p50:.1f} ms   p99 {p99:.1f} ms   "
        f"errors {len(errors)}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="kyc-host serve --workers")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.seconds, args.concurrency, args.workers)))
