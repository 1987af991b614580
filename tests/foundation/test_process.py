"""The ``kyc-host`` command as an operator runs it: real processes, real ports, real signals.

Each test starts ``python -m kyc_host`` (``sys.executable``, so the same environment) in a
temporary working directory with its own settings file, tenants directory and SQLite store;
the SIGTERM test uses a private FerretDB so a request can be made slow without adding any
test hook to the product.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from conftest import ROOT, FerretDB, ferretdb_port, free_port, make_tenant_doc
from kyc_host.app import RESTARTS_PER_WORKER, RestartBudget, serve
from kyc_host.crypto.master import write_new_key_file
from kyc_host.errors import ListenError
from kyc_host.settings import Listen, load_settings, with_overrides
from kyc_host.store.sqlite import SqliteStore

TOML = "/.well-known/stellar.toml"
START_DEADLINE = 20.0


def clean_env() -> dict[str, str]:
    """The test runner's environment without any KYC_HOST_* setting leaking in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KYC_HOST_")}


def run_cli(cwd: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kyc_host", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def get(port: int, host: str, path: str, timeout: float = 10.0) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class Workspace:
    """A working directory laid out like a deployment: settings file, tenants/, state/."""

    root: Path
    public_port: int
    admin_port: int
    storage_url: str

    @property
    def config(self) -> Path:
        return self.root / "config" / "kyc-host.toml"

    def write_config(self, **extra: object) -> None:
        settings: dict[str, object] = {
            "storage_url": self.storage_url,
            "master_key_file": "state/master.key",
            "tenants_dir": "tenants",
            "dev_mode": True,
            **extra,
        }
        self.config.parent.mkdir(exist_ok=True)
        self.config.write_text(tomli_w.dumps(settings))

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run_cli(self.root, *args, timeout=timeout)

    def serve(self, *flags: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.root / "serve.log").open("ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, "-m", "kyc_host", "serve", "--config", str(self.config),
                 "--public-listen", f"127.0.0.1:{self.public_port}",
                 "--admin-listen", f"127.0.0.1:{self.admin_port}", *flags],
                cwd=self.root, env={**clean_env(), **env}, stdout=log,
                stderr=subprocess.STDOUT)

    def log(self) -> str:
        path = self.root / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            if process.poll() is not None:
                pytest.fail(f"kyc-host exited with {process.returncode}:\n{self.log()}")
            try:
                if get(self.admin_port, "localhost", "/readyz", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"kyc-host not ready within {START_DEADLINE} s:\n{self.log()}")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "tenants").mkdir()
    shutil.copy(ROOT / "tenants" / "demo.toml", tmp_path / "tenants" / "demo.toml")
    space = Workspace(tmp_path, free_port(), free_port(), "sqlite:///state/store.db")
    space.write_config()
    return space


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_exit(process: subprocess.Popen[bytes], seconds: float = 15.0) -> int:
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process {process.pid} still running {seconds} s after SIGTERM")


def write_tenant(path: Path, tenant_id: str, host: str, **extra: object) -> Path:
    path.write_text(tomli_w.dumps(make_tenant_doc(tenant_id, [host], **extra)))
    return path


def apply_newcomer_and_wait(workspace: Workspace) -> Response:
    """Apply tenant "newcomer" (new.localhost) with the CLI, as another process would; the
    running server answers for its host within 5 s (shipped refresh interval: 1 s)."""
    new_file = write_tenant(workspace.root / "new.toml", "newcomer", "new.localhost")
    applied = workspace.cli("tenant", "apply", str(new_file), "--config", str(workspace.config))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "newcomer: created"
    end = time.monotonic() + 5.0
    while (response := get(workspace.public_port, "new.localhost", TOML)).status != 200:
        if time.monotonic() > end:
            pytest.fail(f"new.localhost still {response.status} 5 s after apply")
        time.sleep(0.05)
    return response


# --- (a) serving the demo and picking up a tenant applied by another process ---------------


def test_serves_demo_and_picks_up_a_tenant_applied_while_running(
    workspace: Workspace, processes: list[subprocess.Popen[bytes]]
) -> None:
    server = workspace.serve()
    processes.append(server)
    workspace.wait_ready(server)
    # The start-up heap is out of the garbage collector's reach (app._freeze_start_up_objects).
    frozen = re.search(r"(\d+) start-up objects frozen", workspace.log())
    assert frozen is not None, workspace.log()
    assert int(frozen.group(1)) > 10_000
    # glibc's malloc set to two arenas at start-up (kyc_host/memory.py), said once serving.
    assert ("frozen, C allocator MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=33554432 "
            "MALLOC_TRIM_THRESHOLD_=67108864)") in (
        workspace.log())

    demo = get(workspace.public_port, "demo.localhost", TOML)
    assert demo.status == 200
    assert demo.headers["content-type"].startswith("text/plain")
    toml = tomllib.loads(demo.body.decode())
    assert toml["KYC_SERVER"] == f"http://demo.localhost:{workspace.public_port}/kyc"
    assert toml["DOCUMENTATION"]["ORG_NAME"] == "Demo Anchor"
    unknown = get(workspace.public_port, "nope.localhost", TOML)
    assert unknown.status == 404
    assert unknown.json() == {"error": "unknown host"}

    response = apply_newcomer_and_wait(workspace)
    assert b"http://new.localhost:" in response.body

    # SIGTERM with nothing in flight: a prompt, clean exit.
    server.send_signal(signal.SIGTERM)
    assert wait_exit(server) == 0
    assert "Traceback" not in workspace.log()


def test_serve_tenants_flag_serves_only_its_group(
    workspace: Workspace, processes: list[subprocess.Popen[bytes]]
) -> None:
    """``serve --serve-tenants`` (a group of processes for some tenants): the demo tenant is
    not in the group (421), a tenant applied while running that matches is served."""
    server = workspace.serve("--serve-tenants", "new*,other")
    processes.append(server)
    workspace.wait_ready(server)
    assert "serve_tenants new*,other: 0 of 1 tenant(s)" in workspace.log()
    demo = get(workspace.public_port, "demo.localhost", TOML)
    assert demo.status == 421
    assert demo.json() == {"error": "this host is not served here (misrouted request)"}
    apply_newcomer_and_wait(workspace)
    ready = get(workspace.admin_port, "localhost", "/readyz").json()
    assert (ready["tenants"], ready["served"]) == (2, 1)
    server.send_signal(signal.SIGTERM)
    assert wait_exit(server) == 0


def test_serve_tenants_flag_refuses_a_bad_pattern(workspace: Workspace) -> None:
    server = workspace.serve("--serve-tenants", "Acme")
    assert server.wait(30) == 2
    [line] = [x for x in workspace.log().splitlines() if x.strip()]
    assert "serve_tenants" in line
    assert "'Acme'" in line


def test_restart_reapplies_tenant_files_as_unchanged(
    workspace: Workspace, processes: list[subprocess.Popen[bytes]]
) -> None:
    for expected in ("created", "unchanged"):
        server = workspace.serve()
        processes.append(server)
        workspace.wait_ready(server)
        server.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 0
        assert f'"tenant demo: {expected}"' in workspace.log()


# --- (b) SIGTERM with a request in flight ------------------------------------------------


@pytest.fixture
def frozen_store_workspace(ferretdb: FerretDB, tmp_path: Path) -> Iterator[tuple[Workspace,
                                                                             FerretDB]]:
    """A workspace on a private FerretDB (``ferretdb`` is requested so the binary is built)."""
    private = FerretDB(ferretdb_port(), tmp_path / "ferretdb")
    private.state_dir.mkdir()
    private.start()
    (tmp_path / "tenants").mkdir()
    shutil.copy(ROOT / "tenants" / "demo.toml", tmp_path / "tenants" / "demo.toml")
    space = Workspace(tmp_path, free_port(), free_port(), private.url("kproc"))
    space.write_config()
    yield space, private
    assert private.process is not None
    private.process.send_signal(signal.SIGCONT)
    private.stop()


def send_raw(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one response with a Content-Length body from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def wait_refused(port: int) -> None:
    end = time.monotonic() + 5.0
    while not refused(port):
        if time.monotonic() > end:
            pytest.fail(f"port {port} still accepting 5 s after SIGTERM")
        time.sleep(0.05)


def refused(port: int) -> bool:
    """True once the listener is closed. While a drain's listener takes no new connections
    (its first 0.2 s, web/serving.py) a connect gets no answer: not yet refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False
    return False


@pytest.mark.mongo
def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    frozen_store_workspace: tuple[Workspace, FerretDB],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    space, store_server = frozen_store_workspace
    assert store_server.process is not None
    server = space.serve()
    processes.append(server)
    space.wait_ready(server)

    # A keep-alive admin connection opened before shutdown, to observe draining through it.
    observer = send_raw(space.admin_port, "/readyz")
    assert read_response(observer)[0] == 200

    # Freeze the store: a /readyz now waits on the store ping -- a request that stays in flight.
    store_server.process.send_signal(signal.SIGSTOP)
    try:
        slow = send_raw(space.admin_port, "/readyz")
        time.sleep(0.5)  # let the server start handling it (sequencing only, not asserted)
        server.send_signal(signal.SIGTERM)

        # Stop accepting: both listeners refuse new connections soon after SIGTERM. The
        # observer asks as soon as the admin listener refuses: the slow request is held only
        # until the store client's own 4 s timeout, and once it ends the drain closes the
        # observer's idle connection (so probing the public listener first made this racy).
        wait_refused(space.admin_port)
        # While draining, readiness says so (through the connection opened earlier).
        observer.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, body = read_response(observer)
        assert status == 503
        assert json.loads(body) == {"error": "shutting down"}
        wait_refused(space.public_port)
        assert server.poll() is None  # still waiting for the slow request
    finally:
        store_server.process.send_signal(signal.SIGCONT)

    status, body = read_response(slow)
    assert status == 200
    assert json.loads(body)["status"] == "ready"
    assert wait_exit(server) == 0
    observer.close()
    slow.close()
    assert "Traceback" not in space.log()


# --- (c) store unreachable at start ---------------------------------------------------------


def test_store_unreachable_at_start_is_one_line_and_nonzero(workspace: Workspace) -> None:
    write_new_key_file(workspace.root / "state" / "master.key")  # no dev-mode warning line
    closed_port = free_port()
    url = f"mongodb://operator:s3cretpw@127.0.0.1:{closed_port}/x"
    result = workspace.cli("serve", "--config", str(workspace.config), "--storage-url", url,
                           "--public-listen", f"127.0.0.1:{workspace.public_port}",
                           "--admin-listen", f"127.0.0.1:{workspace.admin_port}", timeout=30)
    assert result.returncode == 1
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kyc-host: store unavailable: ")
    assert f"127.0.0.1:{closed_port}" in lines[0]
    assert "s3cretpw" not in result.stderr
    assert "Traceback" not in result.stderr


# --- (d) malformed settings and tenant files ------------------------------------------------


def test_malformed_settings_file_exits_2_with_one_line(workspace: Workspace) -> None:
    workspace.write_config(admin_listen="everywhere")
    result = workspace.cli("serve", "--config", str(workspace.config))
    assert result.returncode == 2
    [line] = stderr_lines(result)
    assert line.startswith(f"kyc-host: {workspace.config}: admin_listen: ")
    assert "'everywhere'" in line


def test_malformed_tenant_file_exits_2_with_one_line_and_applies_nothing(
    workspace: Workspace,
) -> None:
    write_new_key_file(workspace.root / "state" / "master.key")  # no dev-mode warning line
    bad = write_tenant(workspace.root / "tenants" / "zz-bad.toml", "bad", "bad.localhost",
                       home_domain="x" * 60 + ".localhost")
    result = workspace.cli("serve", "--config", str(workspace.config),
                           "--public-listen", f"127.0.0.1:{workspace.public_port}",
                           "--admin-listen", f"127.0.0.1:{workspace.admin_port}")
    assert result.returncode == 2
    [line] = stderr_lines(result)
    assert line.startswith(f"kyc-host: {Path('tenants') / 'zz-bad.toml'}: home_domain: ")
    assert "x" * 40 in line

    # `tenant apply` of the directory: the good demo.toml is not applied either.
    applied = workspace.cli("tenant", "apply", "tenants", "--config", str(workspace.config))
    assert applied.returncode == 2
    [line] = stderr_lines(applied)
    assert str(bad.relative_to(workspace.root)) in line
    assert applied.stdout == ""
    listing = workspace.cli("tenant", "list", "--config", str(workspace.config))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == "no tenants"


# --- (e) tenant list, keys generate-master ---------------------------------------------------


def test_tenant_list_and_generate_master(workspace: Workspace) -> None:
    key_file = workspace.root / "state" / "master.key"
    generated = workspace.cli("keys", "generate-master", "--file", str(key_file))
    assert generated.returncode == 0, generated.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    original = key_file.read_text()
    again = workspace.cli("keys", "generate-master", "--file", str(key_file))
    assert again.returncode != 0
    [line] = stderr_lines(again)
    assert str(key_file) in line
    assert "refusing to overwrite" in line
    assert key_file.read_text() == original

    applied = workspace.cli("tenant", "apply", "tenants", "--config", str(workspace.config))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "demo: created"
    listing = workspace.cli("tenant", "list", "--config", str(workspace.config))
    assert listing.returncode == 0, listing.stderr
    [row] = listing.stdout.splitlines()
    assert row.split()[:3] == ["demo", "active", "demo.localhost"]
    rows = json.loads(workspace.cli("tenant", "list", "--json", "--config",
                                    str(workspace.config)).stdout)
    assert [(r["id"], r["status"], r["hosts"]) for r in rows] == [
        ("demo", "active", ["demo.localhost"])]
    assert rows[0]["signing_key"].startswith("G")
    # The published key is in the listing; the secret never is.
    assert "\"S" not in listing.stdout
    # Another file for the same id takes the tenant over (a moved file), and says so.
    elsewhere = workspace.root / "elsewhere.toml"
    elsewhere.write_text((workspace.root / "tenants" / "demo.toml").read_text()
                         .replace('name = "', 'name = "Moved ', 1))
    moved = workspace.cli("tenant", "apply", str(elsewhere), "--config", str(workspace.config))
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == (f"demo: updated (now managed by this file; was "
                                    f"file:{Path('tenants') / 'demo.toml'})")


def test_generate_master_writes_where_the_settings_point(workspace: Workspace) -> None:
    """The missing-key error's hint (`kyc-host keys generate-master`) creates the very file
    the settings name: from config/kyc-host.toml, --config or KYC_HOST_MASTER_KEY_FILE."""
    workspace.write_config(master_key_file="keys/m.key", dev_mode=False)
    missing = workspace.cli("tenant", "list")  # config/kyc-host.toml found in the cwd
    assert missing.returncode == 2
    [line] = stderr_lines(missing)
    assert "keys/m.key" in line
    assert "`kyc-host keys generate-master`" in line

    generated = workspace.cli("keys", "generate-master")
    assert generated.returncode == 0, generated.stderr
    key_file = workspace.root / "keys" / "m.key"
    assert generated.stdout.strip() == (
        f"wrote a new master key to {Path('keys/m.key')} (mode 0600); back it up")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not (workspace.root / ".kyc-host").exists()
    listing = workspace.cli("tenant", "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == "no tenants"

    original = key_file.read_text()
    again = workspace.cli("keys", "generate-master")
    assert again.returncode == 1
    [line] = stderr_lines(again)
    assert line == (f"kyc-host: {Path('keys/m.key')} exists; refusing to overwrite a "
                    "master key")
    assert key_file.read_text() == original

    # --config names a settings file elsewhere; the environment wins over it.
    elsewhere = workspace.root / "other.toml"
    elsewhere.write_text('master_key_file = "keys/other.key"\n')
    by_flag = workspace.cli("keys", "generate-master", "--config", str(elsewhere))
    assert by_flag.returncode == 0, by_flag.stderr
    assert (workspace.root / "keys" / "other.key").is_file()
    by_env = subprocess.run(
        [sys.executable, "-m", "kyc_host", "keys", "generate-master", "--config",
         str(elsewhere)], cwd=workspace.root, capture_output=True, text=True, timeout=30,
        env={**clean_env(), "KYC_HOST_MASTER_KEY_FILE": "keys/env.key"}, check=False)
    assert by_env.returncode == 0, by_env.stderr
    assert (workspace.root / "keys" / "env.key").is_file()
    assert sorted(p.name for p in (workspace.root / "keys").iterdir()) == [
        "env.key", "m.key", "other.key"]

    # With the key itself in the environment, servers ignore the file: said, not refused.
    env_key = subprocess.run(
        [sys.executable, "-m", "kyc_host", "keys", "generate-master", "--file", "keys/k4.key"],
        cwd=workspace.root, capture_output=True, text=True, timeout=30,
        env={**clean_env(), "KYC_HOST_MASTER_KEY": "a" * 64}, check=False)
    assert env_key.returncode == 0, env_key.stderr
    assert stderr_lines(env_key) == [
        "kyc-host: note: $KYC_HOST_MASTER_KEY is set, and servers use it rather than this file"]
    # An explicit --file needs no valid settings; without it, invalid settings are the error.
    elsewhere.write_text('public_listen = "nowhere"\n')
    broken = workspace.cli("keys", "generate-master", "--config", str(elsewhere))
    assert broken.returncode == 2
    [line] = stderr_lines(broken)
    assert "public_listen" in line
    explicit = workspace.cli("keys", "generate-master", "--config", str(elsewhere),
                             "--file", "keys/k5.key")
    assert explicit.returncode == 0, explicit.stderr
    assert (workspace.root / "keys" / "k5.key").is_file()


# --- (f) a listener's address taken ---------------------------------------------------------


@pytest.mark.parametrize(("listener", "workers", "shared"), [
    ("public", "1", False), ("admin", "1", False), ("public", "2", False),
    ("admin", "2", False), ("public", "2", True), ("admin", "2", True)])
def test_taken_port_is_one_line_and_leaves_nothing_running(
    workspace: Workspace, listener: str, workers: str, shared: bool
) -> None:
    """Another process holds the port: one line naming the listener and its address, exit
    1, no traceback; with workers none was forked (the supervisor binds first) and the
    metrics directory is removed. ``shared``: the holder set SO_REUSEPORT, as the workers of
    another ``kyc-host serve --workers`` do; the port must not be silently split with it."""
    write_new_key_file(workspace.root / "state" / "master.key")  # no dev-mode warning line
    tmp = workspace.root / "tmp"
    tmp.mkdir()
    with socket.socket() as taken:
        if shared:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"public": workspace.public_port, "admin": workspace.admin_port, listener: port}
        result = subprocess.run(
            [sys.executable, "-m", "kyc_host", "serve", "--config", str(workspace.config),
             "--public-listen", f"127.0.0.1:{ports['public']}",
             "--admin-listen", f"127.0.0.1:{ports['admin']}", "--workers", workers],
            cwd=workspace.root, capture_output=True, text=True, timeout=60, check=False,
            env={**clean_env(), "TMPDIR": str(tmp), "PROMETHEUS_MULTIPROC_DIR": ""})
    assert result.returncode == 1
    *logged, last = stderr_lines(result)
    assert last == (
        f"kyc-host: cannot listen on 127.0.0.1:{port} ({listener}): address already in use")
    # Before it only the start-up steps' JSON log lines (tenant files applied), no error.
    assert [json.loads(line)["level"] for line in logged] == ["info"] * len(logged)
    assert "Traceback" not in result.stdout + result.stderr
    assert "worker" not in result.stderr
    assert (workspace.root / "state" / "store.db").is_file()  # it got that far
    assert list(tmp.iterdir()) == []


# Tornado's bind_sockets leaves the socket whose bind failed (still unbound) to the garbage
# collector (tornado 6.6 netutil.py); the process exits right after, so it is let through.
@pytest.mark.filterwarnings(r"ignore:Exception ignored in. <socket\.socket fd=\d+, family=2, "
                            r"type=1, proto=6, laddr=\('0\.0\.0\.0', 0\)>"
                            ":pytest.PytestUnraisableExceptionWarning")
async def test_taken_port_closes_what_start_up_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the store start-up opened is closed before the ListenError leaves serve
    (then no store thread or connection is left to the interpreter's exit)."""
    closed: list[SqliteStore] = []
    close = SqliteStore.close

    async def recording_close(self: SqliteStore) -> None:
        closed.append(self)
        await close(self)

    monkeypatch.setattr(SqliteStore, "close", recording_close)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = with_overrides(
            load_settings(None, environ={}), storage_url=f"sqlite:///{tmp_path}/store.db",
            master_key_file=tmp_path / "master.key", tenants_dir=tmp_path / "tenants",
            public_listen=Listen("127.0.0.1", free_port()),
            admin_listen=Listen("127.0.0.1", port))
        write_new_key_file(settings.master_key_file)
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{port} "
                                              r"\(admin\): address already in use$"):
            await serve(settings)
    assert len(closed) == 1


def test_workers_end_when_their_supervisor_is_killed(
    workspace: Workspace, processes: list[subprocess.Popen[bytes]]
) -> None:
    """--workers 2 and the supervisor SIGKILLed (as the OOM killer would): the workers are
    told (SIGTERM, procs.die_with_parent), drain and exit instead of serving unsupervised."""
    server = workspace.serve("--workers", "2")
    processes.append(server)
    workspace.wait_ready(server)
    end = time.monotonic() + 10
    while len(workers := children_of(server.pid)) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert len(workers) == 2, workers
    # Both must be serving (signal handlers in place): a worker still starting when told to
    # stop just ends by the default SIGTERM action, with nothing in flight and nothing logged.
    end = time.monotonic() + START_DEADLINE
    while workspace.log().count('"msg": "serving ') < 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert workspace.log().count('"msg": "serving ') == 2, workspace.log()
    server.kill()
    server.wait()
    end = time.monotonic() + 20
    while (alive := [pid for pid in workers if running(pid)]) and time.monotonic() < end:
        time.sleep(0.1)
    assert not alive, workspace.log()
    # They drained as on SIGTERM: each logged its shutdown.
    assert workspace.log().count('"msg": "stopped"') == 2, workspace.log()


def test_a_worker_that_dies_is_restarted_and_its_gauges_leave_metrics(
    workspace: Workspace, processes: list[subprocess.Popen[bytes]]
) -> None:
    """--workers 2 and one worker SIGKILLed: the supervisor starts another, and the dead
    one's gauges (the "live" modes of metrics.py: tenants loaded, callbacks pending, largest
    loop lag) are dropped from /metrics, so its last values do not stay there for good; its
    counters stay (requests it answered were answered)."""
    tmp = workspace.root / "tmp"
    tmp.mkdir()
    server = workspace.serve("--workers", "2", TMPDIR=str(tmp), PROMETHEUS_MULTIPROC_DIR="")
    processes.append(server)
    workspace.wait_ready(server)
    end = time.monotonic() + START_DEADLINE
    while workspace.log().count('"msg": "serving ') < 2 and time.monotonic() < end:
        time.sleep(0.05)
    workers = children_of(server.pid)
    assert len(workers) == 2, workspace.log()
    [samples] = tmp.iterdir()
    dead = workers[0]
    end = time.monotonic() + 10
    while not list(samples.glob(f"gauge_live*_{dead}.db")) and time.monotonic() < end:
        time.sleep(0.05)
    assert list(samples.glob(f"gauge_live*_{dead}.db")), sorted(p.name for p in samples.iterdir())
    os.kill(dead, signal.SIGKILL)
    end = time.monotonic() + START_DEADLINE
    while (len(now := children_of(server.pid)) < 2 or dead in now) and time.monotonic() < end:
        time.sleep(0.05)
    assert len(now) == 2, workspace.log()
    assert dead not in now, workspace.log()
    assert "restarting" in workspace.log()
    assert list(samples.glob(f"gauge_live*_{dead}.db")) == []
    assert list(samples.glob(f"counter_{dead}.db"))
    workspace.wait_ready(server)
    metrics = get(workspace.admin_port, "localhost", "/metrics").body.decode()
    assert "kyc_tenants_loaded 1.0" in metrics, metrics
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0


def test_a_crash_loop_of_workers_makes_the_supervisor_give_up_and_exit_1(
    workspace: Workspace, processes: list[subprocess.Popen[bytes]]
) -> None:
    """--workers 2, and every worker SIGKILLed as soon as it appears: after 20 restarts
    within a minute (10 per worker) the supervisor gives up, stops the worker left and exits 1
    -- for the process manager to see -- instead of forking forever."""
    server = workspace.serve("--workers", "2")
    processes.append(server)
    workspace.wait_ready(server)
    killed: set[int] = set()
    end = time.monotonic() + 60
    while server.poll() is None and time.monotonic() < end:
        for pid in set(children_of(server.pid)) - killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.02)
    assert wait_exit(server, 30) == 1, workspace.log()
    log = workspace.log()
    assert log.count("; restarting") == 2 * RESTARTS_PER_WORKER + 1, log
    assert f"{2 * RESTARTS_PER_WORKER + 1} worker restarts within 60 s; giving up" in log
    assert not [pid for pid in killed if running(pid)]
    assert "Traceback" not in log


def test_the_restart_budget_counts_restarts_within_its_window_only() -> None:
    """A crash loop ends it; restarts spread over months (a worker killed by the OOM killer
    now and then) never do: the old lifetime count gave up on a long-running server's 21st."""
    budget = RestartBudget(limit=20, window=60.0)
    assert all(budget.take(1000.0 + n) for n in range(20))  # 20 within 20 s
    assert not budget.take(1019.5)  # the 21st within the minute
    spread = RestartBudget(limit=20, window=60.0)
    assert all(spread.take(3600.0 * n) for n in range(1000))  # one an hour, for 6 weeks
    edge = RestartBudget(limit=2, window=60.0)
    assert edge.take(0.0)
    assert edge.take(30.0)
    assert not edge.take(59.0)
    assert edge.take(90.0)  # 0.0 and 30.0 are out of the window: 59.0 and 90.0 in it
    assert not edge.take(91.0)


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init; a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_share_listeners_and_metrics(
    workspace: Workspace, processes: list[subprocess.Popen[bytes]]
) -> None:
    """--workers 2: two processes answer on the same ports, /metrics sums over both, and
    SIGTERM stops every process with exit 0, leaving no metrics directory behind."""
    tmp = workspace.root / "tmp"
    tmp.mkdir()
    # (none named: the supervisor makes its own, in TMPDIR)
    server = workspace.serve("--workers", "2", TMPDIR=str(tmp), PROMETHEUS_MULTIPROC_DIR="")
    processes.append(server)
    workspace.wait_ready(server)
    assert [p.name.startswith("kyc-host-metrics-") for p in tmp.iterdir()] == [True]
    for _ in range(40):
        assert get(workspace.public_port, "demo.localhost", TOML).status == 200
    pids = set(re.findall(r"serving .*?\(backend \w+, pid (\d+)", workspace.log()))
    assert len(pids) == 2, workspace.log()
    metrics = get(workspace.admin_port, "localhost", "/metrics").body.decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("kyc_http_requests_total{")
                  and 'route="StellarTomlHandler"' in line)
    assert counted == 40
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert list(tmp.iterdir()) == []  # the samples' directory went with the supervisor
