"""A wallet write load with a client-side log of every answer, and the replay of that log
against the store (reliability-plan F2/F3, issue 9 §4: no acknowledged write is lost).

Used by test_kill9_writes.py (the server is killed) and test_store_kill9.py (the store is
killed). Index:

- :class:`Client`: one wallet account writing its customers (memos) back to back: new
  customers, JSON updates of a changing value, multipart PUTs carrying a photo, and uploads
  (``POST /customer/files``) then referenced by ``photo_id_back_file_id``. Each customer is
  written by one wallet in sequence, as a real wallet does, so "the last acknowledged value"
  is well defined.
- :class:`Ledger`: every attempt and its answer. A 202 is an acknowledged write. An attempt
  whose answer was cut, or answered 503 (the store failed under it), is unacknowledged: it
  may or may not have landed. A request refused at connect never reached the server and is
  not logged. Any other answer is unexpected and kept in ``refused``.
- :func:`until`: a bounded wait for a condition of the load that fails at once if a client
  crashed.
- :func:`check_acknowledged`: every customer that got a 202 is found by its wallet's token
  with the id of its 202s (GET /kyc/customer), and each field and file (management API detail
  and download) holds the value of its last acknowledged write -- or of a later attempt,
  which may have landed although its answer was cut.
- :func:`check_store`: the store is consistent: every record decrypts, every file a record
  references exists with all its chunks and belongs to that record, every identity of a
  record leads back to it, every identity document points at a record (see
  :func:`check_identities` for the one transient exception an interruption can leave), no
  file that no record names is kept for ever, and after the purge job (run as if every expiry
  had come) the files are exactly those the records name, all attached.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from stellar_sdk import Keypair
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError

from conftest import RunningServer, make_tenant_doc
from kyc_host.management.auth import TENANT_SCOPES, create_token
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.customers import CustomerRecord
from kyc_host.store.files import UNATTACHED_TTL_SECONDS
from sep12.sep12_helpers import Reply, Wallet, png_of_size

MAX_CUSTOMERS_PER_ACCOUNT = 6
WAIT_SECONDS = 45.0
TEXT_FIELDS = ("first_name", "last_name", "email_address")
FILE_FIELDS = ("photo_id_front", "photo_id_back")
CUT = (HTTPClientError, StreamClosedError, OSError)  # the answer never came (599, reset)
UNAVAILABLE = {"error": "service temporarily unavailable"}


def tenant_doc(tenant_id: str, host: str) -> dict[str, Any]:
    return make_tenant_doc(tenant_id, [host], customer_types={"individual": {
        "required": ["first_name", "last_name", "email_address"],
        "optional": ["photo_id_front", "photo_id_back"]}})


@dataclass
class Attempt:
    """One write that may have reached the server: what it sent, whether it got its 202."""

    values: dict[str, str | bytes]  # SEP-9 name -> text value or file contents
    acked: bool = False


@dataclass
class Customer:
    tenant_id: str
    wallet: Wallet
    attempts: list[Attempt] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)  # the ids of its 202 answers

    def allowed(self, name: str) -> tuple[list[str | bytes], bool]:
        """The values ``name`` may hold now, and whether it may be absent: the value of the
        last acknowledged write of it, or of any later attempt (its answer was cut)."""
        touching = [a for a in self.attempts if name in a.values]
        acked = [i for i, a in enumerate(touching) if a.acked]
        start = acked[-1] if acked else 0
        return [a.values[name] for a in touching[start:]], not acked


@dataclass
class Ledger:
    customers: list[Customer] = field(default_factory=list)
    acks: int = 0
    cut: int = 0
    #: 503 answers with Retry-After (the store failed under the request).
    unavailable: int = 0
    refused: list[str] = field(default_factory=list)  # unexpected answers (never expected)

    @property
    def unacknowledged(self) -> int:
        """Attempts that reached the server and may or may not have landed."""
        return self.cut + self.unavailable


def _unavailable(reply: Reply) -> bool:
    """A clean 503 of the store (JSON body, Retry-After), which the load may meet."""
    try:
        body = json.loads(reply.body)
    except ValueError:
        return False
    return (reply.status == 503 and body == UNAVAILABLE
            and int(reply.headers.get("Retry-After", "0")) > 0)


class Client:
    """One wallet account writing its customers (memos) in sequence."""

    def __init__(self, srv: RunningServer, tenant_id: str, host: str, index: int,
                 ledger: Ledger) -> None:
        self.srv, self.tenant_id, self.host, self.index = srv, tenant_id, host, index
        self.keypair = Keypair.random()
        self.ledger = ledger
        self.customers: list[Customer] = []
        self.rng = random.Random(index)
        self.n = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()

    async def step(self) -> None:
        self.n += 1
        n, roll = self.n, self.rng.random()
        if not self.customers or (roll < 0.15
                                  and len(self.customers) < MAX_CUSTOMERS_PER_ACCOUNT):
            wallet = Wallet(self.srv, self.host, self.tenant_id, keypair=self.keypair,
                            memo=len(self.customers) + 1)
            customer = Customer(self.tenant_id, wallet)
            self.customers.append(customer)
            self.ledger.customers.append(customer)
            await self.put(customer, {"first_name": f"First{n}", "last_name": f"Last{n}",
                                      "email_address": f"w{self.index}.{n}@example.com"})
            return
        customer = self.rng.choice(self.customers)
        if roll < 0.6:
            await self.put(customer, {"first_name": f"First{n}",
                                      "email_address": f"w{self.index}.{n}@example.com"})
        elif roll < 0.85:
            # Mostly small photos (written inline); every 6th over a chunk (writer thread).
            size = 300 + n if n % 6 else 300 * 1024 + n
            await self.put(customer, {"last_name": f"Last{n}",
                                      "photo_id_front": png_of_size(size, self.index)})
        else:
            await self.link(customer, png_of_size(400 + n, self.index))

    async def put(self, customer: Customer, values: dict[str, str | bytes]) -> None:
        files = {k: v for k, v in values.items() if isinstance(v, bytes)}
        if files:
            parts: list[tuple[str, str | bytes, str | None]] = [
                (k, v, None) for k, v in values.items() if isinstance(v, str)]
            parts += [(k, v, f"{k}.png") for k, v in files.items()]
            await self.send(customer, values, lambda: customer.wallet.put_multipart(parts))
        else:
            await self.send(customer, values, lambda: customer.wallet.put(values))

    async def link(self, customer: Customer, data: bytes) -> None:
        """Upload a file, then reference it by id in a PUT (the upload alone is no write of
        the customer: an unreferenced upload expires)."""
        try:
            reply = await customer.wallet.upload(data, "back.png")
        except CUT:
            return
        if _unavailable(reply):
            self.ledger.unavailable += 1
            return
        if reply.status != 200:
            self.ledger.refused.append(f"upload: {reply.status} {reply.body[:200]!r}")
            return
        file_id = reply.json["file_id"]
        values: dict[str, str | bytes] = {"photo_id_back": data}
        await self.send(customer, values,
                        lambda: customer.wallet.put({"photo_id_back_file_id": file_id}))

    async def send(self, customer: Customer, values: dict[str, str | bytes],
                   request: Callable[[], Any]) -> None:
        attempt = Attempt(values)
        customer.attempts.append(attempt)
        try:
            reply: Reply = await request()
        except ConnectionRefusedError:
            customer.attempts.pop()  # never reached the server: nothing can have landed
            return
        except CUT:
            self.ledger.cut += 1
            return
        if _unavailable(reply):
            self.ledger.unavailable += 1  # unacknowledged: it may have landed or not
            return
        if reply.status != 202:
            self.ledger.refused.append(f"PUT: {reply.status} {reply.body[:200]!r}")
            return
        attempt.acked = True
        customer.ids.add(reply.json["id"])
        self.ledger.acks += 1


async def until(condition: Callable[[], bool], tasks: list[asyncio.Task[None]],
                what: str, ledger: Ledger, seconds: float = WAIT_SECONDS) -> None:
    """Wait (bounded) for ``condition``; a client that crashed fails the test at once."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition():
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}; answers other than 202: "
                        f"{len(ledger.refused)}, first ones: {ledger.refused[:3]}")
        await asyncio.sleep(0.01)


# --- replaying the log of 202s ---------------------------------------------------------------


async def check_acknowledged(srv: RunningServer, ledger: Ledger, least: int = 20,
                             only: Sequence[Customer] | None = None) -> None:
    """Every customer with a 202 holds its acknowledged values (see the module doc); with
    ``only``, just those customers (the ones written since an earlier replay)."""
    tokens = {}
    for tenant_id in sorted({c.tenant_id for c in ledger.customers}):
        issued = await create_token(srv.services.store, tenant_id=tenant_id,
                                    scopes=TENANT_SCOPES, created_by="test")
        tokens[tenant_id] = issued.token
    limit = asyncio.Semaphore(8)

    async def check(customer: Customer) -> None:
        async with limit:
            await check_customer(srv, customer, tokens[customer.tenant_id])

    acked = [c for c in (ledger.customers if only is None else only) if c.ids]
    assert len(acked) >= least
    await asyncio.gather(*(check(c) for c in acked))


async def check_customer(srv: RunningServer, customer: Customer, token: str) -> None:
    wallet = customer.wallet
    assert len(customer.ids) == 1, f"{wallet.sub}: one identity answered several ids"
    [customer_id] = customer.ids
    mine = await wallet.get()
    assert mine.status == 200, mine.body
    assert mine.json.get("id") == customer_id, (wallet.sub, mine.json)
    base = f"/api/v1/tenants/{customer.tenant_id}/customers/{customer_id}"
    auth = {"Authorization": f"Bearer {token}"}
    detail = await srv.fetch("127.0.0.1", base, headers=auth, admin=True)
    assert detail.code == 200, detail.body
    view = Reply(detail.code, detail.body, {}).json
    for name in TEXT_FIELDS:
        allowed, may_be_absent = customer.allowed(name)
        stored = view["fields"].get(name)
        if stored is None:
            assert may_be_absent, f"{customer_id}: {name} lost (was acknowledged)"
        else:
            assert stored in allowed, (
                f"{customer_id}: {name}={stored!r}, expected one of {allowed!r} (the last "
                "acknowledged value or a later attempt)")
    by_field = {f["field"]: f["file_id"] for f in view["files"] if f["field"] is not None}
    for name in FILE_FIELDS:
        allowed, may_be_absent = customer.allowed(name)
        if name not in by_field:
            assert may_be_absent, f"{customer_id}: {name} lost (was acknowledged)"
            continue
        download = await srv.fetch("127.0.0.1", f"{base}/files/{by_field[name]}",
                                   headers=auth, admin=True)
        assert download.code == 200, download.body
        assert download.body in allowed, (
            f"{customer_id}: {name} holds {len(download.body)} bytes, not the last "
            "acknowledged file nor a later attempt")


# --- consistency of the store ------------------------------------------------------------


async def check_store(srv: RunningServer, tenant_id: str, ledger: Ledger) -> None:
    """Every record decrypts and its files and identities are whole (see the module doc)."""
    tenant = srv.services.registry.get(tenant_id)
    assert tenant is not None
    service = service_for(tenant, srv.services.store, srv.services.settings)
    customers, files = service.customers, service.files
    store = srv.services.store
    records: dict[str, CustomerRecord] = {}
    for doc in await store.tenant(tenant_id, "customers").find({}):
        record = await customers.load(str(doc["_id"]))  # decrypts every value
        assert record is not None
        records[record.id] = record
    for record in records.values():
        for name, file_id in record.files.items():
            info = await files.get(file_id)
            assert info is not None, f"{record.id}: {name} points at a missing file"
            assert info.customer_id == record.id
            data = await files.read(file_id)  # every chunk present and intact
            assert data is not None
            assert len(data) == info.size
        for key in record.identities.values():
            assert await customers.customer_id_for(key) == record.id, f"{record.id}: {key}"
    await check_identities(srv, tenant_id, records, ledger)
    # A PUT attaches its files (no expiry) only after writing the record that names them,
    # and lets the files it replaces expire before that write: an interruption anywhere
    # leaves named files expiring (the purge attaches them) and unnamed ones expiring (the
    # purge deletes them), never an unnamed file that would stay for ever. The purge, run
    # as if every expiry had come, leaves exactly the named files, all attached.
    named = {f: r.id for r in records.values() for f in r.files.values()}
    unnamed_for_ever = [d["_id"] for d in await store.tenant(tenant_id, "files").find({})
                        if d.get("expires_at") is None and d["_id"] not in named]
    assert unnamed_for_ever == []
    await files.purge_expired(time.time() + 2 * UNATTACHED_TTL_SECONDS)
    left = await store.tenant(tenant_id, "files").find({})
    assert {d["_id"]: d.get("customer_id") for d in left} == named
    assert all(d.get("expires_at") is None for d in left)


async def check_identities(srv: RunningServer, tenant_id: str,
                           records: dict[str, CustomerRecord], ledger: Ledger) -> None:
    """Every identity document points at an existing record -- except one kind an
    interruption can leave: a first PUT claims its identity (the insert that decides races,
    F4) before it writes the new record, so a kill between the two leaves an identity whose
    customer was never created and never acknowledged. Such an identity must behave as new:
    its wallet gets "no customer yet" from GET, and its next PUT creates the customer under
    that id."""
    dangling = [doc for doc in await srv.services.store.tenant(tenant_id, "identities").find({})
                if str(doc["customer_id"]) not in records]
    if not dangling:
        return
    ids = {str(d["customer_id"]) for d in dangling}
    owners = [c for c in ledger.customers if c.tenant_id == tenant_id]
    for customer in owners:
        reply = await customer.wallet.get()
        assert reply.status == 200, reply.body
        if customer.ids & ids:
            pytest.fail(f"an acknowledged customer has no record: {customer.ids & ids}")
        if "id" in reply.json or customer.ids:
            continue
        # Never acknowledged: it may be one of the dangling ones. Its next PUT heals it.
        again = await customer.wallet.put({"first_name": "Again"})
        assert again.status == 202, again.body
        ids.discard(again.json["id"])
    assert not ids, f"identities pointing at no record, not healed by a PUT: {ids}"
