"""kyc-host benchmark: starts the real server (``kyc-host serve --workers N``) on SQLite or
MongoDB (FerretDB) in a temporary directory, loads it from this machine, prints a table and
writes JSON.

    python tests/benchmarks/run.py                       # everything, SQLite, 2 workers
    python tests/benchmarks/run.py --backend mongo --json out.json
    python tests/benchmarks/run.py --smoke            # tiny: what test_smoke.py runs in CI

Scenarios (``--only a,b``; default all):
  toml           GET /.well-known/stellar.toml (the HTTP stack's baseline), wrk
  sep10          SEP-10 logins (GET challenge, sign with stellar-sdk, POST), asyncio client
  get_customer   GET /kyc/customer, existing customers, fixed JWTs, wrk
  put_customer   PUT /kyc/customer JSON, a new customer (new memo) per request, wrk
  put_multipart  PUT /kyc/customer multipart with a 1 MiB JPEG, new customer per request, wrk
  workers        the GET scenario with 1 and with 2 worker processes
  tenants        1 / 100 / 1,000 tenants: start-up, memory, GET latency over all tenants

The load generator runs on the same cores as the server (as the issue's targets assume).
Timings are never asserted anywhere; tests only check that this command works.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_client import (  # noqa: E402
    Connection,
    HttpError,
    Latencies,
    customer_fields,
    get_customer,
    login,
    put_customer,
)
from bench_server import (  # noqa: E402
    ROOT,
    BenchTenant,
    Deployment,
    HorizonStub,
    RssSampler,
    ServerProcess,
    cpu_seconds,
    machine_busy_seconds,
    mongo_server,
    storage_url,
    write_tenants,
)
from bench_wrk import RequestSet, WrkResult, run_wrk  # noqa: E402
from stellar_sdk import Keypair  # noqa: E402

SCENARIOS = ("toml", "sep10", "get_customer", "put_customer", "put_multipart", "workers",
             "tenants")
NEEDS_SEP10 = {"sep10", "get_customer", "put_customer", "put_multipart"}
NEEDS_SEP12 = {"get_customer", "put_customer", "put_multipart"}
MIB = 1024 * 1024

#: (scenario, figure) -> (comparison, target, note). "ge": figure >= target; "le": <=.
TARGETS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("get_customer", "requests_per_s"): ("ge", 3000, ">= 3,000 req/s with 2 workers"),
    ("get_customer", "p99_ms"): ("le", 20, "p99 <= 20 ms"),
    ("workers", "2.requests_per_s"): ("ge", 3000, ">= 3,000 req/s with 2 workers"),
    ("workers", "2.p99_ms"): ("le", 20, "p99 <= 20 ms"),
    ("put_customer", "requests_per_s"): ("ge", 1000, ">= 1,000 req/s"),
    ("sep10", "logins_per_s"): ("ge", 600, ">= 600 logins/s"),
    ("tenants", "largest.startup_s"): ("le", 5, "<= 5 s"),
    ("tenants", "largest.restart_unchanged_s"): ("le", 5, "<= 5 s"),
    ("tenants", "largest.restart_store_only_s"): ("le", 5, "<= 5 s"),
    ("tenants", "extra_kb_per_tenant"): ("le", 200, "<= 200 KB per tenant"),
    ("tenants", "toml_p50_ratio"): ("le", 1.10, "p50 within 10% of 1 tenant"),
    ("tenants", "customer_p50_ratio"): ("le", 1.10, "p50 within 10% of 1 tenant"),
}


def say(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --- options ----------------------------------------------------------------------------


@dataclass
class Options:
    backend: str
    workers: int
    concurrency: int
    seconds: float
    only: tuple[str, ...]
    only_given: bool
    json_path: Path | None
    smoke: bool
    log_level: str
    keep: bool
    profile_dir: Path | None
    profile_idle: bool
    wait_quiet: float
    tenant_workers: int
    tenant_counts: tuple[int, ...]
    bench_tenants: int
    wallets_per_tenant: int


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite",
                        help="sqlite (temp file) or mongo (FerretDB from tests/ferretdb)")
    parser.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="connections / concurrent clients (default 16)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="duration of each measurement (default 10; 1 with --smoke)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--json", type=Path, dest="json_path", help="write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run that only proves the benchmark works (CI)")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"),
                        help="server log level (default info, the product default: one "
                             "access-log line per request)")
    parser.add_argument("--tenant-counts", default=None,
                        help="tenant scaling steps (default 1,100,1000; 1,10 with --smoke)")
    parser.add_argument("--tenant-workers", type=int, default=1, metavar="N",
                        help="worker processes in the tenant-scaling steps (default 1: the "
                             "targets are per process, and one process keeps the kernel's "
                             "uneven spreading of connections over workers out of the "
                             "comparison)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--profile", type=Path, metavar="DIR", dest="profile_dir",
                        help="record each measurement of each worker with py-spy (raw "
                             "collapsed stacks in DIR; summarize with profile_summary.py). "
                             "py-spy is not a project dependency: pip install py-spy")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before the run and before each measurement, wait (at most this "
                             "long) until the machine is idle: other processes skew every "
                             "figure on a 2-core machine")
    parser.add_argument("--profile-idle", action="store_true",
                        help="with --profile: include idle (waiting) stacks, a wall-clock view")
    args = parser.parse_args(argv)
    only = tuple(s.strip() for s in (args.only or ",".join(SCENARIOS)).split(",") if s.strip())
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be >= 1")
    counts_text = args.tenant_counts or ("1,10" if args.smoke else "1,100,1000")
    counts = tuple(sorted({int(c) for c in counts_text.split(",")}))
    if counts[0] < 1:
        parser.error("--tenant-counts must be positive")
    return Options(
        backend=args.backend, workers=args.workers, concurrency=args.concurrency,
        seconds=args.seconds if args.seconds is not None else (1.0 if args.smoke else 10.0),
        only=only, only_given=args.only is not None, json_path=args.json_path,
        smoke=args.smoke, log_level=args.log_level,
        keep=args.keep, profile_dir=args.profile_dir, profile_idle=args.profile_idle,
        wait_quiet=args.wait_quiet, tenant_workers=args.tenant_workers,
        tenant_counts=counts,
        bench_tenants=2 if args.smoke else 20,
        wallets_per_tenant=3 if args.smoke else 25)


# --- machine and build facts ------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "ram_gib": round(mem_kb / 1024**2, 1),
            "loadavg_at_start": os.getloadavg()[0],
            "python": platform.python_version(), "kernel": platform.release(),
            "wrk": shutil.which("wrk") is not None}


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD")
    return {"sha": sha or "unknown", "dirty": bool(git("status", "--porcelain"))}


# --- the benchmark ----------------------------------------------------------------------


@dataclass
class Wallet:
    host: str
    keypair: Keypair
    token: str = ""


class ScenarioFailed(Exception):
    pass


@dataclass
class Bench:
    opts: Options
    workdir: Path
    mongo_base: str | None
    horizon: HorizonStub
    #: FerretDB's pid on the mongo backend: a separate server on the same cores.
    store_pid: int | None = None
    results: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    server: ServerProcess | None = None
    tenants: list[BenchTenant] = field(default_factory=list)
    wallets: list[Wallet] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    has_sep10: bool = False
    has_sep12: bool = False
    serial: int = 0

    # -- helpers --

    def next_offset(self) -> int:
        """A fresh range of memo serials per wrk run (so every PUT creates a new customer)."""
        self.serial += 1
        return random.randrange(1, 1000) * 10**12 + self.serial * 10**10

    def selected(self, name: str) -> bool:
        return name in self.opts.only

    def deployment(self, name: str) -> Deployment:
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        return Deployment(workdir, storage_url(self.opts.backend, workdir, self.mongo_base),
                          log_level=self.opts.log_level)

    def wrk(self, port: int, requests: RequestSet, seconds: float | None = None,
            timeout: float = 10.0) -> WrkResult:
        result = run_wrk(port, requests, seconds=seconds or self.opts.seconds,
                         connections=self.opts.concurrency, timeout=timeout)
        if result.errors:
            raise ScenarioFailed(f"wrk counted {result.errors} errors: {result.raw}")
        if result.requests == 0:
            raise ScenarioFailed("wrk completed no request")
        return result

    def store_cpu(self) -> float:
        return cpu_seconds(self.store_pid) if self.store_pid is not None else 0.0

    def quiet(self) -> None:
        """With ``--wait-quiet``: let other processes' work pass before a measurement."""
        if self.opts.wait_quiet > 0:
            wait_until_quiet(self.opts.wait_quiet)

    @contextlib.contextmanager
    def profiled(self, name: str, server: ServerProcess) -> Iterator[None]:
        """With ``--profile DIR``: py-spy records every worker while the block runs."""
        if self.opts.profile_dir is None:
            yield
            return
        self.opts.profile_dir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spies = []
        for pid in server.worker_pids():
            command = [binary, "record", "-p", str(pid), "-d", str(max(1, int(self.opts.seconds))),
                       "-r", "100", "-f", "raw", "--nonblocking",
                       "-o", str(self.opts.profile_dir / f"{name}-{pid}.txt")]
            if self.opts.profile_idle:
                command.append("--idle")
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        try:
            yield
        finally:
            for spy in spies:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()

    def measure(self, server: ServerProcess, action: Callable[[], WrkResult],
                name: str) -> tuple[WrkResult, dict[str, Any]]:
        """Run ``action`` and add server CPU per request and the load generator's CPU."""
        self.quiet()
        cpu0, horizon0 = server.cpu_seconds(), self.horizon.cpu_seconds()
        workers0 = server.worker_cpu()
        machine0 = machine_busy_seconds()
        store0 = self.store_cpu()
        with self.profiled(name, server):
            result = action()
        cpu = server.cpu_seconds() - cpu0
        figures: dict[str, Any] = dict(result.figures())
        store_cores = (self.store_cpu() - store0) / result.seconds
        if self.store_pid is not None:
            figures["ferretdb_cpu_cores"] = round(store_cores, 2)
        figures.update(machine_figures(machine0, result.seconds))
        figures["server_cpu_ms_per_request"] = round(1000 * cpu / max(result.requests, 1), 3)
        figures["server_cpu_cores"] = round(cpu / result.seconds, 2)
        figures["worker_cpu_shares"] = cpu_shares(workers0, server.worker_cpu())
        figures["horizon_stub_cpu_s"] = round(self.horizon.cpu_seconds() - horizon0, 2)
        figures["other_cpu_cores"] = round(
            figures["machine_busy_cores"] - store_cores - (
                cpu + result.client_cpu_seconds + figures["horizon_stub_cpu_s"]) / result.seconds,
            2)
        return result, figures

    # -- main deployment --

    def start_main(self) -> ServerProcess:
        deployment = self.deployment("main")
        self.tenants = write_tenants(deployment.tenants_dir, self.opts.bench_tenants,
                                     self.horizon.url)
        server = ServerProcess(deployment, self.opts.workers)
        say(f"starting kyc-host serve --workers {self.opts.workers} "
            f"({self.opts.backend}, {len(self.tenants)} tenants)")
        server.start()
        say(f"ready in {server.startup_seconds:.2f} s")
        self.server = server
        self.has_sep10, self.has_sep12 = asyncio.run(self.probe(server.public_port))
        say(f"endpoints: /auth {'yes' if self.has_sep10 else 'no'}, "
            f"/kyc/customer {'yes' if self.has_sep12 else 'no'}")
        return server

    async def probe(self, port: int) -> tuple[bool, bool]:
        """Which SEP endpoints this build routes (an unrouted path answers 404)."""
        conn = Connection(port)
        try:
            host = self.tenants[0].host
            auth = await conn.request("GET", "/auth", host)
            kyc = await conn.request("GET", "/kyc/customer", host)
        finally:
            await conn.close()
        return auth.status != 404, kyc.status != 404

    def require(self, name: str) -> bool:
        """False (and the scenario recorded as skipped) when its endpoints are missing."""
        missing = []
        if name in NEEDS_SEP10 and not self.has_sep10:
            missing.append("SEP-10 /auth (platform/kyc_host/sep/sep10.py)")
        if name in NEEDS_SEP12 and not self.has_sep12:
            missing.append("SEP-12 /kyc/customer (platform/kyc_host/sep/sep12.py)")
        if missing:
            self.skipped[name] = "not routed by this build: " + ", ".join(missing)
            say(f"skip {name}: {self.skipped[name]}")
            return False
        return True

    def prepare_wallets(self, port: int) -> None:
        """One SEP-10 login per wallet (the real flow) and, with SEP-12, its customer."""
        if self.wallets:
            return
        wallets = [Wallet(t.host, Keypair.random()) for t in self.tenants
                   for _ in range(self.opts.wallets_per_tenant)]
        started = time.perf_counter()
        asyncio.run(self._login_all(port, wallets, create=self.has_sep12))
        say(f"{len(wallets)} wallets logged in"
            f"{' with customers' if self.has_sep12 else ''} in "
            f"{time.perf_counter() - started:.1f} s")
        self.wallets = wallets

    async def _login_all(self, port: int, wallets: list[Wallet], create: bool) -> None:
        queue = list(enumerate(wallets))

        async def worker() -> None:
            conn = Connection(port)
            try:
                while queue:
                    index, wallet = queue.pop()
                    wallet.token, _ = await login(conn, wallet.host, wallet.keypair)
                    if create:
                        await put_customer(conn, wallet.host, wallet.token,
                                           customer_fields(index))
            finally:
                await conn.close()

        await asyncio.gather(*(worker() for _ in range(min(8, len(wallets)))))

    def run_scenario(self, name: str, body: Callable[[], dict[str, Any]]) -> None:
        say(f"scenario {name}")
        try:
            self.results[name] = body()
        except Exception as exc:  # a failed scenario is reported; the others still run
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            say(f"scenario {name} FAILED: {self.failed[name]}")
            traceback.print_exc(file=sys.stderr)

    # -- scenarios --

    def toml_requests(self, tenants: list[BenchTenant]) -> RequestSet:
        return RequestSet("GET", "/.well-known/stellar.toml", [(t.host, "") for t in tenants])

    def customer_get_requests(self) -> RequestSet:
        return RequestSet("GET", "/kyc/customer",
                          [(w.host, f"Bearer {w.token}") for w in self.wallets])

    def scenario_toml(self) -> dict[str, Any]:
        server = self.main()
        _, figures = self.measure(server, lambda: self.wrk(server.public_port,
                                                           self.toml_requests(self.tenants)),
                                  "toml")
        return figures

    def scenario_sep10(self) -> dict[str, Any]:
        server = self.main()
        # Keys are made before timing: a wallet has its key already.
        keypairs = [Keypair.random() for _ in range(max(64, self.opts.concurrency * 8))]
        self.quiet()
        cpu0, horizon0 = server.cpu_seconds(), self.horizon.cpu_seconds()
        workers0 = server.worker_cpu()
        machine0 = machine_busy_seconds()
        store0 = self.store_cpu()
        client0 = time.process_time()
        with self.profiled("sep10", server):
            figures = asyncio.run(sep10_load(server.public_port, self.tenants, keypairs,
                                             self.opts.concurrency, self.opts.seconds))
        wall = figures.pop("_seconds")
        cpu = server.cpu_seconds() - cpu0
        figures["worker_cpu_shares"] = cpu_shares(workers0, server.worker_cpu())
        figures.update(machine_figures(machine0, wall))
        figures["client_cpu_cores"] = round((time.process_time() - client0) / wall, 2)
        figures["server_cpu_ms_per_login"] = round(1000 * cpu / max(figures["logins"], 1), 3)
        figures["server_cpu_cores"] = round(cpu / wall, 2)
        figures["horizon_stub_cpu_s"] = round(self.horizon.cpu_seconds() - horizon0, 2)
        store_cores = (self.store_cpu() - store0) / wall
        if self.store_pid is not None:
            figures["ferretdb_cpu_cores"] = round(store_cores, 2)
        figures["other_cpu_cores"] = round(
            figures["machine_busy_cores"] - figures["client_cpu_cores"] - store_cores
            - figures["server_cpu_cores"] - figures["horizon_stub_cpu_s"] / wall, 2)
        if figures["errors"]:
            raise ScenarioFailed(f"{figures['errors']} failed logins: {figures['first_error']}")
        return figures

    def scenario_get_customer(self) -> dict[str, Any]:
        server = self.main()
        self.prepare_wallets(server.public_port)
        asyncio.run(self.check_get(server.public_port))
        _, figures = self.measure(server, lambda: self.wrk(server.public_port,
                                                           self.customer_get_requests()),
                                  "get_customer")
        figures["distinct_customers"] = len(self.wallets)
        return figures

    async def check_get(self, port: int) -> None:
        conn = Connection(port)
        try:
            answer = await get_customer(conn, self.wallets[0].host, self.wallets[0].token)
        finally:
            await conn.close()
        if "id" not in answer:
            raise ScenarioFailed(f"GET /kyc/customer of an existing customer: {answer}")

    def put_json_requests(self) -> RequestSet:
        fields = customer_fields(0)
        suffix = ('",' + json.dumps(fields)[1:]).encode()
        return RequestSet("PUT", "/kyc/customer",
                          [(w.host, f"Bearer {w.token}") for w in self.wallets],
                          content_type="application/json", prefix=b'{"memo":"', suffix=suffix,
                          unique_offset=self.next_offset())

    def scenario_put_customer(self) -> dict[str, Any]:
        server = self.main()
        self.prepare_wallets(server.public_port)
        requests = self.put_json_requests()
        asyncio.run(self.check_put(server.public_port, requests, 0))
        _, figures = self.measure(server, lambda: self.wrk(server.public_port, requests),
                                  "put_customer")
        asyncio.run(self.check_created(server.public_port, requests))
        return figures

    async def check_put(self, port: int, requests: RequestSet, serial: int) -> None:
        """One request of exactly the shape wrk will send must be accepted (202/200)."""
        assert requests.prefix is not None
        assert requests.suffix is not None
        host, auth = requests.items[0]
        body = requests.prefix + str(requests.unique_offset + serial).encode() + requests.suffix
        conn = Connection(port)
        try:
            answer = await conn.request(
                "PUT", requests.path, host, body=body,
                headers={"Authorization": auth, "Content-Type": str(requests.content_type)})
        finally:
            await conn.close()
        if answer.status not in (200, 202):
            raise ScenarioFailed(f"PUT /kyc/customer: {answer.status} {answer.body[:300]!r}")

    async def check_created(self, port: int, requests: RequestSet) -> None:
        """wrk's first thread must have created customers under the memos it sent.

        Thread 1 sends serial ``offset + 1e9 + c`` with item ``c % len(items)`` for its
        counter c = 1, 2, ... (see wrk_rotate.lua); wrk may call request() once without
        sending it, so the first few counters are tried.
        """
        conn = Connection(port)
        try:
            for counter in range(1, 21):
                memo = str(requests.unique_offset + 10**9 + counter)
                host, auth = requests.items[counter % len(requests.items)]
                answer = await get_customer(conn, host, auth.removeprefix("Bearer "),
                                            {"memo": memo})
                if "id" in answer:
                    return
        finally:
            await conn.close()
        raise ScenarioFailed("no customer was created under the memos wrk sent")

    def scenario_put_multipart(self) -> dict[str, Any]:
        server = self.main()
        self.prepare_wallets(server.public_port)
        requests = multipart_requests(self.wallets, self.next_offset())
        asyncio.run(self.check_put(server.public_port, requests, 0))
        before = server.memory()
        with RssSampler(server.worker_pids()) as sampler:
            # A 1 MiB upload takes ~0.5 s with 16 in flight (more on FerretDB or a busy
            # machine): a smoke run's single second could complete none of them.
            seconds = max(3.0, self.opts.seconds)
            result, figures = self.measure(server, lambda: self.wrk(
                server.public_port, requests, seconds=seconds, timeout=30), "put_multipart")
        after = server.memory()
        asyncio.run(self.check_created(server.public_port, requests))
        figures["image_bytes"] = MIB
        figures["body_bytes"] = requests.body_size
        figures["upload_mib_per_s"] = round(result.requests * requests.body_size / MIB
                                            / result.seconds, 1)
        figures["workers_rss_before_kb"] = before["workers_rss_kb"]
        figures["workers_rss_peak_kb"] = sampler.peak_kb
        figures["workers_rss_after_kb"] = after["workers_rss_kb"]
        figures["workers_hwm_kb"] = after["workers_hwm_kb"]
        figures["max_worker_hwm_kb"] = after["max_worker_hwm_kb"]
        return figures

    def scenario_workers(self) -> dict[str, Any]:
        use_customers = self.has_sep10 and self.has_sep12
        if use_customers:
            self.prepare_wallets(self.main().public_port)
        deployment = self.server.deployment if self.server else self.deployment("main")
        # The same public port: in dev mode a *.localhost tenant's origin (and so the JWT
        # issuer) includes it, and the tokens minted above must stay valid.
        public_port = self.server.public_port if self.server else None
        if self.server is not None:
            self.stop_main()
        figures: dict[str, Any] = {"request": "GET /kyc/customer" if use_customers
                                   else "GET /.well-known/stellar.toml"}
        for count in (1, 2):
            server = ServerProcess(deployment, count)
            if public_port is not None:
                server.public_port = public_port
            server.start()
            try:
                requests = (self.customer_get_requests() if use_customers
                            else self.toml_requests(self.tenants))
                port = server.public_port
                _, figures[str(count)] = self.measure(
                    server, functools.partial(self.wrk, port, requests), f"workers-{count}")
            finally:
                server.stop()
        return figures

    def main(self) -> ServerProcess:
        if self.server is None:
            raise ScenarioFailed("the main server is not running")
        return self.server

    def scenario_tenants(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"workers": self.opts.tenant_workers}
        done: list[int] = []
        for count in self.opts.tenant_counts:
            try:
                figures[str(count)] = self.tenant_step(count)
                done.append(count)
            except Exception as exc:  # keep the steps that worked; report this one
                figures[str(count)] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                self.failed["tenants"] = f"{count} tenants: {type(exc).__name__}: {exc}"[:2000]
                say(f"tenants={count} FAILED: {exc}")
        if not done:
            raise ScenarioFailed("no tenant step completed")
        first, last = figures[str(done[0])], figures[str(done[-1])]
        figures["largest"] = last
        figures["largest_count"] = done[-1]
        extra = done[-1] - done[0]
        if extra > 0:
            per_worker = (last["rss_after_warm_kb"] - first["rss_after_warm_kb"])
            figures["extra_kb_per_tenant"] = round(per_worker / extra, 1)
            figures["extra_kb_per_tenant_cold"] = round(
                (last["rss_after_start_kb"] - first["rss_after_start_kb"]) / extra, 1)
            figures["toml_p50_ratio"] = round(last["toml"]["p50_ms"] / first["toml"]["p50_ms"], 3)
            if "customer" in first:
                figures["customer_p50_ratio"] = round(
                    last["customer"]["p50_ms"] / first["customer"]["p50_ms"], 3)
        return figures

    def tenant_step(self, count: int) -> dict[str, Any]:
        """Start with ``count`` tenant files, warm every tenant, measure, restart twice."""
        deployment = self.deployment(f"tenants-{count}")
        tenants = write_tenants(deployment.tenants_dir, count, self.horizon.url, prefix="s")
        step: dict[str, Any] = {}
        workers = self.opts.tenant_workers
        server = ServerProcess(deployment, workers)
        say(f"tenants={count}: first start (applies {count} tenant files)")
        step["startup_s"] = round(server.start(), 3)
        step["first_ready_s"] = round(server.first_ready_seconds, 3)
        try:
            if not self.tenants:  # no main server ran: learn the endpoints here
                self.tenants = tenants
                self.has_sep10, self.has_sep12 = asyncio.run(self.probe(server.public_port))
            step["rss_after_start_kb"] = self.per_worker_rss(server)
            toml = self.toml_requests(tenants)
            # Warm: every tenant answered at least once by every worker (each connection of
            # wrk walks the whole host list, and the connections are spread over the workers).
            # (--smoke skips the warm-up passes: the measurements themselves warm up.)
            if not self.opts.smoke:
                self.wrk(server.public_port, toml, seconds=max(1.0, min(3.0, count / 300)))
            customers: RequestSet | None = None
            if self.has_sep10 and self.has_sep12:
                wallets = [Wallet(t.host, Keypair.random()) for t in tenants]
                started = time.perf_counter()
                asyncio.run(self._login_all(server.public_port, wallets, create=True))
                step["login_and_put_per_tenant_s"] = round(time.perf_counter() - started, 2)
                customers = RequestSet("GET", "/kyc/customer",
                                       [(w.host, f"Bearer {w.token}") for w in wallets])
                if not self.opts.smoke:
                    self.wrk(server.public_port, customers, seconds=1.0)
            if not self.opts.smoke:
                step["rss_after_warm_kb"] = self.per_worker_rss(server)
                step["memory_after_warm"] = server.memory()
            _, step["toml"] = self.measure(server, lambda: self.wrk(server.public_port, toml),
                                           f"tenants-{count}-toml")
            if customers is not None:
                _, step["customer"] = self.measure(
                    server, lambda: self.wrk(server.public_port, customers),
                    f"tenants-{count}-customer")
            if self.opts.smoke:
                step["rss_after_warm_kb"] = self.per_worker_rss(server)
                step["memory_after_warm"] = server.memory()
        finally:
            server.stop()
        say(f"tenants={count}: restart, same tenant files (all unchanged)")
        again = ServerProcess(deployment, workers)
        step["restart_unchanged_s"] = round(again.start(), 3)
        again.stop()
        say(f"tenants={count}: restart, tenants only in the store (empty tenants dir)")
        empty = deployment.workdir / "no-tenant-files"
        empty.mkdir(exist_ok=True)
        store_only = ServerProcess(deployment, workers, tenants_dir=empty)
        step["restart_store_only_s"] = round(store_only.start(), 3)
        step["rss_store_only_start_kb"] = self.per_worker_rss(store_only)
        store_only.stop()
        return step

    def per_worker_rss(self, server: ServerProcess) -> float:
        memory = server.memory()
        return round(memory["workers_rss_kb"] / max(1, len(server.worker_pids())), 1)

    # -- driver --

    def run(self) -> None:
        needs_main = [s for s in self.opts.only if s != "tenants"]
        if needs_main:
            self.start_main()
        bodies: dict[str, Callable[[], dict[str, Any]]] = {
            "toml": self.scenario_toml, "sep10": self.scenario_sep10,
            "get_customer": self.scenario_get_customer,
            "put_customer": self.scenario_put_customer,
            "put_multipart": self.scenario_put_multipart,
            "workers": self.scenario_workers, "tenants": self.scenario_tenants,
        }
        try:
            for name in SCENARIOS:  # fixed order: "workers" restarts the main server
                if name == "tenants" and self.server is not None:
                    self.stop_main()  # nothing else may run beside the tenant steps
                if self.selected(name) and (name == "tenants" or self.require(name)):
                    self.run_scenario(name, bodies[name])
        finally:
            self.stop_main()

    def stop_main(self) -> None:
        if self.server is not None:
            self.server_errors.extend(self.server.errors_logged())
            self.server.stop()
            self.server = None


async def sep10_load(port: int, tenants: list[BenchTenant], keypairs: list[Keypair],
                     concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` wallets logging in back to back for ``seconds``, over all tenants."""
    totals, challenges, tokens = Latencies(), Latencies(), Latencies()
    sign = Latencies()
    errors: list[str] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async def wallet(index: int) -> None:
        nonlocal done
        conn = Connection(port)
        step = index
        try:
            while time.perf_counter() < deadline:
                step += concurrency
                host = tenants[step % len(tenants)].host
                try:
                    _, timing = await login(conn, host, keypairs[step % len(keypairs)])
                except (HttpError, KeyError, ValueError) as exc:
                    errors.append(str(exc))
                    await conn.close()
                    continue
                done += 1
                totals.add(timing.total)
                challenges.add(timing.challenge)
                tokens.add(timing.token)
                sign.add(timing.sign)
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(wallet(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    figures: dict[str, Any] = {"logins_per_s": round(done / wall, 1), "logins": done,
                               **totals.summary(), "errors": len(errors),
                               "first_error": errors[0] if errors else None,
                               "challenge_p50_ms": challenges.summary()["p50_ms"],
                               "token_p50_ms": tokens.summary()["p50_ms"],
                               "client_sign_p50_ms": sign.summary()["p50_ms"],
                               "_seconds": wall}
    return figures


def machine_figures(before: tuple[float, float], seconds: float) -> dict[str, float]:
    """CPU the whole machine used during a measurement (server, load generator and anything
    else running): near nproc means the run was CPU-bound; steal is time the hypervisor took."""
    busy, steal = machine_busy_seconds()
    return {"machine_busy_cores": round((busy - before[0]) / seconds, 2),
            "machine_steal_cores": round((steal - before[1]) / seconds, 2)}


def cpu_shares(before: dict[int, float], after: dict[int, float]) -> list[float]:
    """Each worker's part of the server CPU used in between (how evenly the kernel spread
    the connections over the workers)."""
    used = [after[pid] - before.get(pid, 0.0) for pid in sorted(after)]
    total = sum(used)
    return [round(u / total, 2) if total else 0.0 for u in used]


def multipart_requests(wallets: list[Wallet], offset: int) -> RequestSet:
    """PUT /kyc/customer multipart: memo (unique), the required fields, a 1 MiB JPEG."""
    boundary = "kycbench" + f"{random.getrandbits(64):016x}"
    def part(name: str, value: str) -> str:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n")
    prefix = f"--{boundary}\r\nContent-Disposition: form-data; name=\"memo\"\r\n\r\n"
    fields = "".join(part(k, v) for k, v in customer_fields(0).items())
    file_head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo_id_front\"; "
                 f"filename=\"id.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
    suffix = (b"\r\n" + fields.encode() + file_head.encode() + fake_jpeg(MIB)
              + f"\r\n--{boundary}--\r\n".encode())
    return RequestSet("PUT", "/kyc/customer", [(w.host, f"Bearer {w.token}") for w in wallets],
                      content_type=f"multipart/form-data; boundary={boundary}",
                      prefix=prefix.encode(), suffix=suffix, unique_offset=offset)


def fake_jpeg(size: int) -> bytes:
    """``size`` bytes that content sniffing takes for a JPEG: SOI, a JFIF APP0 segment,
    incompressible filler, EOI (the filler is not a decodable image; nothing here decodes)."""
    head = (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    tail = b"\xff\xd9"
    return head + random.randbytes(size - len(head) - len(tail)) + tail


# --- output -----------------------------------------------------------------------------


def lookup(figures: dict[str, Any], dotted: str) -> Any:
    value: Any = figures
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for (scenario, key), (op, target, note) in TARGETS.items():
        value = lookup(results.get(scenario, {}), key)
        if not isinstance(value, int | float):
            continue
        met = value >= target if op == "ge" else value <= target
        rows.append({"scenario": scenario, "figure": key, "value": value, "target": note,
                     "met": met})
    return rows


def flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, value


#: Figures kept in the JSON but left out of the printed table.
TABLE_HIDES = frozenset({"memory_after_warm", "p90_ms", "max_ms", "horizon_stub_cpu_s",
                         "first_error", "loadgen_cpu_s"})


def print_table(report: dict[str, Any]) -> None:
    out = sys.stdout
    machine = report["machine"]
    out.write(f"\nkyc-host benchmark - backend {report['backend']}, {report['workers']} worker(s),"
              f" concurrency {report['concurrency']}, {report['seconds']:g} s per measurement"
              f"{' (SMOKE)' if report['smoke'] else ''}\n")
    out.write(f"machine: {machine['nproc']} x {machine['cpu_model']}, {machine['ram_gib']} GiB, "
              f"Python {machine['python']}, kernel {machine['kernel']}; commit "
              f"{report['commit']['sha']}{' (dirty)' if report['commit']['dirty'] else ''}; "
              f"load average {machine['loadavg_at_start']:.2f} at start, "
              f"{machine['loadavg_at_end']:.2f} at end\n\n")
    targets = {(r["scenario"], r["figure"]): r for r in report["verdicts"]}
    out.write(f"{'scenario':<14} {'figure':<46} {'value':>12}  target\n")
    for scenario, figures in report["scenarios"].items():
        if not isinstance(figures, dict):
            continue
        for key, value in flatten("", figures):
            if scenario == "tenants" and key.startswith("largest."):
                continue
            if any(part in TABLE_HIDES for part in key.split(".")):
                continue
            if isinstance(value, list):
                value = " / ".join(f"{v:g}" for v in value)
            if isinstance(value, float):
                shown = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
            else:
                shown = str(value)
            verdict = targets.get((scenario, key)) or (
                targets.get((scenario, "largest." + key.split(".", 1)[1]))
                if scenario == "tenants" and "." in key
                and key.split(".")[0] == str(report["scenarios"]["tenants"].get("largest_count"))
                else None)
            note = ""
            if verdict:
                note = f"{verdict['target']}: {'met' if verdict['met'] else 'MISSED'}"
            out.write(f"{scenario:<14} {key:<46} {shown:>12}  {note}\n")
    for name, reason in report["skipped"].items():
        out.write(f"{name:<14} skipped: {reason}\n")
    for name, reason in report["failed"].items():
        out.write(f"{name:<14} FAILED: {reason}\n")
    out.flush()


# --- entry point ------------------------------------------------------------------------


def wait_until_quiet(limit: float, window: float = 2.0) -> float:
    """Wait until the machine was idle (< 0.15 busy cores) for ``window`` s, or ``limit``
    seconds passed; returns the busy cores of the last window."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()[0]
        time.sleep(window)
        busy = (machine_busy_seconds()[0] - before) / window
        if busy < 0.15 or time.monotonic() > deadline:
            return round(busy, 2)
        say(f"machine busy ({busy:.2f} cores used by other processes); waiting")


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    idle_check = wait_until_quiet(opts.wait_quiet) if opts.wait_quiet > 0 else None
    report: dict[str, Any] = {
        "command": "python tests/benchmarks/run.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(), "commit": git_commit(), "backend": opts.backend,
        "workers": opts.workers, "concurrency": opts.concurrency, "seconds": opts.seconds,
        "smoke": opts.smoke, "log_level": opts.log_level, "only": list(opts.only),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "busy_cores_before_start": idle_check,
    }
    workdir = Path(tempfile.mkdtemp(prefix="kyc-bench-"))
    say(f"working directory {workdir}")
    horizon = HorizonStub()
    bench: Bench | None = None
    try:
        with contextlib.ExitStack() as stack:
            mongo_base, store_pid = None, None
            if opts.backend == "mongo":
                say("building and starting FerretDB")
                mongo_base, store_pid = stack.enter_context(mongo_server(workdir / "ferretdb"))
            horizon.start()
            stack.callback(horizon.stop)
            bench = Bench(opts, workdir, mongo_base, horizon, store_pid=store_pid)
            bench.run()
    finally:
        if opts.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert bench is not None
    server_errors = bench.server_errors
    report["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    report.update(scenarios=bench.results, skipped=bench.skipped, failed=bench.failed,
                  server_errors_logged=server_errors, verdicts=verdicts(bench.results),
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print_table(report)
    if opts.json_path is not None:
        opts.json_path.write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {opts.json_path}")
    # A scenario named explicitly that could not run is a failure; with the default (all)
    # the ones whose endpoints this build lacks are only reported as skipped.
    if bench.failed or (opts.only_given and bench.skipped):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
