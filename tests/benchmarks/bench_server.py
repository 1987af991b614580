"""Server side of the benchmarks: a temporary deployment of ``kyc-host serve`` and what runs
beside it (the Horizon stand-in, FerretDB for the MongoDB backend), plus process metrics read
from /proc (RSS, PSS, peak RSS, CPU time).

A :class:`Deployment` is a working directory with ``config/kyc-host.toml``, a dev-mode master
key (created by the server on first start) and a ``tenants/`` directory of generated tenant
files. :class:`ServerProcess` starts ``python -m kyc_host serve --workers N`` in it as a
subprocess and measures start-up as "process start until every worker has logged that it
serves and /readyz answers 200".
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def stop_process(process: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL: only the one process we started (and its own children)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- /proc metrics ----------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM, ...); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared (forked, copy-on-write) pages split between sharers."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


class RssSampler:
    """Samples the summed VmRSS of some processes every ``interval`` s; keeps the peak."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(status_kb(p, "VmRSS") for p in self.pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- tenants ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchTenant:
    id: str
    host: str


def bench_tenant(index: int, prefix: str = "b") -> BenchTenant:
    tenant_id = f"{prefix}{index:05d}"
    return BenchTenant(tenant_id, f"{tenant_id}.bench.localhost")


def tenant_toml(tenant: BenchTenant, horizon_url: str) -> str:
    """A realistic small tenant file: one customer type with a photo field, a documentation
    table and a currency, so stellar.toml and SEP-12 both have something to render."""
    return f"""id = "{tenant.id}"
name = "Bench anchor {tenant.id}"
hosts = ["{tenant.host}"]
home_domain = "{tenant.host}"
network = "testnet"
horizon_url = "{horizon_url}"

[customer_types.individual]
required = ["first_name", "last_name", "email_address"]
optional = ["mobile_number", "birth_date", "photo_id_front"]

[limits]
max_file_bytes = 5242880

[stellar_toml.documentation]
ORG_NAME = "Bench anchor {tenant.id}"
ORG_URL = "https://{tenant.host}"

[[stellar_toml.currencies]]
code = "USDC"
issuer = "GBBD47IF6LWK7P7MDEVSCWR7DPUWV3NY3DTQEVFL4NAT4AQH3ZLLFLA5"
status = "test"
"""


def write_tenants(directory: Path, count: int, horizon_url: str,
                  prefix: str = "b") -> list[BenchTenant]:
    directory.mkdir(parents=True, exist_ok=True)
    tenants = [bench_tenant(i, prefix) for i in range(count)]
    for tenant in tenants:
        (directory / f"{tenant.id}.toml").write_text(tenant_toml(tenant, horizon_url))
    return tenants


# --- helper processes -------------------------------------------------------------------


@dataclass
class HorizonStub:
    """``horizon_stub.py`` in its own process (so it does not share the client's event loop)."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: Seconds each account lookup takes (reliability-plan L1-L3: 0.05); 0 answers at once.
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(HERE / "horizon_stub.py"),
                                         str(self.port), str(self.delay)])
        wait_port(self.port, self.process)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid) if self.process else 0.0

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@contextlib.contextmanager
def mongo_server(state_dir: Path) -> Iterator[tuple[str, int]]:
    """Build and start FerretDB with the test suite's own harness; yields a base mongodb URL
    and FerretDB's pid (its CPU time is reported apart: it runs on the same cores).

    The conftest module is imported, not copied, so the benchmark and the tests start
    FerretDB the same way.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from conftest import FerretDB, build_ferretdb
    finally:
        sys.path.remove(str(ROOT / "tests"))
    build_ferretdb()
    state_dir.mkdir(parents=True, exist_ok=True)
    server = FerretDB(free_port(), state_dir)
    server.start()
    try:
        assert server.process is not None
        yield f"mongodb://127.0.0.1:{server.port}", server.process.pid
    finally:
        server.stop()


def storage_url(backend: str, workdir: Path, mongo_base: str | None) -> str:
    if backend == "sqlite":
        return f"sqlite:///{workdir}/store.db"
    if mongo_base is None:
        raise ValueError("mongo backend without a running FerretDB")
    return f"{mongo_base}/bench{uuid.uuid4().hex[:8]}"


# --- the server under test --------------------------------------------------------------


def server_entry() -> list[str]:
    """``-m kyc_host``, or a diagnostic wrapper script named by KYC_BENCH_SERVER_ENTRY (one
    that patches timers into the server, then calls ``kyc_host.cli.main``)."""
    wrapper = os.environ.get("KYC_BENCH_SERVER_ENTRY")
    return [wrapper] if wrapper else ["-m", "kyc_host"]


@dataclass
class Deployment:
    """A working directory the server runs in: config, master key, tenant files."""

    workdir: Path
    storage_url: str
    log_level: str = "info"

    @property
    def tenants_dir(self) -> Path:
        return self.workdir / "tenants"

    def write_config(self, public_port: int, admin_port: int,
                     tenants_dir: Path | None = None) -> Path:
        (self.workdir / "plugins").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config" / "kyc-host.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f'public_listen = "127.0.0.1:{public_port}"\n'
            f'admin_listen = "127.0.0.1:{admin_port}"\n'
            f'storage_url = "{self.storage_url}"\n'
            f'master_key_file = "{self.workdir / "master.key"}"\n'
            f'tenants_dir = "{tenants_dir or self.tenants_dir}"\n'
            f'plugins_dir = "{self.workdir / "plugins"}"\n'
            f"dev_mode = true\n"
            # Every simulated wallet comes from 127.0.0.1: per-IP rate limits would refuse
            # most of the load (tests/limits covers the limits themselves).
            f"rate_limits = false\n"
            f'log_level = "{self.log_level}"\n')
        return config


def child_limits(niceness: int = 0,
                 cpus: frozenset[int] | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving a child process (and every thread and process it starts) a
    CPU niceness and a set of CPUs, or None when neither is asked for."""
    if not niceness and cpus is None:
        return None

    def limit() -> None:
        if niceness:
            os.nice(niceness)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    return limit


class WorkerProcess:
    """A load-generating helper of a benchmark: ``script`` run again with ``flag``, so that its
    client work does not delay the event loop that times the measured requests. It reads one
    JSON spec line on stdin, prints ``ready`` when set up, works until ``stop`` arrives, then
    prints its results as one JSON line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, script: str, flag: str, spec: dict[str, Any],
                    preexec_fn: Callable[[], None] | None = None) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, script, flag, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, preexec_fn=preexec_fn)
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps(spec).encode() + b"\n")
        await process.stdin.drain()
        line = await process.stdout.readline()
        if line.strip() != b"ready":
            process.kill()
            await process.wait()
            raise RuntimeError(f"{Path(script).name} {flag} did not start: {line!r}")
        return cls(process)

    async def stop(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        await self.process.wait()
        result: dict[str, Any] = json.loads(line)
        return result


@dataclass
class ServerProcess:
    """``kyc-host serve --workers N`` on free loopback ports, in a :class:`Deployment`."""

    deployment: Deployment
    workers: int
    tenants_dir: Path | None = None
    public_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    startup_seconds: float = 0.0
    first_ready_seconds: float = 0.0
    #: Run the server (and every thread and process it starts) on these CPUs only.
    cpus: frozenset[int] | None = None

    def start(self, timeout: float = 1800.0) -> float:
        """Start and wait until ready; returns the start-up time in seconds."""
        config = self.deployment.write_config(self.public_port, self.admin_port, self.tenants_dir)
        self.log_path = self.deployment.workdir / f"server-{self.public_port}.log"
        with self.log_path.open("wb") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                [sys.executable, *server_entry(), "serve", "--config", str(config),
                 "--workers", str(self.workers)],
                cwd=self.deployment.workdir, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=child_limits(cpus=self.cpus))
        expect_lines = self.deployment.log_level in ("info", "debug")
        deadline = started + timeout
        ready = False
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kyc-host serve exited with {self.process.returncode}:\n"
                                   + self.log_tail())
            if not ready and self._readyz():
                ready = True
                self.first_ready_seconds = time.perf_counter() - started
            if ready and (not expect_lines or self._serving_lines() >= self.workers):
                self.startup_seconds = time.perf_counter() - started
                return self.startup_seconds
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"kyc-host serve not ready after {timeout} s:\n{self.log_tail()}")

    def _readyz(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _serving_lines(self) -> int:
        assert self.log_path is not None
        count = 0
        with self.log_path.open("rb") as fh:
            for line in fh:
                if b'"msg": "serving ' in line:
                    count += 1
        return count

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def errors_logged(self) -> list[str]:
        """Log lines at level error (unhandled exceptions and the like)."""
        if self.log_path is None:
            return []
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("level") == "error":
                    found.append(line[:500])
        return found

    @property
    def supervisor(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (the single process when workers == 1)."""
        if self.workers <= 1:
            return [self.supervisor]
        return children(self.supervisor)

    def all_pids(self) -> list[int]:
        return sorted({self.supervisor, *self.worker_pids()})

    def memory(self) -> dict[str, float]:
        """RSS/PSS of the server's processes in KiB (workers summed; supervisor apart)."""
        workers = self.worker_pids()
        extra = [p for p in self.all_pids() if p not in workers]
        return {
            "workers_rss_kb": sum(status_kb(p, "VmRSS") for p in workers),
            "workers_pss_kb": sum(pss_kb(p) for p in workers),
            "workers_hwm_kb": sum(status_kb(p, "VmHWM") for p in workers),
            "max_worker_rss_kb": max((status_kb(p, "VmRSS") for p in workers), default=0),
            "max_worker_hwm_kb": max((status_kb(p, "VmHWM") for p in workers), default=0),
            "supervisor_rss_kb": sum(status_kb(p, "VmRSS") for p in extra),
            "total_pss_kb": sum(pss_kb(p) for p in self.all_pids()),
        }

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.all_pids())

    def worker_cpu(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.worker_pids()}

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
