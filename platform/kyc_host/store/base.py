"""The document store both backends implement, and the errors they raise.

Repositories (``store/*.py`` beside this file) are written once against :class:`Collection`;
``sqlite.py`` and ``mongo.py`` implement it. A collection is either platform-wide or bound to
one tenant when it is opened (``Store.tenant(tenant_id, name)``), so code holding a tenant's
collection cannot name another tenant's data.

Atomicity: a single insert is atomic, and so is the unique-index check it makes; use an insert
with a unique key for anything that must happen once (consuming a challenge, claiming an
outbox attempt). ``update_one``/``find_one_and_update`` are atomic per document on SQLite and
on MongoDB, but **not** on FerretDB v1 (the test server), where concurrent ``$inc`` loses
updates and ``findAndModify`` can hand one document to two callers; never rely on them for
exclusivity.

Filters are plain mappings of field -> value. A value is always matched **literally** (a dict
value is a dict, never an operator), which rules out NoSQL operator injection; comparisons
use the small :class:`Cmp` type instead (``{"due": lte(now)}``).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Doc = dict[str, Any]
Filter = Mapping[str, Any]
SortSpec = Sequence[tuple[str, int]]  # (field, 1 ascending | -1 descending)

FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class StoreError(Exception):
    """Base class of store failures."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or timed out; the request may be retried later."""


class DuplicateKeyError(StoreError):
    """A write would violate a unique index."""


@dataclass(frozen=True, slots=True)
class Cmp:
    op: Literal["lt", "lte", "gt", "gte", "ne", "in", "nin"]
    value: Any


def lt(value: Any) -> Cmp:
    return Cmp("lt", value)


def lte(value: Any) -> Cmp:
    return Cmp("lte", value)


def gt(value: Any) -> Cmp:
    return Cmp("gt", value)


def gte(value: Any) -> Cmp:
    return Cmp("gte", value)


def ne(value: Any) -> Cmp:
    return Cmp("ne", value)


def in_(values: Sequence[Any]) -> Cmp:
    return Cmp("in", list(values))


def nin(values: Sequence[Any]) -> Cmp:
    return Cmp("nin", list(values))


@dataclass(frozen=True, slots=True)
class Index:
    """An index over top-level fields. Unique index fields must never be null or missing:
    SQLite and MongoDB disagree on whether two nulls collide."""

    fields: tuple[str, ...]
    unique: bool = False

    @property
    def name(self) -> str:
        return ("u_" if self.unique else "i_") + "_".join(self.fields).replace(".", "_")


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    name: str
    scope: Literal["platform", "tenant"]
    indexes: tuple[Index, ...] = ()
    #: Its documents are large (file chunks, about 1.4 MB each) and sealed with a key that is
    #: deleted before them: the SQLite backend never works on them on the event loop, and
    #: deletes them without overwriting the freed pages (store/sqlite.py).
    large: bool = False


class Collection(ABC):
    """One collection, platform-wide or bound to one tenant. Documents carry a string ``_id``."""

    @abstractmethod
    async def insert_one(self, doc: Doc) -> str:
        """Insert (an ``_id`` is generated when absent) and return the ``_id``.

        Raises DuplicateKeyError if ``_id`` or a unique index collides."""

    @abstractmethod
    async def find_one(self, flt: Filter) -> Doc | None: ...

    @abstractmethod
    async def find(
        self, flt: Filter, *, sort: SortSpec = (), limit: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Doc]:
        """The matching documents. With ``fields`` (top-level names), each document holds only
        ``_id`` and those of the fields that are present and not null: a cheap look at many
        documents (the tenant registry's refresh reads only ``rev`` and ``status``)."""

    @abstractmethod
    async def count(self, flt: Filter) -> int: ...

    @abstractmethod
    async def update_one(
        self,
        flt: Filter,
        *,
        set: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
    ) -> int:
        """Update the first match atomically; returns how many documents matched (0 or 1)."""

    @abstractmethod
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
        """Atomically update the first match (in ``sort`` order); return it as updated."""

    @abstractmethod
    async def replace_one(self, flt: Filter, doc: Doc, *, upsert: bool = False) -> int: ...

    @abstractmethod
    async def delete_one(self, flt: Filter) -> int: ...

    @abstractmethod
    async def delete_many(self, flt: Filter) -> int: ...


class Store(ABC):
    """A connected backend. Create with :func:`kyc_host.store.open_store`, then ``start()``."""

    url: str

    @abstractmethod
    async def start(self) -> None:
        """Connect and create platform-wide indexes; raises StoreUnavailable if unreachable."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    @abstractmethod
    def platform(self, name: str) -> Collection:
        """A platform-wide collection (tenants, operator tokens, ...)."""

    @abstractmethod
    def tenant(self, tenant_id: str, name: str) -> Collection:
        """A collection bound to one tenant."""

    @abstractmethod
    async def prepare_tenant(self, tenant_id: str) -> None:
        """Create the tenant's collections and indexes (idempotent; run at onboarding)."""

    @abstractmethod
    async def drop_tenant(self, tenant_id: str) -> None:
        """Remove every document of the tenant (offboarding)."""

    @property
    def backend_name(self) -> str:
        return type(self).__name__.removesuffix("Store").lower()


async def fresh_batches(find: Callable[[], Awaitable[list[Doc]]],
                        limit: int) -> AsyncIterator[list[Doc]]:
    """The documents of repeated calls of ``find`` (a query returning at most ``limit``), a
    batch at a time, each without those of earlier batches; for work whose handling takes a
    document out of the query's result (a purge, a shredding). It ends after a short batch,
    or one with nothing new (what is left was handled and stayed: no progress), and lets the
    event loop's ready work (requests) run between batches."""
    seen: set[str] = set()
    while True:
        batch = await find()
        fresh = [d for d in batch if str(d["_id"]) not in seen]
        seen.update(str(d["_id"]) for d in fresh)
        if fresh:
            yield fresh
        if len(batch) < limit or not fresh:
            return
        await asyncio.sleep(0)


def check_field(name: str) -> str:
    if not FIELD_NAME.fullmatch(name):
        raise ValueError(f"invalid field name {name!r}")
    return name


def new_doc_from_filter(flt: Filter) -> Doc:
    """The literal-equality part of a filter, as the base of an upserted document."""
    return {k: v for k, v in flt.items() if not isinstance(v, Cmp) and "." not in k}


def apply_update(
    doc: Doc,
    set: Mapping[str, Any] | None,
    unset: Sequence[str],
    inc: Mapping[str, int] | None,
) -> Doc:
    """Apply ``$set``/``$unset``/``$inc`` semantics to a document copy (dotted paths allowed)."""
    out = dict(doc)
    for path, value in (set or {}).items():
        _put(out, path, value)
    for path in unset:
        _pop(out, path)
    for path, delta in (inc or {}).items():
        current = _get(out, path)
        _put(out, path, (current or 0) + delta)
    return out


def _get(doc: Mapping[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _put(doc: Doc, path: str, value: Any) -> None:
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def _pop(doc: Doc, path: str) -> None:
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)
