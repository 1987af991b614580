"""The SSRF-safe outbound client (reliability-plan A6/A7), against real local servers.

Outside dev mode nothing may reach a canary listener on 127.0.0.1, whatever spelling of a
non-public address or name is used; in dev mode (so the local servers are reachable) the other
rules still hold: no redirects, the size cap cuts an endless body while streaming, the deadline
cuts a silent or dripping server, and one key's hanging requests do not block another key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import Resolver, bind_sockets
from tornado.tcpserver import TCPServer
from tornado.web import Application, RequestHandler

from kyc_host.net import (
    BlockedDestination,
    FetchError,
    FetchFailed,
    FetchTimeout,
    RedirectRefused,
    ResponseTooLarge,
    SafeHttpClient,
    UnsafeUrl,
)
from kyc_host.net.addresses import is_public_address


class Canary(TCPServer):
    """Counts every TCP connection it accepts; answers nothing."""

    def __init__(self) -> None:
        super().__init__()
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = int(sockets[0].getsockname()[1])
        self.add_sockets(sockets)
        self.connections = 0

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        self.connections += 1
        stream.close()


class _State:
    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.two_in_flight = asyncio.Event()
        self.release = asyncio.Event()
        self.hosts: list[str] = []


class Hang(RequestHandler):
    def initialize(self, state: _State) -> None:
        self.state = state

    async def get(self) -> None:
        self.state.in_flight += 1
        self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
        if self.state.in_flight >= 2:
            self.state.two_in_flight.set()
        try:
            await self.state.release.wait()
        finally:
            self.state.in_flight -= 1


class Endless(RequestHandler):
    async def get(self) -> None:
        while self.request.connection.stream and not self.request.connection.stream.closed():
            self.write(b"x" * 16384)
            await self.flush()


class Drip(RequestHandler):
    async def get(self) -> None:
        for _ in range(1000):
            self.write(b"x")
            await self.flush()
            await asyncio.sleep(0.05)


class Declared(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Length", str(10 * 1024 * 1024))
        self.write(b"x" * 1024)
        self.request.connection.stream.close()


class Redirect(RequestHandler):
    def initialize(self, target: str) -> None:
        self.target = target

    def get(self) -> None:
        self.redirect(self.target)


class Hello(RequestHandler):
    def initialize(self, state: _State) -> None:
        self.state = state

    def get(self) -> None:
        self.state.hosts.append(self.request.host)
        self.finish(b"hello")


class Site:
    def __init__(self, canary_port: int) -> None:
        self.state = _State()
        app = Application([
            (r"/hang", Hang, {"state": self.state}),
            (r"/endless", Endless),
            (r"/drip", Drip),
            (r"/declared", Declared),
            (r"/redirect", Redirect, {"target": f"http://127.0.0.1:{canary_port}/"}),
            (r"/hello", Hello, {"state": self.state}),
        ])
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = int(sockets[0].getsockname()[1])
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    server = Canary()
    yield server
    server.stop()


@pytest.fixture
async def site(canary: Canary) -> AsyncIterator[Site]:
    server = Site(canary.port)
    yield server
    server.state.release.set()
    server.server.stop()
    await server.server.close_all_connections()


@pytest.fixture
async def strict() -> AsyncIterator[SafeHttpClient]:
    client = SafeHttpClient()
    yield client
    client.close()


@pytest.fixture
async def dev() -> AsyncIterator[SafeHttpClient]:
    client = SafeHttpClient(dev_mode=True, per_key_limit=2)
    yield client
    client.close()


# Destinations that must be refused (0.0.0.0 here is a target, not a bind address: S104).
LITERALS = ["127.0.0.1", "127.0.0.2", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]",
            "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
            "0.0.0.0", "[::]", "224.0.0.1", "255.255.255.255", "[fd00::1]",  # noqa: S104
            "[fe80::1]", "[fec0::1]", "[ff02::1]", "[2002:7f00:1::]", "[64:ff9b::7f00:1]",
            "[::7f00:1]", "192.0.2.1", "198.18.0.1", "240.0.0.1", "[2001:db8::1]"]


@pytest.mark.parametrize("host", LITERALS)
async def test_non_public_ip_literals_are_refused(strict: SafeHttpClient, canary: Canary,
                                                  host: str) -> None:
    with pytest.raises(BlockedDestination):
        await strict.fetch(f"https://{host}:{canary.port}/")
    assert canary.connections == 0


@pytest.mark.parametrize("host", ["localhost", "127.1", "0x7f000001", "2130706433",
                                  "0177.0.0.1", "localhost."])
async def test_names_and_encodings_of_loopback_are_refused(strict: SafeHttpClient,
                                                           canary: Canary, host: str) -> None:
    with pytest.raises(FetchError) as info:
        await strict.fetch(f"https://{host}:{canary.port}/")
    if host == "localhost":
        assert isinstance(info.value, BlockedDestination)
    assert canary.connections == 0


class TwoFaced(Resolver):
    """A DNS answer with a public address first and loopback second (rebinding-style)."""

    def initialize(self, port: int) -> None:
        self.port = port

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        return [(socket.AF_INET, ("93.184.215.14", self.port)),
                (socket.AF_INET, ("127.0.0.1", self.port))]


async def test_mixed_dns_answer_is_refused(canary: Canary) -> None:
    client = SafeHttpClient(resolver=TwoFaced(port=canary.port))
    try:
        with pytest.raises(BlockedDestination):
            await client.fetch(f"https://rebind.example:{canary.port}/")
    finally:
        client.close()
    assert canary.connections == 0


class NoSuchName(Resolver):
    """The system resolver's answer for a name that does not exist."""

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def test_unresolvable_host_is_named_as_such() -> None:
    client = SafeHttpClient(resolver=NoSuchName())
    try:
        with pytest.raises(FetchFailed) as info:
            await client.fetch("https://no-such-host.example/")
    finally:
        client.close()
    assert str(info.value) == "could not fetch: host name could not be resolved"


async def test_refused_connection_is_named_as_such(dev: SafeHttpClient) -> None:
    port = _closed_port()
    with pytest.raises(FetchFailed) as info:
        await dev.fetch(f"http://127.0.0.1:{port}/")
    assert str(info.value) == "could not fetch: connection refused"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("url", [
    "http://example.com/", "file:///etc/passwd", "gopher://example.com/", "ftp://example.com/",
    "https://user:pw@example.com/", "https://user@example.com/", "https:///nohost",
    "https://example.com:99999/", "https://exa mple.com/", "https://ex\u00e4mple.com/",
    "//example.com/", "example.com",
])
async def test_unsafe_urls_are_refused(strict: SafeHttpClient, url: str) -> None:
    with pytest.raises(UnsafeUrl):
        await strict.fetch(url)


def test_address_policy() -> None:
    public = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2606:4700:4700::1111"]
    for text in public:
        assert is_public_address(ipaddress.ip_address(text)), text
    for text in [h.strip("[]") for h in LITERALS] + ["2001::1"]:
        assert not is_public_address(ipaddress.ip_address(text)), text


async def test_static_hosts_are_dev_only() -> None:
    with pytest.raises(ValueError, match="dev-mode-only"):
        SafeHttpClient(static_hosts={"wallet.test": ("127.0.0.1", 1)})


async def test_static_host_reaches_the_local_site(site: Site) -> None:
    client = SafeHttpClient(dev_mode=True, static_hosts={"wallet.test": ("127.0.0.1", site.port)})
    try:
        response = await client.fetch("https://wallet.test/hello")
    finally:
        client.close()
    assert response.status == 200
    assert response.body == b"hello"
    assert site.state.hosts == ["wallet.test"]


async def test_redirect_is_not_followed(dev: SafeHttpClient, site: Site, canary: Canary) -> None:
    with pytest.raises(RedirectRefused):
        await dev.fetch(site.url("/redirect"))
    assert canary.connections == 0


async def test_endless_body_is_cut_while_streaming(dev: SafeHttpClient, site: Site) -> None:
    # Without the streaming cap this would run into the deadline instead.
    with pytest.raises(ResponseTooLarge):
        await dev.fetch(site.url("/endless"), max_bytes=100_000, timeout=5)


async def test_declared_oversize_is_refused(dev: SafeHttpClient, site: Site) -> None:
    with pytest.raises(FetchError):
        await dev.fetch(site.url("/declared"), max_bytes=100_000)


async def test_silent_and_dripping_servers_hit_the_deadline(dev: SafeHttpClient,
                                                            site: Site) -> None:
    with pytest.raises(FetchTimeout):
        await dev.fetch(site.url("/hang"), timeout=0.3)
    with pytest.raises(FetchTimeout):
        await dev.fetch(site.url("/drip"), timeout=0.3)


async def test_concurrency_is_bounded_per_key(dev: SafeHttpClient, site: Site) -> None:
    hanging = [asyncio.create_task(dev.fetch(site.url("/hang"), timeout=2, limit_key="t1"))
               for _ in range(4)]
    await site.state.two_in_flight.wait()
    # Tenant t1 has used its two slots; t2 is not held up by them.
    response = await dev.fetch(site.url("/hello"), limit_key="t2")
    assert response.body == b"hello"
    site.state.release.set()
    results = await asyncio.gather(*hanging, return_exceptions=True)
    assert site.state.max_in_flight == 2
    assert all(not isinstance(r, BaseException) or isinstance(r, FetchError) for r in results)
