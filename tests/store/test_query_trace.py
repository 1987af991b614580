"""Query observation (reliability-plan A11 and B4): every query a wallet flow causes, as the
store sends it, on both backends, through the real server over HTTP.

Two tenants run a full wallet flow -- a real SEP-10 login, PUT JSON, PUT multipart with a
file, GET, callback PUT, the mass-assignment and operator-lookalike inputs of the SEP-12 fuzz,
DELETE -- with the same Stellar account and per-tenant canary values, while the store is
observed:

- SQLite: ``sqlite3``'s trace callback on every connection the store opens (the ``trace``
  argument of :class:`SqliteStore`): inline, reader and writer threads. SQLite shows each
  statement with its bound parameters expanded, so a statement is split into its SQL text
  (every quoted literal replaced by ``?``) and its literals. Every statement on a tenant
  table must be ``... WHERE tenant = ? AND <rest>`` (the tenant the first conjunct, no
  top-level OR in the rest) or ``INSERT ... (tenant, id, doc) VALUES (?, ?, ?)``, with the
  tenant literal the request's own; JSON paths are plain field names.
- MongoDB (FerretDB): a PyMongo ``CommandListener`` on the store's client (``listeners``).
  The store uses one database per tenant: every command of a request goes to its tenant's
  database or, for platform collections, to the platform database. Every filter is
  ``{field: scalar | {<code operator>: operand}}`` where a dict or list operand only ever
  sits under ``$eq`` (a literal); updates use only ``$set``/``$unset``/``$inc`` on plain
  field names; no stored document carries a ``$`` key.

Each observed statement or command is attributed to the request it was made for
(``logs.current_request``: the request's context, which the SQLite store threads run in as
well), so T2's requests are checked never to touch T1's rows or database while the
background jobs (callback worker, purge) run as they do in production. No canary value of any
request (names, email, callback URL, operator-lookalike keys and values) appears in any
statement or command: PII is sealed before it is stored and hostile inputs are refused.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)
from stellar_sdk import Keypair
from tornado.netutil import bind_sockets

from conftest import RunningServer, api_document
from kyc_host.app import Server, build_services
from kyc_host.logs import current_request
from kyc_host.settings import PlatformSettings
from kyc_host.store.mongo import MongoStore
from kyc_host.store.schema import COLLECTIONS
from kyc_host.store.sqlite import SqliteStore
from sep10.sep10_helpers import HorizonStub
from sep10.sep10_helpers import Wallet as AuthWallet
from sep12.sep12_helpers import Wallet, kyc_doc, png_of_size
from sep12.test_sep12_fuzz import KEYS as FUZZ_KEYS

TENANT_NAMES = frozenset(s.name for s in COLLECTIONS.values() if s.scope == "tenant")
PLATFORM_NAMES = frozenset(s.name for s in COLLECTIONS.values() if s.scope == "platform")
TENANTS = ("t1", "t2")
HOSTS = {"t1": "a.test", "t2": "b.test"}
#: Operators the store itself writes into filters (store/mongo.py ``_query``).
FILTER_OPERATORS = frozenset({"$eq", "$lt", "$lte", "$gt", "$gte", "$ne", "$in", "$nin"})
UPDATE_OPERATORS = frozenset({"$set", "$unset", "$inc"})


def canaries(tenant_id: str) -> dict[str, str]:
    """Values only this tenant's requests carry (letters only: no encoding can hide them)."""
    return {"first_name": f"Qzcanary{tenant_id}first", "last_name": f"Vwcanary{tenant_id}last",
            "email_address": f"qz.canary{tenant_id}@canary-mail.example",
            "url": f"https://canary-{tenant_id}.example/hook",
            "key": f"zqcanarykey{tenant_id}", "op": f"zqcanaryop{tenant_id}"}


# --- observers ------------------------------------------------------------------------------


@dataclass
class Seen:
    """One statement (SQLite) or command (MongoDB) and the request it was made for."""

    request: tuple[str | None, str] | None
    sql: str = ""
    thread: str = ""
    database: str = ""
    name: str = ""
    command: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tenant(self) -> str | None:
        """The tenant of the request this was done for; None: no request or no tenant."""
        return self.request[0] if self.request else None


class Recorder(CommandListener):
    """Collects SQLite statements (``trace``) and MongoDB commands (``started``)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def trace(self, sql: str) -> None:
        item = Seen(current_request(), sql=sql, thread=threading.current_thread().name)
        with self._lock:
            self.seen.append(item)

    def started(self, event: CommandStartedEvent) -> None:
        item = Seen(current_request(), database=event.database_name,
                    name=event.command_name, command=dict(event.command))
        with self._lock:
            self.seen.append(item)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def observed(settings: PlatformSettings, backend: str
                   ) -> AsyncIterator[tuple[RunningServer, Recorder, HorizonStub]]:
    """T1 (a.test) and T2 (b.test) on a real server whose store reports to a Recorder."""
    recorder = Recorder()
    store = (SqliteStore(backend, trace=recorder.trace) if backend.startswith("sqlite:")
             else MongoStore(backend, listeners=[recorder]))
    horizon = HorizonStub()
    services = await build_services(settings, environ=dict(os.environ),
                                    apply_tenant_files=False, store=store)
    await services.tenants.apply([api_document(kyc_doc(t, [HOSTS[t]], plugin="demo_anchor",
                                                       horizon_url=horizon.url))
                                  for t in TENANTS])
    await services.registry.refresh()
    public, admin = bind_sockets(0, "127.0.0.1"), bind_sockets(0, "127.0.0.1")
    server = Server(services)
    server.start(public, admin)
    srv = RunningServer(services, server, public[0].getsockname()[1], admin[0].getsockname()[1])
    try:
        yield srv, recorder, horizon
    finally:
        await srv.close()
        await horizon.close()


# --- the flow -------------------------------------------------------------------------------


def hostile_bodies(tenant_id: str) -> list[dict[str, Any]]:
    """Mass-assignment and operator-lookalike PUT bodies (reliability-plan B4)."""
    c = canaries(tenant_id)
    return [{"$set": {"status": "ACCEPTED", "first_name": c["op"]}},
            {"first_name[$gt]": c["op"]},
            {"first_name": {"$gt": c["op"]}},
            {"email_address": {"$ne": None}, "last_name": c["op"]},
            {"status": "ACCEPTED"}, {"_id": {"$gt": ""}}, {"tenant_id": "t1"},
            {"tenant": "t2"}, {"provided_fields": [c["op"]]}, {"__proto__": {"x": c["op"]}},
            {c["key"]: "1"}, {"first_name": c["op"], "$where": "1"},
            *({key: {"$gt": c["op"]}} for key in FUZZ_KEYS),
            *({key: c["op"]} for key in FUZZ_KEYS)]


async def login(srv: RunningServer, tenant_id: str, client: Keypair) -> Wallet:
    """A wallet on ``tenant_id`` holding the JWT of a real SEP-10 login."""
    wallet = Wallet(srv, HOSTS[tenant_id], tenant_id, keypair=client)
    wallet.token = await AuthWallet(srv).token(HOSTS[tenant_id], client,
                                               account=client.public_key)
    return wallet


async def fill(wallet: Wallet, tenant_id: str) -> str:
    """PUT JSON, PUT multipart with a file, GET, callback PUT and the hostile inputs."""
    c = canaries(tenant_id)
    customer_id = await wallet.create({k: c[k] for k in ("first_name", "last_name",
                                                         "email_address")})
    # Larger than the inline limit: its chunk is written on the store's writer thread.
    picture = png_of_size(150_000, seed=len(tenant_id))
    reply = await wallet.put_multipart([("photo_id_front", picture, "id.png"),
                                        ("last_name", c["last_name"], None)])
    assert reply.status == 202, reply.body
    reply = await wallet.get()
    assert reply.status == 200, reply.body
    assert reply.json["id"] == customer_id, reply.body
    reply = await wallet.call("PUT", "/kyc/customer/callback", json_body={"url": c["url"]})
    assert reply.status == 200, reply.body
    for body in hostile_bodies(tenant_id):
        reply = await wallet.put(body)
        assert 400 <= reply.status < 500, (body, reply.status, reply.body)
    for form in ({"first_name[$gt]": c["op"]}, {"$set[status]": "ACCEPTED"},
                 {c["key"]: c["op"]}, *({key: c["op"]} for key in FUZZ_KEYS)):
        reply = await wallet.put_form(form)
        assert 400 <= reply.status < 500, (form, reply.status, reply.body)
    reply = await wallet.put_multipart([("$set", c["op"], None)])
    assert 400 <= reply.status < 500, reply.body
    for query in ({"id[$gt]": ""}, {"id": '{"$ne": null}'}, {"id": c["op"]},
                  {"account": '{"$gt": ""}'}, {"memo": '{"$ne": null}', "memo_type": "id"}):
        reply = await wallet.call("GET", "/kyc/customer", query=query)
        # Unknown parameters are ignored: then it is the caller's own customer, never a
        # match made by an operator.
        assert reply.status < 500, (query, reply.status, reply.body)
        assert reply.status != 200 or reply.json["id"] == customer_id, (query, reply.body)
    reply = await wallet.get()
    assert reply.status == 200
    assert reply.json["id"] == customer_id
    assert reply.json["status"] != "ACCEPTED"
    return customer_id


async def run_flows(srv: RunningServer) -> None:
    """The same account on both tenants; T2's whole flow, DELETE included, runs while T1's
    customer exists, and T1's customer is intact after it."""
    client = Keypair.random()
    t1 = await login(srv, "t1", client)
    t1_customer = await fill(t1, "t1")
    t2 = await login(srv, "t2", client)
    t2_customer = await fill(t2, "t2")
    assert t2_customer != t1_customer
    assert (await t2.delete()).status == 200
    assert "id" not in (await t2.get()).json  # gone: a new customer would be NEEDS_INFO
    assert (await t1.get()).json["id"] == t1_customer
    assert (await t1.delete()).status == 200
    assert "id" not in (await t1.get()).json


# --- SQLite ---------------------------------------------------------------------------------

_LITERAL = re.compile(r"'(?:[^']|'')*'")
_TABLE = re.compile(r"\bc_([a-z_]+)\b")
_TENANT_BOUND = re.compile(
    r"(?:SELECT .+? FROM|DELETE FROM|UPDATE) c_[a-z_]+ (?:SET doc = \?(?:, data = (?:x\?|NULL))? )?"
    r"WHERE tenant = \?"
    r"(?P<rest> AND .*)?", re.DOTALL)
# (A large collection's rows also carry their bytes, a blob shown as x'...'.)
_INSERT = re.compile(r"INSERT INTO c_[a-z_]+ \(tenant, id, doc(?:, data)?\)"
                     r" VALUES \(\?, \?, \?(?:, (?:x\?|NULL))?\)")
_PATH = re.compile(r"json_(?:extract|type)\(doc, \?")
_FIELD_PATH = re.compile(r"\$\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def split_sql(sql: str) -> tuple[str, list[str]]:
    """(the statement with each quoted literal replaced by ``?``, the literals' values)."""
    values = [m.group(0)[1:-1].replace("''", "'") for m in _LITERAL.finditer(sql)]
    return _LITERAL.sub("?", sql), values


def no_top_level_or(condition: str) -> bool:
    depth = 0
    for i, char in enumerate(condition):
        depth += (char == "(") - (char == ")")
        if depth == 0 and condition.startswith(" OR ", i):
            return False
    return True


@dataclass
class Statement:
    """A statement on a tenant table: its table, tenant literal and the JSON paths it uses."""

    table: str
    tenant: str
    paths: list[str]


def parse_tenant_statement(sql: str) -> Statement:
    """Fails unless ``sql`` carries the tenant condition as its first conjunct."""
    text, values = split_sql(sql)
    tables = set(_TABLE.findall(text))
    assert len(tables) == 1, sql[:300]
    match = _TENANT_BOUND.fullmatch(text) or _INSERT.fullmatch(text)
    assert match is not None, f"tenant condition missing: {text[:300]}"
    if match.re is _INSERT:
        tenant_at = 0  # the first column
    else:
        rest = match.group("rest") or ""
        assert no_top_level_or(rest), f"an OR outside parentheses: {text[:300]}"
        tenant_at = text[:text.index("WHERE tenant = ?")].count("?")
    paths = [values[text[:m.end()].count("?") - 1] for m in _PATH.finditer(text)]
    return Statement(tables.pop(), values[tenant_at], paths)


def sqlite_findings(seen: Sequence[Seen]) -> dict[str, Any]:
    """Checks every statement; returns counts per (request tenant, table tenant)."""
    per: dict[tuple[str | None, str], int] = {}
    tables: dict[str, set[str]] = {t: set() for t in TENANTS}
    threads: set[tuple[str | None, str]] = set()
    for item in seen:
        text, values = split_sql(item.sql)
        names = set(_TABLE.findall(text))
        if not names & TENANT_NAMES:
            # Platform tables: rows of tenant "" only, and never another tenant's id.
            if names:
                assert re.search(r"\bWHERE tenant = \?|\(tenant, id, doc\)", text), text[:300]
            if item.tenant is not None:
                others = {t for t in TENANTS if t != item.tenant}
                assert not others & set(values), (item.tenant, item.sql[:300])
            continue
        statement = parse_tenant_statement(item.sql)
        assert statement.tenant in TENANTS, item.sql[:300]  # 100%: never empty, never other
        for path in statement.paths:
            assert _FIELD_PATH.fullmatch(path), (path, item.sql[:300])
        if item.tenant is not None:
            assert statement.tenant == item.tenant, (item.request, item.sql[:300])
            tables[item.tenant].add(statement.table)
            threads.add((item.tenant, item.thread.split("_")[0]))
        key = (item.tenant, statement.tenant)
        per[key] = per.get(key, 0) + 1
    return {"per": per, "tables": tables, "threads": threads}


def assert_no_canaries(texts: Iterator[str]) -> None:
    values = [v for t in TENANTS for v in canaries(t).values()]
    for text in texts:
        for value in values:
            assert value not in text, (value, text[:300])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_every_tenant_statement_is_tenant_bound(
        observed: tuple[RunningServer, Recorder, HorizonStub]) -> None:
    srv, recorder, _ = observed
    recorder.seen.clear()  # start-up and tenant onboarding are not a wallet flow
    await run_flows(srv)
    seen = list(recorder.seen)
    findings = sqlite_findings(seen)
    for tenant_id in TENANTS:
        # Not vacuous: each flow was seen on the tables it must have used ...
        assert {"challenges", "customers", "identities", "files", "blobs"} <= \
            findings["tables"][tenant_id], findings["tables"]
        # ... including on the writer thread (the file chunk) and inline.
        assert (tenant_id, "sqlite-write") in findings["threads"], findings["threads"]
        assert (tenant_id, "MainThread") in findings["threads"], findings["threads"]
        assert findings["per"][(tenant_id, tenant_id)] > 20
    # The other-tenant case: no request of one tenant touched the other's rows.
    assert ("t2", "t1") not in findings["per"]
    assert ("t1", "t2") not in findings["per"]
    assert_no_canaries(item.sql for item in seen)


# --- MongoDB --------------------------------------------------------------------------------


def dollar_keys(value: Any) -> list[str]:
    """Every ``$``-key anywhere inside ``value``."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if isinstance(key, str) and key.startswith("$"):
                found.append(key)
            found += dollar_keys(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            found += dollar_keys(inner)
    return found


def check_filter(flt: Mapping[str, Any]) -> None:
    """``{field: scalar | {op: operand}}``: operators only where the store puts them, and a
    dict or list operand only under ``$eq`` (matched literally)."""
    for name, condition in flt.items():
        assert not name.startswith("$"), flt
        if not isinstance(condition, Mapping):
            assert not isinstance(condition, list), flt
            continue
        assert len(condition) == 1, flt
        op, operand = next(iter(condition.items()))
        assert op in FILTER_OPERATORS, flt
        if op in ("$in", "$nin"):
            assert all(not dollar_keys(v) for v in operand), flt
        elif op != "$eq":
            assert not isinstance(operand, Mapping | list), flt


def check_update(update: Mapping[str, Any]) -> None:
    if any(key.startswith("$") for key in update):
        assert set(update) <= UPDATE_OPERATORS, update
        for fields in update.values():
            assert not dollar_keys(fields), update  # plain field names, literal values
    else:
        assert not dollar_keys(update), "a replacement document with $ keys"


def check_command(name: str, command: Mapping[str, Any]) -> None:
    """The operator rules above, for each command shape the store sends."""
    if name == "find":
        check_filter(command.get("filter", {}))
        assert not dollar_keys(command.get("sort", {}))
        assert not dollar_keys(command.get("projection", {}))
    elif name == "findAndModify":
        check_filter(command.get("query", {}))
        check_update(command.get("update", {}))
        assert not dollar_keys(command.get("sort", {}))
    elif name == "update":
        for statement in command["updates"]:
            check_filter(statement["q"])
            check_update(statement["u"])
    elif name == "delete":
        for statement in command["deletes"]:
            check_filter(statement["q"])
    elif name == "insert":
        assert not dollar_keys(list(command["documents"])), "an inserted document has $ keys"
    elif name == "count":
        check_filter(command.get("query", {}))
    elif name == "aggregate":  # count_documents: [$match, $group]
        stages = list(command["pipeline"])
        assert [next(iter(s)) for s in stages] in (["$match", "$group"], ["$match"],
                                                   ["$match", "$skip", "$group"]), stages
        check_filter(stages[0]["$match"])
    else:
        assert name in ("createIndexes", "getMore", "killCursors", "endSessions", "ping",
                        "listIndexes", "dropDatabase"), name


def strings(value: Any) -> Iterator[str]:
    """Every string key and value inside ``value``."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield str(key)
            yield from strings(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from strings(inner)


def mongo_findings(seen: Sequence[Seen], platform_db: str) -> dict[str, Any]:
    databases = {f"{platform_db}_t_{t}": t for t in TENANTS}
    per: dict[tuple[str | None, str], int] = {}
    collections: dict[str, set[str]] = {t: set() for t in TENANTS}
    for item in seen:
        check_command(item.name, item.command)
        target = item.command.get(item.name)
        collection = target if isinstance(target, str) else str(item.command.get("collection"))
        if item.database in databases:
            owner = databases[item.database]
            assert collection in TENANT_NAMES, (item.database, collection)
        else:
            owner = ""
            assert item.database in (platform_db, "admin"), item.database
            if item.database == platform_db and isinstance(target, str):
                assert collection in PLATFORM_NAMES, collection
        if item.tenant is not None:
            # A request's commands go to its own database or the platform's, and name no
            # other tenant anywhere.
            assert owner in ("", item.tenant), (item.request, item.database, item.name)
            others = {t for t in TENANTS if t != item.tenant}
            others |= {d for d, t in databases.items() if t != item.tenant}
            assert not others & set(strings(item.command)), (item.request, item.name)
            if owner:
                collections[owner].add(collection)
        key = (item.tenant, owner)
        per[key] = per.get(key, 0) + 1
    return {"per": per, "collections": collections}


@pytest.mark.parametrize("backend", [pytest.param("mongo", marks=pytest.mark.mongo)],
                         indirect=True)
async def test_mongo_every_command_stays_in_the_tenants_database(
        observed: tuple[RunningServer, Recorder, HorizonStub]) -> None:
    srv, recorder, _ = observed
    store = srv.services.store
    assert isinstance(store, MongoStore)
    recorder.seen.clear()
    await run_flows(srv)
    seen = list(recorder.seen)
    findings = mongo_findings(seen, store.db_name)
    for tenant_id in TENANTS:
        assert {"challenges", "customers", "identities", "files", "blobs"} <= \
            findings["collections"][tenant_id], findings["collections"]
        assert findings["per"][(tenant_id, tenant_id)] > 20
    assert ("t2", "t1") not in findings["per"]
    assert ("t1", "t2") not in findings["per"]
    assert_no_canaries(s for item in seen for s in strings(item.command))


def test_the_checks_can_fail() -> None:
    """The checkers refuse what they exist to catch (so a pass above means something)."""
    for bad in ("SELECT doc FROM c_customers WHERE id = 'x'",
                "SELECT doc FROM c_customers WHERE tenant = 't1' OR 1",
                "SELECT doc FROM c_customers WHERE tenant = 't1' AND a = 1 OR 1",
                "DELETE FROM c_blobs WHERE 1",
                "SELECT doc FROM c_customers WHERE json_extract(doc, '$.a') = 'x'"
                " AND tenant = 't1'"):
        with pytest.raises(AssertionError):
            parse_tenant_statement(bad)
    good = parse_tenant_statement("SELECT doc FROM c_customers WHERE tenant = 't''1' AND "
                                  "json_extract(doc, '$.a[0]') = 'x' LIMIT 1")
    assert good.tenant == "t'1"
    assert good.paths == ["$.a[0]"]
    assert not _FIELD_PATH.fullmatch(good.paths[0])
    insert = parse_tenant_statement("INSERT INTO c_files (tenant, id, doc) VALUES ('t2', 'i', "
                                    "'{\"a\":\"WHERE tenant = ''t1''\"}')")
    assert insert.tenant == "t2"
    for bad_filter in ({"$where": "1"}, {"a": {"$gt": {"$ne": None}}}, {"a": {"$regex": "."}},
                       {"a": [1]}, {"a": {"$eq": 1, "$ne": 2}}):
        with pytest.raises(AssertionError):
            check_filter(bad_filter)
    check_filter({"a": {"$eq": {"$ne": None}}, "b": "x", "c": {"$in": ["x"]}})
    for bad_update in ({"$set": {"$x": 1}}, {"$rename": {"a": "b"}}, {"a": {"$gt": 1}},
                       {"$set": {"a": {"$ne": None}}}):
        with pytest.raises(AssertionError):
            check_update(bad_update)
