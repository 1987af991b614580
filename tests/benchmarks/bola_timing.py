"""BOLA timing (reliability-plan A8): does a foreign id that exists answer in the same time
as one that never existed?

    python tests/benchmarks/bola_timing.py --json bola-sqlite.json      # SQLite, 500 pairs/op
    python tests/benchmarks/bola_timing.py --backend mongo --json bola-mongo.json
    python tests/benchmarks/bola_timing.py --smoke                       # tiny: checks it works

One real ``kyc-host serve`` process (1 worker, rate limits off) hosts two tenants. On T1,
``--victims`` wallets each create a customer and upload one file. Two attackers then probe
those ids: a stranger on T1 (same tenant: the ids are in the collection it queries) and a
wallet on T2 (other tenant). For every operation below and each attacker, ``--pairs``
pairs of requests are sent on one keep-alive connection, each pair one "exists, not yours"
request (a victim's id, victims taken in turn) and one "never existed" request (a fresh
uuid4), in random order within the pair so that drift and warm-up hit both cases alike:

- ``get``: ``GET /kyc/customer?id=<id>``  (404)
- ``put``: ``PUT /kyc/customer`` JSON ``{"id": <id>, "first_name": ...}``  (404)
- ``put_file_ref``: ``PUT /kyc/customer`` JSON ``{"photo_id_front_file_id": <file id>}``  (404)
- ``files_by_customer``: ``GET /kyc/customer/files?customer_id=<id>``  (200, empty list)
- ``files_by_id``: ``GET /kyc/customer/files?file_id=<file id>``  (200, empty list)

Prints, per operation and attacker, the median and p95 of each case and the difference of
the medians (exists - never, in ms; the plan's target is |difference| < 5 ms), plus a
check that both cases got the same status and body (any mismatch is a BOLA oracle whatever
the timing). Times are client-side round trips on loopback, on a shared machine: the
load average before and after is printed with them. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_client import (  # noqa: E402
    Connection,
    HttpError,
    Response,
    bearer,
    customer_fields,
    login,
    percentile,
    put_customer,
)
from bench_server import (  # noqa: E402
    BenchTenant,
    Deployment,
    HorizonStub,
    ServerProcess,
    mongo_server,
    storage_url,
    write_tenants,
)
from stellar_sdk import Keypair  # noqa: E402

#: (method, path, JSON body or None) of one probe for an id (customer id, file id).
Request = tuple[str, str, dict[str, str] | None]
Probe = Callable[[str, str], Request]


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


#: operation -> probe(customer id, file id); the id that varies between the cases is the
#: one the operation looks up.
OPERATIONS: dict[str, Probe] = {
    "get": lambda cid, _f: ("GET", f"/kyc/customer?id={cid}", None),
    "put": lambda cid, _f: ("PUT", "/kyc/customer", {"id": cid, "first_name": "Mallory"}),
    "put_file_ref": lambda _c, fid: ("PUT", "/kyc/customer",
                                     {"photo_id_front_file_id": fid}),
    "files_by_customer": lambda cid, _f: ("GET", f"/kyc/customer/files?customer_id={cid}",
                                          None),
    "files_by_id": lambda _c, fid: ("GET", f"/kyc/customer/files?file_id={fid}", None),
}


@dataclass
class Victim:
    customer_id: str
    file_id: str


@dataclass
class Attacker:
    name: str
    host: str
    token: str
    conn: Connection


@dataclass
class Series:
    """Round-trip times (seconds) of one case, and the distinct (status, body) answers."""

    times: list[float] = field(default_factory=list)
    answers: set[tuple[int, bytes]] = field(default_factory=set)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.times)
        return {"median_ms": round(1000 * statistics.median(ordered), 3),
                "p95_ms": round(1000 * percentile(ordered, 95), 3)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite")
    parser.add_argument("--pairs", type=int, default=500,
                        help="request pairs per operation and attacker")
    parser.add_argument("--victims", type=int, default=10,
                        help="T1 customers (each with one file) whose ids are probed")
    parser.add_argument("--seed", type=int, default=1946)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--smoke", action="store_true", help="20 pairs, 3 victims")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.pairs, opts.victims = 20, 3
    return opts


# --- setup ------------------------------------------------------------------------------


def png_body(serial: int) -> tuple[bytes, str]:
    """A small multipart upload (PNG by signature; the server sniffs it)."""
    boundary = uuid.uuid4().hex
    image = b"\x89PNG\r\n\x1a\n" + f"{serial:012d}".encode() + os.urandom(180)
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="id.png"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    body += image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def make_victim(port: int, host: str, serial: int) -> Victim:
    conn = Connection(port)
    try:
        token, _ = await login(conn, host, Keypair.random())
        customer_id = await put_customer(conn, host, token, customer_fields(serial))
        body, content_type = png_body(serial)
        answer = await conn.request("POST", "/kyc/customer/files", host, body=body,
                                    headers={**bearer(token), "Content-Type": content_type})
        if answer.status != 200:
            raise HttpError(f"POST /kyc/customer/files: {answer.status} {answer.body[:300]!r}")
        return Victim(customer_id, str(answer.json()["file_id"]))
    finally:
        await conn.close()


async def make_attacker(port: int, name: str, host: str, serial: int) -> Attacker:
    """A logged-in wallet with its own customer (so 'not yours' is about someone else's)."""
    conn = Connection(port)
    token, _ = await login(conn, host, Keypair.random())
    await put_customer(conn, host, token, customer_fields(serial))
    return Attacker(name, host, token, conn)


# --- measurement ------------------------------------------------------------------------


async def timed(attacker: Attacker, request: Request) -> tuple[float, Response]:
    method, path, data = request
    headers = bearer(attacker.token)
    body = b""
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    start = time.perf_counter()
    answer = await attacker.conn.request(method, path, attacker.host, headers=headers,
                                         body=body)
    return time.perf_counter() - start, answer


async def measure(attacker: Attacker, probe: Probe, victims: list[Victim], pairs: int,
                  rng: random.Random) -> dict[str, Series]:
    series = {"exists": Series(), "never": Series()}
    # Warm-up (connection, caches, code paths) for both cases; not recorded.
    for case in ("exists", "never", "exists", "never"):
        victim = victims[0] if case == "exists" else Victim(str(uuid.uuid4()),
                                                            str(uuid.uuid4()))
        await timed(attacker, probe(victim.customer_id, victim.file_id))
    for index in range(pairs):
        cases = ["exists", "never"]
        rng.shuffle(cases)
        for case in cases:
            victim = (victims[index % len(victims)] if case == "exists"
                      else Victim(str(uuid.uuid4()), str(uuid.uuid4())))
            seconds, answer = await timed(attacker, probe(victim.customer_id, victim.file_id))
            series[case].times.append(seconds)
            series[case].answers.add((answer.status, answer.body))
    return series


def row(operation: str, attacker: str, series: dict[str, Series]) -> dict[str, Any]:
    exists, never = series["exists"].summary(), series["never"].summary()
    return {"operation": operation, "attacker": attacker, "exists": exists, "never": never,
            "median_diff_ms": round(exists["median_ms"] - never["median_ms"], 3),
            "statuses": sorted({s for s, _ in series["exists"].answers | series["never"].answers}),
            "same_answers": series["exists"].answers == series["never"].answers
            and len(series["exists"].answers) == 1}


async def scenario(server: ServerProcess, tenants: list[BenchTenant],
                   opts: argparse.Namespace) -> dict[str, Any]:
    port = server.public_port
    victims = [await make_victim(port, tenants[0].host, i) for i in range(opts.victims)]
    attackers = [await make_attacker(port, "same_tenant", tenants[0].host, 10_000),
                 await make_attacker(port, "other_tenant", tenants[1].host, 10_001)]
    rng = random.Random(opts.seed)
    rows = []
    pooled = {"exists": Series(), "never": Series()}
    try:
        for operation, probe in OPERATIONS.items():
            for attacker in attackers:
                series = await measure(attacker, probe, victims, opts.pairs, rng)
                rows.append(row(operation, attacker.name, series))
                for case in pooled:
                    pooled[case].times += series[case].times
    finally:
        for attacker in attackers:
            await attacker.conn.close()
    return {"rows": rows, "pooled": row("all", "both", pooled) | {"same_answers": None,
                                                                  "statuses": None}}


# --- running ----------------------------------------------------------------------------


@contextlib.contextmanager
def deployment(opts: argparse.Namespace, workdir: Path,
               horizon: HorizonStub) -> Iterator[tuple[ServerProcess, list[BenchTenant]]]:
    with contextlib.ExitStack() as stack:
        mongo_base = None
        if opts.backend == "mongo":
            mongo_base, _ = stack.enter_context(mongo_server(workdir / "ferretdb"))
        deploy = Deployment(workdir / "server", storage_url(opts.backend, workdir, mongo_base))
        deploy.workdir.mkdir(parents=True, exist_ok=True)
        tenants = write_tenants(deploy.tenants_dir, 2, horizon.url, prefix="bola")
        server = ServerProcess(deploy, workers=1)
        server.start(timeout=120)
        try:
            yield server, tenants
        finally:
            server.stop()


def print_table(report: dict[str, Any]) -> None:
    say(f"\nA8 BOLA timing ({report['backend']}, {report['pairs']} pairs per row, "
        f"load before {report['load_before']} after {report['load_after']})")
    say(f"{'operation':<18} {'attacker':<13} {'exists p50/p95 ms':>18} "
        f"{'never p50/p95 ms':>18} {'p50 diff ms':>12}  same answers")
    for item in [*report["rows"], report["pooled"]]:
        e, n = item["exists"], item["never"]
        same = "" if item["same_answers"] is None else (
            f"{'yes' if item['same_answers'] else 'NO'} {item['statuses']}")
        say(f"{item['operation']:<18} {item['attacker']:<13} "
            f"{e['median_ms']:>8.3f}/{e['p95_ms']:<9.3f} {n['median_ms']:>8.3f}/{n['p95_ms']:<9.3f}"
            f" {item['median_diff_ms']:>12.3f}  {same}")
    worst = max(abs(item["median_diff_ms"]) for item in report["rows"])
    say(f"largest |median difference|: {worst:.3f} ms (target < 5 ms)")


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None
                         else [sys.executable, __file__, *argv])
    load_before = [round(v, 2) for v in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="kyc-bola-"))
    horizon = HorizonStub()
    horizon.start()
    try:
        with deployment(opts, workdir, horizon) as (server, tenants):
            try:
                figures = asyncio.run(scenario(server, tenants, opts))
            except (HttpError, OSError) as exc:
                say(f"benchmark failed: {exc}\n{server.log_tail()}")
                return 1
            figures["server_errors_logged"] = len(server.errors_logged())
    finally:
        horizon.stop()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "bola_timing", "command": command, "backend": opts.backend,
              "pairs": opts.pairs, "victims": opts.victims, "seed": opts.seed,
              "load_before": load_before,
              "load_after": [round(v, 2) for v in os.getloadavg()],
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              **figures}
    print_table(report)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
