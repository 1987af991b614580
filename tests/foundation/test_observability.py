"""Observability (issue 9 item 3, reliability-plan B8): metrics driven by real behaviour and
read from the admin listener's ``/metrics`` over HTTP, and request ids in the JSON logs.

Metrics are compared as deltas between two scrapes, parsed with ``prometheus_client.parser``:
each test asserts the exact set of series that changed and by how much, so a count under the
wrong tenant, hook or outcome fails as surely as a missing one. (The store-unavailable
counter is driven by tests/faults/test_store_outage.py, which freezes a real FerretDB.)

Request ids: every line logged while a request is served (the access line, the error line,
a plugin's own line written from its hook's task) carries the ``X-Request-Id`` the response
returned, and the tenant. A client's own ``X-Request-Id`` is not honoured: the server always
makes its own (16 hex digits), so a client cannot choose what correlates log lines, nor put
a huge or control-character value into every line of its request.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from stellar_sdk import Keypair, MuxedAccount

from callbacks.cb_helpers import (
    FAST,
    Receiver,
    cb_doc,
    complete,
    customer_with_callback,
    eventually,
    signing_key,
)
from conftest import MakeServer, RunningServer, _CanaryHandler
from kyc_host.logs import JsonFormatter
from kyc_host.management.auth import create_token
from sep10.sep10_helpers import HorizonStub, sign
from sep10.sep10_helpers import Wallet as AuthWallet
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: A plugin whose ``put`` hook behaves by the customer's first name; it logs through its
#: ``ctx.log`` first (a line written from the hook's own task).
MOODY = '''
import asyncio

from kyc_host.hooks import CustomerHooks, HookRejected


class Hooks(CustomerHooks):
    async def put(self, ctx, request):
        mood = request.data.get("first_name")
        ctx.log.info("put hook entered")
        if mood == "Boom":
            raise RuntimeError("the vendor is down")
        if mood == "Slow":
            await asyncio.sleep(60)  # cancelled by the platform at the hook timeout
        if mood == "Refuse":
            raise HookRejected("not in this region")
        return None
'''
HOOK_TIMEOUT = 0.2


# --- scraping ------------------------------------------------------------------------------


async def scrape(srv: RunningServer) -> Samples:
    """Every sample of the admin listener's /metrics, keyed by (name, labels)."""
    reply = await srv.fetch("localhost", "/metrics", admin=True)
    assert reply.code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def changes(before: Samples, after: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The series of sample ``name`` whose value changed between two scrapes, with the change."""
    out: dict[frozenset[tuple[str, str]], float] = {}
    for (sample, labels), value in after.items():
        if sample == name and value != before.get((sample, labels), 0.0):
            out[labels] = value - before.get((sample, labels), 0.0)
    return out


def series(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


# --- logins --------------------------------------------------------------------------------


@pytest.fixture
async def horizon() -> AsyncIterator[HorizonStub]:
    stub = HorizonStub()
    yield stub
    await stub.close()


async def test_login_results_are_counted_by_tenant_and_result(
        make_server: MakeServer, horizon: HorizonStub) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], horizon_url=horizon.url),
                            kyc_doc("t2", ["b.test"], horizon_url=horizon.url))
    wallet = AuthWallet(srv)
    client = Keypair.random()
    before = await scrape(srv)
    for _ in range(2):  # two good logins on t1
        await wallet.token("a.test", client, account=client.public_key)
    # Signed by someone else: rejected on t1.
    wrong = await wallet.login("a.test", Keypair.random(), account=client.public_key)
    assert wrong.code in (400, 401), wrong.body
    # t1's challenge replayed to t2: rejected, and counted under t2 only.
    xdr = await wallet.challenge("a.test", account=client.public_key)
    replayed = await wallet.post("b.test", sign(xdr, client))
    assert replayed.code in (400, 401), replayed.body
    # Malformed body on t2, and a login to a host that is no tenant (no login series).
    assert (await srv.fetch("b.test", "/auth", method="POST", body="{",
                            headers={"Content-Type": "application/json"})).code == 400
    assert (await srv.fetch("nobody.test", "/auth", method="POST", body="{}")).code == 404
    after = await scrape(srv)
    assert changes(before, after, "kyc_sep10_logins_total") == {
        series(tenant="t1", result="issued"): 2,
        series(tenant="t1", result="rejected"): 1,
        series(tenant="t2", result="rejected"): 2,
    }
    # The request counter agrees: the challenges are GETs, counted apart from the logins.
    posts = changes(before, after, "kyc_http_requests_total")
    assert posts[series(tenant="t1", route="AuthHandler", method="POST", status="200")] == 2
    assert posts[series(tenant="t1", route="AuthHandler", method="GET", status="200")] == 4
    assert posts[series(tenant="", route="AuthHandler", method="POST", status="404")] == 1


# --- hooks ---------------------------------------------------------------------------------


def moody_plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir(exist_ok=True)
    (directory / "moody.py").write_text(textwrap.dedent(MOODY))
    return directory


@pytest.mark.parametrize("isolation", ["in_process", "process"])
async def test_hook_calls_failures_and_durations_by_tenant(
        make_server: MakeServer, tmp_path: Path, isolation: str) -> None:
    """Succeeding, rejecting, raising and hanging hooks change exactly their own series;
    an untrusted (worker-process) plugin is counted the same way."""
    extra: dict[str, Any] = {}
    if isolation == "process":
        extra["plugin_isolation"] = {"mode": "process", "workers": 1}
    limits = {"hook_timeout_seconds": HOOK_TIMEOUT if isolation == "in_process" else 5.0}
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="moody", limits=limits, **extra),
                            kyc_doc("t2", ["b.test"], plugin="moody", limits=limits, **extra),
                            plugins_dir=moody_plugins(tmp_path))
    t1, t2 = Wallet(srv, "a.test", "t1"), Wallet(srv, "b.test", "t2")
    for warm_up in (t1.other(memo=7), t2):  # starts the workers when isolated (until the
        assert (await warm_up.put(ALICE)).status == 202  # first reports what the plugin
    before = await scrape(srv)  # overrides, every hook, even a default, goes to a worker)
    assert (await t1.put(ALICE)).status == 202
    assert (await t1.other(memo=1).put({**ALICE, "first_name": "Boom"})).status == 500
    assert (await t1.other(memo=2).put({**ALICE, "first_name": "Refuse"})).status == 400
    expected = {series(tenant="t1", hook="put", outcome="ok"): 1,
                series(tenant="t1", hook="put", outcome="failed"): 1,
                series(tenant="t1", hook="put", outcome="rejected"): 1,
                series(tenant="t2", hook="put", outcome="ok"): 1}
    if isolation == "in_process":  # (a worker's timeout kills it: tests/hooks cover that)
        assert (await t1.other(memo=3).put({**ALICE, "first_name": "Slow"})).status == 500
        expected[series(tenant="t1", hook="put", outcome="timeout")] = 1
    assert (await t2.other(memo=1).put(ALICE)).status == 202
    assert (await t2.get()).status == 200  # no get hook in the plugin: nothing counted
    after = await scrape(srv)
    assert changes(before, after, "kyc_hook_calls_total") == expected
    t1_calls = sum(v for k, v in expected.items() if ("tenant", "t1") in k)
    durations = changes(before, after, "kyc_hook_tenant_duration_seconds_count")
    assert durations == {series(tenant="t1", hook="put"): t1_calls,
                         series(tenant="t2", hook="put"): 1}
    assert changes(before, after, "kyc_hook_tenant_duration_seconds_sum").keys() == \
        durations.keys()  # time was added to both tenants' sums
    assert changes(before, after, "kyc_hook_duration_seconds_count") == {
        series(hook="put"): t1_calls + 1}
    assert changes(before, after, "kyc_hook_duration_seconds_bucket")[
        series(hook="put", le="+Inf")] == t1_calls + 1


# --- outbox --------------------------------------------------------------------------------


async def test_outbox_depth_then_delivery_by_tenant(make_server: MakeServer,
                                                    receiver: Receiver) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]), **FAST)
    sink = receiver.sink("/w", public_key=signing_key(srv, "t1"), status=503, retry_after="0")
    wallet = Wallet(srv, "a.test", "t1")
    await customer_with_callback(wallet, receiver.url("/w"))
    assert (await Wallet(srv, "b.test", "t2").put(ALICE)).status == 202  # no callback URL
    before = await scrape(srv)
    await complete(wallet)  # NEEDS_INFO -> PROCESSING: one event for t1's receiver

    async def pending_seen() -> bool:
        return (await scrape(srv)).get(("kyc_callback_events_pending",
                                        series(tenant="t1")), 0.0) == 1

    await eventually(pending_seen, what="the pending gauge to show the event")
    await eventually(lambda: len(sink.hits) >= 2, what="failed attempts")
    sink.status = 200

    async def drained() -> bool:
        after = await scrape(srv)
        return (after.get(("kyc_callback_events_pending", series(tenant="t1"))) == 0
                and after.get(("kyc_callback_events_total",
                               series(tenant="t1", outcome="delivered")), 0.0) == 1)

    await eventually(drained, what="delivery and the gauge back at zero")
    after = await scrape(srv)
    events = changes(before, after, "kyc_callback_events_total")
    assert events[series(tenant="t1", outcome="delivered")] == 1
    assert events[series(tenant="t1", outcome="retried")] >= 1
    assert not [labels for labels in events if ("tenant", "t2") in labels]
    assert after.get(("kyc_callback_events_pending", series(tenant="t2")), 0.0) == 0
    assert changes(before, after, "kyc_callback_delivery_seconds_count") == {series(): 1}
    assert changes(before, after, "kyc_callback_delivery_seconds_sum")[series()] > 0


# --- request ids in the logs ---------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every kyc_host line at DEBUG, formatted by the platform's JSON formatter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("kyc_host")
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.DEBUG:  # (the suite's log canary lowers it)
        logger.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


#: Loggers of work that runs beside requests (workers, refresh, key jobs), never for one.
BACKGROUND = ("kyc_host.callbacks", "kyc_host.tenancy", "kyc_host.keys", "kyc_host.crypto",
              "kyc_host.retention", "kyc_host.app")
REQUEST_ID = re.compile(r"[0-9a-f]{16}")


def lines_during(buffer: io.StringIO, start: int) -> list[dict[str, Any]]:
    """The request-path lines written since offset ``start`` (each one JSON object)."""
    raw = buffer.getvalue()[start:]
    parsed = [json.loads(line) for line in raw.splitlines()]
    return [e for e in parsed if not str(e["logger"]).startswith(BACKGROUND)]


async def served(buffer: io.StringIO, request: Callable[[], Awaitable[Any]],
                 ) -> tuple[Mapping[str, str], list[dict[str, Any]]]:
    """Run one request; (its response headers, the lines logged while it was served)."""
    start = len(buffer.getvalue())
    reply = await request()
    return reply.headers, lines_during(buffer, start)


async def test_request_id_header_tags_every_line_of_its_request(
        make_server: MakeServer, tmp_path: Path, json_log: io.StringIO) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="moody"),
                            kyc_doc("t2", ["b.test"], plugin="moody"),
                            plugins_dir=moody_plugins(tmp_path))
    wallet = Wallet(srv, "a.test", "t1")
    cases = [
        ("t1", 200, lambda: srv.fetch("a.test", "/.well-known/stellar.toml"), 1),
        ("t1", 401, lambda: wallet.call("GET", "/kyc/customer", token="not-a-token"), 2),
        ("t1", 500, lambda: wallet.put({**ALICE, "first_name": "Boom"}), 4),
        ("t2", 202, lambda: Wallet(srv, "b.test", "t2").put(ALICE), 2),
        (None, 404, lambda: srv.fetch("nobody.test", "/kyc/customer"), 2),
    ]
    seen: set[str] = set()
    for tenant, status, call, at_least in cases:
        headers, lines = await served(json_log, call)
        rid = headers["X-Request-Id"]
        assert REQUEST_ID.fullmatch(rid), rid
        assert rid not in seen  # a fresh id per request
        seen.add(rid)
        assert len(lines) >= at_least, (status, lines)
        for entry in lines:
            assert entry["request_id"] == rid, (status, entry)
            assert entry.get("tenant") == tenant, (status, entry)
        access = [e for e in lines if e["logger"] == "kyc_host.access"]
        assert [e["msg"].rsplit(" ", 1)[1] for e in access] == [str(status)]
    # The 500: the plugin's own line (written from the hook's task), the runner's error and
    # the web layer's line all name the request.
    _, lines = await served(json_log,
                            lambda: wallet.other(memo=9).put({**ALICE, "first_name": "Boom"}))
    loggers = {e["logger"] for e in lines}
    assert {"kyc_host.plugins.moody", "kyc_host.hooks", "kyc_host.access"} <= loggers
    assert len({e["request_id"] for e in lines}) == 1


async def test_admin_lines_of_a_tenant_route_name_that_tenant(
        make_server: MakeServer, json_log: io.StringIO) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"]), kyc_doc("t2", ["b.test"]))
    issued = await create_token(srv.services.store, tenant_id="t1",
                                scopes=["customers:read"], created_by="test")

    def admin_get(path: str) -> Awaitable[Any]:
        return srv.fetch("127.0.0.1", path, admin=True,
                         headers={"Authorization": f"Bearer {issued.token}"})

    headers, lines = await served(json_log, lambda: admin_get("/api/v1/tenants/t1/customers"))
    access = [e for e in lines if e["logger"] == "kyc_host.access"]
    assert access, lines
    assert all(e["tenant"] == "t1" for e in access), lines
    assert all(e["request_id"] == headers["X-Request-Id"] for e in lines)
    # Another tenant's route: 404, and nothing logged under that tenant's name.
    _, lines = await served(json_log, lambda: admin_get("/api/v1/tenants/t2/customers"))
    assert lines
    assert all(e.get("tenant") != "t2" for e in lines), lines


async def raw_request(srv: RunningServer, head: bytes) -> tuple[int, dict[str, str]]:
    """Send a hand-made request head (bytes a client library would refuse to send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
    try:
        writer.write(head)
        await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers
    finally:
        writer.close()
        await writer.wait_closed()


async def test_client_request_id_is_replaced_never_logged(
        two_tenants: RunningServer, json_log: io.StringIO) -> None:
    huge = "HUGECANARY" * 3000  # 30 kB
    forged = 'FORGEDCANARY"}, {"level": "error", "request_id": "0000000000000000'
    sent = [  # (header lines, the status: Tornado itself refuses control characters)
        (b"X-Request-Id: " + huge.encode() + b"\r\n", {200}),
        (b"X-Request-Id: " + forged.encode() + b"\r\n", {200}),
        # An obsolete folded header: a continuation line is the closest a client gets to
        # a newline inside a value.
        (b"X-Request-Id: FOLDCANARY\r\n\tinjected-line\r\n", {200, 400}),
        (b"X-Request-Id: ESCCANARY\x1b[31m\r\n", {400}),
    ]
    for header, expected in sent:
        start = len(json_log.getvalue())
        status, headers = await raw_request(
            two_tenants, b"GET /.well-known/stellar.toml HTTP/1.1\r\nHost: a.test\r\n"
            + header + b"Connection: close\r\n\r\n")
        assert status in expected, (status, header[:40])
        if status == 400:  # refused before any handler ran: nothing logged by kyc_host
            assert json_log.getvalue()[start:] == ""
            continue
        rid = headers["x-request-id"]
        assert REQUEST_ID.fullmatch(rid), rid
        raw = json_log.getvalue()[start:]
        lines = lines_during(json_log, start)
        assert lines
        assert all(e["request_id"] == rid for e in lines)
        for canary in ("HUGECANARY", "FORGEDCANARY", "FOLDCANARY", "injected-line", "\x1b"):
            assert canary not in raw


# --- the suite-wide log canary (tests/conftest.py) -------------------------------------------


def test_log_canary_sees_debug_lines_and_leaves_caplog_as_it_was(
        caplog: pytest.LogCaptureFixture) -> None:
    """The autouse ``log_canary`` fixture is attached to this test too: its handler gets a
    kyc_host DEBUG line and flags each kind of secret, while ``caplog`` (root at WARNING, as
    without the canary) does not get the DEBUG line. The hits are cleared at the end, else
    the fixture would fail this test."""
    [canary] = [h for h in logging.getLogger().handlers if isinstance(h, _CanaryHandler)]
    seed = Keypair.random()
    jwt_like = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJHQSJ9.c2lnbmF0dXJl"
    log = logging.getLogger("kyc_host.probe")
    muxed = MuxedAccount(seed.public_key, 2**64 - 1).account_muxed  # 69 base32 characters
    clean = [f"account {seed.public_key}", f"account {muxed}", "S" * 70, "Bearer <token>",
             "request 0123456789abcdef", "eyJ alone is no token"]
    leaks = [jwt_like, jwt_like.rsplit(".", 1)[0] + ".", seed.secret,
             "Authorization: Bearer abcdefghijklmnop0123", "bearer\tQUJDREVGR0hJSktMTU5PUA=="]
    try:
        for text in clean + leaks:
            log.debug("value %s", text)
        assert len(canary.hits) == len(leaks)
        for line, text in zip(canary.hits, leaks, strict=True):
            assert json.loads(line)["msg"] == f"value {text}"
        assert not [r for r in caplog.records if r.name == "kyc_host.probe"]
        log.warning("value %s", "seen")  # what caplog saw before, it still sees
        assert [r.getMessage() for r in caplog.records if r.name == "kyc_host.probe"] == [
            "value seen"]
        with caplog.at_level(logging.DEBUG, logger="kyc_host"):  # a test's own level wins
            log.debug("value %s", "debug wanted")
        assert caplog.records[-1].getMessage() == "value debug wanted"
    finally:
        canary.hits.clear()
