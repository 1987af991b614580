"""Host routing beyond stellar.toml (reliability-plan B7): SEP-10 and SEP-12 under Host
variants, malformed and duplicate Hosts, absolute-form request lines and forwarding headers.

T1 serves a.test, T2 serves b.test; the same Stellar account is a customer of both. Each probe
goes out as raw bytes (tests/faults/raw_http.py: no client normalises the Host) with T1's
token. An answer is acceptable only if it came from the tenant the Host header names -- T1's
own customer for a.test variants, T1's token refused (401/403 JSON) for b.test variants, a
challenge signed by that tenant for GET /auth -- or is a 400/404/421 that reaches no tenant.
Never a 5xx, never the other tenant's data, and no write lands on either tenant.
(tests/api/test_sep1.py probes the same hosts on stellar.toml only.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from stellar_sdk import Keypair
from stellar_sdk.operation import ManageData

from conftest import MakeServer, RunningServer
from faults.raw_http import exchange
from sep10.sep10_helpers import decode, sign
from sep12.sep12_helpers import Wallet, tenant_of, two_kyc_tenants

A_VARIANTS = ["a.test", "A.TEST", "a.test.", "a.test:443", "A.TEST:443", "a.test:8443",
              "A.Test.:80"]
B_VARIANTS = ["b.test", "B.TEST", "b.test.", "b.test:443", "B.TEST:443", "b.test:8443",
              "B.Test.:80"]
MALFORMED = ["a.test@b.test", "b.test@a.test", "a.test/x?", "b.test/kyc/customer?",
             "a.test b.test", "a.test:b.test", "b.test:", "a.test,b.test", "b.test:443:1",
             "user:pw@b.test", "b.test%2e", "", "b.test\tb.test"]
CANARY = "Zqhostcanary"
REFUSED = (400, 404, 421)  # 400 may be Tornado's own (bare) answer to an invalid Host


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Scene:
    srv: RunningServer
    w1: Wallet  # T1's wallet: its token is the one probed with
    w2: Wallet  # the same account on T2
    c1: str
    c2: str


@pytest.fixture
async def scene(make_server: MakeServer) -> Scene:
    srv = await two_kyc_tenants(make_server)
    w1 = Wallet(srv, "a.test", "t1")
    w2 = Wallet(srv, "b.test", "t2", keypair=w1.keypair)
    return Scene(srv, w1, w2, await w1.create(), await w2.create())


async def send(srv: RunningServer, method: str, target: str, hosts: Sequence[str],
               token: str | None = None, headers: Mapping[str, str] | None = None,
               body: bytes = b"") -> Answer:
    """One request as raw bytes: ``hosts`` become that many Host lines, as given."""
    lines = [f"{method} {target} HTTP/1.1", *(f"Host: {h}" for h in hosts)]
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    if body or method in ("PUT", "POST"):
        all_headers["Content-Length"] = str(len(body))
        all_headers.setdefault("Content-Type", "application/json")
    all_headers["Connection"] = "close"
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    outcome = await exchange(srv.public_port, ("\r\n".join(lines) + "\r\n\r\n").encode(), body,
                             read_timeout=30)
    assert outcome.kind == "answered", (method, target, hosts, outcome.detail)
    assert outcome.status < 500, (method, target, hosts, outcome.status, outcome.body)
    return Answer(outcome.status, outcome.headers, outcome.body)


def put_body() -> bytes:
    return json.dumps({"first_name": CANARY, "last_name": CANARY}).encode()


def assert_error(answer: Answer, statuses: Sequence[int], what: object) -> None:
    """One of ``statuses``; a JSON ``{"error": ...}`` unless it is Tornado's bare 400."""
    assert answer.status in statuses, (what, answer.status, answer.body)
    if answer.status != 400 or answer.body:
        assert answer.headers.get("content-type", "").startswith("application/json"), what
        assert set(answer.json) == {"error"}, (what, answer.body)
    for marker in (b"Traceback", b"kyc_host", b"Exception"):
        assert marker not in answer.body, (what, answer.body)


def assert_no_tenant_data(scene: Scene, answer: Answer, what: object) -> None:
    for secret in (scene.c1, scene.c2, tenant_of(scene.srv, "t1").secrets.signing_keypair
                   .public_key, tenant_of(scene.srv, "t2").secrets.signing_keypair.public_key):
        assert secret.encode() not in answer.body, (what, answer.body)


def challenge_tenant(scene: Scene, answer: Answer) -> str:
    """Which tenant signed this GET /auth challenge (its source account and home domain)."""
    assert answer.status == 200, answer.body
    envelope = decode(answer.json["transaction"])
    source = envelope.transaction.source.account_id
    operation = envelope.transaction.operations[0]
    assert isinstance(operation, ManageData)
    for tenant_id, host in (("t1", "a.test"), ("t2", "b.test")):
        if source == tenant_of(scene.srv, tenant_id).secrets.signing_keypair.public_key:
            assert operation.data_name == f"{host} auth"
            return tenant_id
    raise AssertionError(f"challenge signed by no tenant: {source}")


async def assert_nothing_written(scene: Scene) -> None:
    """Both customers still exist under their ids, and neither tenant gained a customer."""
    assert (await scene.w1.get()).json["id"] == scene.c1
    assert (await scene.w2.get()).json["id"] == scene.c2
    for tenant_id in ("t1", "t2"):
        store = scene.srv.services.store
        assert await store.tenant(tenant_id, "customers").count({}) == 1, tenant_id


async def test_t1_token_under_every_variant_of_t2_host_is_refused(scene: Scene) -> None:
    token = scene.w1.token
    for host in B_VARIANTS:
        for method, body in (("GET", b""), ("PUT", put_body())):
            answer = await send(scene.srv, method, "/kyc/customer", [host], token, body=body)
            assert_error(answer, (401, 403), (host, method))
            assert_no_tenant_data(scene, answer, host)
        # The variant does reach T2: T2's own token is served T2's customer.
        answer = await send(scene.srv, "GET", "/kyc/customer", [host], scene.w2.token)
        assert answer.status == 200, (host, answer.body)
        assert answer.json["id"] == scene.c2, (host, answer.body)
    for host in A_VARIANTS:  # and T1's token works on every variant of T1's host
        answer = await send(scene.srv, "GET", "/kyc/customer", [host], token)
        assert answer.status == 200, (host, answer.body)
        assert answer.json["id"] == scene.c1, (host, answer.body)
    await assert_nothing_written(scene)


async def test_auth_under_host_variants_is_the_named_tenants(scene: Scene) -> None:
    client = Keypair.random()
    target = f"/auth?account={client.public_key}"
    for hosts, tenant_id in ((A_VARIANTS, "t1"), (B_VARIANTS, "t2")):
        for host in hosts:
            answer = await send(scene.srv, "GET", target, [host], scene.w1.token)
            assert challenge_tenant(scene, answer) == tenant_id, host
    # T1's signed challenge posted under any variant of T2's host is refused.
    t1_challenge = (await send(scene.srv, "GET", target, ["a.test"])).json["transaction"]
    body = json.dumps({"transaction": sign(t1_challenge, client)}).encode()
    for host in B_VARIANTS:
        answer = await send(scene.srv, "POST", "/auth", [host], body=body)
        assert_error(answer, (400, 401, 403), host)
        assert b"token" not in answer.body


async def test_malformed_hosts_with_a_valid_token_reach_no_tenant(scene: Scene) -> None:
    client = Keypair.random().public_key
    for host in MALFORMED:
        for method, target, body in (("GET", f"/auth?account={client}", b""),
                                     ("GET", "/kyc/customer", b""),
                                     ("PUT", "/kyc/customer", put_body())):
            answer = await send(scene.srv, method, target, [host], scene.w1.token, body=body)
            assert_error(answer, REFUSED, (host, method, target))
            assert_no_tenant_data(scene, answer, (host, target))
    await assert_nothing_written(scene)


async def test_duplicate_host_headers_with_a_valid_token_are_refused(scene: Scene) -> None:
    for hosts in (["a.test", "b.test"], ["b.test", "a.test"], ["a.test", "a.test"],
                  ["b.test", "B.TEST"]):
        for method, target, body in (("GET", "/auth", b""), ("GET", "/kyc/customer", b""),
                                     ("PUT", "/kyc/customer", put_body())):
            answer = await send(scene.srv, method, target, hosts, scene.w1.token, body=body)
            assert_error(answer, REFUSED, (hosts, method, target))
            assert_no_tenant_data(scene, answer, (hosts, target))
    await assert_nothing_written(scene)


async def test_absolute_form_request_line_never_switches_tenant(scene: Scene) -> None:
    client = Keypair.random().public_key
    for uri_host, host in (("b.test", "a.test"), ("a.test", "b.test")):
        for method, path, body in (("GET", "/kyc/customer", b""),
                                   ("PUT", "/kyc/customer", put_body()),
                                   ("GET", f"/auth?account={client}", b"")):
            answer = await send(scene.srv, method, f"http://{uri_host}{path}", [host],
                                scene.w1.token, body=body)
            what = (uri_host, host, method, path)
            if answer.status == 200 and path == "/kyc/customer":
                # Served: only ever by the Host's tenant, and T1's token only works on T1.
                assert host == "a.test", what
                assert answer.json["id"] == scene.c1, what
            elif answer.status == 200:
                assert challenge_tenant(scene, answer) == {"a.test": "t1",
                                                           "b.test": "t2"}[host], what
            else:
                assert_error(answer, (*REFUSED, 401, 403), what)
                assert_no_tenant_data(scene, answer, what)
    await assert_nothing_written(scene)


FORWARDING = ["X-Forwarded-Host", "X-Forwarded-Server", "X-Host", "X-Original-Host", "Forwarded"]


def forwarded(name: str, host: str) -> dict[str, str]:
    return {name: f"host={host}" if name == "Forwarded" else host}


async def test_forwarding_headers_never_switch_tenant(scene: Scene) -> None:
    client = Keypair.random().public_key
    for name in FORWARDING:
        # Host a.test naming b.test elsewhere: still T1, and T1's token still T1's customer.
        answer = await send(scene.srv, "GET", "/kyc/customer", ["a.test"], scene.w1.token,
                            headers=forwarded(name, "b.test"))
        assert answer.status == 200, (name, answer.body)
        assert answer.json["id"] == scene.c1, (name, answer.body)
        answer = await send(scene.srv, "GET", f"/auth?account={client}", ["a.test"],
                            headers=forwarded(name, "b.test"))
        assert challenge_tenant(scene, answer) == "t1", name
        # Host b.test naming a.test elsewhere: T2, which refuses T1's token.
        for method, body in (("GET", b""), ("PUT", put_body())):
            answer = await send(scene.srv, method, "/kyc/customer", ["b.test"], scene.w1.token,
                                headers=forwarded(name, "a.test"), body=body)
            assert_error(answer, (401, 403), (name, method))
        # An unknown Host is not rescued by a header naming a known one.
        answer = await send(scene.srv, "GET", "/kyc/customer", ["nope.test"], scene.w1.token,
                            headers=forwarded(name, "a.test"))
        assert_error(answer, (404,), name)
    await assert_nothing_written(scene)
