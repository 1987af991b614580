"""Forged SEP-10 tokens and odd Authorization forms over real HTTP on every SEP-12 route
(reliability-plan A1/A2, target row "Token validation: 0 acceptances").

The routes come from the public OpenAPI document (management/openapi_public.py): every
operation with a ``security`` requirement is called, so a new route is covered when it is
documented (and test_openapi_public.py fails when it is not). Each call carries a request the
route would act on with a valid token -- the victim's customer id, a right verification code,
a file -- and the suite proves that by sending the same requests with the valid token last
(the control). Requests go over keep-alive connections (isolation_helpers.KeepAlive).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from conftest import MakeServer, RunningServer
from kyc_host.management.openapi_public import wallet_document
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.schema import COLLECTIONS
from sep10.forged_tokens import forged_variants
from sep12.isolation_helpers import KeepAlive
from sep12.sep12_helpers import ALICE, PNG, Reply, Wallet, multipart, tenant_of, two_kyc_tenants

Headers = Sequence[tuple[str, str]]


# --- the routes and a plausible request for each --------------------------------------------


@dataclass(frozen=True)
class Victim:
    """What the plausible requests name: a customer that exists, with a pending code."""

    wallet: Wallet
    customer_id: str
    file_id: str
    code: str


@dataclass(frozen=True)
class Call:
    label: str  # "PUT /kyc/customer"
    method: str
    target: str  # path and query
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def secured_operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation) for every operation that needs a SEP-10 token."""
    return [(method.upper(), path, op)
            for path, item in wallet_document()["paths"].items()
            for method, op in item.items() if op.get("security")]


def _json(data: Mapping[str, Any]) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    return json.dumps(dict(data)).encode(), (("Content-Type", "application/json"),)


def _generic(op: dict[str, Any]) -> tuple[dict[str, str], bytes, tuple[tuple[str, str], ...]]:
    """A request built from the document alone, for an operation this module does not know:
    its required query parameters and its body schema's required properties, as "x"."""
    document = wallet_document()
    parameters = [document["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                  for p in op.get("parameters", [])]
    query = {p["name"]: "x" for p in parameters if p["in"] == "query" and p["required"]}
    content = op.get("requestBody", {}).get("content", {})
    if not content:
        return query, b"", ()
    media, spec = next(iter(content.items()))
    schema = spec["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    fields = {name: "x" for name in schema.get("required", [])}
    if media == "multipart/form-data":
        raw, content_type = multipart([(k, v, None) for k, v in fields.items()])
        return query, raw, (("Content-Type", content_type),)
    body, headers = _json(fields)
    return query, body, headers


def plausible(method: str, path: str, op: dict[str, Any], victim: Victim) -> Call:
    """A request that acts on ``victim``'s data when it carries ``victim``'s token."""
    query: dict[str, str] = {}
    body, headers = b"", ()
    match op["operationId"]:
        case "getCustomer":
            query = {"id": victim.customer_id}
        case "putCustomer":
            body, headers = _json({"id": victim.customer_id, "first_name": "Mallory"})
        case "putVerification":
            body, headers = _json({"id": victim.customer_id,
                                   "mobile_number_verification": victim.code})
        case "putCallback":
            body, headers = _json({"url": "https://wallet.example/kyc-callback"})
        case "listFiles":
            query = {"file_id": victim.file_id}
        case "uploadFile":
            raw, content_type = multipart([("file", PNG, "id.png")])
            body, headers = raw, (("Content-Type", content_type),)
        case "deleteCustomer":
            pass
        case _:
            query, body, headers = _generic(op)
    target = path.replace("{account}", victim.wallet.account)
    target += f"?{urlencode(query)}" if query else ""
    return Call(f"{method} {path}", method, target, body, headers)


def plausible_calls(victim: Victim) -> list[Call]:
    """One call per secured operation; DELETE last, so the control can run them in order."""
    calls = [plausible(m, p, op, victim) for m, p, op in secured_operations()]
    return sorted(calls, key=lambda c: c.method == "DELETE")


# --- setup and checks ------------------------------------------------------------------------


async def make_victim(srv: RunningServer, host: str, tenant_id: str,
                      keypair_of: Wallet | None = None) -> Victim:
    """A customer with a pending mobile_number code and an uploaded file."""
    wallet = Wallet(srv, host, tenant_id, keypair=keypair_of.keypair if keypair_of else None)
    customer_id = await wallet.create({**ALICE, "mobile_number": "+14155552671"})
    upload = await wallet.upload(PNG)
    assert upload.status == 200, upload.body
    service = service_for(tenant_of(srv, tenant_id), srv.services.store, srv.services.settings)
    code = await service.customers.verification_code(customer_id, "mobile_number")
    assert code is not None
    return Victim(wallet, customer_id, upload.json["file_id"], code)


async def setup(make_server: MakeServer) -> tuple[RunningServer, Victim, Victim]:
    """T1 (a.test) and T2 (b.test); the same G is a customer on both."""
    srv = await two_kyc_tenants(make_server)
    v1 = await make_victim(srv, "a.test", "t1")
    v2 = await make_victim(srv, "b.test", "t2", keypair_of=v1.wallet)
    return srv, v1, v2


async def snapshot(srv: RunningServer) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every document of both tenants and the platform's tenant records, sorted by id."""
    store = srv.services.store
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for spec in COLLECTIONS.values():
        if spec.scope == "tenant":
            for tenant_id in ("t1", "t2"):
                docs = await store.tenant(tenant_id, spec.name).find({})
                out[(tenant_id, spec.name)] = sorted(docs, key=lambda d: str(d["_id"]))
        elif spec.name in ("tenants", "tenant_hosts", "platform_audit", "token_index"):
            docs = await store.platform(spec.name).find({})
            out[("", spec.name)] = sorted(docs, key=lambda d: str(d["_id"]))
    return out


def refusal_problem(reply: Reply) -> str | None:
    """None if ``reply`` is a 401/403 JSON {"error": ...} naming the token or header."""
    if reply.status not in (401, 403):
        return f"status {reply.status}"
    if not reply.headers.get("content-type", "").startswith("application/json"):
        return f"content type {reply.headers.get('content-type')!r}"
    try:
        body = reply.json
    except ValueError:
        return "body is not JSON"
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"],
                                                                             str):
        return f"body {body!r}"
    message = body["error"].lower()
    if "token" not in message and "authorization" not in message:
        return f"message does not name the problem: {body['error']!r}"
    return None


def with_token(token: str | None, extra: Headers = ()) -> list[tuple[str, str]]:
    return [*extra, *((("Authorization", f"Bearer {token}"),) if token is not None else ())]


async def send_all(client: KeepAlive, host: str, calls: Sequence[Call],
                   auth: Mapping[str, list[tuple[str, str]]]) -> list[str]:
    """Each auth variant on each call; the descriptions of those not properly refused."""
    failures = []
    for name, auth_headers in auth.items():
        for call in calls:
            reply = await client.request(host, call.method, call.target,
                                         [*call.headers, *auth_headers], call.body)
            problem = refusal_problem(reply)
            if problem is not None:
                failures.append(f"{host} {call.label} with {name}: {problem} {reply.body[:120]!r}")
    return failures


async def control(client: KeepAlive, host: str, calls: Sequence[Call], token: str) -> None:
    """The same calls with the right token succeed (so the refusals above can fail)."""
    for call in calls:
        reply = await client.request(host, call.method, call.target,
                                     [*call.headers, *with_token(token)], call.body)
        assert 200 <= reply.status < 300, (host, call.label, reply.status, reply.body)


# --- 1: every forged token on every route ------------------------------------------------------


async def test_forged_tokens_are_refused_on_every_route(make_server: MakeServer) -> None:
    srv, v1, v2 = await setup(make_server)
    ops = {op["operationId"] for _, _, op in secured_operations()}
    assert ops >= {"getCustomer", "putCustomer", "putVerification", "putCallback",
                   "listFiles", "uploadFile", "deleteCustomer"}
    t1, t2 = tenant_of(srv, "t1"), tenant_of(srv, "t2")
    plans = {}
    for victim, tenant, other, foreign in ((v1, t1, t2, v2), (v2, t2, t1, v1)):
        variants: dict[str, str | None] = {
            **forged_variants(tenant, other, victim.wallet.token, victim.wallet.keypair),
            "no Authorization header": None,
            f"{other.id}'s valid token for the same account": foreign.wallet.token,
        }
        assert len(variants) >= 40
        plans[victim.wallet.host] = (victim, {n: with_token(t) for n, t in variants.items()})

    client = KeepAlive(srv.public_port)
    before = await snapshot(srv)
    failures = []
    for host, (victim, auth) in plans.items():
        failures += await send_all(client, host, plausible_calls(victim), auth)
    assert failures == []
    assert await snapshot(srv) == before  # nothing written, nothing erased
    sent = client.requests

    for host, (victim, _) in plans.items():
        await control(client, host, plausible_calls(victim), victim.wallet.token)
    assert (await v1.wallet.get()).status == 200  # the control's DELETE went through
    assert (await v1.wallet.get(id=v1.customer_id)).status == 404
    await client.close()
    assert sent >= 2 * 40 * len(ops)


# --- 2: Authorization forms, tokens outside the header -----------------------------------------


async def test_tokens_outside_the_header_and_malformed_headers_are_refused(
        make_server: MakeServer) -> None:
    srv, v1, _ = await setup(make_server)
    token = v1.wallet.token
    forged = forged_variants(tenant_of(srv, "t1"), tenant_of(srv, "t2"), token,
                             v1.wallet.keypair)["other tenant's key"]
    basic = base64.b64encode(f"{v1.wallet.account}:{token}".encode()).decode()
    forms: dict[str, list[tuple[str, str]]] = {
        # Each key is one request form; query-string forms carry no Authorization header.
        "two Authorization headers, both valid": [("Authorization", f"Bearer {token}")] * 2,
        "two Authorization headers, forged then valid": [
            ("Authorization", f"Bearer {forged}"), ("Authorization", f"Bearer {token}")],
        "two credentials in one header": [("Authorization", f"Bearer {token}, Bearer {token}")],
        "Bearer<TAB>token": [("Authorization", f"Bearer\t{token}")],  # RFC 7235: SP only
        "Basic account:token": [("Authorization", f"Basic {basic}")],
        "Basic token": [("Authorization", f"Basic {token}")],
        "token without a scheme": [("Authorization", token)],
        "JWT scheme": [("Authorization", f"JWT {token}")],
        "trailing comma": [("Authorization", f"Bearer {token},")],
        "token and a second word": [("Authorization", f"Bearer {token} x")],
        "lower-case bearer, forged token": [("Authorization", f"bearer {forged}")],
        "token as a cookie": [("Cookie", f"jwt={token}; token={token}")],
    }
    calls = plausible_calls(v1)
    in_query = [replace(c, target=c.target + ("&" if "?" in c.target else "?")
                                  + urlencode({name: token}))
                for name in ("jwt", "token", "access_token") for c in calls]
    client = KeepAlive(srv.public_port)
    before = await snapshot(srv)
    failures = await send_all(client, "a.test", calls, forms)
    failures += await send_all(client, "a.test", in_query, {"no header": []})
    assert failures == []
    assert await snapshot(srv) == before

    # RFC 7235 §2.1: the scheme is case-insensitive, 1*SP separates it from the token, and
    # trailing whitespace is not part of a header's value (RFC 9110 §5.5): all authenticate.
    reads = [c for c in calls if c.method == "GET"]
    assert reads
    for value in (f"bearer {token}", f"BEARER {token}", f"Bearer  {token}",
                  f"Bearer {token}   ", f"Bearer {token}\t"):
        for call in reads:
            reply = await client.request("a.test", call.method, call.target,
                                         [("Authorization", value)])
            assert reply.status == 200, (value[:8], call.label, reply.status, reply.body)
    await client.close()
