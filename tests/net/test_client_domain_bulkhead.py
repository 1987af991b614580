"""client_domain fetch bulkhead through the real server (reliability-plan A6, L4).

A wallet site that accepts connections and never answers (the "hang host" of A6): 50
concurrent ``GET /auth?client_domain=<it>`` on T1 must each end with a JSON 400 (never a
5xx, never a hang past the fetch deadline), open at most the per-tenant bound of connections
to it at once, and leave T2's ``GET /auth`` and ``GET /kyc/customer`` answering meanwhile.

The server reaches the stand-in through the dev-mode ``dev_static_hosts`` setting (the name
is sent to a local address over plain HTTP), the same way the noisy-neighbour benchmark
does; the setting itself is refused outside dev mode.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from stellar_sdk import Keypair
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.errors import ConfigError
from kyc_host.net import SafeHttpClient
from kyc_host.net.limits import HOLD_JITTER
from kyc_host.sep.client_domain import FETCH_TIMEOUT
from kyc_host.sep.sep10_tokens import issue_token
from kyc_host.settings import load_settings

HANG_HOST = "hang.wallet.test"
CONCURRENT = 50
#: The per-tenant bound of outbound fetches (SafeHttpClient's ``per_key_limit``).
PER_TENANT = inspect.signature(SafeHttpClient).parameters["per_key_limit"].default
#: A request still unanswered this long after the 5 s fetch deadline counts as hung (a hang
#: detector, not a latency target: the client gives up and the test sees 599).
HANG_AFTER_SECONDS = 25.0


class HangingSite:
    """Accepts TCP connections and never writes a byte; counts them."""

    def __init__(self) -> None:
        self.accepted = 0
        self.peak = 0
        self.open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self.open):
            writer.close()
        await self._server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        # A client that closed just before this one connected may not have been seen yet:
        # look at the sockets themselves, so "open at once" is not an event-order artefact.
        for other in [w for w in self.open if _peer_closed(w)]:
            self.open.discard(other)
        self.open.add(writer)
        self.peak = max(self.peak, len(self.open))
        try:
            await reader.read()  # until the server gives up and closes
        finally:
            self.open.discard(writer)
            writer.close()


def _peer_closed(writer: asyncio.StreamWriter) -> bool:
    """True if the peer's FIN (or a reset) is already queued on this connection."""
    fd = writer.get_extra_info("socket").fileno()
    probe = socket.socket(fileno=os.dup(fd))  # a plain handle: peek past asyncio's wrapper
    try:
        return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.close()


@pytest.fixture
async def hanging_site() -> AsyncIterator[HangingSite]:
    site = HangingSite()
    await site.start()
    yield site
    await site.close()


async def hang_server(make_server: MakeServer, site: HangingSite) -> RunningServer:
    return await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]),
                             dev_static_hosts=((HANG_HOST, "127.0.0.1", site.port),))


async def fetch(client: AsyncHTTPClient, srv: RunningServer, host: str, path: str,
                headers: dict[str, str] | None = None) -> HTTPResponse:
    return await client.fetch(f"http://127.0.0.1:{srv.public_port}{path}",
                              headers={"Host": host, **(headers or {})}, raise_error=False,
                              request_timeout=HANG_AFTER_SECONDS)


async def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll ``condition`` until true or ``seconds`` passed (the caller asserts after)."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


async def test_hanging_client_domain_fetches_are_bounded_and_do_not_touch_t2(
        make_server: MakeServer, hanging_site: HangingSite) -> None:
    srv = await hang_server(make_server, hanging_site)
    client = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENT + 10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answered_after: list[float] = []

    async def login() -> HTTPResponse:
        answer = await fetch(
            client, srv, "a.test",
            f"/auth?account={Keypair.random().public_key}&client_domain={HANG_HOST}")
        answered_after.append(loop.time() - started)
        return answer

    try:
        hung = [asyncio.ensure_future(login()) for _ in range(CONCURRENT)]
        await wait_for(lambda: hanging_site.accepted >= PER_TENANT)
        assert hanging_site.accepted >= 1, "the server never reached the hanging site"

        # Meanwhile T2 answers: a challenge, and its customer endpoint with a real token.
        t2 = srv.services.registry.get("t2")
        assert t2 is not None
        account = Keypair.random().public_key
        token = issue_token(t2, sub=account, jti=uuid.uuid4().hex,
                            home_domain=t2.home_domains[0])
        challenge = await fetch(client, srv, "b.test", f"/auth?account={account}")
        customer = await fetch(client, srv, "b.test", "/kyc/customer",
                               {"Authorization": f"Bearer {token}"})
        still_hanging = sum(1 for task in hung if not task.done())
        assert challenge.code == 200, challenge.body
        assert "transaction" in json.loads(challenge.body)
        assert customer.code == 200, customer.body
        assert json.loads(customer.body)["status"] == "NEEDS_INFO"
        assert still_hanging > 0  # T2 was answered while T1's fetches were in progress

        answers = await asyncio.gather(*hung)
    finally:
        client.close()
    for answer in answers:
        assert answer.code == 400, (answer.code, answer.body)  # 599 would be a hang
        body = json.loads(answer.body)
        assert set(body) == {"error"}
        assert f"client_domain {HANG_HOST}: stellar.toml could not be fetched" in body["error"]
    # The bulkhead: never more than the per-tenant bound connected at once, and it was
    # reached (50 requests were waiting for it).
    assert hanging_site.peak == PER_TENANT, (hanging_site.peak, hanging_site.accepted)
    # Every connection the server opened, it closed again (none left hanging).
    await wait_for(lambda: not hanging_site.open)
    assert not hanging_site.open
    # Those that waited for a slot were refused at random points of the second half of the
    # fetch deadline, not all at its end with the connected ones (which would send 50
    # clients back at one instant).
    waited = sorted(answered_after)[:CONCURRENT - PER_TENANT]
    assert waited[0] >= FETCH_TIMEOUT * HOLD_JITTER - 0.1, waited
    assert waited[-1] - waited[0] > FETCH_TIMEOUT / 4, waited


async def test_the_fetch_bound_is_per_tenant(make_server: MakeServer,
                                            hanging_site: HangingSite) -> None:
    """T2's client_domain fetches to the same hanging site get slots of their own while
    T1's are all taken."""
    srv = await hang_server(make_server, hanging_site)
    client = AsyncHTTPClient(force_instance=True, max_clients=3 * PER_TENANT)
    try:
        t1 = [asyncio.ensure_future(fetch(
            client, srv, "a.test",
            f"/auth?account={Keypair.random().public_key}&client_domain={HANG_HOST}"))
            for _ in range(PER_TENANT + 5)]
        await wait_for(lambda: hanging_site.accepted >= PER_TENANT)
        t2 = [asyncio.ensure_future(fetch(
            client, srv, "b.test",
            f"/auth?account={Keypair.random().public_key}&client_domain={HANG_HOST}"))
            for _ in range(3)]
        answers = await asyncio.gather(*t1, *t2)
    finally:
        client.close()
    # T1's full share and T2's three were connected at the same time; T1 never had more.
    assert hanging_site.peak == PER_TENANT + 3, (hanging_site.peak, hanging_site.accepted)
    assert {a.code for a in answers} == {400}


def test_dev_static_hosts_setting_is_dev_mode_only() -> None:
    value = f"{HANG_HOST}=127.0.0.1:8123"
    settings = load_settings(None, environ={"KYC_HOST_DEV_MODE": "true",
                                            "KYC_HOST_DEV_STATIC_HOSTS": value})
    assert settings.dev_static_hosts == ((HANG_HOST, "127.0.0.1", 8123),)
    with pytest.raises(ConfigError) as refused:
        load_settings(None, environ={"KYC_HOST_DEV_STATIC_HOSTS": value})
    assert "dev_static_hosts" in str(refused.value)
    assert "dev_mode" in str(refused.value)
    for bad in ("hang.wallet.test", "hang.wallet.test=localhost:80",
                "hang.wallet.test=127.0.0.1:0", "Hang.Test=127.0.0.1:80"):
        with pytest.raises(ConfigError) as malformed:
            load_settings(None, environ={"KYC_HOST_DEV_MODE": "true",
                                         "KYC_HOST_DEV_STATIC_HOSTS": bad})
        assert "dev_static_hosts" in str(malformed.value)
