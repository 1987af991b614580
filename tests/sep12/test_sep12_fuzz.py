"""PUT /kyc/customer fuzz (reliability-plan B3/B4): no 5xx, no partial writes.

2,400 deterministic cases (seeded), in JSON, form and multipart encodings: hostile text
(unicode, RTL, NUL, lone surrogates, megabyte strings), nested values, huge numbers, bad
dates, unknown types, memo/memo_type combinations, operator-like and server-owned keys,
duplicate keys and malformed bodies. Every answer is below 500; every 4xx has an ``error``
and leaves both the GET answer and the stored document exactly as they were. A few cases
are valid and change the customer: the baseline moves with them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from conftest import MakeServer
from sep12.sep12_helpers import ALICE, Reply, Wallet, multipart, two_kyc_tenants

CASES = 2400
SEED = 20260805

FIELDS = ["first_name", "last_name", "email_address", "mobile_number", "birth_date",
          "address_country_code", "photo_id_front", "organization.name", "family_name",
          "sex", "occupation", "card.number", "ip_address", "tax_id", "id_type"]
HOSTILE_TEXT = ["", " ", "\x00", "a\x00b", "\u202eevil", "שלום", "😀" * 3, "\ud800", "\u2028",
                "a" * 1001, "x" * 1_000_000, "\r\n\r\n", "<script>", "' OR 1=1 --",
                "{\"$ne\": null}", "%00", "\\", "Zoë", "null", "true"]
NUMBERS: list[Any] = [2**63, 2**64, -(2**63) - 1, 1e308, 1.5, -0.0, 0, 10**30, 7]
DATES = ["2023-02-30", "31/12/1990", "0000-00-00", "1990-1-1", "99999-01-01", "1990-12-31",
         "1990-12-31T00:00:00Z", "", "\uff12\uff10\uff12\uff10-01-01"]
KEYS = ["$set", "$ne", "first_name[$gt]", "__proto__", "__class__", "status",
        "provided_fields", "_id", "tenant_id", "tenant", "created_at", "fields",
        "first_name.$", "constructor", "id", "account", "customer_id", "x" * 300, "",
        "mobile_number_verification", "photo_id_front_file_id", "unknown_field"]
TYPES = ["individual", "business", "sep31-sender", "INDIVIDUAL", "", "individual\x00",
         "a" * 100, "../business"]
MEMOS = [("1", "id"), ("0100", "id"), (" 100", "id"), ("18446744073709551616", "id"),
         ("-1", "id"), ("abc", None), ("hello", "text"), ("x" * 40, "text"),
         ("a\x00", "text"), ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "hash"),
         ("not-base64!", "hash"), ("1", "bogus")]


def _value(rng: random.Random) -> Any:
    kind = rng.random()
    if kind < 0.45:
        return rng.choice(HOSTILE_TEXT)
    if kind < 0.6:
        return rng.choice(NUMBERS)
    if kind < 0.7:
        return rng.choice(DATES)
    if kind < 0.8:
        return rng.choice([{"$gt": ""}, {"$ne": None}, [1, 2], {"a": {"b": []}}, None, True])
    return rng.choice(["Alice", "USA", "+14155552671", "a@example.com", "1990-01-01",
                       "female", "2145"])


def _case(rng: random.Random) -> dict[str, Any]:
    """One body as a name -> value dict (values may be non-strings for JSON)."""
    body: dict[str, Any] = {}
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.5:
            body[rng.choice(FIELDS)] = _value(rng)
        elif roll < 0.7:
            body[rng.choice(KEYS)] = _value(rng)
        elif roll < 0.8:
            body["type"] = rng.choice(TYPES)
        else:
            memo, memo_type = rng.choice(MEMOS)
            body["memo"] = memo
            if memo_type is not None:
                body["memo_type"] = memo_type
    return body


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


Encoder = Callable[[dict[str, Any], random.Random], tuple[bytes, str]]


def _json(body: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    text = json.dumps(body)
    if rng.random() < 0.05:
        text = text[: rng.randint(0, len(text))]  # truncated
    elif rng.random() < 0.05 and body:
        key = json.dumps(next(iter(body)))
        text = "{" + f"{key}: 1, {key}: 2" + "}"  # duplicate keys
    return text.encode("utf-8", "surrogatepass"), "application/json"


def _form(body: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    pairs = [f"{quote(k, safe='')}={quote(_text(v), safe='', errors='surrogatepass')}"
             for k, v in body.items()]
    if rng.random() < 0.1 and pairs:
        pairs.append(pairs[0])  # the same name twice
    raw = "&".join(pairs).encode()
    if rng.random() < 0.05:
        raw += b"&first_name=%FF%FE"  # not UTF-8
    return raw, "application/x-www-form-urlencoded"


def _multipart(body: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    parts: list[tuple[str, str | bytes, str | None]] = []
    for key, value in body.items():
        data = _text(value).encode("utf-8", "surrogatepass")
        filename = "x.png" if rng.random() < 0.2 else None
        parts.append((key.replace('"', ""), data, filename))
    raw, ctype = multipart(parts)
    if rng.random() < 0.05:
        ctype = "multipart/form-data; boundary=wrong"
    return raw, ctype


def _odd(body: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    return rng.choice([(b"<xml/>", "text/xml"), (b"\xff\xfe\x00", "application/json"),
                       (b"[1,2]", "application/json"), (b"[" * 100_000, "application/json"),
                       (b"1" * 5000, "application/json"), (json.dumps(body).encode(), ""),
                       (b'{"first_name": NaN}', "application/json")])


ENCODERS: list[Encoder] = [_json, _form, _multipart, _odd]


async def snapshot(wallet: Wallet, customer_id: str) -> tuple[bytes, Any]:
    store = wallet.srv.services.store.tenant("t1", "customers")
    return (await wallet.get()).body, await store.find_one({"_id": customer_id})


async def test_put_customer_fuzz(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1", memo=1)  # memo cases then address this customer or 403
    customer_id = await wallet.create({"first_name": "Fuzz"})
    rng = random.Random(SEED)
    before = await snapshot(wallet, customer_id)
    statuses: dict[int, int] = {}
    for case in range(CASES):
        body = _case(rng)
        encode = ENCODERS[case % len(ENCODERS)]
        raw, ctype = encode(body, rng)
        reply: Reply = await wallet.call("PUT", "/kyc/customer", body=raw,
                                         content_type=ctype or None)
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
        assert reply.status < 500, (case, body, reply.body)
        if reply.status >= 400:
            assert isinstance(reply.json["error"], str), (case, reply.body)
            after = await snapshot(wallet, customer_id)
            if not any(k.endswith("_verification") for k in body):  # wrong codes are counted
                assert after == before, (case, body, reply.status)
            else:
                assert after[0] == before[0], (case, body)
        else:
            assert reply.json == {"id": customer_id}, (case, body)
            before = await snapshot(wallet, customer_id)
    assert statuses.get(202, 0) > 10, statuses  # the generator also makes valid changes
    assert statuses.get(400, 0) > 1000, statuses
    assert (await wallet.put(ALICE)).status == 202  # and the customer still works


async def test_get_customer_fuzz(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    await wallet.create()
    rng = random.Random(SEED + 1)
    names = ["id", "type", "memo", "memo_type", "account", "lang", "transaction_id",
             "page_size", "$where"]
    for _ in range(400):
        query = "&".join(
            f"{quote(rng.choice(names))}="
            f"{quote(_text(_value(rng))[:2000], errors='surrogatepass')}"
            for _ in range(rng.randint(0, 4)))
        reply = await wallet.call("GET", f"/kyc/customer?{query}")
        assert reply.status < 500, (query, reply.body)
        assert reply.status in (200, 400, 403, 404)
