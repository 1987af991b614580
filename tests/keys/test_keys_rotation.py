"""KEK rotation and reindexing while wallets use the server: zero failed requests.

Wallets keep sending real HTTP GET/PUT /kyc/customer (and file listings, and first PUTs of
new identities that claim new blind indexes) while ``rotate`` and then ``reindex`` run
in-process, calling the functions the CLI calls. Afterwards every record and file reads
with the keys that remain, every wallet still finds its customer, and the other tenant was
never touched.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from conftest import MakeServer, RunningServer
from keys.keys_helpers import current_cipher, job_context
from kyc_host.crypto.rotation import reindex, rotate_kek
from kyc_host.crypto.tenant_keys import read_secrets
from kyc_host.store.customers import CustomerRepository
from kyc_host.store.files import FileRepository
from sep12.sep12_helpers import ALICE, Wallet, png_of_size, two_kyc_tenants

MAX_SECONDS = 90.0  # the traffic loop stops by itself even if the rotation hangs


@dataclass
class Traffic:
    srv: RunningServer
    wallets: dict[str, Wallet]  # customer id -> wallet
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    newcomers: dict[str, Wallet] = field(default_factory=dict)

    async def run(self, worker: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        items = list(self.wallets.items())
        n = worker
        while not self.stop.is_set() and time.monotonic() < deadline:
            customer_id, wallet = items[n % len(items)]
            n += 3
            await self._check(wallet, customer_id, n)
            if n % 7 == 0:  # a first PUT: claims a new identity during the stages
                fresh = Wallet(self.srv, "a.test", "t1")
                reply = await fresh.put(ALICE)
                self._expect(reply.status == 202, f"new customer PUT {reply.status}")
                if reply.status == 202:
                    self.newcomers[reply.json["id"]] = fresh

    async def _check(self, wallet: Wallet, customer_id: str, n: int) -> None:
        got = await wallet.get()
        self._expect(got.status == 200 and got.json.get("id") == customer_id,
                     f"GET {got.status} {got.body[:80]!r}")
        put = await wallet.put({"mobile_number": f"+1415555{n % 10000:04d}"})
        self._expect(put.status == 202 and put.json.get("id") == customer_id,
                     f"PUT {put.status} {put.body[:80]!r}")
        files = await wallet.files(customer_id=customer_id)
        self._expect(files.status == 200 and len(files.json["files"]) == 1,
                     f"files {files.status} {files.body[:80]!r}")
        self.requests += 3

    def _expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


async def make_customers(srv: RunningServer, count: int) -> dict[str, Wallet]:
    wallets: dict[str, Wallet] = {}
    for i in range(count):
        wallet = Wallet(srv, "a.test", "t1", memo=i + 1 if i % 2 else None)
        customer_id = await wallet.create({**ALICE, "email_address": f"user{i}@example.org"})
        reply = await wallet.put_multipart([("photo_id_front", png_of_size(1500, i), "p.png")])
        assert reply.status == 202
        wallets[customer_id] = wallet
    return wallets


async def all_readable(srv: RunningServer, tenant_id: str, ids: list[str]) -> None:
    cipher = await current_cipher(srv, tenant_id)
    customers = CustomerRepository(srv.services.store, tenant_id, cipher)
    files = FileRepository(srv.services.store, tenant_id, cipher)
    for customer_id in ids:
        record = await customers.load(customer_id)
        assert record is not None, customer_id
        assert record.fields["first_name"] == ALICE["first_name"]
        for file_id in record.files.values():
            assert (await files.read(file_id) or b"").startswith(b"\x89PNG")


async def test_rotate_and_reindex_under_traffic(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallets = await make_customers(srv, 12)
    t2_wallet = Wallet(srv, "b.test", "t2")
    t2_id = await t2_wallet.create()
    traffic = Traffic(srv, wallets)
    workers = [asyncio.create_task(traffic.run(i)) for i in range(3)]
    try:
        await asyncio.sleep(0.3)
        await rotate_kek(job_context(srv), "t1")
        await reindex(job_context(srv), "t1")
        await asyncio.sleep(0.5)  # traffic on the settled keys too
    finally:
        traffic.stop.set()
        await asyncio.gather(*workers)
    assert traffic.failures == []
    assert traffic.requests > 50
    secrets = await read_secrets(srv.services.store, srv.services.keys, "t1")
    assert sorted(secrets.data_keks) == [2]
    assert sorted(secrets.index_keys) == [2]
    assert secrets.index_next is None
    ids = [*wallets, *traffic.newcomers]
    await all_readable(srv, "t1", ids)
    identities = await srv.services.store.tenant("t1", "identities").find({})
    assert {d.get("v") for d in identities} == {2}
    for customer_id, wallet in [*wallets.items(), *traffic.newcomers.items()]:
        assert (await wallet.get()).json["id"] == customer_id
    customers = await srv.services.store.tenant("t1", "customers").find({})
    assert {d["key"]["v"] for d in customers} == {2}
    # Email lookups use the new index key too.
    repo = CustomerRepository(srv.services.store, "t1", await current_cipher(srv, "t1"))
    first = next(iter(wallets))
    record = await repo.load(first)
    assert record is not None
    assert await repo.customers_with("email_address",
                                     record.fields["email_address"].upper()) == [first]
    # Tenant 2 never changed.
    t2 = await read_secrets(srv.services.store, srv.services.keys, "t2")
    assert (sorted(t2.data_keks), sorted(t2.index_keys)) == ([1], [1])
    assert (await t2_wallet.get()).json["id"] == t2_id
