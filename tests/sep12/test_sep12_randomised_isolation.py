"""Randomised cross-tenant and cross-customer isolation (reliability-plan A11 and A8).

The world: tenants t1 (a.test), t2 (b.test) and t3 (c.test); the same Stellar accounts are
customers on several of them, and one account also has a memo user (``G:7``) and a muxed user
(``M`` with id 8). Every identity has a customer with its own canary name and e-mail, a pending
mobile-number code and a linked file.

- A11 (:func:`test_randomised_cross_tenant_and_cross_customer_attempts_all_fail`): N seeded
  random attempts (``KYC_ISOLATION_CASES``, default 10 000; ``KYC_ISOLATION_SEED``; the seed is
  printed). Each picks an attacker identity (its token), a host (its own tenant's half the
  time) and a request from every wallet route naming another identity's customer id, file id,
  account or memo (or an upload of its own). The answer model is strict: a token at another
  tenant's host gets 401; at its own host every request that names an identity the token does
  not reach gets exactly the answer of one that never existed (404 body, 403, or an empty file
  list); no answer holds another identity's canary. After the run a raw dump of the store
  equals the one taken after setup, except for the attackers' own uploads.
- A8 (:func:`test_1000_bola_attempts_per_endpoint_look_like_never_existed`): a stranger on the
  victim's tenant sends 1 000 attempts per id- or account-taking endpoint (shuffled); each gets
  the same status and body as the same request naming an id or account that never existed,
  and the store is unchanged.

Requests go over four keep-alive connections at once (isolation_helpers.send_all); no
request depends on another's outcome, so the order between connections does not matter.
``KYC_BOLA_PER_ENDPOINT`` sets the A8 count (default 1 000).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from stellar_sdk import Keypair

from conftest import MakeServer, RunningServer
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.base import Doc
from sep12.isolation_helpers import (
    Dump,
    KeepAlive,
    Probe,
    account_probes,
    id_probes,
    send_all,
    store_dump,
)
from sep12.sep12_helpers import PNG, Reply, Wallet, kyc_doc, multipart, png_of_size, tenant_of

HOSTS = {"t1": "a.test", "t2": "b.test", "t3": "c.test"}
#: (tenant, account number, memo, mux id): account 0 is on every tenant, with a memo user on
#: t1 and t2 and a muxed user on t1 and t3; accounts 1-3 are on some tenants each.
IDENTITIES = (("t1", 0, None, None), ("t1", 0, 7, None), ("t1", 0, None, 8), ("t1", 1, None, None),
              ("t1", 2, None, None), ("t2", 0, None, None), ("t2", 0, 7, None),
              ("t2", 1, None, None), ("t2", 3, None, None), ("t3", 0, None, None),
              ("t3", 0, None, 8), ("t3", 2, None, None))
#: Attackers upload files of their own during the run: keep the per-identity quota out of the way.
LIMITS = {"max_files_per_identity": 100_000}
CASES = int(os.environ.get("KYC_ISOLATION_CASES", "10000"))
A8_PER_ENDPOINT = int(os.environ.get("KYC_BOLA_PER_ENDPOINT", "1000"))
#: Uploads write these collections (the file record, its encrypted bytes, the blob journal).
UPLOAD_COLLECTIONS = frozenset({"files", "blobs", "blob_journal"})


@dataclass
class Person:
    """One wallet identity with its customer on one tenant, and its canary values."""

    wallet: Wallet
    tenant_id: str
    memo: str | None  # the memo or mux id (both are an ID memo of the account)
    customer_id: str = ""
    file_id: str = ""
    code: str = ""
    canaries: tuple[bytes, ...] = ()
    reachable: list[Person] = field(default_factory=list)

    @property
    def account(self) -> str:
        return self.wallet.account

    def reaches(self, other: Person) -> bool:
        """Whether this identity's token may act on ``other``'s customer by design: the same
        tenant and account, and the token names no memo or ``other``'s (SEP-12 §shared
        accounts: a bare G token acts for all the account's memo users)."""
        return (self.tenant_id == other.tenant_id and self.account == other.account
                and self.memo in (None, other.memo))

    def names(self, account: str, memo: str | None) -> bool:
        """Whether an account/memo request by this identity addresses one of its own (or, for
        a bare G, its memo users'): no cross-identity attempt."""
        return account == self.account and (memo is None or self.memo in (None, memo))


async def make_person(srv: RunningServer, keypairs: Sequence[Keypair], tenant_id: str,
                      account: int, memo: int | None, mux: int | None) -> Person:
    wallet = Wallet(srv, HOSTS[tenant_id], tenant_id, keypair=keypairs[account], memo=memo,
                    muxed_id=mux)
    person = Person(wallet, tenant_id, str(memo if memo is not None else mux)
                    if memo is not None or mux is not None else None)
    tag = uuid.uuid4().hex[:12]
    first, last, email = f"Cnf{tag}", f"Cnl{tag}", f"cn{tag}@canary.test"
    person.customer_id = await wallet.create({"first_name": first, "last_name": last,
                                              "email_address": email,
                                              "mobile_number": "+14155552671"})
    upload = await wallet.upload(png_of_size(300, seed=len(tag)))
    assert upload.status == 200, upload.body
    person.file_id = upload.json["file_id"]
    linked = await wallet.put({"id": person.customer_id,
                               "photo_id_front_file_id": person.file_id})
    assert linked.status == 202, linked.body
    service = service_for(tenant_of(srv, tenant_id), srv.services.store, srv.services.settings)
    code = await service.customers.verification_code(person.customer_id, "mobile_number")
    assert code is not None
    person.code = code
    person.canaries = tuple(v.encode() for v in (first, last, email, person.customer_id,
                                                 person.file_id))
    return person


async def make_world(make_server: MakeServer) -> tuple[RunningServer, list[Person]]:
    srv = await make_server(*(kyc_doc(t, [h], plugin="demo_anchor", limits=LIMITS)
                              for t, h in HOSTS.items()))
    keypairs = [Keypair.random() for _ in range(4)]
    people = [await make_person(srv, keypairs, *spec) for spec in IDENTITIES]
    for person in people:
        person.reachable = [p for p in people if person.reaches(p)]
    # The model's premise: the account 0 tokens on t1 reach exactly what the design says.
    bare, memo7, mux8 = people[0], people[1], people[2]
    assert bare.reachable == [bare, memo7, mux8]
    assert memo7.reachable == [memo7]
    assert mux8.reachable == [mux8]
    return srv, people


# --- the answer model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    attacker: Person
    host_tenant: str
    probe: Probe
    victim: Person | None  # None: an upload of the attacker's own


def upload_probe() -> Probe:
    body, content_type = multipart([("file", PNG, "id.png")])
    return Probe("POST /customer/files", "upload", "POST", "/kyc/customer/files", body,
                 (("Content-Type", content_type),))


def pick(rng: random.Random, people: Sequence[Person]) -> Attempt:
    """One random attempt: an attacker, a host, a victim it does not reach, a request."""
    attacker = rng.choice(people)
    host = attacker.tenant_id if rng.random() < 0.5 else rng.choice(sorted(HOSTS))
    kind = rng.random()
    if kind < 0.05:
        return Attempt(attacker, host, upload_probe(), None)
    if kind < 0.75:
        victim = rng.choice([p for p in people if not attacker.reaches(p)])
        probe = rng.choice(id_probes(victim.customer_id, victim.file_id, victim.code))
        return Attempt(attacker, host, probe, victim)
    victims = [p for p in people if not attacker.names(p.account, p.memo)]
    victim = rng.choice(victims)
    # A muxed user is named by its M address, a memo user by G plus memo.
    sub = str(victim.wallet.sub)
    is_muxed = sub.startswith("M")
    probes = account_probes(sub if is_muxed else victim.account,
                            None if is_muxed else victim.memo)
    return Attempt(attacker, host, rng.choice(probes), victim)


@dataclass
class Expected:
    """The answers a request naming nothing that exists gets (from a fresh identity)."""

    customer_404: bytes
    file_404: bytes
    no_files: bytes


def problem(attempt: Attempt, reply: Reply, expected: Expected,
            forbidden: Sequence[bytes]) -> str | None:
    """None if ``reply`` is the strict model's answer to ``attempt``, else what is wrong."""
    leaked = [c for c in forbidden if c in reply.body]
    if leaked:
        return f"answer holds another identity's canary {leaked[0]!r}"
    if attempt.host_tenant != attempt.attacker.tenant_id:
        return None if reply.status == 401 else "a token at another tenant's host not refused"
    want: tuple[int, bytes | None] = {
        "404": (404, expected.customer_404), "404file": (404, expected.file_404),
        "empty": (200, expected.no_files), "403": (403, None), "upload": (200, None),
    }[attempt.probe.expect]
    if reply.status != want[0] or (want[1] is not None and reply.body != want[1]):
        return f"expected {want[0]} {want[1]!r}"
    return None


async def expected_answers(srv: RunningServer) -> Expected:
    nobody = Wallet(srv, "a.test", "t1")
    await nobody.create()
    customer = await nobody.get(id=str(uuid.uuid4()))
    file = await nobody.put({"photo_id_front_file_id": str(uuid.uuid4())})
    assert customer.status == file.status == 404
    empty = await nobody.files(customer_id=str(uuid.uuid4()))
    assert empty.json == {"files": []}, empty.body
    return Expected(customer.body, file.body, empty.body)


def changes(before: Dump, after: Dump, uploads: dict[str, Person]) -> list[str]:
    """What differs between two dumps, other than the attackers' own uploads (a new file
    record must be an uploaded id, held by its uploader's own customer or none)."""
    out = []
    for key, docs in before.items():
        now = after.get(key, {})
        out += [f"{key} {i} changed or removed" for i, d in docs.items() if now.get(i) != d]
        for new_id in sorted(set(now) - set(docs)):
            if key[1] not in UPLOAD_COLLECTIONS:
                out.append(f"{key} {new_id} added")
            elif key[1] == "files":
                out += _upload_problem(key[0], new_id, now[new_id], uploads)
    return out


def _upload_problem(tenant_id: str, file_id: str, doc: Doc,
                    uploads: dict[str, Person]) -> list[str]:
    owner = uploads.get(file_id)
    if owner is None or owner.tenant_id != tenant_id:
        return [f"file {file_id} on {tenant_id} was not uploaded there"]
    if doc.get("customer_id") not in (None, "", owner.customer_id):
        return [f"upload {file_id} joined customer {doc.get('customer_id')}"]
    return []


# --- A11 --------------------------------------------------------------------------------------


async def test_randomised_cross_tenant_and_cross_customer_attempts_all_fail(
        make_server: MakeServer) -> None:
    seed = int(os.environ.get("KYC_ISOLATION_SEED", "20261126"))
    srv, people = await make_world(make_server)
    expected = await expected_answers(srv)
    forbidden = {id(p): [c for q in people if q not in p.reachable for c in q.canaries]
                 for p in people}
    before = await store_dump(srv, HOSTS)
    rng = random.Random(seed)
    plan = [pick(rng, people) for _ in range(CASES)]
    cpu, wall = time.process_time(), time.monotonic()
    replies, connections = await send_all(srv.public_port, [
        (HOSTS[a.host_tenant], a.probe, a.attacker.wallet.token) for a in plan])
    failures: list[str] = []
    uploads: dict[str, Person] = {}
    for n, (attempt, reply) in enumerate(zip(plan, replies, strict=True)):
        wrong = problem(attempt, reply, expected, forbidden[id(attempt.attacker)])
        if wrong is not None:
            failures.append(f"#{n} {attempt.attacker.wallet.sub}@{attempt.attacker.tenant_id}"
                            f" at {attempt.host_tenant}: {attempt.probe.endpoint}: {wrong}; "
                            f"got {reply.status} {reply.body[:120]!r}")
        elif attempt.probe.expect == "upload" and reply.status == 200:
            uploads[reply.json["file_id"]] = attempt.attacker
    own_host = sum(a.host_tenant == a.attacker.tenant_id for a in plan)
    print(f"\nA11: KYC_ISOLATION_SEED={seed}, {CASES} attempts ({own_host} at the attacker's "  # noqa: T201
          f"own host), {len(uploads)} uploads, {connections} connections, "
          f"{time.monotonic() - wall:.1f} s, {time.process_time() - cpu:.1f} s CPU here")
    assert failures == [], f"seed {seed}: {len(failures)} failures, first: {failures[:5]}"
    assert changes(before, await store_dump(srv, HOSTS), uploads) == []
    assert own_host > CASES // 3  # the model was exercised
    assert uploads
    # The victims still work for their owners (the answers above could not all be refusals).
    for person in people:
        own = await person.wallet.get(id=person.customer_id)
        assert own.status == 200
        assert own.json["id"] == person.customer_id


# --- A8 ---------------------------------------------------------------------------------------


async def test_1000_bola_attempts_per_endpoint_look_like_never_existed(
        make_server: MakeServer) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="demo_anchor"))
    victim = Wallet(srv, "a.test", "t1")
    victim_id = await victim.create({"first_name": "Cnvictim", "last_name": "Cnvictim",
                                     "email_address": "victim@canary.test",
                                     "mobile_number": "+14155552671"})
    victim_file = (await victim.upload(PNG)).json["file_id"]
    assert (await victim.put({"photo_id_front_file_id": victim_file})).status == 202
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    code = await service.customers.verification_code(victim_id, "mobile_number")
    assert code is not None
    stranger = Wallet(srv, "a.test", "t1")
    await stranger.create()
    client = KeepAlive(srv.public_port)
    # Each endpoint's answer for an id/account that never existed (and is well-formed).
    never = {p.endpoint: p for p in [*id_probes(str(uuid.uuid4()), str(uuid.uuid4())),
                                     *account_probes(Keypair.random().public_key, None)]}
    reference: dict[str, tuple[int, bytes]] = {}
    for endpoint, probe in never.items():
        reply = await client.request("a.test", probe.method, probe.target,
                                     probe.with_token(stranger.token), probe.body)
        assert reply.status in (403, 404) or reply.json == {"files": []}, (endpoint, reply)
        reference[endpoint] = (reply.status, reply.body)
    await client.close()
    probes = [*id_probes(victim_id, victim_file, code), *account_probes(victim.account, None)]
    assert {p.endpoint for p in probes} == set(reference)
    before = await store_dump(srv, ["t1"])
    plan = [p for p in probes for _ in range(A8_PER_ENDPOINT)]
    random.Random(1997).shuffle(plan)
    cpu, wall = time.process_time(), time.monotonic()
    replies, connections = await send_all(srv.public_port,
                                          [("a.test", p, stranger.token) for p in plan])
    counts: dict[str, int] = {}
    for probe, reply in zip(plan, replies, strict=True):
        assert (reply.status, reply.body) == reference[probe.endpoint], (probe.endpoint, reply)
        counts[probe.endpoint] = counts.get(probe.endpoint, 0) + 1
    print(f"\nA8: {len(plan)} attempts over {len(counts)} endpoints, "  # noqa: T201
          f"{connections} connections, {time.monotonic() - wall:.1f} s, "
          f"{time.process_time() - cpu:.1f} s CPU here")
    assert set(counts.values()) == {A8_PER_ENDPOINT}
    assert await store_dump(srv, ["t1"]) == before  # nothing written, nothing erased
    assert (await victim.get(id=victim_id)).json["id"] == victim_id
