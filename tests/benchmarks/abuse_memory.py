"""Memory and neighbour figures for oversized bodies (reliability-plan B2 and B5).

The tests show *behaviour* (413/400 before the body is read, chunked bodies cut at the limit,
nothing written); this command gives the *figures* the plan asks for beside them, measured on
a real ``kyc-host serve`` process (one worker, so its RSS is the figure):

- ``auth_bodies``: 100 concurrent ``POST /auth`` with 1 MiB bodies (the endpoint's limit is
  256 KiB) - statuses and the worker's RSS growth (plan: under 10 MB);
- ``endless_upload``: an authenticated ``PUT /kyc/customer`` whose chunked body never ends
  (200 MiB offered) - how much the server read before cutting it and the RSS growth (plan:
  under 50 MB), while another tenant's wallet keeps calling ``GET /kyc/customer``;
- ``big_uploads``: 20 concurrent multipart PUTs each with a 9.5 MiB JPEG (accepted: the file
  limit is 10 MiB) - statuses, MiB/s and the RSS growth, again with the other tenant's GETs.

Usage: ``python tests/benchmarks/abuse_memory.py [--backend sqlite|mongo] [--json FILE]``.
Nothing here is asserted; the figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from stellar_sdk import Keypair

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import Connection, bearer, customer_fields, login
from bench_server import (
    Deployment,
    HorizonStub,
    RssSampler,
    ServerProcess,
    mongo_server,
    status_kb,
    storage_url,
    write_tenants,
)
from run import fake_jpeg

MIB = 1024 * 1024
LARGE_FILE_LIMIT = 'max_file_bytes = 5242880'


def say(text: str) -> None:
    sys.stderr.write(text + "\n")


async def raw_exchange(port: int, head: str, body_chunks: Iterator[bytes],
                       read_timeout: float = 30.0) -> tuple[int | None, int]:
    """Send ``head`` then the chunks until the server answers or closes; returns the status
    (None if the connection was cut without one) and how many body bytes were written."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    status: int | None = None
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head.encode("latin-1"))
        for chunk in body_chunks:
            if answer.done():
                break
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
            sent += len(chunk)
        line = await asyncio.wait_for(answer, read_timeout)
        if line.startswith(b"HTTP/1.1 "):
            status = int(line.split()[1])
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()
    return status, sent


def count(statuses: list[int | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in statuses:
        key = str(status) if status is not None else "cut"
        out[key] = out.get(key, 0) + 1
    return out


class Neighbour:
    """Another tenant's wallet calling GET /kyc/customer in a loop while a scenario runs."""

    def __init__(self, port: int, host: str, token: str) -> None:
        self.port, self.host, self.token = port, host, token
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        conn = Connection(self.port)
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                answer = await conn.request("GET", "/kyc/customer", self.host,
                                            headers=bearer(self.token))
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(answer.status)
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def stop(self) -> None:
        self._stop.set()

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        p95 = ordered[int(0.95 * (len(ordered) - 1))] if ordered else None
        return {"requests": len(ordered), "statuses": count(list(self.statuses)),
                "p95_ms": None if p95 is None else round(1000 * p95, 1)}


async def measured(server: ServerProcess, neighbour: Neighbour | None,
                   work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    pids = server.worker_pids()
    before = sum(status_kb(p, "VmRSS") for p in pids)
    task = asyncio.ensure_future(neighbour.run()) if neighbour else None
    started = time.perf_counter()
    with RssSampler(pids, interval=0.02) as sampler:
        figures = await work()
    figures["seconds"] = round(time.perf_counter() - started, 2)
    if neighbour and task:
        neighbour.stop()
        await task
        figures["other_tenant_get"] = neighbour.figures()
    figures["worker_rss_before_kib"] = before
    figures["worker_rss_peak_kib"] = sampler.peak_kb
    figures["worker_rss_growth_mib"] = round((sampler.peak_kb - before) / 1024, 1)
    return figures


async def auth_bodies(port: int, host: str) -> dict[str, Any]:
    head = (f"POST /auth HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MIB}\r\n\r\n")
    chunk = b"x" * (64 * 1024)
    results = await asyncio.gather(*(raw_exchange(port, head, iter([chunk] * 16))
                                     for _ in range(100)))
    return {"requests": 100, "statuses": count([s for s, _ in results]),
            "body_bytes_written_max": max(sent for _, sent in results)}


async def endless_upload(port: int, host: str, token: str) -> dict[str, Any]:
    boundary = "kycabuse"
    head = (f"PUT /kyc/customer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n")
    payload = random.randbytes(256 * 1024)
    frame = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
    status, sent = await raw_exchange(port, head, iter([frame] * 800))  # 200 MiB offered
    return {"offered_mib": 200, "status": status if status is not None else "cut",
            "written_before_cut_mib": round(sent / MIB, 1)}


async def big_uploads(port: int, host: str, tokens: list[str]) -> dict[str, Any]:
    boundary = "kycbig"
    jpeg = fake_jpeg(int(9.5 * MIB))

    def body(serial: int) -> bytes:
        fields = dict(customer_fields(serial), memo=str(900_000 + serial))
        text = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                       f"{v}\r\n" for k, v in fields.items())
        return (text.encode() + f"--{boundary}\r\nContent-Disposition: form-data; "
                f"name=\"photo_id_front\"; filename=\"id.jpg\"\r\nContent-Type: image/jpeg"
                f"\r\n\r\n".encode() + jpeg + f"\r\n--{boundary}--\r\n".encode())

    async def one(serial: int) -> int:
        conn = Connection(port, timeout=120)
        try:
            answer = await conn.request(
                "PUT", "/kyc/customer", host,
                headers={**bearer(tokens[serial % len(tokens)]),
                         "Content-Type": f"multipart/form-data; boundary={boundary}"},
                body=body(serial))
            return answer.status
        finally:
            await conn.close()

    started = time.perf_counter()
    statuses = await asyncio.gather(*(one(i) for i in range(20)))
    seconds = time.perf_counter() - started
    return {"uploads": 20, "file_mib": 9.5, "statuses": count(list(statuses)),
            "mib_per_s": round(20 * 9.5 / seconds, 1)}


async def scenarios(server: ServerProcess, hosts: list[str]) -> dict[str, Any]:
    port = server.public_port
    conn = Connection(port)
    try:
        a_tokens = [(await login(conn, hosts[0], Keypair.random()))[0] for _ in range(4)]
        b_token = (await login(conn, hosts[1], Keypair.random()))[0]
        answer = await conn.request(
            "PUT", "/kyc/customer", hosts[1],
            headers={**bearer(b_token), "Content-Type": "application/json"},
            body=json.dumps(customer_fields(1)).encode())
        assert answer.status == 202, answer.status
    finally:
        await conn.close()
    out: dict[str, Any] = {}
    say("auth_bodies: 100 x 1 MiB POST /auth")
    out["auth_bodies"] = await measured(server, None, lambda: auth_bodies(port, hosts[0]))
    say("endless_upload: chunked PUT /kyc/customer, 200 MiB offered")
    out["endless_upload"] = await measured(
        server, Neighbour(port, hosts[1], b_token),
        lambda: endless_upload(port, hosts[0], a_tokens[0]))
    say("big_uploads: 20 x 9.5 MiB multipart PUT /kyc/customer")
    out["big_uploads"] = await measured(
        server, Neighbour(port, hosts[1], b_token),
        lambda: big_uploads(port, hosts[0], a_tokens))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    opts = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kyc-abuse-"))
    horizon = HorizonStub()
    horizon.start()
    try:
        with contextlib.ExitStack() as stack:
            mongo_base = None
            if opts.backend == "mongo":
                mongo_base, _ = stack.enter_context(mongo_server(workdir / "ferretdb"))
            deploy = Deployment(workdir / "server", storage_url(opts.backend, workdir, mongo_base))
            tenants = write_tenants(deploy.tenants_dir, 2, horizon.url)
            for tenant in tenants:  # the platform's default 10 MiB file limit
                path = deploy.tenants_dir / f"{tenant.id}.toml"
                path.write_text(path.read_text().replace(LARGE_FILE_LIMIT, ""))
            server = ServerProcess(deploy, workers=1)
            server.start(timeout=120)
            stack.callback(server.stop)
            figures = asyncio.run(scenarios(server, [t.host for t in tenants]))
    finally:
        horizon.stop()
    report = {"backend": opts.backend, "workers": 1, "figures": figures}
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if opts.json:
        opts.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
