"""Schema-driven fuzz of every wallet-facing route (issue 9 item 5; reliability-plan B3, B4).

The wallet-facing OpenAPI document is read from the running server (admin listener,
``/api/v1/openapi-public.json``) and validated as OpenAPI 3.1; every operation it lists gets
the cases of tests/sep12/public_fuzz.py (valid, each parameter and body property broken, in
JSON, form and multipart, hand-made malformed XDR/multipart/JSON, wrong credentials), sent as
wallet W1 of tenant t1 with a real SEP-10 token (GET /auth, signed, POST /auth; Horizon is a
local stand-in). W1 has a customer with a file; bystanders: customer B of another wallet on
t1 and customer C2 on t2, each with a file.

After every case:
- the status is below 500 and documented for the operation, and a JSON answer fits its
  schema (OpenApiChecker against the served document);
- a 4xx body is exactly ``{"error": "<text>"}``;
- a 4xx left the store (every tenant collection of t1 and t2, and the platform's) exactly as it
  was — except a wrong verification code, which counts the attempt on W1's own record by
  design (sep12_service: ``_check_codes``). The callback worker's background writes are left
  out: outbox events are compared by id and customer only, leases and wake-up markers not at
  all;
- t2's data and everything of customer B is unchanged, whatever the answer.

``KYC_FUZZ_CASES`` sets the number of cases (default 1,700 on SQLite, 500 on MongoDB, whose
server is much slower per snapshot); the reliability plan's figure is 10,000.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from jsonschema import ValidationError
from openapi_spec_validator import validate
from stellar_sdk import Keypair, TransactionEnvelope

from conftest import MakeServer, RunningServer
from kyc_host.store.schema import COLLECTIONS
from management.mgmt_helpers import OpenApiChecker
from sep10.sep10_helpers import PASSPHRASE, HorizonStub, sign
from sep10.sep10_helpers import Wallet as AuthWallet
from sep12.public_fuzz import (
    FRESH_XDR,
    T2_TOKEN,
    W1_FILE,
    W1_ID,
    W1_TOKEN,
    XDR_MUTATIONS,
    Case,
    Known,
    WalletFuzz,
    is_valid,
)
from sep12.sep12_helpers import ALICE, PNG, Wallet, kyc_doc, png_of_size

SEED = 20261126
DEFAULT_CASES = {"sqlite": 1700, "mongo": 500}
LIMITS = {"max_file_bytes": 64 * 1024, "max_request_bytes": 256 * 1024,
          "max_files_per_identity": 100_000}
#: Written by the callback worker in the background: compared by event id only / not at all.
OUTBOX, SKIPPED = "outbox", frozenset({"outbox_leases", "outbox_wake"})
WRONG_CODE = "wrong verification code"

Snapshot = dict[tuple[str, str, str], str]


@dataclass
class World:
    """The running server, wallet W1 (keys, real token, customer) and the known ids; the
    markers of a case (public_fuzz.MARKERS, the XDR markers) are replaced from here."""

    srv: RunningServer
    keypair: Keypair
    auth: AuthWallet
    token: str
    t2_token: str
    known: Known
    w1_id: str = ""
    w1_file: str = ""
    last_signed: str = ""
    unsigned: str = ""  # a fresh challenge of t1, not signed by the wallet
    t2_signed: str = ""  # a fresh challenge of t2, signed by the wallet
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))

    async def create_w1(self) -> None:
        """W1's customer with a photo (again after a DELETE erased it)."""
        wallet = Wallet(self.srv, "a.test", "t1", keypair=self.keypair)
        wallet.token = self.token
        reply = await wallet.put_multipart([*((k, v, None) for k, v in ALICE.items()),
                                            ("photo_id_front", png_of_size(300, 1), "a.png")])
        assert reply.status == 202, reply.body
        self.w1_id = reply.json["id"]
        files = await self.srv.services.store.tenant("t1", "files").find(
            {"customer_id": self.w1_id})
        self.w1_file = str(files[0]["_id"])

    async def fresh_xdr(self, host: str = "a.test") -> str:
        return sign(await self.auth.challenge(host, account=self.keypair.public_key),
                    self.keypair)

    async def xdr(self, n: int) -> str:
        """Mutation ``n`` (public_fuzz.XDR_MUTATIONS) of a freshly signed challenge."""
        signed = await self.fresh_xdr()
        raw = base64.b64decode(signed)
        at = self.rng.randrange(len(raw))
        return [
            lambda: signed[: len(signed) // 2],
            lambda: signed[:40] + ("A" if signed[40] != "A" else "B") + signed[41:],
            lambda: base64.b64encode(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:]).decode(),
            lambda: self.unsigned,
            lambda: sign(signed, Keypair.random()),
            lambda: _signed_twice(signed),
            lambda: signed + "AAAA",
            lambda: signed.replace("+", "-").replace("/", "_"),
            lambda: "\n".join(signed[i:i + 60] for i in range(0, len(signed), 60)),
            lambda: self.t2_signed,
            lambda: "A" * 60_000,
            lambda: self.last_signed or signed,
            lambda: "",
        ][n]()

    async def materialize(self, case: Case) -> tuple[str, bytes | None, dict[str, str]]:
        """The case's path, body and headers with every marker replaced."""
        values = {W1_ID: self.w1_id, W1_FILE: self.w1_file, W1_TOKEN: self.token,
                  T2_TOKEN: self.t2_token}
        body = case.body
        if body is not None and b"zzXDR" in body:
            self.unsigned = await self.auth.challenge("a.test",
                                                      account=self.keypair.public_key)
            self.t2_signed = sign(await self.auth.challenge(
                "b.test", account=self.keypair.public_key), self.keypair)
            if FRESH_XDR.encode() in body:
                self.last_signed = values[FRESH_XDR] = await self.fresh_xdr()
            for n in range(len(XDR_MUTATIONS)):
                marker = f"zzXDR{n}zz"
                if marker.encode() in body:
                    values[marker] = await self.xdr(n)
        path = case.path
        for marker, value in values.items():
            path = path.replace(marker, quote(value, safe=""))
            if body is not None:
                body = body.replace(marker.encode(), _escape(value, case.encoding))
        headers = {}
        if case.auth is not None:
            auth = case.auth
            for marker, value in values.items():
                auth = auth.replace(marker, value)
            headers["Authorization"] = auth
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type
        return path, body, headers


def _signed_twice(xdr: str) -> str:
    """The same client signature twice (stellar-sdk refuses to add it again itself)."""
    envelope = TransactionEnvelope.from_xdr(xdr, PASSPHRASE)
    envelope.signatures.append(envelope.signatures[-1])
    twice: str = envelope.to_xdr()
    return twice


def _escape(value: str, encoding: str) -> bytes:
    if encoding == "json":
        return json.dumps(value)[1:-1].encode()
    if encoding == "form":
        return quote(value, safe="").encode()
    return value.encode()


async def _world(make_server: MakeServer, horizon: HorizonStub) -> World:
    srv = await make_server(
        kyc_doc("t1", ["a.test"], plugin="demo_anchor", horizon_url=horizon.url, limits=LIMITS),
        kyc_doc("t2", ["b.test"], plugin="demo_anchor", horizon_url=horizon.url, limits=LIMITS))
    keypair = Keypair.random()
    auth = AuthWallet(srv)
    token = await auth.token("a.test", keypair, account=keypair.public_key)  # real SEP-10
    bystander = Wallet(srv, "a.test", "t1")
    b_id = await _customer_with_file(bystander)
    t2 = Wallet(srv, "b.test", "t2")
    c2_id = await _customer_with_file(t2)
    store = srv.services.store
    b_file = (await store.tenant("t1", "files").find({"customer_id": b_id}))[0]["_id"]
    c2_file = (await store.tenant("t2", "files").find({"customer_id": c2_id}))[0]["_id"]
    known = Known(keypair.public_key, bystander.account, b_id, str(b_file), c2_id, str(c2_file),
                  "a.test")
    world = World(srv, keypair, auth, token, Wallet(srv, "b.test", "t2", keypair=keypair).token,
                  known)
    await world.create_w1()
    return world


async def _customer_with_file(wallet: Wallet) -> str:
    reply = await wallet.put_multipart([*((k, v, None) for k, v in ALICE.items()),
                                        ("photo_id_front", PNG, "id.png")])
    assert reply.status == 202, reply.body
    customer_id: str = reply.json["id"]
    return customer_id


async def _snapshot(srv: RunningServer) -> Snapshot:
    """Every stored document of t1, t2 and the platform, by (scope, collection, _id)."""
    store = srv.services.store
    out: Snapshot = {}
    for name, spec in COLLECTIONS.items():
        if name in SKIPPED:
            continue
        scopes = ("t1", "t2") if spec.scope == "tenant" else ("platform",)
        for scope in scopes:
            coll = store.platform(name) if scope == "platform" else store.tenant(scope, name)
            for doc in await coll.find({}):
                kept = ({"customer_id": doc.get("customer_id")} if name == OUTBOX else doc)
                out[(scope, name, str(doc["_id"]))] = json.dumps(kept, sort_keys=True,
                                                                 default=repr)
    return out


def _changed(before: Snapshot, after: Snapshot) -> set[tuple[str, str, str]]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _bystander(key: tuple[str, str, str], snap: Snapshot, known: Known) -> bool:
    """Does this row belong to t2, or to customer B of t1?"""
    scope, _, row_id = key
    if scope == "t2":
        return True
    if scope != "t1":
        return False
    if row_id == known.bystander_id or row_id.startswith(known.bystander_file):
        return True
    return known.bystander_id in snap.get(key, "")


async def _run(make_server: MakeServer, backend: str) -> dict[str, Any]:
    kind = "sqlite" if backend.startswith("sqlite") else "mongo"
    count = int(os.environ.get("KYC_FUZZ_CASES", DEFAULT_CASES[kind]))
    horizon = HorizonStub()  # no accounts: every login is by the master key (SEP-10 §3.3)
    try:
        world = await _world(make_server, horizon)
        reply = await world.srv.fetch("127.0.0.1", "/api/v1/openapi-public.json", admin=True)
        assert reply.code == 200
        doc = json.loads(reply.body)
        validate(doc)  # OpenAPI 3.1 (openapi-spec-validator, as the admin tests use)
        checker = OpenApiChecker(doc)
        fuzz = WalletFuzz(doc, world.known, SEED)
        cases = await asyncio.to_thread(fuzz.cases, count)  # seconds of work: not on the loop
        return await _send_all(world, checker, cases, {op for _, _, o in fuzz.operations()
                                                       for op in [o["operationId"]]})
    finally:
        await horizon.close()


async def _send_all(world: World, checker: OpenApiChecker, cases: list[Case],
                    operation_ids: set[str]) -> dict[str, Any]:
    srv, known = world.srv, world.known
    state = await _snapshot(srv)
    bystanders = {k: v for k, v in state.items() if _bystander(k, state, known)}
    statuses: dict[int, int] = {}
    by_op: dict[str, set[int]] = {}
    refused_valid: list[Any] = []
    for case in cases:
        path, body, headers = await world.materialize(case)
        response = await srv.fetch("a.test", path, method=case.method, body=body,
                                   headers=headers)
        status = response.code
        statuses[status] = statuses.get(status, 0) + 1
        by_op.setdefault(case.op, set()).add(status)
        where = (case.label, case.method, path[:200], status, response.body[:300])
        if is_valid(case) and case.op != "putVerification":  # no code is pending: 400
            refused_valid += [where] if status >= 400 else []
        assert 200 <= status < 500, where
        media = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        parsed: Any = (response.body.decode() if media == "text/plain"
                       else json.loads(response.body) if response.body else None)
        try:
            checker.check(case.method, path.split("?", 1)[0], status, parsed, media)
        except (AssertionError, ValidationError) as exc:
            raise AssertionError(("answer not as documented", where, str(exc)[:300])) from None
        after = await _snapshot(srv)
        changed = _changed(state, after)
        if status >= 400:
            assert isinstance(parsed, dict), where
            assert set(parsed) == {"error"}, where
            assert isinstance(parsed["error"], str), where
            allowed = ({("t1", "customers", world.w1_id)} if WRONG_CODE in parsed["error"]
                       else set())
            assert changed <= allowed, ("half-written", where, sorted(changed))
        now = {k: v for k, v in after.items() if _bystander(k, after, known)}
        assert now == bystanders, ("a bystander changed", where,
                                   sorted(_changed(bystanders, now)))
        state = after
        if case.op == "deleteCustomer" and status == 200:
            await world.create_w1()  # later cases address W1's customer again
            state = await _snapshot(srv)
    assert by_op.keys() == operation_ids  # every operation of the document was fuzzed
    assert refused_valid == []  # a request valid by the document (and the data) is served
    return {"cases": len(cases), "statuses": dict(sorted(statuses.items())),
            "by_op": {k: sorted(v) for k, v in sorted(by_op.items())}}


async def test_public_schema_fuzz(make_server: MakeServer, backend: str) -> None:
    result = await _run(make_server, backend)
    print(json.dumps(result))  # noqa: T201 - the run's figures, shown with pytest -s
    statuses = result["statuses"]
    assert sum(statuses.values()) == result["cases"]
    assert statuses.get(400, 0) > result["cases"] // 3  # the cases reach validation
    assert sum(n for s, n in statuses.items() if s < 300) >= 10  # valid cases are served
    for status in (401, 404, 413, 415):
        assert statuses.get(status, 0) > 0, status


async def test_json_lone_surrogates_are_refused(make_server: MakeServer, backend: str) -> None:
    """Found by the fuzz: a JSON escape spelling a lone surrogate reached ``str.encode`` (a
    text memo's byte length) and answered 500. Now 400 like invalid UTF-8 in a form, on every
    body that goes through sep12_body, with nothing written."""
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="demo_anchor"))
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await _customer_with_file(wallet)
    before = await _snapshot(srv)
    for method, path in (("PUT", "/kyc/customer"), ("PUT", "/kyc/customer/callback"),
                         ("DELETE", f"/kyc/customer/{wallet.account}")):
        for body in (b'{"memo": "\\ud800", "memo_type": "text"}',
                     b'{"first_name": "a\\udfffb"}', b'{"url": "https://a.test/\\ud800"}'):
            reply = await wallet.call(method, path, body=body, content_type="application/json")
            assert reply.status == 400, (method, path, body, reply.body)
            assert "not valid UTF-8 text" in reply.json["error"]
    assert await _snapshot(srv) == before
    assert (await wallet.get()).json["id"] == customer_id
