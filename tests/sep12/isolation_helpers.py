"""Shared pieces of the SEP-12 isolation tests (test_sep12_isolation.py,
test_sep12_randomised_isolation.py, test_sep12_forged_tokens_http.py). Index:

- :class:`KeepAlive`: a bare HTTP/1.1 client that reuses one connection; :func:`send_all`
  sends many requests over a few of them at once.
- :class:`Probe` and :func:`id_probes`: one request per wallet route that names a customer,
  a file or an account, built for a given victim (the BOLA attempts of reliability-plan A8).
- :func:`store_dump`: every document of the given tenants (and the platform's tenant records),
  read raw from the store, to compare before and after a run.
- :func:`raw_customer`: one customer record as stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from conftest import RunningServer
from faults.raw_http import BROKEN, read_response
from kyc_host.store.base import Doc
from kyc_host.store.schema import COLLECTIONS
from sep12.sep12_helpers import Reply, multipart

Headers = Sequence[tuple[str, str]]
#: Written by the callback worker in the background, not by a request: left out of dumps.
BACKGROUND = frozenset({"outbox_leases", "outbox_wake"})


class KeepAlive:
    """A bare HTTP/1.1 client that reuses one connection while the server keeps it open.

    The server closes a connection whose request body it refused without reading (a 401 in
    ``prepare()``); the next request then finds it closed and is sent again on a new one,
    as any HTTP client does with an idle connection the server has dropped.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self.requests = 0
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, host: str, method: str, target: str, headers: Headers = (),
                      body: bytes = b"") -> Reply:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}",
                 *(f"{name}: {value}" for name, value in headers)]
        if body or method in ("PUT", "POST", "DELETE"):
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self.requests += 1
        for attempt in range(2):
            reused = self._stream is not None
            reader, writer = await self._open()
            try:
                writer.write(data)
                await writer.drain()
                status, answer_headers, answer = await asyncio.wait_for(read_response(reader),
                                                                        30)
            except BROKEN:
                await self.close()
                if reused and attempt == 0:
                    continue  # the server had closed the idle connection: send it again
                raise
            if answer_headers.get("connection", "").lower() == "close":
                await self.close()
            return Reply(status, answer, answer_headers)
        raise AssertionError("unreachable")

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._stream is None:
            self._stream = await asyncio.open_connection("127.0.0.1", self.port)
            self.connections += 1
        return self._stream

    async def close(self) -> None:
        if self._stream is not None:
            writer = self._stream[1]
            self._stream = None
            writer.close()
            with contextlib.suppress(*BROKEN):
                await writer.wait_closed()


async def send_all(port: int, requests: Sequence[tuple[str, Probe, str | None]],
                   lanes: int = 4) -> tuple[list[Reply], int]:
    """Send each (host, probe, token) over ``lanes`` keep-alive connections at once (request
    i on lane i mod lanes, each lane in order). Returns the replies in request order and the
    number of connections opened."""
    replies: list[Reply | None] = [None] * len(requests)
    clients = [KeepAlive(port) for _ in range(lanes)]

    async def lane(k: int) -> None:
        for i in range(k, len(requests), lanes):
            host, probe, token = requests[i]
            replies[i] = await clients[k].request(host, probe.method, probe.target,
                                                  probe.with_token(token), probe.body)
        await clients[k].close()

    await asyncio.gather(*(lane(k) for k in range(lanes)))
    done = [r for r in replies if r is not None]
    assert len(done) == len(requests)
    return done, sum(c.connections for c in clients)


# --- BOLA probes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request naming a victim. ``expect``: "404" (the body of a customer id that never
    existed), "404file" (that of a file id that never existed), "empty" (200 with no files)
    or "403" (an account that is not the token's)."""

    endpoint: str
    expect: str
    method: str
    target: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    def with_token(self, token: str | None) -> list[tuple[str, str]]:
        auth = [] if token is None else [("Authorization", f"Bearer {token}")]
        return [*self.headers, *auth]


def _json(method: str, path: str, endpoint: str, expect: str,
          data: Mapping[str, Any]) -> Probe:
    return Probe(endpoint, expect, method, path, json.dumps(dict(data)).encode(),
                 (("Content-Type", "application/json"),))


def id_probes(customer_id: str, file_id: str, code: str = "123456") -> list[Probe]:
    """Every wallet request that takes a customer or file id, naming the victim's; ``code``
    is sent as the verification code (the victim's real one makes the probe stronger)."""
    form = urlencode({"id": customer_id, "last_name": "Mallory"}).encode()
    parts, multipart_type = multipart([("id", customer_id, None), ("first_name", "Mallory",
                                                                   None)])
    query = f"/kyc/customer?{urlencode({'id': customer_id})}"
    return [
        Probe("GET /customer?id", "404", "GET", query),
        Probe("GET /customer?id&type", "404", "GET", f"{query}&type=individual"),
        _json("PUT", "/kyc/customer", "PUT /customer id (JSON)", "404",
              {"id": customer_id, "first_name": "Mallory"}),
        Probe("PUT /customer id (form)", "404", "PUT", "/kyc/customer", form,
              (("Content-Type", "application/x-www-form-urlencoded"),)),
        Probe("PUT /customer id (multipart)", "404", "PUT", "/kyc/customer", parts,
              (("Content-Type", multipart_type),)),
        _json("PUT", "/kyc/customer/callback", "PUT /customer/callback id", "404",
              {"id": customer_id, "url": "https://evil.test/cb"}),
        _json("PUT", "/kyc/customer/verification", "PUT /customer/verification id", "404",
              {"id": customer_id, "mobile_number_verification": code}),
        Probe("GET /customer/files?customer_id", "empty", "GET",
              f"/kyc/customer/files?{urlencode({'customer_id': customer_id})}"),
        Probe("GET /customer/files?file_id", "empty", "GET",
              f"/kyc/customer/files?{urlencode({'file_id': file_id})}"),
        _json("PUT", "/kyc/customer", "PUT /customer photo_id_front_file_id", "404file",
              {"photo_id_front_file_id": file_id}),
    ]


def account_probes(account: str, memo: str | None) -> list[Probe]:
    """The wallet requests that name an account (and memo) instead of an id: ``account`` is a
    G or M address; ``memo`` an ID memo of a shared account's user."""
    named = {"account": account, **({"memo": memo, "memo_type": "id"} if memo else {})}
    delete_body = urlencode({"memo": memo, "memo_type": "id"}).encode() if memo else b""
    return [
        Probe("GET /customer?account", "403", "GET", f"/kyc/customer?{urlencode(named)}"),
        _json("PUT", "/kyc/customer", "PUT /customer account", "403",
              {**named, "first_name": "Mallory"}),
        _json("PUT", "/kyc/customer/callback", "PUT /customer/callback account", "403",
              {**named, "url": "https://evil.test/cb"}),
        Probe("DELETE /customer/{account}", "403", "DELETE", f"/kyc/customer/{account}",
              delete_body, (("Content-Type", "application/x-www-form-urlencoded"),)
              if delete_body else ()),
    ]


# --- raw store ------------------------------------------------------------------------------


Dump = dict[tuple[str, str], dict[str, Doc]]


async def store_dump(srv: RunningServer, tenant_ids: Iterable[str]) -> Dump:
    """Every document of the tenants' collections and the platform's tenant records, keyed by
    (tenant or "", collection) and then by ``_id``, read raw from the store."""
    store = srv.services.store
    out: Dump = {}
    for spec in COLLECTIONS.values():
        if spec.name in BACKGROUND:
            continue
        if spec.scope == "tenant":
            for tenant_id in tenant_ids:
                docs = await store.tenant(tenant_id, spec.name).find({})
                out[(tenant_id, spec.name)] = {str(d["_id"]): d for d in docs}
        elif spec.name in ("tenants", "tenant_hosts", "platform_audit", "token_index"):
            docs = await store.platform(spec.name).find({})
            out[("", spec.name)] = {str(d["_id"]): d for d in docs}
    return out


async def raw_customer(srv: RunningServer, tenant_id: str, customer_id: str) -> Doc | None:
    return await srv.services.store.tenant(tenant_id, "customers").find_one({"_id": customer_id})
