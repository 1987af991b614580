"""Deterministic fuzz of both SEP-10 endpoints (reliability-plan B1, B2).

- GET: 2,000+ generated queries; every invalid one gets a JSON 400, every valid one a challenge
  for T1's own home domain and web_auth_domain, never a value taken from the request.
- POST: 5,000 mutated bodies (bit flips, truncation, non-base64, structural variants signed
  with T1's real key, fee-bump, foreign keys, broken bodies and content types); not one 5xx,
  not one token, nothing consumed - and the unmutated challenge still logs in afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import string
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from sep10_helpers import (  # noqa: F401
    PASSPHRASE,
    Wallet,
    decode,
    horizon_fixture,
    sign,
    srv_fixture,
    tenant_of,
    wallet_fixture,
)
from stellar_sdk import (
    Account,
    Asset,
    Keypair,
    MuxedAccount,
    TransactionBuilder,
    TransactionEnvelope,
)
from stellar_sdk.sep.stellar_web_authentication import build_challenge_transaction
from tornado.httpclient import HTTPResponse

from conftest import RunningServer

GET_CASES = 2000
POST_CASES = 5000  # reliability-plan B2: at least 5,000 mutants
BATCH = 40


async def run_batched(calls: list[Callable[[], Awaitable[HTTPResponse]]]) -> list[HTTPResponse]:
    out: list[HTTPResponse] = []
    for start in range(0, len(calls), BATCH):
        out += await asyncio.gather(*(call() for call in calls[start:start + BATCH]))
    return out


# --- GET /auth ---


def mutate_strkey(rnd: random.Random, key: str) -> str:
    alphabet = string.ascii_uppercase + "234567"
    kind = rnd.randrange(6)
    if kind == 0:  # one character changed -> bad checksum
        i = rnd.randrange(1, len(key))
        return key[:i] + rnd.choice(alphabet.replace(key[i], "")) + key[i + 1:]
    if kind == 1:
        return key.lower()
    if kind == 2:
        return key[:rnd.choice([54, 55])]
    if kind == 3:
        return key + rnd.choice(alphabet)
    if kind == 4:
        return rnd.choice("CSTXP") + key[1:]
    return "".join(rnd.choice(string.printable) for _ in range(rnd.randrange(0, 80)))


BAD_MEMOS = ["abc", "-1", str(2**64), str(2**64 + 5), "1" * 30, "", " 5", "5 ", "0x1", "1e3",
             "1.5", "\u0661\u0662", "05", "+5", "5\x00"]
BAD_HOME = ["b.test", "", "x" * 300, "a.test.", "a.test:443", "evil.test", "a.tes", "\u00e4.test",
            "a.test/x", "*"]
BAD_CLIENT_DOMAINS = ["wallet.test/x", "wallet.test:8443", "user@wallet.test", "127.0.0.1",
                      "[::1]", "wallet.test%00", "w\u00e4llet.test", "", "wallet",
                      "a" * 70 + ".test", "http://wallet.test", "wallet.test\n", "10.0.0.1",
                      "wallet..test"]


@dataclass(frozen=True)
class GetCase:
    query: str
    valid: bool


def get_cases(rnd: random.Random) -> Iterator[GetCase]:
    while True:
        good = Keypair.random().public_key
        muxed = MuxedAccount(good, rnd.randrange(2**64)).account_muxed
        kind = rnd.randrange(9)
        if kind == 0:
            yield GetCase(rnd.choice(["", "memo=1", "home_domain=a.test", "account="]), False)
        elif kind == 1:
            yield GetCase(urlencode({"account": mutate_strkey(rnd, good)}), False)
        elif kind == 2:
            yield GetCase(urlencode({"account": muxed, "memo": str(rnd.randrange(2**64))}), False)
        elif kind == 3:
            yield GetCase(urlencode({"account": good, "memo": rnd.choice(BAD_MEMOS)}), False)
        elif kind == 4:
            yield GetCase(urlencode({"account": good, "home_domain": rnd.choice(BAD_HOME)}), False)
        elif kind == 5:
            yield GetCase(urlencode({"account": good,
                                     "client_domain": rnd.choice(BAD_CLIENT_DOMAINS)}), False)
        elif kind == 6:
            raw = rnd.choice(["%ff%fe", "%c0%80", "%00", "%ed%a0%80"])
            yield GetCase(f"account={raw}{quote(good)}", False)
        elif kind == 7:
            yield GetCase(f"account={good}&account={good}", False)
        else:  # valid, with the request trying to steer the domains
            params = {"account": rnd.choice([good, muxed]),
                      "home_domain": rnd.choice(["a.test", "A.Test"]),
                      "web_auth_domain": "evil.test", "junk": "x"}
            if params["account"] == good and rnd.random() < 0.5:
                params["memo"] = str(rnd.randrange(2**64))
            yield GetCase(urlencode(params), True)


async def test_get_fuzz(srv: RunningServer, wallet: Wallet) -> None:
    rnd = random.Random(20240610)
    generator = get_cases(rnd)
    cases = [next(generator) for _ in range(GET_CASES)]
    responses = await run_batched([
        (lambda c=c: srv.fetch("a.test", f"/auth?{c.query}")) for c in cases])
    assert not [r.code for r in responses if r.code >= 500]
    server = tenant_of(srv, "t1").secrets.signing_keypair.public_key
    valid = 0
    for case, response in zip(cases, responses, strict=True):
        body = json.loads(response.body)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        if not case.valid:
            assert response.code == 400, (case.query, response.code, body)
            assert set(body) == {"error"}
            continue
        valid += 1
        assert response.code == 200, (case.query, body)
        tx = decode(body["transaction"]).transaction
        assert tx.source.account_id == server
        assert tx.operations[0].data_name == "a.test auth"
        assert [op.data_value for op in tx.operations[1:]] == [b"a.test"]
    assert valid > 100


# --- POST /auth ---


class Mutator:
    """Builds bad transactions from one valid signed challenge ``signed``."""

    def __init__(self, rnd: random.Random, signed: str, client: Keypair, server: Keypair,
                 other_server: Keypair) -> None:
        self.rnd = rnd
        self.signed = signed
        self.raw = base64.b64decode(signed)
        self.client = client
        self.server = server
        self.other_server = other_server

    def bit_flip(self) -> str:
        data = bytearray(self.raw)
        for _ in range(self.rnd.randint(1, 3)):
            i = self.rnd.randrange(len(data))
            data[i] ^= 1 << self.rnd.randrange(8)
        return base64.b64encode(bytes(data)).decode()

    def truncate(self) -> str:
        if self.rnd.random() < 0.5:
            return self.signed[:self.rnd.randrange(len(self.signed))]
        return base64.b64encode(self.raw[:self.rnd.randrange(len(self.raw))]).decode()

    def noise(self) -> str:
        kind = self.rnd.randrange(4)
        if kind == 0:
            size = self.rnd.randrange(200)
            return "".join(self.rnd.choice(string.printable) for _ in range(size))
        if kind == 1:
            return base64.b64encode(self.rnd.randbytes(self.rnd.randrange(400))).decode()
        if kind == 2:  # non-canonical spellings of the valid challenge
            i = self.rnd.randrange(len(self.signed))
            return self.signed[:i] + self.rnd.choice([" ", "\n", "!", "-", "_"]) + self.signed[i:]
        return "\u00e9" * self.rnd.randrange(1, 50) + self.signed

    def structural(self) -> str:
        rnd = self.rnd
        kind = rnd.randrange(20)
        client = self.client.public_key
        start = int(time.time())
        seq, bounds = -1, (start, start + 300)
        ops: list[tuple[str, bytes | None, str | None]] = [
            ("a.test auth", base64.b64encode(rnd.randbytes(48)), client),
            ("web_auth_domain", b"a.test", self.server.public_key)]
        signer, memo, first_op = self.server, None, "manage_data"
        if kind == 0:
            seq = rnd.randrange(0, 2**40)
        elif kind == 1:
            bounds = (0, 0)
        elif kind == 2:
            bounds = (start - 2000, start - rnd.randrange(1, 1000))
        elif kind == 3:
            bounds = (start + rnd.randrange(400, 5000), start + 6000)
        elif kind == 4:
            first_op = rnd.choice(["payment", "bump_sequence"])
        elif kind == 5:
            ops[0] = (ops[0][0], ops[0][1], None)
        elif kind == 6:
            ops.append(("extra", b"x", client))
        elif kind == 7:
            ops[0] = (rnd.choice(["b.test auth", "a.test  auth", "evil.test auth", "a.test"]),
                      ops[0][1], client)
        elif kind == 8:
            ops[1] = ("web_auth_domain", rnd.choice([b"b.test", b"a.test:443", b""]),
                      self.server.public_key)
        elif kind == 9:
            ops.pop(1)
        elif kind == 10:
            ops.append((rnd.choice(["home", "client_domainx", "x"]), b"v",
                        self.server.public_key))
        elif kind == 11:
            memo = rnd.choice(["text", "hash", "return"])
        elif kind == 12:
            ops[0] = (ops[0][0], ops[0][1],
                      MuxedAccount(client, rnd.randrange(2**64)).account_muxed)
            memo = "id"
        elif kind == 13:
            ops[0] = (ops[0][0], rnd.choice([base64.b64encode(rnd.randbytes(47)),
                                             rnd.randbytes(64), None]), client)
        elif kind == 14:
            bounds = (start, start + rnd.randrange(901, 100_000))
        elif kind == 15:
            signer = self.other_server
        elif kind == 16:
            signer = Keypair.random()
        elif kind == 17:
            ops.append(("web_auth_domain", b"a.test", self.server.public_key))
        elif kind == 18:
            ops.append(("client_domain", b"wallet.test", Keypair.random().public_key))
        else:
            ops[1] = ("web_auth_domain", b"a.test", client)
        return self._build(seq, bounds, ops, signer, memo, first_op)

    def _build(self, seq: int, bounds: tuple[int, int],
               ops: list[tuple[str, bytes | None, str | None]], signer: Keypair,
               memo: str | None, first_op: str) -> str:
        builder = TransactionBuilder(Account(self.server.public_key, seq), PASSPHRASE, 100)
        builder.add_time_bounds(*bounds)
        for index, (name, value, source) in enumerate(ops):
            if index == 0 and first_op == "payment":
                builder.append_payment_op(self.server.public_key, Asset.native(), "1",
                                          source=source)
            elif index == 0 and first_op == "bump_sequence":
                builder.append_bump_sequence_op(1, source=source)
            else:
                builder.append_manage_data_op(name, value, source=source)
        if memo == "text":
            builder.add_text_memo("hi")
        elif memo == "hash":
            builder.add_hash_memo(self.rnd.randbytes(32))
        elif memo == "return":
            builder.add_return_hash_memo(self.rnd.randbytes(32))
        elif memo == "id":
            builder.add_id_memo(self.rnd.randrange(2**64))
        envelope = builder.build()
        envelope.sign(signer)
        envelope.sign(self.client)
        xdr: str = envelope.to_xdr()
        return xdr

    def signatures(self) -> str:
        envelope = decode(self.signed)
        kind = self.rnd.randrange(6)
        if kind == 0:
            envelope.signatures.append(envelope.signatures[-1])
        elif kind == 1:
            envelope.sign(Keypair.random())
        elif kind == 2:
            del envelope.signatures[-1]
        elif kind == 3:
            del envelope.signatures[0]
        elif kind == 4:
            envelope.signatures.clear()
        else:
            inner = TransactionEnvelope.from_xdr(self.signed, PASSPHRASE)
            bump = TransactionBuilder.build_fee_bump_transaction(
                self.client.public_key, 200, inner, PASSPHRASE)
            bump.sign(self.client)
            out: str = bump.to_xdr()
            return out
        xdr: str = envelope.to_xdr()
        return xdr

    def foreign_challenge(self) -> str:
        """A well-formed challenge from another server key or for another tenant."""
        secret = self.rnd.choice([self.other_server.secret, Keypair.random().secret])
        domain = self.rnd.choice(["a.test", "b.test"])
        return sign(build_challenge_transaction(secret, self.client.public_key, domain, domain,
                                                PASSPHRASE), self.client)

    def transaction(self) -> str:
        family = self.rnd.choice([self.bit_flip, self.bit_flip, self.truncate, self.noise,
                                  self.structural, self.structural, self.signatures,
                                  self.foreign_challenge])
        return family()


@dataclass(frozen=True)
class PostCase:
    body: bytes
    content_type: str | None


def post_case(rnd: random.Random, mutator: Mutator) -> PostCase:
    roll = rnd.random()
    if roll < 0.85:
        xdr = mutator.transaction()
        if rnd.random() < 0.5:
            return PostCase(json.dumps({"transaction": xdr}).encode(), "application/json")
        return PostCase(urlencode({"transaction": xdr}).encode(),
                        "application/x-www-form-urlencoded")
    good = mutator.signed
    odd = [
        PostCase(b"", "application/json"),
        PostCase(b"", None),
        PostCase(b"{", "application/json"),
        PostCase(b"[1, 2]", "application/json"),
        PostCase(b'"' + good.encode() + b'"', "application/json"),
        PostCase(json.dumps({"transaction": rnd.choice([1, None, [good], {"x": good}, True])}
                            ).encode(), "application/json"),
        PostCase(json.dumps({"tx": good}).encode(), "application/json"),
        PostCase(b"[" * 5000 + b"]" * 5000, "application/json"),
        PostCase(json.dumps({"transaction": "A" * 50_001}).encode(), "application/json"),
        PostCase(b"<transaction>" + good.encode() + b"</transaction>", "text/xml"),
        PostCase(json.dumps({"transaction": good}).encode(), "text/plain"),
        PostCase(json.dumps({"transaction": good}).encode(), None),
        PostCase(b"transaction=" + good.encode() + b"&transaction=x",
                 "application/x-www-form-urlencoded"),
        PostCase(b"--x\r\ngarbage", "multipart/form-data; boundary=x"),
        PostCase(b"transaction=%ff%fe", "application/x-www-form-urlencoded"),
        PostCase(rnd.randbytes(300), "application/json"),
        PostCase(b"\xff\xfe{}", "application/json"),
    ]
    return rnd.choice(odd)


async def test_post_fuzz(srv: RunningServer, wallet: Wallet) -> None:
    rnd = random.Random(8675309)
    t1, t2 = tenant_of(srv, "t1"), tenant_of(srv, "t2")
    client = Keypair.random()
    signed = sign(await wallet.challenge("a.test", account=client.public_key), client)
    mutator = Mutator(rnd, signed, client, t1.secrets.signing_keypair,
                      t2.secrets.signing_keypair)
    cases = [post_case(rnd, mutator) for _ in range(POST_CASES)]

    def call(case: PostCase) -> Callable[[], Awaitable[HTTPResponse]]:
        headers = {} if case.content_type is None else {"Content-Type": case.content_type}
        return lambda: srv.fetch("a.test", "/auth", method="POST", body=case.body,
                                 headers=headers)

    responses = await run_batched([call(case) for case in cases])
    codes = [r.code for r in responses]
    assert not [c for c in codes if c >= 500]
    assert set(codes) <= {400, 403, 413, 415}, sorted(set(codes))
    for response in responses:
        assert b"token" not in response.body
        assert set(json.loads(response.body)) == {"error"}
    assert await srv.services.store.tenant("t1", "challenges").count({}) == 0
    # The real challenge was never burnt by its mutants.
    assert (await wallet.post("a.test", signed)).code == 200
