"""The MongoDB backend, through PyMongo's native async client (``AsyncMongoClient``).

Platform-wide collections live in the URL's database (default ``kyc_host``); each tenant has
its own database ``<db>_t_<tenant id>``, so dropping a tenant drops one database and no query
of one tenant can touch another's collections.

The client is created inside the running loop (``start``) with short timeouts, so an
unreachable server turns into StoreUnavailable (a 503) within seconds instead of a hang. A
wallet request's operations share one budget (store/bounded.py): each runs under
``pymongo.timeout`` with what the request has left, so a slow server gives a 503 within it
too, however many operations the request makes.
Dict and list filter values are wrapped in ``$eq`` (comparisons use the operator of a
:class:`Cmp`), so a value that looks like ``{"$ne": null}`` is matched literally and never
reaches the query as an operator; scalars stay bare (FerretDB only uses its ``_id`` lookup
for the bare form).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pymongo
from bson import Binary
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)
from pymongo.errors import (
    DuplicateKeyError as MongoDuplicateKeyError,
)
from pymongo.monitoring import CommandListener

from kyc_host.store import bounded
from kyc_host.store.base import (
    Cmp,
    Collection,
    Doc,
    DuplicateKeyError,
    Filter,
    SortSpec,
    Store,
    StoreError,
    StoreUnavailable,
    check_field,
)
from kyc_host.store.schema import COLLECTIONS, spec_for

_TIMEOUT_MS = 4000  # every operation fails within this, so a 503 comes well inside 5 s

#: Server error codes that say the store could not do the operation *now*, not that the
#: operation was wrong: a client's retry after ``Retry-After`` can succeed, so they answer 503
#: like an unreachable store. MongoDB's retryable codes (not-primary, shutting down, host or
#: network trouble, time limit), its lock and write conflicts, and InternalError: the server
#: failed inside (FerretDB reports its SQLite engine's failures so; one surfaced in CI as a
#: 500 on the first write after a store freeze ended).
_TRANSIENT_CODES = frozenset({
    1,  # InternalError
    6, 7, 89, 9001,  # HostUnreachable, HostNotFound, NetworkTimeout, SocketException
    24, 112,  # LockTimeout, WriteConflict
    91, 11600, 11602,  # ShutdownInProgress, InterruptedAtShutdown, ...DueToReplStateChange
    189, 10107, 13435, 13436,  # PrimarySteppedDown, NotWritablePrimary, NotPrimary...
    134, 262,  # ReadConcernMajorityNotAvailableYet, ExceededTimeLimit
})
#: Error labels a server puts on failures worth retrying.
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError")


def _query(flt: Filter) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for field, value in flt.items():
        check_field(field)
        if isinstance(value, Cmp):
            query[field] = {f"${value.op}": value.value}
        elif isinstance(value, dict | list):
            # Wrapped so a value like {"$ne": null} is matched literally, never run.
            query[field] = {"$eq": value}
        else:
            # A scalar cannot be an operator; left bare so FerretDB uses its _id lookup.
            query[field] = value
    return query


def _update(
    set: Mapping[str, Any] | None, unset: Sequence[str], inc: Mapping[str, int] | None
) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if set:
        update["$set"] = {check_field(k): v for k, v in set.items()}
    if unset:
        update["$unset"] = {check_field(k): "" for k in unset}
    if inc:
        update["$inc"] = {check_field(k): v for k, v in inc.items()}
    return update


def _sort(sort: SortSpec) -> list[tuple[str, int]] | None:
    return [(check_field(f), 1 if d >= 0 else -1) for f, d in sort] or None


def _top_level(field: str) -> str:
    if "." in check_field(field):
        raise ValueError(f"not a top-level field: {field!r}")
    return field


def _plain(doc: Mapping[str, Any]) -> Doc:
    """BSON Binary subtype 0 comes back as bytes already; other subtypes are converted."""
    return {k: (bytes(v) if isinstance(v, Binary) else v) for k, v in doc.items()}


def _maybe(doc: Mapping[str, Any] | None) -> Doc | None:
    return None if doc is None else _plain(doc)


class _Errors:
    """Translate PyMongo failures into the store's own errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, MongoDuplicateKeyError):
            raise DuplicateKeyError(str(exc.details or exc)) from None
        if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError):
            raise StoreUnavailable(f"mongodb: {type(exc).__name__}") from None
        if isinstance(exc, PyMongoError) and exc.timeout:
            raise StoreUnavailable(f"mongodb: {type(exc).__name__} (timeout)") from None
        if isinstance(exc, OperationFailure):
            # FerretDB v1 reports a unique violation made by an update or replace as an
            # InternalError (code 1) quoting SQLite, not as code 11000.
            if "UNIQUE constraint failed" in str(exc):
                raise DuplicateKeyError("unique index violated") from None
            # The code and its name only: a server's message can quote the values of a
            # document, and this text reaches the log.
            name = (exc.details or {}).get("codeName") or "no code name"
            if exc.code in _TRANSIENT_CODES or any(map(exc.has_error_label, _TRANSIENT_LABELS)):
                raise StoreUnavailable(f"mongodb: code {exc.code} ({name})") from None
            raise StoreError(f"mongodb operation failed: code {exc.code} ({name})") from None


_errors = _Errors()


@contextmanager
def _operation() -> Iterator[None]:
    """One collection operation: PyMongo's errors translated, and within a wallet request
    bounded by what is left of the request's store time (a 503 once it is spent)."""
    with _errors:
        budget = bounded.store_time()
        if budget is None:
            yield
            return
        left = budget.left()
        if left <= 0:
            raise StoreUnavailable(
                f"mongodb: the request's operations took {budget.limit:g} s in all")
        started = time.monotonic()
        try:
            with pymongo.timeout(min(left, _TIMEOUT_MS / 1000)):
                yield
        finally:
            budget.spent += time.monotonic() - started


class MongoStore(Store):
    def __init__(self, url: str, *, listeners: Sequence[CommandListener] = ()) -> None:
        """``listeners``: PyMongo command listeners given to the client ``start`` creates
        (PyMongo takes them only when a client is built). They see every command this store
        sends, in the task that sends it. For tests and diagnosis: keep them cheap."""
        self.url = url
        self._listeners = tuple(listeners)
        path = urlsplit(url).path.strip("/")
        self.db_name = path or "kyc_host"
        self._client: AsyncMongoClient[Doc] | None = None

    @property
    def client(self) -> AsyncMongoClient[Doc]:
        if self._client is None:
            raise StoreUnavailable("mongodb store not started")
        return self._client

    def _db(self, tenant_id: str | None) -> AsyncDatabase[Doc]:
        name = self.db_name if tenant_id is None else f"{self.db_name}_t_{tenant_id}"
        return self.client[name]

    async def start(self) -> None:
        self._client = AsyncMongoClient(
            self.url,
            serverSelectionTimeoutMS=3000,
            connectTimeoutMS=3000,
            timeoutMS=_TIMEOUT_MS,
            retryWrites=True,
            tz_aware=True,
            event_listeners=self._listeners,
        )
        await self.ping()
        await self._create_indexes(None, "platform")

    async def _create_indexes(self, tenant_id: str | None, scope: str) -> None:
        db = self._db(tenant_id)
        with _errors:
            for spec in COLLECTIONS.values():
                if spec.scope != scope:
                    continue
                for index in spec.indexes:
                    await db[spec.name].create_index(
                        [(f, 1) for f in index.fields], unique=index.unique, name=index.name)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ping(self) -> None:
        with _errors:
            await self.client.admin.command("ping")

    def platform(self, name: str) -> Collection:
        return MongoCollection(self._db(None)[spec_for(name, "platform").name])

    def tenant(self, tenant_id: str, name: str) -> Collection:
        if not tenant_id:
            raise ValueError("tenant id required")
        return MongoCollection(self._db(tenant_id)[spec_for(name, "tenant").name])

    async def prepare_tenant(self, tenant_id: str) -> None:
        await self._create_indexes(tenant_id, "tenant")

    async def drop_tenant(self, tenant_id: str) -> None:
        if not tenant_id:
            raise ValueError("tenant id required")
        with _errors:
            await self.client.drop_database(self._db(tenant_id).name)


class MongoCollection(Collection):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self._coll = coll

    async def insert_one(self, doc: Doc) -> str:
        doc = {"_id": uuid.uuid4().hex, **doc}
        with _operation():
            await self._coll.insert_one(doc)
        return str(doc["_id"])

    async def find_one(self, flt: Filter) -> Doc | None:
        with _operation():
            return _maybe(await self._coll.find_one(_query(flt)))

    async def find(
        self, flt: Filter, *, sort: SortSpec = (), limit: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Doc]:
        # "_id" named explicitly: an empty projection would mean every field.
        projection = (None if fields is None
                      else {"_id": 1} | {_top_level(f): 1 for f in fields})
        with _operation():
            cursor = self._coll.find(_query(flt), projection, sort=_sort(sort), limit=limit or 0)
            docs = [_plain(doc) for doc in await cursor.to_list()]
        if fields is None:
            return docs
        return [{k: v for k, v in doc.items() if v is not None} for doc in docs]

    async def count(self, flt: Filter) -> int:
        with _operation():
            return await self._coll.count_documents(_query(flt))

    async def update_one(
        self,
        flt: Filter,
        *,
        set: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
    ) -> int:
        with _operation():
            result = await self._coll.update_one(
                _query(flt), _update(set, unset, inc), upsert=upsert)
            return result.matched_count or (1 if result.upserted_id is not None else 0)

    async def find_one_and_update(
        self,
        flt: Filter,
        *,
        set: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
        sort: SortSpec = (),
    ) -> Doc | None:
        with _operation():
            doc = await self._coll.find_one_and_update(
                _query(flt), _update(set, unset, inc), upsert=upsert, sort=_sort(sort),
                return_document=ReturnDocument.AFTER)
            return _maybe(doc)

    async def replace_one(self, flt: Filter, doc: Doc, *, upsert: bool = False) -> int:
        body = {k: v for k, v in doc.items() if k != "_id"}
        with _operation():
            result = await self._coll.replace_one(_query(flt), body, upsert=upsert)
            return result.matched_count or (1 if result.upserted_id is not None else 0)

    async def delete_one(self, flt: Filter) -> int:
        with _operation():
            return (await self._coll.delete_one(_query(flt))).deleted_count

    async def delete_many(self, flt: Filter) -> int:
        with _operation():
            return (await self._coll.delete_many(_query(flt))).deleted_count
