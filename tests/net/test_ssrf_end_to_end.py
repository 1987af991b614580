"""SSRF through the real server (reliability-plan A6, A7): ``GET /auth?client_domain=`` and
callback delivery, with canary listeners and a scripted DNS.

Outside dev mode (the production address policy), every name below resolves, through a
resolver injected under the address check (``build_services(resolver=)``), to one of this
machine's non-public addresses where a canary listener (a real TCP server) records every
connection: 127.0.0.1, ::1, ::ffff:127.0.0.1 (reaches the IPv4 canary), and, when the machine
has them, its own fd00::/8 ULA and fe80:: link-local addresses. Expected: 0 canary
connections, ``GET /auth`` a JSON 400 naming the refusal, a callback event never sent.

Rebinding: a name whose first lookup is public and whose second is loopback. The public
answer is :data:`UNROUTED` (passes the check, routed nowhere, so the connect fails closed
without reaching anything). The resolver is asked once per fetch: the address checked is
the address connected to, and a callback is re-resolved at every attempt.

Redirects run in dev mode (a local https sink cannot pass the production policy): there the
canary *is* reachable, so a followed redirect would be seen.

Decision pinned here (A7): a callback name that resolves to a non-public address is refused
at every attempt and retried like any failed attempt, then dead-lettered after the tenant's
``max_attempts`` / horizon; only a URL whose form can never become valid (an IP literal) is
disabled at once. See test_rebinding_callback_name_is_never_contacted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from stellar_sdk import Keypair
from tornado.httpserver import HTTPServer
from tornado.netutil import Resolver, bind_sockets
from tornado.web import Application, RequestHandler

from callbacks.cb_helpers import (
    FAST,
    cb_doc,
    complete,
    customer_with_callback,
    events_of,
    eventually,
)
from conftest import RunningServer, api_document, make_tenant_doc
from kyc_host.app import Server, build_services
from kyc_host.crypto.master import write_new_key_file
from kyc_host.net.addresses import is_public_address, parse_ip
from kyc_host.settings import PlatformSettings, with_overrides
from kyc_host.store.base import Doc
from sep12.sep12_helpers import Wallet

#: Global by the address check (not private, reserved or documentation space), but 3ffe::/16
#: was the 6bone, returned in 2006 (RFC 3701) and routed nowhere: a connection to it fails
#: (no route, or the connect deadline) without reaching anything.
UNROUTED = "3ffe::1"
BLOCKED = "host resolves to a non-public address"
#: The fewest attempts a tenant may configure (callbacks/config.py): events end quickly.
MAX_ATTEMPTS = 8
ULA = ipaddress.IPv6Network("fc00::/7")

Answer = tuple[int, tuple[Any, ...]]


# --- canaries and the scripted DNS ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A non-public address form: what the scripted DNS answers for ``<form>.wallet.example``.
    ``watched``: a canary listens there (else the address is not on this machine)."""

    form: str
    answer: Answer
    watched: bool

    @property
    def name(self) -> str:
        return f"{self.form}.wallet.example"


def local_ipv6(ula: bool) -> tuple[str, int] | None:
    """One of this machine's ULA (``ula``) or link-local addresses with its scope id (the
    interface index; 0 for a ULA), from /proc/net/if_inet6 (Linux); None if there is none or
    the file is missing."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        if ula and ip in ULA:
            return str(ip), 0
        if not ula and ip.is_link_local:  # usable only with its interface (scope id)
            return str(ip), int(fields[1], 16)
    return None


class Canaries:
    """Real TCP listeners on this machine's non-public addresses. Every accepted connection
    is recorded (``hits``) and closed at once."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.targets: dict[str, Target] = {}
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        v4 = await self._listen("127.0.0.1", socket.AF_INET, ("127.0.0.1", 0))
        assert v4 is not None
        self._add("loopback-v4", socket.AF_INET, ("127.0.0.1", v4), True)
        self._add("v4-mapped", socket.AF_INET6, ("::ffff:127.0.0.1", v4, 0, 0), True)
        v6 = await self._listen("::1", socket.AF_INET6, ("::1", 0, 0, 0))
        self._add("loopback-v6", socket.AF_INET6, ("::1", v6 or 443, 0, 0), v6 is not None)
        for form, found, fallback in (("ula", local_ipv6(ula=True), ("fd00::1", 0)),
                                      ("link-local", local_ipv6(ula=False), ("fe80::1", 1))):
            address, scope = found or fallback
            port = None
            if found is not None:
                port = await self._listen(form, socket.AF_INET6, (address, 0, 0, scope))
            self._add(form, socket.AF_INET6, (address, port or 443, 0, scope), port is not None)
        # Forms that embed 127.0.0.1 (NAT64, 6to4): no local listener can be there; the
        # refusal message shows the check, not a failed connect, stopped them.
        self._add("nat64", socket.AF_INET6, ("64:ff9b::7f00:1", 443, 0, 0), False)
        self._add("sixtofour", socket.AF_INET6, ("2002:7f00:1::1", 443, 0, 0), False)

    def _add(self, form: str, family: int, sockaddr: tuple[Any, ...], watched: bool) -> None:
        self.targets[form] = Target(form, (family, sockaddr), watched)

    async def _listen(self, label: str, family: int, sockaddr: tuple[Any, ...]) -> int | None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind(sockaddr)
            sock.listen(64)
        except OSError:
            sock.close()
            return None

        def connected(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.hits.append(f"{label} from {writer.get_extra_info('peername')}")
            writer.close()

        self._servers.append(await asyncio.start_server(connected, sock=sock))
        return int(sock.getsockname()[1])

    async def prove_watching(self) -> None:
        """Connect to every watched target once and see it counted, so that "0 hits" later
        means nothing connected, not that the canary could not see it."""
        loop = asyncio.get_running_loop()
        watched = [t for t in self.targets.values() if t.watched]
        for target in watched:
            family, sockaddr = target.answer
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, sockaddr)
        await eventually(lambda: len(self.hits) == len(watched), within=10,
                         what="the canaries to see the self-test connections")
        self.hits.clear()

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


class ScriptedResolver(Resolver):
    """DNS for the tests: the n-th lookup of a name gets its n-th scripted answer (the last
    one repeats); unknown names fail like NXDOMAIN, IP literals are answered as themselves
    (as getaddrinfo does). ``lookups`` counts lookups per name."""

    def initialize(self) -> None:
        self.script: dict[str, list[list[Answer]]] = {}
        self.lookups: Counter[str] = Counter()

    def answer(self, name: str, *answers: list[Answer]) -> None:
        self.script[name] = list(answers)

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[Answer]:
        self.lookups[host] += 1
        ip = parse_ip(host)
        if ip is not None:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [(family, (str(ip), port) if ip.version == 4 else (str(ip), port, 0, 0))]
        answers = self.script.get(host)
        if not answers:
            raise OSError(f"{host}: no such name")
        return list(answers[min(self.lookups[host], len(answers)) - 1])


def unrouted(port: int = 443) -> list[Answer]:
    return [(socket.AF_INET6, (UNROUTED, port, 0, 0))]


# --- servers -------------------------------------------------------------------------------


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def canaries() -> AsyncIterator[Canaries]:
    instance = Canaries()
    await instance.start()
    await instance.prove_watching()
    yield instance
    await instance.close()


@pytest.fixture
def dns(canaries: Canaries) -> ScriptedResolver:
    resolver: ScriptedResolver = ScriptedResolver()  # Configurable.__new__ is untyped
    for target in canaries.targets.values():
        resolver.answer(target.name, [target.answer])
    return resolver


@pytest.fixture
async def start_server(settings: PlatformSettings,
                       dns: ScriptedResolver) -> AsyncIterator[StartServer]:
    """Like conftest's make_server, with the scripted DNS under the outbound address check,
    and (by default) the production policy: ``dev_mode = false``."""
    running: list[RunningServer] = []

    async def start(*docs: Mapping[str, Any], **overrides: Any) -> RunningServer:
        effective = with_overrides(settings, **{"dev_mode": False, **overrides})
        if not effective.master_key_file.exists():  # only dev mode creates a missing key
            write_new_key_file(effective.master_key_file)
        services = await build_services(effective, environ=dict(os.environ),
                                        apply_tenant_files=False, resolver=dns)
        await services.tenants.apply([api_document(d) for d in docs])
        await services.registry.refresh()
        public, admin = bind_sockets(0, "127.0.0.1"), bind_sockets(0, "127.0.0.1")
        server = Server(services)
        server.start(public, admin)
        instance = RunningServer(services, server, public[0].getsockname()[1],
                                 admin[0].getsockname()[1])
        running.append(instance)
        return instance

    yield start
    for instance in running:
        await instance.close()


async def auth(srv: RunningServer, host: str, client_domain: str) -> tuple[int, Any]:
    """``GET /auth`` for a fresh account with ``client_domain``: (status, JSON body)."""
    path = f"/auth?account={Keypair.random().public_key}&client_domain={quote(client_domain)}"
    response = await srv.fetch(host, path)
    assert response.headers.get("Content-Type", "").startswith("application/json")
    return response.code, json.loads(response.body)


def test_unrouted_address_passes_the_check() -> None:
    # The rebinding tests rely on it: otherwise the "public" answer is refused by the check
    # and the second (loopback) answer is never reached.
    assert is_public_address(ipaddress.ip_address(UNROUTED))


# --- A6: GET /auth?client_domain= --------------------------------------------------------


async def test_client_domain_resolving_to_non_public_addresses_is_refused(
        start_server: StartServer, canaries: Canaries, dns: ScriptedResolver) -> None:
    srv = await start_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))
    assert srv.services.settings.dev_mode is False
    for target in canaries.targets.values():
        for host in ("a.test", "b.test"):
            status, body = await auth(srv, host, target.name)
            assert status == 400, (target, body)
            assert body == {"error": f"client_domain {target.name}: stellar.toml could not be "
                                     f"fetched ({BLOCKED})"}, target
        assert dns.lookups[target.name] == 2  # looked up (once per request), then refused
    # IP literals never get as far as a lookup (SEP-10 client_domain is a domain name).
    for literal in ("[::1]", "::1", "[::ffff:127.0.0.1]", "[fd00::1]", "[fe80::1]",
                    "127.0.0.1", "fe80::1%25eth0"):
        status, body = await auth(srv, "a.test", literal)
        assert status == 400, literal
        assert body["error"].startswith("client_domain must be a domain name"), body
    assert canaries.hits == []
    # The refusals left both tenants working.
    for host in ("a.test", "b.test"):
        response = await srv.fetch(host, f"/auth?account={Keypair.random().public_key}")
        assert response.code == 200, response.body


async def test_rebinding_client_domain_connects_only_to_the_checked_address(
        start_server: StartServer, canaries: Canaries, dns: ScriptedResolver) -> None:
    srv = await start_server(make_tenant_doc("t1", ["a.test"]))
    name = "rebind.wallet.example"
    loopback = canaries.targets["loopback-v4"].answer
    dns.answer(name, unrouted(), [loopback])

    # First lookup public: the check passes and that address, not a second lookup, is
    # connected to; it is unreachable, so the fetch fails closed.
    status, body = await auth(srv, "a.test", name)
    assert canaries.hits == []
    assert status == 400, body
    assert body["error"].startswith(f"client_domain {name}: stellar.toml could not be fetched")
    assert BLOCKED not in body["error"]
    assert dns.lookups[name] == 1
    # Second lookup loopback: refused before any connect.
    status, body = await auth(srv, "a.test", name)
    assert (status, body["error"]) == (400, f"client_domain {name}: stellar.toml could not be "
                                             f"fetched ({BLOCKED})")
    assert dns.lookups[name] == 2
    # A mixed answer (public and loopback at once) is refused whole.
    dns.answer("mixed.wallet.example", [*unrouted(), loopback])
    status, body = await auth(srv, "a.test", "mixed.wallet.example")
    assert (status, BLOCKED in body["error"]) == (400, True), body
    assert canaries.hits == []


# --- A7: callback delivery ---------------------------------------------------------------


async def sep12_events(srv: RunningServer, tenant_id: str) -> dict[str, Doc]:
    return {str(e["customer_id"]): e for e in await events_of(srv, tenant_id, kind="sep12")}


async def ended(srv: RunningServer, tenant_id: str, customers: list[str]) -> dict[str, Doc]:
    """The customers' callback events once every one has stopped being pending."""
    async def done() -> bool:
        events = await sep12_events(srv, tenant_id)
        return all(c in events and events[c]["state"] != "pending" for c in customers)

    await eventually(done, within=60, what="every callback event to end")
    return await sep12_events(srv, tenant_id)


def short_retries(tenant_id: str, host: str) -> dict[str, Any]:
    return cb_doc(tenant_id, [host], callbacks={"max_attempts": MAX_ATTEMPTS})


async def test_callback_names_resolving_to_non_public_addresses_are_never_contacted(
        start_server: StartServer, canaries: Canaries, dns: ScriptedResolver) -> None:
    srv = await start_server(short_retries("t1", "a.test"), **FAST)
    # Registration refuses the literal forms outright (400 naming the field).
    wallet = Wallet(srv, "a.test", "t1")
    await wallet.create({"first_name": "Alice"})
    for url in ("https://[::1]/cb", "https://[::ffff:127.0.0.1]/cb", "https://[::ffff:7f00:1]/cb",
                "https://[fd00::1]/cb", "https://[fe80::1]/cb", "https://[fe80::1%25eth0]/cb",
                "https://[64:ff9b::7f00:1]/cb", "https://[2002:7f00:1::1]/cb",
                "https://[::7f00:1]/cb", "https://[fec0::1]/cb"):
        reply = await wallet.call("PUT", "/kyc/customer/callback", json_body={"url": url})
        assert reply.status == 400, url
        assert reply.json["error"].startswith("url: "), reply.json
    # Names are accepted at registration (DNS may change) and checked at every delivery:
    # one customer per address form.
    wallets = {form: Wallet(srv, "a.test", "t1") for form in canaries.targets}
    customers = {form: await customer_with_callback(w, f"https://{canaries.targets[form].name}/cb")
                 for form, w in wallets.items()}
    for w in wallets.values():
        await complete(w)
    events = await ended(srv, "t1", list(customers.values()))
    for form, customer_id in customers.items():
        event = events[customer_id]
        assert (event["state"], event["attempt"], event["last_error"]) == \
            ("dead", MAX_ATTEMPTS, BLOCKED), form
        # Resolved again at each attempt, and only once per attempt.
        assert dns.lookups[canaries.targets[form].name] == MAX_ATTEMPTS, form
    assert canaries.hits == []


async def test_rebinding_callback_name_is_never_contacted(
        start_server: StartServer, canaries: Canaries, dns: ScriptedResolver) -> None:
    srv = await start_server(short_retries("t1", "a.test"), cb_doc("t2", ["b.test"]), **FAST)
    name, public_name = "cb-rebind.wallet.example", "cb-public.wallet.example"
    dns.answer(name, unrouted(), [canaries.targets["loopback-v4"].answer])
    dns.answer(public_name, unrouted())
    rebinding = Wallet(srv, "a.test", "t1")
    rebinding_id = await customer_with_callback(rebinding, f"https://{name}/cb")
    # Another tenant's customer whose name stays public: attempted (and failing closed),
    # never refused as non-public; t1's refusals change nothing there.
    other = Wallet(srv, "b.test", "t2")
    other_id = await customer_with_callback(other, f"https://{public_name}/cb")
    await complete(rebinding)
    await complete(other)

    event = (await ended(srv, "t1", [rebinding_id]))[rebinding_id]
    # Attempt 1 got the public answer (connect failed, retried); attempts 2.. got loopback
    # and were refused before connecting; given up after the tenant's max_attempts.
    assert (event["state"], event["attempt"], event["last_error"]) == \
        ("dead", MAX_ATTEMPTS, BLOCKED)
    assert dns.lookups[name] == MAX_ATTEMPTS

    async def other_attempted() -> bool:
        events = await sep12_events(srv, "t2")
        return other_id in events and events[other_id]["attempt"] >= 1

    await eventually(other_attempted, what="t2's first attempt")
    other_event = (await sep12_events(srv, "t2"))[other_id]
    assert other_event["state"] == "pending"
    assert other_event["last_error"]
    assert BLOCKED not in other_event["last_error"]
    assert canaries.hits == []


# --- redirects (dev mode: the canary is reachable, so a followed redirect would show) -----


class _Redirect(RequestHandler):
    def initialize(self, sink: RedirectSink) -> None:
        self.sink = sink

    def get(self, code: str = "302") -> None:
        self._answer(int(code))

    def post(self, code: str = "302") -> None:
        self._answer(int(code))

    def _answer(self, code: int) -> None:
        self.sink.hits.append(code)
        self.redirect(self.sink.location, status=code)


class RedirectSink:
    """A receiver (and a wallet site) that answers every request with a redirect to a canary:
    ``/cb/<code>`` with that 3xx, ``/.well-known/stellar.toml`` with 302."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.hits: list[int] = []
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = int(sockets[0].getsockname()[1])
        self.server = HTTPServer(Application([
            (r"/cb/(\d{3})", _Redirect, {"sink": self}),
            (r"/\.well-known/stellar\.toml", _Redirect, {"sink": self}),
        ]))
        self.server.add_sockets(sockets)

    async def close(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()


@pytest.fixture
async def redirect_sink(canaries: Canaries) -> AsyncIterator[RedirectSink]:
    _, (host, port) = canaries.targets["loopback-v4"].answer
    sink = RedirectSink(f"http://{host}:{port}/stolen")
    yield sink
    await sink.close()


async def test_redirects_are_never_followed(
        start_server: StartServer, canaries: Canaries, redirect_sink: RedirectSink) -> None:
    site = "redirect.wallet.test"
    srv = await start_server(short_retries("t1", "a.test"), dev_mode=True,
                             dev_static_hosts=((site, "127.0.0.1", redirect_sink.port),), **FAST)
    status, body = await auth(srv, "a.test", site)
    assert (status, body) == (400, {"error": f"client_domain {site}: stellar.toml could not be "
                                             "fetched (server answered 302; redirects are not "
                                             "followed)"})
    codes = (301, 302, 303, 307, 308)
    wallets = {code: Wallet(srv, "a.test", "t1") for code in codes}
    customers = {code: await customer_with_callback(
        w, f"http://127.0.0.1:{redirect_sink.port}/cb/{code}") for code, w in wallets.items()}
    for w in wallets.values():
        await complete(w)
    events = await ended(srv, "t1", list(customers.values()))
    for code, customer_id in customers.items():
        event = events[customer_id]
        assert (event["state"], event["attempt"], event["last_error"]) == \
            ("dead", MAX_ATTEMPTS, f"server answered {code}; redirects are not followed"), code
    # Every attempt reached the sink and got its redirect; none went on to the canary.
    assert Counter(redirect_sink.hits) == {302: 1 + MAX_ATTEMPTS, **dict.fromkeys(
        (301, 303, 307, 308), MAX_ATTEMPTS)}
    assert canaries.hits == []
