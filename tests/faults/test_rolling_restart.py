"""reliability-plan F9 (target row "Shutdown"): a rolling restart of 2 replicas under
~100 req/s fails 0 requests.

Two replicas are two ``kyc-host serve`` processes (tests/faults/deploy.py) on this host with
the same store (the session's SQLite file or FerretDB database) and the same master key.
In front of them, as in production, a load balancer: :class:`LoadBalancer`, a small asyncio
TCP proxy standing in for infrastructure outside this machine. It round-robins *new* client
connections over the replicas that its active health check (GET /readyz on the admin
listener every :data:`POLL_SECONDS`) last saw answer 200, and retries a connect that is
refused on the other replica (nginx ``proxy_next_upstream error``). A client connection is
piped to one replica for its whole life, so a replica's drain reaches clients directly.

The load (:class:`LoadClient`), paced at :data:`RATE` requests per second over all clients,
runs for the whole test on keep-alive connections: per client, PUT /kyc/customer (JSON, a new
customer each time: the token's sub is ``G:memo`` with a fresh memo), GET /kyc/customer (that
customer), GET /.well-known/stellar.toml. A client behaves like an ordinary HTTP pool: it
closes its connection when an answer says ``Connection: close`` (the drain's signal), does
not reuse a connection it has seen closed, and retires a connection after
:data:`REQUESTS_PER_CONNECTION` requests (so connections keep spreading over both replicas,
as the balancer's round-robin intends). It never retries a request.

Action: SIGTERM replica 1, wait for its exit (0, within the plan's 25 s), start it again,
wait until /readyz says 200; then the same for replica 2.

Expected: 0 failed requests over the whole run (no reset or close before a complete answer,
no 5xx or other unexpected status, no answer within :data:`READ_TIMEOUT`); every PUT answered
202 is in the store afterwards (read back over the admin API); both replicas served
connections before the first SIGTERM and after the second restart (the balancer counts).
The achieved rate and counts are printed (``-s``) for the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stellar_sdk import Keypair
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from conftest import RunningServer, make_tenant_doc
from faults.deploy import Deployment, connect
from faults.raw_http import BROKEN, read_response, request_bytes
from kyc_host.management.auth import create_token
from kyc_host.sep.sep10_tokens import issue_token

pytestmark = pytest.mark.slow

TENANTS = (("t1", "a.test"), ("t2", "b.test"))
CLIENTS_PER_TENANT = 10
#: Requests per second, all clients together (F9: "under 100 req/s").
RATE = 100.0
#: Client-side keep-alive limit per connection (nginx's keepalive_requests does the same on
#: the server side); without it every connection would stay on the replica restarted first.
REQUESTS_PER_CONNECTION = 20
#: No answer within this long counts as a failed request (a timeout).
READ_TIMEOUT = 30.0
#: F9 / target table: exit within 25 s of SIGTERM (below the 30 s Kubernetes default).
EXIT_BOUND = 25.0
#: Load before the first SIGTERM, and at least this long after the last restart.
SETTLE_SECONDS = 3.0
#: How long one client connection lives at the paced rate (4 s): REQUESTS_PER_CONNECTION at
#: RATE over all the clients. After the last restart every client is on the replica restarted
#: first (the other one's drain moved them there), so the load goes on until connections
#: renewed after the restart have reached both replicas, for at most two lifetimes beyond
#: SETTLE_SECONDS. (A fixed 3 s was shorter than a lifetime: when both restarts took under
#: 2 s, no connection was renewed in it and neither replica counted one "after".)
CONNECTION_SECONDS = REQUESTS_PER_CONNECTION / (RATE / (2 * CLIENTS_PER_TENANT))
#: The balancer's active health check interval.
POLL_SECONDS = 0.2
EXPECTED = {"PUT": 202, "GET": 200, "TOML": 200}


# --- the load balancer (stand-in for infrastructure outside this machine) ---


@dataclass
class Upstream:
    """One replica as the balancer sees it."""

    name: str
    port: int
    admin_port: int
    healthy: bool = False
    #: phase -> client connections this replica answered (at least one byte back).
    served: Counter[str] = field(default_factory=Counter)


class LoadBalancer:
    """A TCP proxy on 127.0.0.1: new connections round-robin over healthy upstreams."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.upstreams = upstreams
        self.phase = "before"  # set by the test; labels the ``served`` counts
        self.retried = 0  # connects refused and retried on another replica
        self.unroutable = 0  # client connections no replica accepted
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            # Not cancelled: a check cancelled mid-fetch leaves Tornado's connection open
            # (its client's close does not close connections in flight). A check ends
            # within its 1 s request timeout.
            self._closing.set()
            await self._poller
        if self._server is not None:
            self._server.close()
            # A connection accepted just before starts its pipe a few loop iterations later.
            await asyncio.sleep(0.1)
        while self._pipes:
            for task in list(self._pipes):
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _poll(self) -> None:
        """Active health check: /readyz 200 -> healthy; any other answer or error -> not."""
        client = AsyncHTTPClient(force_instance=True)

        async def check(upstream: Upstream) -> None:
            try:
                reply = await client.fetch(f"http://127.0.0.1:{upstream.admin_port}/readyz",
                                           raise_error=False, request_timeout=1.0)
                upstream.healthy = reply.code == 200
            except (OSError, HTTPClientError):  # refused, reset, or the 1 s timeout
                upstream.healthy = False

        try:
            while not self._closing.is_set():
                await asyncio.gather(*(check(u) for u in self.upstreams))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), POLL_SECONDS)
        finally:
            client.close()

    async def _connect(self) -> tuple[Upstream, asyncio.StreamReader,
                                      asyncio.StreamWriter] | None:
        """The next healthy upstream in turn; a refused connect moves on to the next one
        (healthy ones first, then the others as a last resort, like nginx)."""
        turn = next(self._turn)
        healthy = [u for u in self.upstreams if u.healthy]
        healthy = healthy[turn % len(healthy):] + healthy[:turn % len(healthy)] if healthy else []
        for upstream in healthy + [u for u in self.upstreams if not u.healthy]:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
            except OSError:
                self.retried += 1
                continue
            return upstream, reader, writer
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            routed = await self._connect()
            if routed is None:
                self.unroutable += 1
                return
            upstream, up_reader, up_writer = routed
            # Counted in the phase in which the replica's first byte comes back.
            await asyncio.gather(_pump(reader, up_writer, None),
                                 _pump(up_reader, writer,
                                       lambda: upstream.served.update([self.phase])))
        finally:
            # The client's connection is closed whatever ended the pipe: no replica, the
            # pumps (which close it too), or the balancer's close cancelling it mid-connect
            # (asyncio does not close it for us, and the garbage collector's close is a
            # ResourceWarning in whichever test happens to be running then).
            writer.close()
            self._pipes.discard(task)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                on_first: Callable[[], None] | None) -> None:
    """Copy bytes until EOF or an error, then close ``sink`` (forwarding the close)."""
    try:
        while data := await source.read(65536):
            if on_first is not None:
                on_first()
                on_first = None
            sink.write(data)
            await sink.drain()
    except BROKEN:
        pass
    finally:
        sink.close()


# --- the wallet load ---


@dataclass
class Put:
    tenant_id: str
    customer_id: str
    values: dict[str, str]


@dataclass
class Tally:
    """What every client saw."""

    answered: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    puts: list[Put] = field(default_factory=list)
    closed_by_server: int = 0  # answers with "Connection: close" (then reconnected)
    stale: int = 0  # connections seen closed while idle (not reused)
    connections: int = 0


class Pacer:
    """Hands out request slots RATE per second across all clients (no catch-up bursts)."""

    def __init__(self) -> None:
        self.next = time.monotonic()

    async def slot(self) -> None:
        now = time.monotonic()
        at = self.next = max(self.next + 1 / RATE, now)
        await asyncio.sleep(at - now)


class LoadClient:
    """One wallet (keypair) of one tenant: PUT, GET, stellar.toml, ... on keep-alive."""

    def __init__(self, srv: RunningServer, tenant_id: str, host: str, port: int,
                 tally: Tally, pacer: Pacer) -> None:
        tenant = srv.services.registry.get(tenant_id)
        assert tenant is not None
        self.tenant = tenant
        self.tenant_id, self.host, self.port = tenant_id, host, port
        self.account = Keypair.random().public_key
        self.tally, self.pacer = tally, pacer
        self.memos = itertools.count(1)
        self.tokens = [self._token(next(self.memos)) for _ in range(100)]  # beforehand
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.used = 0

    def _token(self, memo: int) -> str:
        return issue_token(self.tenant, sub=f"{self.account}:{memo}", jti=uuid.uuid4().hex,
                           home_domain=self.host)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            token = self.tokens.pop(0) if self.tokens else self._token(next(self.memos))
            auth = {"Authorization": f"Bearer {token}"}
            values = {"first_name": f"F{n}", "last_name": f"L{self.account[-6:]}",
                      "email_address": f"{self.tenant_id}.{n}@example.com"}
            reply = await self._request("PUT", "/kyc/customer", auth, values)
            if reply is not None:
                self.tally.puts.append(Put(self.tenant_id, json.loads(reply)["id"], values))
            await self._request("GET", "/kyc/customer", auth)
            await self._request("TOML", "/.well-known/stellar.toml", {})
        await self._drop()

    async def _request(self, kind: str, path: str, headers: dict[str, str],
                       json_body: dict[str, str] | None = None) -> bytes | None:
        """One paced request; the body of its expected answer, or None (failure recorded)."""
        await self.pacer.slot()
        method = "GET" if kind == "TOML" else kind
        body = b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {**headers, "Content-Type": "application/json"}
        head, body = request_bytes(method, path, self.host, headers, body, keep_alive=True)
        try:
            reader, writer = await self._connection()
            writer.write(head + body)
            await writer.drain()
            status, reply_headers, data = await asyncio.wait_for(read_response(reader),
                                                                 READ_TIMEOUT)
        except (TimeoutError, *BROKEN) as exc:
            self.tally.failures.append(
                f"{kind} {path}: {type(exc).__name__}: {exc} (request {self.used + 1} of its "
                f"connection, {_since_signal()})")
            await self._drop()
            return None
        self.used += 1
        self.tally.answered[kind] += 1
        if reply_headers.get("connection", "").lower() == "close":
            self.tally.closed_by_server += 1
            await self._drop()
        elif self.used >= REQUESTS_PER_CONNECTION:
            await self._drop()
        if status != EXPECTED[kind]:
            self.tally.failures.append(f"{kind} {path}: {status} {data[:200]!r} "
                                       f"({_since_signal()})")
            return None
        return data

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.conn is not None and self.conn[0].at_eof():
            # Closed while idle: an HTTP pool checks this before reusing a connection.
            self.tally.stale += 1
            await self._drop()
        if self.conn is None:
            self.conn = await asyncio.open_connection("127.0.0.1", self.port)
            self.tally.connections += 1
            self.used = 0
        return self.conn

    async def _drop(self) -> None:
        if self.conn is not None:
            writer = self.conn[1]
            self.conn = None
            writer.close()
            with contextlib.suppress(*BROKEN):
                await writer.wait_closed()


# --- the test ---

#: When each SIGTERM was sent (time.monotonic()), for failure messages.
SIGNALS: list[float] = []


def _since_signal() -> str:
    if not SIGNALS:
        return "before any SIGTERM"
    return f"{time.monotonic() - SIGNALS[-1]:.3f} s after SIGTERM {len(SIGNALS)}"


async def _wait_exit(deployment: Deployment) -> tuple[int, float]:
    """The exit code and seconds since the signal; fails if the process outlives
    EXIT_BOUND after it."""
    assert deployment.process is not None
    end = SIGNALS[-1] + EXIT_BOUND
    while (code := deployment.process.poll()) is None:
        if time.monotonic() > end:
            pytest.fail(f"replica still running {EXIT_BOUND} s after SIGTERM")
        await asyncio.sleep(0.02)
    return code, time.monotonic() - SIGNALS[-1]


async def _wait_healthy(balancer: LoadBalancer) -> None:
    end = time.monotonic() + 30
    while not all(u.healthy for u in balancer.upstreams):
        assert time.monotonic() < end, "the balancer never saw every replica ready"
        await asyncio.sleep(0.05)


async def _rolling_restart(replicas: list[Deployment],
                           balancer: LoadBalancer) -> list[tuple[int, float]]:
    """SIGTERM, exit, start, ready -- one replica after the other. (code, seconds) each."""
    exits = []
    for replica in replicas:
        assert replica.process is not None
        replica.process.send_signal(signal.SIGTERM)
        SIGNALS.append(time.monotonic())
        exits.append(await _wait_exit(replica))
        replica.start()
        await replica.ready()
        await _wait_healthy(balancer)
    return exits


async def _settle_after(balancer: LoadBalancer) -> None:
    """SETTLE_SECONDS of load, then until every replica has answered a connection opened
    after the last restart (or two connection lifetimes have passed: the test then fails on
    the ``served`` counts)."""
    await asyncio.sleep(SETTLE_SECONDS)
    end = time.monotonic() + 2 * CONNECTION_SECONDS
    while time.monotonic() < end:
        if all(u.served["after"] for u in balancer.upstreams):
            return
        await asyncio.sleep(0.05)


async def _check_store(srv: RunningServer, puts: list[Put]) -> None:
    """Every acknowledged PUT, read back over the admin API (a tenant token per tenant)."""
    tokens = {t: (await create_token(srv.services.store, tenant_id=t,
                                     scopes=["customers:read"], created_by="test")).token
              for t, _ in TENANTS}
    assert len({(p.tenant_id, p.customer_id) for p in puts}) == len(puts)  # one per PUT
    limit = asyncio.Semaphore(8)

    async def read(put: Put) -> tuple[Put, int, Any]:
        async with limit:
            reply = await srv.fetch(
                "127.0.0.1", f"/api/v1/tenants/{put.tenant_id}/customers/{put.customer_id}",
                headers={"Authorization": f"Bearer {tokens[put.tenant_id]}"}, admin=True)
            return put, reply.code, json.loads(reply.body or b"null")

    wrong = [(p.customer_id, code, body) for p, code, body
             in await asyncio.gather(*(read(p) for p in puts))
             if code != 200 or body["fields"] != p.values]
    assert wrong == [], f"{len(wrong)} of {len(puts)} acknowledged PUTs not stored: {wrong[:3]}"


async def test_rolling_restart_of_two_replicas_under_load_fails_no_request(
        backend: str, tmp_path: Path) -> None:
    SIGNALS.clear()
    docs = [make_tenant_doc(t, [h]) for t, h in TENANTS]
    # Same store and master key: one deployment, two processes.
    shared = {"rate_limits": False, "master_key_file": str(tmp_path / "master.key")}
    replicas = []
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
        replicas.append(Deployment(tmp_path / name, backend, docs, settings=shared))
    balancer = LoadBalancer([Upstream(f"r{i}", r.public_port, r.admin_port)
                             for i, r in enumerate(replicas, 1)])
    try:
        for replica in replicas:  # one after the other: the first creates the master key
            replica.start()
            await replica.ready()
        await balancer.start()
        await _wait_healthy(balancer)
        async with connect(replicas[0], max_clients=8) as srv:
            tally, pacer, stop = Tally(), Pacer(), asyncio.Event()
            clients = [LoadClient(srv, t, h, balancer.port, tally, pacer)
                       for t, h in TENANTS for _ in range(CLIENTS_PER_TENANT)]
            started = time.monotonic()
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            try:
                await asyncio.sleep(SETTLE_SECONDS)
                balancer.phase = "during"
                exits = await _rolling_restart(replicas, balancer)
                balancer.phase = "after"
                await _settle_after(balancer)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            seconds = time.monotonic() - started
            total = sum(tally.answered.values()) + len(tally.failures)
            print(f"\nF9 rolling restart: {total} requests in {seconds:.1f} s "  # noqa: T201
                  f"({total / seconds:.0f}/s), {dict(tally.answered)}, "
                  f"{len(tally.failures)} failed, {tally.connections} connections, "
                  f"{tally.closed_by_server} 'Connection: close', {tally.stale} closed idle, "
                  f"balancer retried {balancer.retried} refused connects, served "
                  f"{ {u.name: dict(u.served) for u in balancer.upstreams} }; "
                  f"failures: {tally.failures[:5]}; exits (code, s): {exits}")
            assert [code for code, _ in exits] == [0, 0]
            assert tally.failures == [], (f"{len(tally.failures)} of {total} requests failed: "
                                          f"{tally.failures[:5]}")
            assert balancer.unroutable == 0
            # The drain's signal reached the clients on open keep-alive connections, and no
            # connection in use was closed while idle instead (that races the client's next
            # request: web/serving.py IDLE_GRACE_SECONDS).
            assert tally.closed_by_server > 0
            assert tally.stale == 0
            for upstream in balancer.upstreams:
                assert upstream.served["before"] > 0, upstream
                assert upstream.served["after"] > 0, upstream
            assert tally.puts
            await _check_store(srv, tally.puts)
        for replica in replicas:
            assert "Traceback" not in replica.log()
    finally:
        await balancer.close()
        for replica in replicas:
            replica.kill_if_running()
