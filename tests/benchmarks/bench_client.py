"""Client side of the benchmarks: a tiny keep-alive HTTP/1.1 client, the SEP-10 login flow and
latency statistics. Shared by run.py and the per-SEP benchmark scripts.

The HTTP client exists because the load generator shares the machine's two cores with the
server: Tornado's client opens a new connection per request, and a wallet-like client with
keep-alive is both cheaper and closer to what a real wallet does. It speaks just enough
HTTP/1.1 for our own server (Content-Length bodies, keep-alive) and fails loudly on anything
else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from stellar_sdk import Keypair, TransactionEnvelope


class HttpError(Exception):
    """A response the benchmark did not expect (status or shape)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        if not isinstance(data, dict):
            raise HttpError(f"expected a JSON object, got {self.body[:200]!r}")
        return data


class Connection:
    """One keep-alive connection to ``127.0.0.1:port``; reconnects once if the server closed it."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.port = port
        self.address = host
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(self, method: str, path: str, host: str, *,
                      headers: Mapping[str, str] | None = None, body: bytes = b"") -> Response:
        """Send one request with ``Host: host``; a closed idle connection is retried once."""
        for attempt in (0, 1):
            fresh = self._writer is None
            if fresh:
                self._reader, self._writer = await asyncio.open_connection(self.address,
                                                                           self.port)
            try:
                return await asyncio.wait_for(self._exchange(method, path, host, headers, body),
                                              self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self.close()
                if fresh or attempt == 1:
                    raise HttpError(f"{method} {path}: connection failed: {exc!r}") from None
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, host: str,
                        headers: Mapping[str, str] | None, body: bytes) -> Response:
        assert self._reader is not None
        assert self._writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        parsed: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        if "content-length" in parsed:
            data = await self._reader.readexactly(int(parsed["content-length"]))
        elif status in (204, 304):
            data = b""
        else:
            raise HttpError(f"{method} {path}: response without Content-Length")
        if parsed.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, parsed, data)


# --- SEP-10 -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginTiming:
    """Seconds spent in one login: the challenge round trip, signing, the token round trip."""

    challenge: float
    sign: float
    token: float

    @property
    def total(self) -> float:
        return self.challenge + self.sign + self.token


async def login(conn: Connection, host: str, keypair: Keypair, *,
                memo: int | None = None) -> tuple[str, LoginTiming]:
    """The wallet side of SEP-10: GET a challenge, sign it with ``keypair``, POST it.

    Returns the JWT. Like a minimal wallet it parses and signs the challenge with stellar-sdk
    but does not re-validate the server's challenge (that is the server's benchmark, not the
    wallet's); the server checks everything it always checks.
    """
    query = f"/auth?account={keypair.public_key}"
    if memo is not None:
        query += f"&memo={memo}"
    t0 = time.perf_counter()
    answer = await conn.request("GET", query, host)
    t1 = time.perf_counter()
    if answer.status != 200:
        raise HttpError(f"GET /auth on {host}: {answer.status} {answer.body[:300]!r}")
    signed = sign_challenge(answer.json(), keypair)
    t2 = time.perf_counter()
    answer = await conn.request("POST", "/auth", host, body=signed,
                                headers={"Content-Type": "application/json"})
    t3 = time.perf_counter()
    if answer.status != 200:
        raise HttpError(f"POST /auth on {host}: {answer.status} {answer.body[:300]!r}")
    return str(answer.json()["token"]), LoginTiming(t1 - t0, t2 - t1, t3 - t2)


def sign_challenge(challenge: Mapping[str, object], keypair: Keypair) -> bytes:
    """The POST /auth body for a GET /auth answer: the challenge signed with ``keypair``."""
    envelope = TransactionEnvelope.from_xdr(str(challenge["transaction"]),
                                            str(challenge["network_passphrase"]))
    envelope.sign(keypair)
    return json.dumps({"transaction": envelope.to_xdr()}).encode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- SEP-12 -----------------------------------------------------------------------------


def customer_fields(serial: int) -> dict[str, str]:
    """SEP-9 fields of one synthetic customer (every required field of the bench tenants)."""
    return {"first_name": "Ada", "last_name": f"Lovelace{serial}",
            "email_address": f"ada{serial}@example.com"}


async def put_customer(conn: Connection, host: str, token: str,
                       fields: Mapping[str, str]) -> str:
    """PUT /kyc/customer as JSON; returns the customer id (raises on anything but 200/202)."""
    answer = await conn.request("PUT", "/kyc/customer", host, body=json.dumps(fields).encode(),
                                headers={**bearer(token), "Content-Type": "application/json"})
    if answer.status not in (200, 202):
        raise HttpError(f"PUT /kyc/customer on {host}: {answer.status} {answer.body[:300]!r}")
    return str(answer.json()["id"])


async def get_customer(conn: Connection, host: str, token: str,
                       query: Mapping[str, str] | None = None) -> dict[str, object]:
    path = "/kyc/customer"
    if query:
        path += "?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())
    answer = await conn.request("GET", path, host, headers=bearer(token))
    if answer.status != 200:
        raise HttpError(f"GET /kyc/customer on {host}: {answer.status} {answer.body[:300]!r}")
    return answer.json()


# --- statistics -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100); 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Latencies:
    """Per-operation latencies in seconds; summarised in milliseconds."""

    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.values)
        return {"p50_ms": round(1000 * percentile(ordered, 50), 3),
                "p99_ms": round(1000 * percentile(ordered, 99), 3),
                "max_ms": round(1000 * (ordered[-1] if ordered else 0.0), 3)}
