"""Helpers of the callback tests. Index:

- :data:`FAST`: worker settings for tests (short polls, backoff, leases and timeouts; never
  minutes of waiting), passed to ``make_server(**FAST)``.
- :class:`Receiver`: a real Tornado server on 127.0.0.1 standing in for wallets' callback
  URLs and anchors' webhook endpoints. Each path has a :class:`Sink` whose behaviour the test
  sets (status, Retry-After, hang, delay) and which records every request. A SEP-12 sink
  verifies every signature with the tenant's public SIGNING_KEY and answers 401 when it
  does not verify; a webhook sink does the same with its HMAC secret.
- :func:`eventually`: wait (bounded) for a condition; never a timing assertion.
- :func:`customer_with_callback`: a customer whose wallet registered a callback URL.
- :func:`events_of`: a tenant's outbox documents (raw).
- :func:`signed_at`: the ``t`` of a hit's signature header (to compare with its receipt).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from conftest import RunningServer, make_tenant_doc
from kyc_host.callbacks.signing import verify_sep12, verify_webhook
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.sep.sep12_types import CustomerStatus, Decision
from kyc_host.store.base import Doc
from sep12.sep12_helpers import Wallet, tenant_of

FAST: dict[str, float] = {
    "callbacks_poll_seconds": 0.05,
    "callbacks_sweep_seconds": 0.5,
    "callbacks_lease_seconds": 3.0,
    "callbacks_attempt_timeout_seconds": 2.0,
    "callbacks_retry_base_seconds": 0.05,
    "callbacks_retry_max_seconds": 0.2,
}
ALICE = {"first_name": "Alice", "last_name": "Liddell", "email_address": "alice@example.com"}


@dataclass
class Hit:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    verified: bool
    received_at: float = 0.0  # the receiver's clock (time.time()) when the request arrived

    @property
    def event_id(self) -> str:
        return self.headers.get("Webhook-Id", "")

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Sink:
    """What one receiver path does. ``public_key`` (SEP-12) or ``secret`` (webhook) enables
    the signature check."""

    status: int = 200
    retry_after: str | None = None
    hang: bool = False
    delay: float = 0.0
    fail_first: int = 0  # answer 503 to this many requests first
    public_key: str | None = None
    secret: bytes | None = None
    hits: list[Hit] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    overlaps: int = 0  # a request for an event id arrived while another was in flight
    hanging: int = 0  # requests being held right now

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.answered < 300]

    def delivered_ids(self) -> list[str]:
        return [h.event_id for h in self.delivered()]


class _Handler(RequestHandler):
    receiver: Receiver
    _gone: asyncio.Event

    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._gone = asyncio.Event()

    def on_connection_close(self) -> None:
        self._gone.set()  # the sender gave up (its attempt timed out)

    async def post(self, path: str) -> None:
        sink = self.receiver.sinks.setdefault("/" + path, Sink())
        event_id = self.request.headers.get("Webhook-Id", "")
        sink.overlaps += 1 if sink.in_flight.get(event_id) else 0
        sink.in_flight[event_id] = sink.in_flight.get(event_id, 0) + 1
        try:
            await self._answer(sink, "/" + path)
        finally:
            sink.in_flight[event_id] -= 1

    async def _answer(self, sink: Sink, path: str) -> None:
        received_at = time.time()
        body = self.request.body
        headers = dict(self.request.headers)
        verified = self.receiver.verify(sink, path, headers, body)
        status = sink.status
        if sink.fail_first > 0:
            sink.fail_first -= 1
            status = 503
        if not verified:
            status = 401
        if sink.hang:  # hold the request until the sender gives up (or the test ends)
            sink.hanging += 1
            self.receiver.held.add(self._gone)
            try:
                await self._gone.wait()
            finally:
                sink.hanging -= 1
                self.receiver.held.discard(self._gone)
            sink.hits.append(Hit(path, headers, body, 0, verified, received_at))
            return
        if sink.delay:
            await asyncio.sleep(sink.delay)
        sink.hits.append(Hit(path, headers, body, status, verified, received_at))
        if sink.retry_after is not None and status >= 400:
            self.set_header("Retry-After", sink.retry_after)
        self.set_status(status)
        self.finish(b"ok")


class Receiver:
    """A real HTTP server on 127.0.0.1 (a free port) with one :class:`Sink` per path."""

    def __init__(self) -> None:
        self.sinks: dict[str, Sink] = {}
        self.held: set[asyncio.Event] = set()
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = int(sockets[0].getsockname()[1])
        app = Application([(r"/(.*)", _Handler, {"receiver": self})])
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def sink(self, path: str, **behaviour: Any) -> Sink:
        sink = self.sinks.setdefault(path, Sink())
        for key, value in behaviour.items():
            setattr(sink, key, value)
        return sink

    def verify(self, sink: Sink, path: str, headers: dict[str, str], body: bytes) -> bool:
        if sink.public_key is not None:
            header = headers.get("Signature", "")
            return (verify_sep12(header, self.url(path), body, sink.public_key)
                    and headers.get("X-Stellar-Signature") == header)
        if sink.secret is not None:
            return verify_webhook(headers.get("Webhook-Signature", ""), body, sink.secret)
        return True

    async def close(self) -> None:
        for gone in list(self.held):
            gone.set()
        self.server.stop()
        await self.server.close_all_connections()


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 30.0,
                     what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail after ``within`` s (a bound, not a measurement)."""
    end = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def cb_doc(tenant_id: str, hosts: list[str], **overrides: Any) -> dict[str, Any]:
    """A tenant whose events are retried many times: with FAST's short waits, the default
    20 attempts could run out in a slow test run before the receiver recovers."""
    callbacks = {"max_attempts": 200, **overrides.pop("callbacks", {})}
    return make_tenant_doc(tenant_id, hosts, callbacks=callbacks, **overrides)


def signing_key(srv: RunningServer, tenant_id: str) -> str:
    return str(tenant_of(srv, tenant_id).secrets.signing_keypair.public_key)


async def customer_with_callback(wallet: Wallet, url: str) -> str:
    """A customer with only a first name (NEEDS_INFO) whose wallet registered ``url``."""
    reply = await wallet.put({"first_name": "Alice"})
    assert reply.status == 202, reply.body
    customer_id = str(reply.json["id"])
    reply = await wallet.call("PUT", "/kyc/customer/callback", json_body={"url": url})
    assert reply.status == 200, reply.body
    return customer_id


async def complete(wallet: Wallet) -> None:
    """Send the remaining required fields: NEEDS_INFO -> PROCESSING (a status change)."""
    reply = await wallet.put(ALICE)
    assert reply.status == 202, reply.body


async def decide(srv: RunningServer, tenant_id: str, customer_id: str,
                 status: CustomerStatus, message: str | None = None) -> None:
    """A reviewer's decision through the SEP-12 service (the management API's path)."""
    service = service_for(tenant_of(srv, tenant_id), srv.services.store, srv.services.settings)
    record = await service.customers.load(customer_id)
    assert record is not None
    await service.decide(record, "individual", Decision(status, message))


def signed_at(hit: Hit) -> int:
    """The ``t=`` of the hit's ``Signature`` (SEP-12) or ``Webhook-Signature`` header."""
    header = hit.headers.get("Signature") or hit.headers["Webhook-Signature"]
    [value] = [part.strip()[2:] for part in header.split(",") if part.strip().startswith("t=")]
    return int(value)


async def events_of(srv: RunningServer, tenant_id: str, **flt: Any) -> list[Doc]:
    return await srv.services.store.tenant(tenant_id, "outbox").find(flt)
