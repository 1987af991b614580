"""Noisy neighbour (reliability-plan L4/F8, issue 9): does tenant A's trouble slow tenant B?

    python tests/benchmarks/noisy_neighbour.py --json noisy-sqlite.json   # SQLite, 3 x 5 s
    python tests/benchmarks/noisy_neighbour.py --backend mongo --json noisy-mongo.json
    python tests/benchmarks/noisy_neighbour.py --plugin sleep      # A's hook sleeps, not spins
    python tests/benchmarks/noisy_neighbour.py --smoke             # tiny: checks it works

One real ``kyc-host serve`` process (1 worker) hosts two tenants:

- **A** (noisy): its plugin is marked untrusted (``[plugin_isolation] mode = "process"``) and
  its ``get`` hook never returns: it spins on CPU (``--plugin spin``, the worst case on a
  shared machine) or blocks in ``time.sleep`` (``--plugin sleep``). A's hook timeout is 2 s.
  A's tenant file also sets tight rate limits (``[limits]``, issue 9 item 2).
- **B** (victim): the demo plugin, in-process.

Each of ``--rounds`` rounds has two phases, in the same run and interleaved so that the
shared machine's other load drifts over both alike. Quiet: B's ``GET /kyc/customer`` latency
for ``--seconds``, B "at baseline" (L4): open loop at ``--b-rate`` requests per second (the
L1 throughput target of one process, 200/s) over a pool of ``--clients`` keep-alive
connections, each latency measured from the moment its request was due to start
(``--b-rate 0``: closed-loop clients, the server saturated by B alone, as in earlier runs).
Noisy: B is measured the same way while every noise source of reliability-plan L4 runs on
A, started 1 s before and kept going until B's measurement ends:

1. **GET flood** (wrk, ``--flood-connections``): every request enters the hanging hook and
   is answered 500 at A's hook timeout.
2. **5x the rate limit**: ``PUT /kyc/customer`` paced at ``--put-rate`` (5/s against A's
   ``customer_puts_per_ip = "5/5s"``, a window shorter than the phase, so that about four
   in five are answered 429 from the first seconds of every phase). Optionally also a
   wrk PUT flood at full speed (``--put-flood-connections``).
3. **Hanging client_domain fetches**: ``--hang-fetches`` (50) clients each keep one
   ``GET /auth?account=...&client_domain=hang.noisy.test`` outstanding. That name is a
   wallet site stand-in run by this script that accepts TCP connections and never answers
   (the server reaches it through the dev-mode ``dev_static_hosts`` setting). The server's
   per-tenant fetch bound lets 10 connect at a time; each ends 400 at the 5 s deadline.
4. **Uploads**: ``--uploads`` (20) clients each keep one multipart ``PUT /kyc/customer``
   with a ``--upload-bytes`` (10 MiB, A's ``max_file_bytes``) JPEG in flight, each on its
   own A customer (202 when stored).

A's load generators (wrk and the noise worker) run at ``--niceness`` (19): on this 2-core
machine they share the server's cores, where a real attacker's clients would be on other
machines; ``--niceness 0`` shows the shared-cores case. After a 429 the upload clients send
their next upload at once (``--upload-retry immediate``, an attacker ignoring Retry-After)
or after the Retry-After (``retry-after``).

Sources 3 and 4 come from their own client addresses (``X-Forwarded-For`` through
127.0.0.1 as the trusted proxy), so only source 2 runs into the per-IP PUT limit; A's
other limits are set so that sources 3 and 4 do their full work instead of being cut
short by 429s (the tenant file below states them).

``--tenant-groups`` runs A and B in separate groups of processes on one store (setting
``serve_tenants``), with A's noise sent to A's group; ``--noise-elsewhere`` (a control) sends
it to a second deployment with its own store. With either, ``--pin`` puts A's server and
load generators on one CPU and B's server and this script on another, as separate hosts or
containers would be.

Prints a table: B's quiet and noisy p50/p95/p99, the p95 ratio (target: within 20 %, i.e.
<= 1.2) pooled and per round, B's errors and error rate (target < 0.1 %), and A's outcome
counts per noise source, with the load average (1/5/15 min) before and after, the CPU
spent by the server and A's plugin workers, and the server's event-loop lag samples over
10 ms and 100 ms per phase (``/metrics``); writes the same as JSON (``--json``, with the
exact command line). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import platform
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_client import (  # noqa: E402
    Connection,
    HttpError,
    bearer,
    customer_fields,
    login,
    percentile,
    put_customer,
)
from bench_server import (  # noqa: E402
    CLK_TCK,
    ROOT,
    Deployment,
    HorizonStub,
    ServerProcess,
    WorkerProcess,
    child_limits,
    children,
    cpu_seconds,
    machine_busy_seconds,
    mongo_server,
    storage_url,
)
from bench_wrk import RequestSet, WrkResult, run_wrk  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from stellar_sdk import Keypair  # noqa: E402

A_HOST, B_HOST = "noisy.bench.localhost", "victim.bench.localhost"
HOOK_TIMEOUT = 2.0
#: A's wallet client_domain: served by :class:`HangingSite` (dev_static_hosts).
HANG_DOMAIN = "hang.noisy.test"
#: The server's fetch deadline (sep/client_domain.py FETCH_TIMEOUT): a hanging fetch ends then.
FETCH_DEADLINE = 5.0
#: A's max_file_bytes is SEP-12's 10 MB default; the uploads are exactly that big.
UPLOAD_BYTES = 10 * 1024 * 1024

NOISY_PLUGIN = '''
import time

from kyc_host.hooks import CustomerHooks


class Hooks(CustomerHooks):
    """Every GET hook runs forever: busy CPU ("spin") or a blocked loop ("sleep")."""

    async def get(self, ctx, request, result):
        end = time.monotonic() + 600
        if ctx.settings.get("mode") == "spin":
            while time.monotonic() < end:
                pass
        time.sleep(600)
        return result
'''


def cpus_of(opts: argparse.Namespace, side: str) -> frozenset[int] | None:
    """``--pin``: the CPU of tenant A's side (its server and load generators) or of B's (its
    server and this script, which measures B); None without ``--pin``."""
    if not opts.pin:
        return None
    first, second = opts.pin_cpus
    return frozenset({first if side == "A" else second})


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def tenant_file(tenant_id: str, host: str, horizon: str, extra: str) -> str:
    return f'''id = "{tenant_id}"
hosts = ["{host}"]
home_domain = "{host}"
network = "testnet"
horizon_url = "{horizon}"
{extra}
[customer_types.individual]
required = ["first_name", "last_name", "email_address"]
optional = ["mobile_number", "birth_date", "photo_id_front"]
'''


def noisy_extra(mode: str) -> str:
    # The paced PUTs come from 127.0.0.1 and meet customer_puts_per_ip (5/s = 5x 5/5s; with
    # "60/min", as before, the 35 PUTs of a phase, a minute apart, all stayed under it).
    # Each hanging-fetch and upload client has its own address and account: 600/min
    # leaves them their full work (about 12 /auth per minute per address; an upload
    # client rarely manages more than one 10 MiB PUT a second), so that they load the
    # server as the plan means instead of turning into cheap 429s.
    return f'''plugin = "noisy"

[plugin_isolation]
mode = "process"
workers = 2

[plugin_settings]
mode = "{mode}"

[limits]
hook_timeout_seconds = {HOOK_TIMEOUT}
max_file_bytes = {UPLOAD_BYTES}
auth_per_ip = "600/min"
auth_per_account = "600/min"
customer_puts_per_ip = "5/5s"
customer_puts_per_account = "600/min"
uploads_per_ip = "600/min"
uploads_per_account = "600/min"
'''


VICTIM_EXTRA = '''plugin = "demo_anchor"
[limits]
auth_per_ip = "600/min"
auth_per_account = "600/min"
'''


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite")
    parser.add_argument("--plugin", choices=("spin", "sleep"), default="spin")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3,
                        help="quiet/noisy phase pairs, interleaved")
    parser.add_argument("--b-rate", type=float, default=200.0,
                        help="B's GET /kyc/customer per second, open loop (B 'at baseline': "
                             "the L1 throughput target of one process); 0: closed loop")
    parser.add_argument("--clients", type=int, default=16,
                        help="B's keep-alive connections (the pool at --b-rate; closed-loop "
                             "clients at --b-rate 0)")
    parser.add_argument("--niceness", type=int, default=19,
                        help="CPU niceness of A's load generators (wrk, the noise worker), "
                             "standing in for clients on other machines; 0: same priority "
                             "as the server")
    parser.add_argument("--upload-retry", choices=("immediate", "retry-after"),
                        default="immediate",
                        help="what A's upload clients do after a 429: send the next upload "
                             "at once (default) or wait the answer's Retry-After first")
    parser.add_argument("--upload-expect", action="store_true",
                        help="A's upload clients send Expect: 100-continue and their body only "
                             "after 100 Continue (curl's way for bodies over 1 MiB)")
    parser.add_argument("--flood-connections", type=int, default=64,
                        help="wrk connections flooding A's GET /kyc/customer; 0: none")
    parser.add_argument("--put-rate", type=float, default=5.0,
                        help="A's PUT /kyc/customer per second, paced: 5 x its 5/5s limit "
                             "(reliability-plan L4); 0: none")
    parser.add_argument("--put-flood-connections", type=int, default=0,
                        help="also flood A's PUT with wrk at full speed (all 429)")
    parser.add_argument("--hang-fetches", type=int, default=50,
                        help="A's GET /auth with a client_domain that never answers, kept "
                             "outstanding (reliability-plan L4: 50); 0: none")
    parser.add_argument("--uploads", type=int, default=20,
                        help="A's multipart PUT /kyc/customer uploads kept in flight "
                             "(reliability-plan L4: 20); 0: none")
    parser.add_argument("--upload-bytes", type=int, default=UPLOAD_BYTES,
                        help="size of each uploaded JPEG (default: A's 10 MiB file limit)")
    parser.add_argument("--noise-elsewhere", action="store_true",
                        help="control run: A's noise goes to a second server process on the "
                             "same machine, so B shares the cores with it but not the process "
                             "(SQLite only)")
    parser.add_argument("--tenant-groups", action="store_true",
                        help="A and B in separate groups of processes (setting "
                             "serve_tenants) on one store, each tenant's requests sent to its "
                             "group as a load balancer routing by Host would")
    parser.add_argument("--pin", action="store_true",
                        help="with --tenant-groups or --noise-elsewhere: A's server and load "
                             "generators on CPU 0, B's server and this script on CPU 1, as "
                             "separate hosts or containers with their own CPUs would be "
                             "(needs 2 CPUs)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--smoke", action="store_true",
                        help="1 s phases, few connections: checks that the command works")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.seconds, opts.clients, opts.flood_connections, opts.rounds = 1.0, 4, 4, 1
        opts.b_rate = min(opts.b_rate, 50.0)
        opts.put_flood_connections = min(opts.put_flood_connections, 1)
        opts.hang_fetches, opts.uploads = min(opts.hang_fetches, 12), min(opts.uploads, 2)
        opts.upload_bytes = min(opts.upload_bytes, 1024 * 1024)
    if opts.noise_elsewhere and opts.backend != "sqlite":
        parser.error("--noise-elsewhere runs with --backend sqlite only")
    if opts.noise_elsewhere and opts.tenant_groups:
        parser.error("--noise-elsewhere and --tenant-groups are two different set-ups")
    if opts.pin and not (opts.noise_elsewhere or opts.tenant_groups):
        parser.error("--pin needs --tenant-groups or --noise-elsewhere (two server processes)")
    opts.pin_cpus = sorted(os.sched_getaffinity(0))[:2]  # before this script pins itself
    if opts.pin and len(opts.pin_cpus) < 2:
        parser.error("--pin needs 2 CPUs")
    if not 1024 <= opts.upload_bytes <= UPLOAD_BYTES:
        parser.error(f"--upload-bytes must be from 1024 to {UPLOAD_BYTES} (A's file limit)")
    return opts


async def wallets(port: int, host: str, count: int) -> list[str]:
    """``count`` fresh wallets logged in on ``host`` (SEP-10 via the Horizon stub)."""
    conn = Connection(port)
    try:
        return [(await login(conn, host, Keypair.random()))[0] for _ in range(count)]
    finally:
        await conn.close()


async def measure_b(port: int, tokens: list[str], seconds: float, clients: int,
                    rate: float = 0.0, host: str = B_HOST) -> tuple[list[float], dict[int, int]]:
    """B's GET /kyc/customer latencies (seconds) and statuses during ``seconds`` (another
    tenant's with ``host`` and that tenant's wallet ``tokens``).

    ``rate`` > 0 (the default of the command): open loop, the way a tenant "at baseline"
    (reliability-plan L4, L1) loads the server -- requests start on a fixed schedule of
    ``rate`` per second whatever the answers do, each on an idle connection of a pool of
    ``clients``; a request's latency runs from the moment its timer fired, so time spent
    waiting for a free connection (a stalled server) counts, and the client's own timer
    lateness does not. ``rate`` 0: ``clients`` closed-loop clients sending back to back
    (the server saturated by B alone: a request waits for B's own queue)."""
    if rate > 0:
        return await _measure_b_open(port, tokens, seconds, clients, rate, host)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        conn = Connection(port)
        try:
            while time.perf_counter() < deadline:
                token = tokens[(index + len(latencies)) % len(tokens)]
                started = time.perf_counter()
                answer = await conn.request("GET", "/kyc/customer", host, headers=bearer(token))
                latencies.append(time.perf_counter() - started)
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, statuses


async def _measure_b_open(port: int, tokens: list[str], seconds: float, clients: int,
                          rate: float, host: str) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    pool = [Connection(port) for _ in range(clients)]
    for conn in pool:
        idle.put_nowait(conn)

    async def one(serial: int) -> None:
        fired = time.perf_counter()
        conn = await idle.get()
        try:
            answer = await conn.request("GET", "/kyc/customer", host,
                                        headers=bearer(tokens[serial % len(tokens)]))
            latencies.append(time.perf_counter() - fired)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
        except (HttpError, OSError, TimeoutError):
            statuses[0] = statuses.get(0, 0) + 1  # counted as an error (status 0)
            await conn.close()
        finally:
            idle.put_nowait(conn)

    started = time.perf_counter()
    sent: list[asyncio.Task[None]] = []
    for serial in range(int(seconds * rate)):
        delay = started + serial / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent.append(asyncio.ensure_future(one(serial)))
    await asyncio.gather(*sent)
    for conn in pool:
        await conn.close()
    return latencies, statuses


def summary(latencies: list[float], statuses: dict[int, int], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    errors = sum(n for status, n in statuses.items() if status != 200)
    return {"requests": len(ordered), "requests_per_s": round(len(ordered) / seconds, 1),
            "p50_ms": round(1000 * percentile(ordered, 50), 2),
            "p95_ms": round(1000 * percentile(ordered, 95), 2),
            "p99_ms": round(1000 * percentile(ordered, 99), 2),
            "max_ms": round(1000 * (ordered[-1] if ordered else 0.0), 2),
            "errors": errors, "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def flood_figures(result: WrkResult) -> dict[str, Any]:
    figures: dict[str, Any] = dict(result.figures())
    figures["non_2xx"] = int(result.raw.get("status_errors", 0))
    return figures


def loop_lag(admin_port: int) -> dict[str, float]:
    """The server's event-loop lag probe (``kyc_event_loop_lag_seconds``, sampled every
    0.1 s): how many samples so far, how many over 10 ms and over 100 ms, and the largest
    lag since the process started."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    buckets: dict[str, float] = {}
    figures = {"samples": 0.0, "max_s": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kyc_event_loop_lag_seconds_bucket":
                buckets[sample.labels["le"]] = sample.value
            elif sample.name == "kyc_event_loop_lag_seconds_count":
                figures["samples"] = sample.value
            elif sample.name == "kyc_event_loop_lag_max_seconds":
                figures["max_s"] = sample.value
    total = figures["samples"]
    figures["over_10ms"] = total - buckets.get("0.01", total)
    figures["over_100ms"] = total - buckets.get("0.1", total)
    return figures


def lag_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Loop-lag samples of one phase (the max is the process's, not the phase's)."""
    return {"samples": after["samples"] - before["samples"],
            "over_10ms": after["over_10ms"] - before["over_10ms"],
            "over_100ms": after["over_100ms"] - before["over_100ms"],
            "process_max_ms": round(1000 * after["max_s"], 1)}


def children_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s children: reaped ones (cutime + cstime) plus live ones."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return reaped + sum(cpu_seconds(child) for child in children(pid))


class Phase:
    """Latencies and statuses of B, pooled over the rounds of one phase kind."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.seconds = 0.0
        self.rounds: list[dict[str, Any]] = []

    def add(self, latencies: list[float], statuses: dict[int, int], seconds: float,
            **extra: Any) -> None:
        self.latencies += latencies
        for status, n in statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.seconds += seconds
        self.rounds.append({**summary(latencies, statuses, seconds), **extra})

    def figures(self) -> dict[str, Any]:
        return {**summary(self.latencies, self.statuses, self.seconds), "rounds": self.rounds}


async def paced_puts(port: int, tokens: list[str], rate: float, seconds: float,
                     offset: int) -> dict[str, int]:
    """A's PUT /kyc/customer (a change every time) at ``rate`` per second; statuses counted."""
    statuses: dict[str, int] = {}
    if rate <= 0:
        return statuses
    conns = [Connection(port) for _ in tokens]
    started = time.perf_counter()
    sent: list[asyncio.Task[None]] = []

    async def one(serial: int) -> None:
        index = serial % len(tokens)
        body = json.dumps({**customer_fields(offset + serial), "last_name": f"N{serial}"})
        try:
            answer = await conns[index].request(
                "PUT", "/kyc/customer", A_HOST, body=body.encode(),
                headers={**bearer(tokens[index]), "Content-Type": "application/json"})
            key = str(answer.status)
        except HttpError:
            key = "connection_error"
        statuses[key] = statuses.get(key, 0) + 1

    busy: dict[int, asyncio.Task[None]] = {}
    serial = 0
    while time.perf_counter() - started < seconds:
        index = serial % len(tokens)
        if index in busy and not busy[index].done():  # its connection still waits (hook)
            statuses["skipped"] = statuses.get("skipped", 0) + 1
        else:
            busy[index] = asyncio.ensure_future(one(serial))
            sent.append(busy[index])
        serial += 1
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*sent)
    for conn in conns:
        await conn.close()
    return statuses


def count(outcomes: dict[str, int], key: str) -> None:
    outcomes[key] = outcomes.get(key, 0) + 1


class HangingSite:
    """A's wallet site: accepts TCP connections and never answers (reliability-plan A6's
    hang host). Its socket is bound before the server starts, whose config names the port."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.open = 0
        self.peak = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, sock=self.sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def reset_peak(self) -> None:
        self.peak = self.open

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await reader.read()  # until the server gives up (its fetch deadline) and closes
        except OSError:
            pass
        finally:
            self.open -= 1
            writer.close()


def client_address(source: int, index: int) -> dict[str, str]:
    """``X-Forwarded-For`` of client ``index`` of noise source ``source`` (RFC 2544's
    benchmarking range 198.18.0.0/15; 127.0.0.1 is the trusted proxy)."""
    return {"X-Forwarded-For": f"198.{18 + source // 256}.{source % 256}.{index % 250 + 1}"}


async def hanging_fetches(port: int, clients: int, stop: asyncio.Event,
                          outcomes: dict[str, int]) -> None:
    """``clients`` loops, each keeping one GET /auth with the hanging client_domain
    outstanding on A until ``stop``; statuses counted (expected: 400 at the deadline)."""
    accounts = [Keypair.random().public_key for _ in range(64)]

    async def client(index: int) -> None:
        conn = Connection(port, timeout=FETCH_DEADLINE + 25)
        serial = index
        try:
            while not stop.is_set():
                account = accounts[serial % len(accounts)]
                serial += clients
                path = f"/auth?account={account}&client_domain={HANG_DOMAIN}"
                try:
                    answer = await conn.request("GET", path, A_HOST,
                                                headers=client_address(1, index))
                    count(outcomes, str(answer.status))
                except (HttpError, OSError, TimeoutError):
                    count(outcomes, "connection_error")
                    await conn.close()
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))


class UploadBody:
    """One upload client's multipart PUT body, built once: A's required fields and a
    ``photo_id_front`` JPEG (by its signature, what the server sniffs) padded to ``size``.
    :meth:`next` stamps a serial into the image in place, so every upload is a new file
    (the server skips one identical to the stored file) without copying 10 MiB each time."""

    def __init__(self, index: int, image: bytes) -> None:
        boundary = f"kycbench{index:04d}"
        fields = customer_fields(100000 + index)
        head = b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
            f"{value}\r\n".encode() for name, value in fields.items())
        head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo_id_front\"; "
                 f"filename=\"id.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        self.data = bytearray(head + image + f"\r\n--{boundary}--\r\n".encode())
        self.stamp_at = len(head) + 4
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.serial = 0

    def next(self) -> bytearray:
        """The body with a new serial (call only once the previous one was sent)."""
        self.serial += 1
        self.data[self.stamp_at:self.stamp_at + 12] = f"{self.serial:012d}".encode()
        return self.data


async def send_upload(port: int, streams: list[Any], token: str, index: int,
                      body: UploadBody, expect: bool = False) -> tuple[int, float]:
    """One ``PUT /kyc/customer`` with ``body`` on the keep-alive connection in ``streams``
    (opened if empty); returns the status and the answer's Retry-After (0 if none).
    ``expect``: send ``Expect: 100-continue`` and the body only after ``100 Continue`` (as
    curl does for bodies over 1 MiB), so a refusal is read before any byte is sent."""
    if not streams:
        streams.extend(await asyncio.open_connection("127.0.0.1", port))
    reader, writer = streams
    data = body.next()
    head = "\r\n".join([
        "PUT /kyc/customer HTTP/1.1", f"Host: {A_HOST}", f"Authorization: Bearer {token}",
        f"Content-Type: {body.content_type}", f"Content-Length: {len(data)}",
        *(["Expect: 100-continue"] if expect else []),
        *(f"{k}: {v}" for k, v in client_address(2, index).items())]) + "\r\n\r\n"
    writer.write(head.encode("latin-1"))
    if expect:
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        if lines[0].split(" ", 2)[1] == "100":
            writer.write(data)
            await writer.drain()
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    else:
        writer.write(data)
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines
                   if line.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    if any(line.lower() == "connection: close" for line in lines) or (
            expect and lines[0].split(" ", 2)[1] != "202"):
        writer.close()  # a refused body was never sent: the server will not reuse this one
        streams.clear()
    retry_after = next((float(line.split(":", 1)[1]) for line in lines
                        if line.lower().startswith("retry-after:")), 0.0)
    return int(lines[0].split(" ", 2)[1]), retry_after


def jpeg_of_size(size: int) -> bytes:
    """A JPEG by its signature (what the server sniffs), random bytes, ``size`` long."""
    return b"\xff\xd8\xff\xe0" + os.urandom(size - 6) + b"\xff\xd9"


async def uploads(port: int, tokens: list[str], bodies: list[UploadBody],
                  stop: asyncio.Event, outcomes: dict[str, int], seconds: list[float],
                  honour_retry_after: bool = False, expect: bool = False) -> None:
    """One loop per token, each keeping one upload to A in flight until ``stop``;
    statuses counted, the durations of the stored (202) ones collected. After a 429 the
    next upload goes at once, or after the answer's Retry-After if ``honour_retry_after``."""

    async def client(index: int) -> None:
        body = bodies[index]
        streams: list[Any] = []
        try:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    status, retry_after = await asyncio.wait_for(
                        send_upload(port, streams, tokens[index], index, body, expect), 120)
                    count(outcomes, str(status))
                    if status == 202:
                        seconds.append(time.perf_counter() - started)
                    elif status == 429 and honour_retry_after and retry_after > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), retry_after)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                    count(outcomes, "connection_error")
                    if streams:
                        streams[1].close()
                    streams.clear()
        finally:
            if streams:
                streams[1].close()

    await asyncio.gather(*(client(i) for i in range(len(tokens))))


async def noise_worker() -> None:
    """``--noise-worker``: the client side of the hanging fetches and the uploads, in a
    process of its own so that their work (10 MiB bodies) does not delay the event loop
    that times B. Reads a JSON spec line on stdin, prints ``ready`` once the upload bodies
    are built, runs until ``stop`` arrives on stdin, then prints the outcomes as JSON."""
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    stop = asyncio.Event()
    hang: dict[str, int] = {}
    stored: dict[str, int] = {}
    upload_seconds: list[float] = []
    image = jpeg_of_size(spec["upload_bytes"])
    bodies = [UploadBody(i, image) for i in range(len(spec["upload_tokens"]))]
    say("ready")
    tasks = [asyncio.ensure_future(hanging_fetches(spec["port"], spec["hang_fetches"], stop,
                                                   hang)),
             asyncio.ensure_future(uploads(spec["port"], spec["upload_tokens"], bodies, stop,
                                           stored, upload_seconds,
                                           spec["upload_retry"] == "retry-after",
                                           spec["upload_expect"]))]
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" (or EOF)
    stop.set()
    await asyncio.gather(*tasks)
    say(json.dumps({"hang": hang, "uploads": stored, "upload_seconds": upload_seconds}))


async def start_noise_worker(port: int, opts: argparse.Namespace,
                             upload_tokens: list[str]) -> WorkerProcess:
    """The ``--noise-worker`` subprocess of one noisy phase."""
    spec = {"port": port, "hang_fetches": opts.hang_fetches,
            "upload_tokens": upload_tokens, "upload_bytes": opts.upload_bytes,
            "upload_retry": opts.upload_retry, "upload_expect": opts.upload_expect}
    return await WorkerProcess.start(__file__, "--noise-worker", spec,
                                     child_limits(opts.niceness, cpus_of(opts, "A")))


@dataclasses.dataclass
class Noise:
    """What a noisy round needs besides B: A's wallets and the wallet site."""

    a_tokens: list[str]
    upload_tokens: list[str]
    site: HangingSite
    #: The public port A's noise is sent to: B's server, or another (--noise-elsewhere).
    port: int


async def noisy_round(server: ServerProcess, noise: Noise, b_tokens: list[str],
                      opts: argparse.Namespace, phase: Phase) -> None:
    """Every noise source on A while B is measured; they start 1 s earlier and stop when
    B's measurement ends (in-flight hanging fetches and uploads are waited for)."""
    a_tokens = noise.a_tokens
    site = noise.site
    site.reset_peak()
    accepted0 = site.accepted
    worker = (await start_noise_worker(noise.port, opts, noise.upload_tokens)
              if opts.hang_fetches or opts.uploads else None)
    flood_seconds = opts.seconds + 2
    auth = [(A_HOST, f"Bearer {t}") for t in a_tokens]
    get_flood = RequestSet("GET", "/kyc/customer", auth)
    floods = {}
    if opts.flood_connections:
        floods["get"] = asyncio.to_thread(run_wrk, noise.port, get_flood,
                                          seconds=flood_seconds,
                                          connections=opts.flood_connections, timeout=10.0,
                                          niceness=opts.niceness,
                                          cpus=cpus_of(opts, "A"))
    if opts.put_flood_connections:
        prefix = b'{"first_name": "Ada", "email_address": "ada@example.com", "last_name": "N'
        put_flood = RequestSet("PUT", "/kyc/customer", auth, content_type="application/json",
                               prefix=prefix, suffix=b'"}',
                               unique_offset=1000000 * (1 + len(phase.rounds)))
        floods["put"] = asyncio.to_thread(run_wrk, noise.port, put_flood,
                                          seconds=flood_seconds,
                                          connections=opts.put_flood_connections, timeout=10.0,
                                          niceness=opts.niceness,
                                          cpus=cpus_of(opts, "A"))
    running = {name: asyncio.ensure_future(f) for name, f in floods.items()}
    paced = asyncio.ensure_future(paced_puts(noise.port, a_tokens, opts.put_rate,
                                             flood_seconds, 1000 * (1 + len(phase.rounds))))
    await asyncio.sleep(1.0)
    server0, plugins0 = cpu_seconds(server.supervisor), children_cpu(server.supervisor)
    machine0 = machine_busy_seconds()[0]
    load = os.getloadavg()[0]
    lag0 = loop_lag(server.admin_port)
    latencies, statuses = await measure_b(server.public_port, b_tokens, opts.seconds,
                                          opts.clients, opts.b_rate)
    lag = lag_delta(lag0, loop_lag(server.admin_port))
    server_s = cpu_seconds(server.supervisor) - server0
    plugins_s = children_cpu(server.supervisor) - plugins0
    # Everything else that ran: the load generators (wrk, the noise worker, this process's
    # B clients and paced PUTs) on the same cores -- CPU the victim could not have.
    others_s = machine_busy_seconds()[0] - machine0 - server_s - plugins_s
    cpu = {"server_cpu_s": round(server_s, 2), "plugin_workers_cpu_s": round(plugins_s, 2),
           "load_generators_cpu_s": round(others_s, 2)}
    client_side: dict[str, Any] = ({"hang": {}, "uploads": {}, "upload_seconds": []}
                                   if worker is None else await worker.stop())
    results = dict(zip(running, await asyncio.gather(*running.values()), strict=True))
    ordered = sorted(client_side["upload_seconds"])
    phase.add(latencies, statuses, opts.seconds, load_average_1m=load, **cpu, loop_lag=lag,
              paced_puts=await paced,
              get_flood=flood_figures(results["get"]) if "get" in results else None,
              put_flood=flood_figures(results["put"]) if "put" in results else None,
              hang_fetches={"clients": opts.hang_fetches, "statuses": client_side["hang"],
                            "site_connections": site.accepted - accepted0,
                            "site_peak_open": site.peak},
              uploads={"clients": len(noise.upload_tokens), "bytes": opts.upload_bytes,
                       "statuses": client_side["uploads"],
                       "stored_mib": round(len(ordered) * opts.upload_bytes / 2**20, 1),
                       "p50_ms": round(1000 * percentile(ordered, 50), 1),
                       "p95_ms": round(1000 * percentile(ordered, 95), 1)})
    await asyncio.sleep(HOOK_TIMEOUT + 1)  # A's requests cut by wrk's stop end their hooks


async def scenario(server: ServerProcess, site: HangingSite, opts: argparse.Namespace,
                   noise_server: ServerProcess | None = None) -> dict[str, Any]:
    """``rounds`` times: B quiet, then B while A is flooded (interleaved, so the machine's
    other load drifts over both kinds alike); p95s pooled over the rounds. A's noise goes
    to ``noise_server`` if given (a control: the same machine, another process)."""
    port, port_admin = server.public_port, server.admin_port
    a_port = port if noise_server is None else noise_server.public_port
    b_tokens = await wallets(port, B_HOST, 8)
    conn = Connection(port)
    try:
        for serial, token in enumerate(b_tokens):
            await put_customer(conn, B_HOST, token, customer_fields(serial))
    finally:
        await conn.close()
    noise = Noise(a_tokens=await wallets(a_port, A_HOST, 8),
                  upload_tokens=await wallets(a_port, A_HOST, opts.uploads), site=site,
                  port=a_port)
    # One call of A's hanging hook first: until A's worker pool has started a worker, it
    # does not know which hooks the plugin overrides and sends every hook to a worker (a
    # PUT's verification_fields too), where the GET flood would make A's PUTs and uploads
    # fail with 500 at the hook timeout instead of loading the server as L4 means.
    conn = Connection(a_port, timeout=HOOK_TIMEOUT + 30)
    try:
        await conn.request("GET", "/kyc/customer", A_HOST, headers=bearer(noise.a_tokens[0]))
    finally:
        await conn.close()
    await asyncio.sleep(1.0)
    await site.start()
    try:
        await measure_b(port, b_tokens, min(1.0, opts.seconds), opts.clients,
                        opts.b_rate)  # warm-up
        quiet, noisy = Phase(), Phase()
        for _ in range(opts.rounds):
            load = os.getloadavg()[0]
            server0 = cpu_seconds(server.supervisor)
            lag0 = loop_lag(port_admin)
            latencies, statuses = await measure_b(port, b_tokens, opts.seconds, opts.clients,
                                                  opts.b_rate)
            quiet.add(latencies, statuses, opts.seconds, load_average_1m=load,
                      server_cpu_s=round(cpu_seconds(server.supervisor) - server0, 2),
                      loop_lag=lag_delta(lag0, loop_lag(port_admin)))
            await noisy_round(server, noise, b_tokens, opts, noisy)
    finally:
        await site.close()
    q, n = quiet.figures(), noisy.figures()
    ratio = n["p95_ms"] / q["p95_ms"] if q["p95_ms"] else None
    error_rate = n["errors"] / n["requests"] if n["requests"] else None
    return {"quiet": q, "noisy": n,
            "p95_ratio": None if ratio is None else round(ratio, 3),
            "round_p95_ratios": [round(b["p95_ms"] / a["p95_ms"], 3) if a["p95_ms"] else None
                                 for a, b in zip(q["rounds"], n["rounds"], strict=True)],
            "target": "noisy p95 <= 1.2 x quiet p95; B errors < 0.1 % (reliability-plan L4)",
            "meets_target": None if ratio is None else ratio <= 1.2,
            "noisy_error_rate": error_rate,
            "meets_error_target": None if error_rate is None else error_rate < 0.001}


@dataclasses.dataclass
class LimitedDeployment(Deployment):
    """The benchmarks' deployment with rate limits on (they are off in the shared config
    because every load generator sends from 127.0.0.1; here only A is flooded, and B's GETs
    are not rate limited), 127.0.0.1 as a trusted proxy (noise clients name their own
    address), and A's wallet domain sent to the hanging site (dev mode)."""

    hang_port: int = 0
    #: --tenant-groups: the tenants this deployment's processes serve (None: all).
    serve_tenants: tuple[str, ...] | None = None

    def write_config(self, public_port: int, admin_port: int,
                     tenants_dir: Path | None = None) -> Path:
        config = super().write_config(public_port, admin_port, tenants_dir)
        text = config.read_text().replace("rate_limits = false", "rate_limits = true")
        if "rate_limits" not in text:
            text += "rate_limits = true\n"
        text += 'trusted_proxies = ["127.0.0.1/32"]\n'
        text += f'dev_static_hosts = ["{HANG_DOMAIN}=127.0.0.1:{self.hang_port}"]\n'
        if self.serve_tenants is not None:
            text += f"serve_tenants = {json.dumps(list(self.serve_tenants))}\n"
        config.write_text(text)
        return config


@contextlib.contextmanager
def deployment(opts: argparse.Namespace, workdir: Path, horizon: HorizonStub,
               site: HangingSite, name: str = "server", *,
               serve_tenants: tuple[str, ...] | None = None,
               share_with: ServerProcess | None = None) -> Iterator[ServerProcess]:
    """A server process in ``workdir / name``: its own store and master key, or, with
    ``share_with``, that server's (another group of processes of the same deployment)."""
    with contextlib.ExitStack() as stack:
        if share_with is not None:
            url = share_with.deployment.storage_url
        else:
            mongo_base = None
            if opts.backend == "mongo":
                mongo_base, _ = stack.enter_context(mongo_server(workdir / "ferretdb"))
            # Each deployment its own store: the noise server's is in its dir.
            store_dir = workdir if name == "server" else workdir / name
            url = storage_url(opts.backend, store_dir, mongo_base)
        deploy = LimitedDeployment(workdir / name, url, hang_port=site.port,
                                   serve_tenants=serve_tenants)
        deploy.workdir.mkdir(parents=True, exist_ok=True)
        if share_with is not None:
            shutil.copy(share_with.deployment.workdir / "master.key",
                        deploy.workdir / "master.key")
        plugins = deploy.workdir / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "noisy.py").write_text(NOISY_PLUGIN)
        shutil.copy(ROOT / "plugins" / "demo_anchor.py", plugins / "demo_anchor.py")
        deploy.tenants_dir.mkdir(exist_ok=True)
        (deploy.tenants_dir / "noisy.toml").write_text(
            tenant_file("noisy", A_HOST, horizon.url, noisy_extra(opts.plugin)))
        (deploy.tenants_dir / "victim.toml").write_text(
            tenant_file("victim", B_HOST, horizon.url, VICTIM_EXTRA))
        server = ServerProcess(deploy, workers=1,
                               cpus=cpus_of(opts, "B" if name == "server" else "A"))
        server.start(timeout=120)
        try:
            yield server
        finally:
            left = children(server.supervisor)
            server.stop()
            stack.callback(_check_gone, left)


def _check_gone(pids: list[int]) -> None:
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    if alive:
        say(f"WARNING: processes of the server still alive after stop: {alive}")


def merged(rounds: list[dict[str, Any]], *path: str) -> dict[str, int]:
    """The status counts at ``path`` of every round, added up."""
    total: dict[str, int] = {}
    for one in rounds:
        value: Any = one
        for key in path:
            value = (value or {}).get(key)
        for status, n in (value or {}).items():
            total[status] = total.get(status, 0) + n
    return dict(sorted(total.items()))


def loads() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_table(report: dict[str, Any]) -> None:
    """B's latencies quiet vs noisy, the targets, and what each noise source on A got."""
    quiet, noisy = report["quiet"], report["noisy"]
    rate = report["noisy_error_rate"]
    expect = " with Expect: 100-continue" if report["upload_expect"] else ""
    b_load = (f"B open loop at {report['b_rate_per_s']:g}/s on {report['clients']} connections"
              if report["b_rate_per_s"] else f"B closed loop, {report['clients']} clients")
    say(f"noisy neighbour: backend {report['backend']}, A's plugin {report['plugin']}s, "
        f"{report['rounds']} rounds x {report['seconds']} s per phase; {b_load}; A's load "
        f"generators at nice {report['generator_niceness']}, upload retry "
        f"{report['upload_retry']}{expect}"
        f"{'; CONTROL: A on another server process' if report['noise_elsewhere'] else ''}"
        f"{'; TENANT GROUPS: A, B own processes, one store' if report['tenant_groups'] else ''}"
        f"{'; PINNED: A on CPU 0, B on CPU 1' if report.get('pinned') else ''}; "
        f"load 1/5/15 min before {report['load_before']} after "
        f"{report['load_after']}")
    say(f"{'B GET /kyc/customer':<22}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}")
    for name, phase in (("quiet", quiet), ("noisy", noisy)):
        say(f"{name:<22}{phase['requests']:>9}{phase['p50_ms']:>9}{phase['p95_ms']:>9}"
            f"{phase['p99_ms']:>9}{phase['errors']:>8}")
    say(f"p95 ratio noisy/quiet {report['p95_ratio']} (target <= 1.2: "
        f"{'met' if report['meets_target'] else 'NOT met'}); per round "
        f"{report['round_p95_ratios']}; B noisy error rate "
        f"{'-' if rate is None else f'{100 * rate:.3f} %'} (target < 0.1 %: "
        f"{'met' if report['meets_error_target'] else 'NOT met'})")
    rounds = noisy["rounds"]
    get_requests = sum((r["get_flood"] or {}).get("requests", 0) for r in rounds)
    get_bad = sum((r["get_flood"] or {}).get("non_2xx", 0) for r in rounds)
    site = [r["hang_fetches"] for r in rounds]
    upload = [r["uploads"] for r in rounds]
    say("A's noise sources (all noisy phases):")
    say(f"  GET flood, wrk {report['flood_connections']} conn, hook hangs: "
        f"{get_requests} requests, {get_bad} non-2xx")
    say(f"  PUT paced {report['put_rate_per_s']}/s (5x customer_puts_per_ip 5/5s): "
        f"{merged(rounds, 'paced_puts')}")
    if report["put_flood_connections"]:
        say(f"  PUT wrk flood: {sum((r['put_flood'] or {}).get('requests', 0) for r in rounds)}"
            " requests")
    say(f"  client_domain hanging x{report['hang_fetches']}: "
        f"{merged(rounds, 'hang_fetches', 'statuses')}; connections at the site "
        f"{sum(x['site_connections'] for x in site)}, most open at once "
        f"{max((x['site_peak_open'] for x in site), default=0)}")
    say(f"  uploads x{report['uploads']} of {report['upload_bytes']} bytes: "
        f"{merged(rounds, 'uploads', 'statuses')}; stored "
        f"{sum(x['stored_mib'] for x in upload):.0f} MiB; p50/p95 per stored upload "
        f"{[x['p50_ms'] for x in upload]} / {[x['p95_ms'] for x in upload]} ms")
    for index, (q, n) in enumerate(zip(quiet["rounds"], rounds, strict=True)):
        say(f"  round {index + 1}: quiet p95 {q['p95_ms']} ms (load "
            f"{q['load_average_1m']:.1f}), noisy p95 {n['p95_ms']} ms (load "
            f"{n['load_average_1m']:.1f}); server CPU {n['server_cpu_s']} s, plugin workers "
            f"CPU {n['plugin_workers_cpu_s']} s, load generators and the rest "
            f"{n.get('load_generators_cpu_s', '?')} s; loop-lag samples over 10/100 ms "
            f"quiet {q['loop_lag']['over_10ms']:g}/{q['loop_lag']['over_100ms']:g}, noisy "
            f"{n['loop_lag']['over_10ms']:g}/{n['loop_lag']['over_100ms']:g} of "
            f"{n['loop_lag']['samples']:g} (largest so far {n['loop_lag']['process_max_ms']} ms)")


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--noise-worker"]:
        asyncio.run(noise_worker())
        return 0
    opts = parse(argv)
    b_cpus = cpus_of(opts, "B")
    if b_cpus is not None:
        os.sched_setaffinity(0, b_cpus)  # this script measures B (and paces A's few PUTs)
    command = shlex.join([sys.executable, *sys.argv] if argv is None
                         else [sys.executable, __file__, *argv])
    load_before = loads()
    workdir = Path(tempfile.mkdtemp(prefix="kyc-noisy-"))
    horizon = HorizonStub()
    horizon.start()
    site = HangingSite()
    try:
        with contextlib.ExitStack() as servers:
            groups = opts.tenant_groups
            server = servers.enter_context(deployment(
                opts, workdir, horizon, site, serve_tenants=("victim",) if groups else None))
            noise_server = None
            if opts.noise_elsewhere or groups:
                noise_server = servers.enter_context(deployment(
                    opts, workdir, horizon, site, name="noise-server",
                    serve_tenants=("noisy",) if groups else None,
                    share_with=server if groups else None))
            try:
                figures = asyncio.run(scenario(server, site, opts, noise_server))
            except (HttpError, OSError, RuntimeError) as exc:
                say(f"benchmark failed: {exc}\n{server.log_tail()}")
                return 1
            figures["server_errors_logged"] = len(server.errors_logged())
            figures["server_cpus"] = sorted(os.sched_getaffinity(server.supervisor))
            if noise_server is not None:
                figures["noise_server_errors_logged"] = len(noise_server.errors_logged())
                figures["noise_server_cpus"] = sorted(
                    os.sched_getaffinity(noise_server.supervisor))
    finally:
        site.sock.close()
        horizon.stop()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "noisy_neighbour", "command": command, "backend": opts.backend,
              "plugin": opts.plugin, "seconds": opts.seconds, "rounds": opts.rounds,
              "clients": opts.clients, "b_rate_per_s": opts.b_rate,
              "generator_niceness": opts.niceness, "upload_retry": opts.upload_retry,
              "upload_expect": opts.upload_expect, "flood_connections": opts.flood_connections,
              "put_flood_connections": opts.put_flood_connections,
              "put_rate_per_s": opts.put_rate, "hang_fetches": opts.hang_fetches,
              "uploads": opts.uploads, "upload_bytes": opts.upload_bytes,
              "noise_elsewhere": opts.noise_elsewhere, "tenant_groups": opts.tenant_groups,
              "pinned": opts.pin,
              "load_before": load_before, "load_after": loads(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              **figures}
    print_table(report)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
