"""Shared fixtures. Index:

- ``ferretdb`` (session): a real MongoDB-wire server (FerretDB v1.24, SQLite handler) built
  from its Go module and started on a free loopback port. Never skipped: if it cannot be
  built or started, every MongoDB test fails.
- ``backend`` (parametrized "sqlite" / "mongo"): a fresh storage URL per test; tests that take
  it run once per backend (the contract suite, tenancy, the HTTP suites).
- ``settings``: PlatformSettings for a test (dev mode, temp master key, ports 0).
- ``store``: a started Store on ``backend``, with tenants "t1" and "t2" prepared.
- ``tenant_doc``: builds a valid tenant document; override keys with keyword arguments.
- ``make_server``: starts the real app (both listeners) in-process on free ports with the given
  tenant documents; returns a :class:`RunningServer` whose ``fetch`` sets the Host header.
- ``two_tenants``: a running server with tenants "t1" on ``a.test`` and "t2" on ``b.test``.
- ``log_canary`` (autouse): every test fails if any ``kyc_host`` log line (at DEBUG, in the
  platform's JSON format) holds a JWT, a Stellar secret seed or a bearer credential.

Every async test runs on the server's own event loop, :class:`TurnTakingLoop` (the
``pytest_asyncio_loop_factories`` hook below).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.netutil import bind_sockets

from kyc_host.app import Server, build_services
from kyc_host.logs import JsonFormatter
from kyc_host.services import Services
from kyc_host.settings import PlatformSettings, load_settings, with_overrides
from kyc_host.store import open_store
from kyc_host.store.base import Store
from kyc_host.tenancy.schema import parse_tenant
from kyc_host.tenancy.service import TenantDocument
from kyc_host.web.turns import TurnTakingLoop

ROOT = Path(__file__).resolve().parent.parent
FERRETDB_DIR = ROOT / "tests" / "ferretdb"


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """The loop ``kyc-host serve`` runs on (web/turns.py), for every async test."""
    return {"turn_taking": TurnTakingLoop}


# --- FerretDB ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Test FerretDB servers listen on a port of this range, below the kernel's ephemeral range
#: (from which every server under test, receiver and client socket gets its port), so a
#: socket whose peer has such a port is a MongoDB client's: setup.cfg's warning filter
#: recognises pymongo's sockets that way.
FERRETDB_PORTS = range(27017, 28000)


def ferretdb_port() -> int:
    """A free port of :data:`FERRETDB_PORTS`."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low <= FERRETDB_PORTS[-1]:
        raise RuntimeError(f"the kernel's ephemeral ports start at {low}, inside "
                           f"{FERRETDB_PORTS.start}-{FERRETDB_PORTS[-1]} (FerretDB's in tests)")
    for port in random.sample(FERRETDB_PORTS, len(FERRETDB_PORTS)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {FERRETDB_PORTS.start}-{FERRETDB_PORTS[-1]}")


@dataclass
class FerretDB:
    """One FerretDB process. ``url(db)`` gives a MongoDB URL for a database name."""

    port: int
    state_dir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> None:
        binary = FERRETDB_DIR / "bin" / "ferretdb-embedded"
        self.log_path = self.state_dir / "ferretdb.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "-listen-addr", f"127.0.0.1:{self.port}",
                 "-state-dir", str(self.state_dir)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    output = self.log_path.read_text(errors="replace")
                    raise RuntimeError(f"FerretDB exited at start:\n{output}") from None
                time.sleep(0.1)
        raise RuntimeError("FerretDB did not start listening within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def url(self, db: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{db}"


def build_ferretdb() -> None:
    result = subprocess.run(["bash", str(FERRETDB_DIR / "build.sh")], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building FerretDB failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerretDB]:
    build_ferretdb()
    server = FerretDB(ferretdb_port(), tmp_path_factory.mktemp("ferretdb"))
    server.start()
    yield server
    server.stop()


# --- backends, settings, store -----------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    server: FerretDB = request.getfixturevalue("ferretdb")
    return server.url(f"k{uuid.uuid4().hex[:10]}")


@pytest.fixture
def settings(tmp_path: Path, backend: str) -> PlatformSettings:
    base = load_settings(None, environ={})
    return with_overrides(
        base,
        storage_url=backend,
        master_key_file=tmp_path / "master.key",
        tenants_dir=tmp_path / "tenants",
        plugins_dir=ROOT / "plugins",
        dev_mode=True,
        tenant_refresh_seconds=0.2,
        shutdown_timeout_seconds=5.0,
        # The suites send thousands of requests from 127.0.0.1 (fuzz, concurrency); the
        # limits have their own tests (tests/limits), which turn this back on.
        rate_limits=False,
        # The test code runs in the server's own loop, so its lag there is the test's own
        # synchronous work (10,000 fuzz cases are built in ~25 s), not overload; shedding
        # has its own tests (tests/foundation/test_overload.py), which set it.
        overload_lag_seconds=0,
    )


@pytest.fixture
async def store(backend: str) -> AsyncIterator[Store]:
    instance = open_store(backend)
    await instance.start()
    for tenant_id in ("t1", "t2"):
        await instance.prepare_tenant(tenant_id)
    yield instance
    await instance.close()


# --- tenants ------------------------------------------------------------------------------


def make_tenant_doc(tenant_id: str, hosts: list[str], **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": tenant_id,
        "hosts": hosts,
        "home_domain": hosts[0],
        "network": "testnet",
        "customer_types": {
            "individual": {
                "required": ["first_name", "last_name", "email_address"],
                "optional": ["mobile_number", "photo_id_front", "birth_date"],
            },
        },
    }
    doc.update(overrides)
    return doc


@pytest.fixture
def tenant_doc() -> Callable[..., dict[str, Any]]:
    return make_tenant_doc


def api_document(doc: Mapping[str, Any], manager: str = "api") -> TenantDocument:
    return TenantDocument(parse_tenant(doc, "test"), dict(doc), manager)


# --- running servers -------------------------------------------------------------------


@dataclass
class RunningServer:
    services: Services
    server: Server
    public_port: int
    admin_port: int
    client: AsyncHTTPClient = field(default_factory=lambda: AsyncHTTPClient(force_instance=True))

    async def fetch(
        self,
        host: str,
        path: str,
        *,
        method: str = "GET",
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        admin: bool = False,
    ) -> HTTPResponse:
        """A real HTTP request to this server with ``Host: host``; never raises on status."""
        port = self.admin_port if admin else self.public_port
        all_headers = {"Host": host, **(headers or {})}
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        return await self.client.fetch(
            f"http://127.0.0.1:{port}{path}", method=method, body=body, headers=all_headers,
            raise_error=False, allow_nonstandard_methods=True, request_timeout=30)

    async def apply(self, *docs: Mapping[str, Any]) -> None:
        """Apply tenant documents through the service and wait until this process sees them."""
        await self.services.tenants.apply([api_document(d) for d in docs])
        await self.services.registry.refresh()

    async def close(self) -> None:
        self.client.close()
        # Nothing connects to a test's server as it stops: no handshake grace (0.2 s a
        # server, over every test; tests/faults/test_drain_handshakes.py tests it).
        await self.server.stop(1.0, handshake_grace=0.0)


MakeServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(settings: PlatformSettings) -> AsyncIterator[MakeServer]:
    running: list[RunningServer] = []

    async def make(*docs: Mapping[str, Any], **setting_overrides: Any) -> RunningServer:
        effective = with_overrides(settings, **setting_overrides) if setting_overrides else settings
        services = await build_services(effective, environ=dict(os.environ),
                                        apply_tenant_files=False)
        if docs:
            await services.tenants.apply([api_document(d) for d in docs])
            await services.registry.refresh()
        public = bind_sockets(0, "127.0.0.1")
        admin = bind_sockets(0, "127.0.0.1")
        server = Server(services)
        server.start(public, admin)
        instance = RunningServer(services, server, public[0].getsockname()[1],
                                 admin[0].getsockname()[1])
        running.append(instance)
        return instance

    yield make
    for instance in running:
        await instance.close()


@pytest.fixture
async def two_tenants(make_server: MakeServer) -> RunningServer:
    return await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))


@pytest.fixture
async def receiver() -> AsyncIterator[Any]:
    """A real HTTP server standing in for wallets' callback URLs and anchors' webhook
    endpoints (callbacks/cb_helpers.py Receiver)."""
    from callbacks.cb_helpers import Receiver

    instance = Receiver()
    yield instance
    await instance.close()


# --- the MongoDB tests must run, never be skipped --------------------------------------


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Fail the run if any MongoDB-backend test was skipped, or none ran while some were
    collected: a green run must mean the MongoDB backend was exercised (CI relies on this)."""
    stats = terminalreporter.stats
    ran = [r for key in ("passed", "failed", "error") for r in stats.get(key, [])
           if "mongo" in getattr(r, "keywords", {}) and r.when == "call"]
    skipped = [r for r in stats.get("skipped", []) if "mongo" in getattr(r, "keywords", {})]
    if skipped or (config.getoption("markexpr", "") == "" and _collected_mongo(config)
                   and not ran):
        terminalreporter.write_line(
            f"ERROR: MongoDB-backend tests did not run (skipped: {len(skipped)}, ran: "
            f"{len(ran)}); FerretDB must build and start for the suite to pass.", red=True)
        terminalreporter._session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _collected_mongo(config: pytest.Config) -> bool:
    session = getattr(config, "_kyc_session", None)
    return bool(session and any(item.get_closest_marker("mongo") for item in session.items))


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config._kyc_session = session  # type: ignore[attr-defined]


# --- the log canary (reliability-plan B8): no test may make the platform log a secret -----

#: A JWT (three base64url segments; a JSON header starts ``{"`` = ``eyJ``; alg=none tokens
#: have an empty third one), a Stellar secret seed (not inside a longer base32 run, such as
#: an M-address), a bearer credential (after whitespace, which JSON may show escaped; matched
#: on the lower-cased line). Separate patterns behind substring checks: one alternation
#: costs ~10x more per line, and the canary sees every line of the suite.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")
_SEED = re.compile(r"S[A-Z2-7]{55}")
_BASE32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_BEARER = re.compile(r"bearer(?:\s|\\[trn])+[a-z0-9._~+/=-]{16,}")


def holds_secret(line: str) -> bool:
    """Whether a log line holds a JWT, a Stellar secret seed or a bearer credential."""
    if "eyJ" in line and _JWT.search(line):
        return True
    lower = line.lower()
    if "bearer" in lower and _BEARER.search(lower):
        return True
    for match in _SEED.finditer(line):
        start, end = match.span()
        if line[start - 1:start] not in _BASE32 and line[end:end + 1] not in _BASE32:
            return True
    return False


#: The ``kyc_host`` logger's level while the canary runs: below DEBUG so every line is made,
#: and unlike any level a test sets (which then takes over, see :class:`_AsBefore`).
_CANARY_LEVEL = 5


class _CanaryHandler(logging.Handler):
    """Formats each record as production would and keeps the lines that hold a canary."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(JsonFormatter())
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if holds_secret(line):
            self.hits.append(line)


class _AsBefore(logging.Filter):
    """On the other root handlers (pytest's caplog and report capture): drop the ``kyc_host``
    records that exist only because the canary lowered ``kyc_host``'s level, so what a test
    sees in ``caplog`` is what it would see without the canary."""

    def __init__(self, kyc: logging.Logger, original: int) -> None:
        super().__init__()
        self.kyc = kyc
        self.original = original

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if self.kyc.level != _CANARY_LEVEL or not (name == "kyc_host"
                                                   or name.startswith("kyc_host.")):
            return True  # not ours, or the test set kyc_host's level itself
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:  # Logger.getEffectiveLevel with kyc_host's own level
            level = self.original if logger is self.kyc else logger.level
            if level:
                return record.levelno >= level
            logger = logger.parent
        return True


@pytest.fixture(autouse=True)
def log_canary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if the platform logged a JWT, a secret seed or a bearer credential."""
    kyc = logging.getLogger("kyc_host")
    root = logging.getLogger()
    handler = _CanaryHandler()
    as_before = _AsBefore(kyc, kyc.level)
    others = list(root.handlers)
    original = kyc.level
    for other in others:
        other.addFilter(as_before)
    root.addHandler(handler)
    kyc.setLevel(_CANARY_LEVEL)
    try:
        yield
    finally:
        if kyc.level == _CANARY_LEVEL:
            kyc.setLevel(original)
        root.removeHandler(handler)
        for other in others:
            other.removeFilter(as_before)
    if handler.hits:
        shown = "\n".join(line[:400] for line in handler.hits[:5])
        pytest.fail(f"{len(handler.hits)} log line(s) hold a JWT, secret seed or bearer "
                    f"credential (reliability-plan B8):\n{shown}", pytrace=False)
