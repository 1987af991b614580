"""The tamper-evident audit log: per tenant (plus one platform log), append-only, hash-chained.

Entry ``n`` stores ``seq = n``, ``prev_hash`` (the hash of entry ``n-1``, or 64 zeros for the
first) and ``hash = SHA-256(canonical JSON of tenant, seq, prev_hash, time, actor, action,
customer_id, fields, request_id, details)``. Changing, removing or reordering any stored entry
therefore breaks the chain at that point, and :func:`verify` names the first bad ``seq``.

Who writes: other modules call :func:`record`; the actor is ``token:<prefix>`` for a
management-API token, ``cli``, ``wallet`` or ``system``. **Never values**: ``fields`` holds
SEP-9 field *names*, ``details`` small identifiers and enumerations (a status, a scope list, a
host) -- never a name, number, address or file content (issue 5: the log must be safe to show
to an auditor who may not see the PII itself).

Concurrency: the unique index on ``seq`` is the guard (the one exclusivity primitive that
works on FerretDB v1 too). A writer reads the head, inserts ``head+1`` and, on
DuplicateKeyError (another process won that seq), re-reads the head and tries again. Within
one process, appends to one log wait on an asyncio lock first, so N concurrent requests cost N
appends rather than N^2 retries; only writers in different processes ever race.

Limits: a plain hash chain cannot show that the *newest* entries were cut off, nor a chain
rewritten from some entry to the end by someone who can write the store; anchoring the head
hash outside the store (or keying the hash) would, and is left to the key-lifecycle work.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

from kyc_host.store.base import Collection, Doc, DuplicateKeyError, Store, StoreUnavailable, gt, gte

GENESIS = "0" * 64
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_PAGE = 200
_VERIFY_PAGE = 500
_MAX_ATTEMPTS = 60
_ACTION = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_HASHED = ("tenant", "seq", "prev_hash", "time", "actor", "action", "customer_id", "fields",
           "request_id", "details")
#: Per store, per log (tenant id; None = platform): the lock serializing this process's appends.
#: Keyed weakly by the store, so a closed store's locks go with it.
_LOCKS: WeakKeyDictionary[Store, dict[str | None, asyncio.Lock]] = WeakKeyDictionary()
#: The fields of an entry a reader sees (no store ``_id``).
PUBLIC_FIELDS = ("seq", "time", "actor", "action", "customer_id", "fields", "request_id",
                 "details", "prev_hash", "hash")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    """UTC time with microseconds; fixed width, so strings sort like the times they name."""
    return datetime.now(UTC).strftime(_TIME_FORMAT)


def iso(timestamp: float) -> str:
    """A Unix time in the same format as :func:`now_iso`."""
    return datetime.fromtimestamp(timestamp, UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> str:
    """An ISO-8601 time (``Z`` or offset; naive means UTC) or Unix seconds, in the log's own
    format, for ``since`` filters; raises ValueError."""
    if re.fullmatch(r"\d{1,12}(\.\d+)?", text):
        try:
            return iso(float(text))
        except (OverflowError, OSError):
            raise ValueError("time out of range") from None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def _collection(store: Store, tenant_id: str | None) -> Collection:
    return store.platform("platform_audit") if tenant_id is None else store.tenant(tenant_id,
                                                                                  "audit")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON (sorted keys, no spaces, UTF-8) of the hashed fields."""
    material = {key: entry.get(key) for key in _HASHED}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Details are flat: str keys -> str/int/bool/None or lists of those (no floats: their
    text form differs between languages, and a verifier elsewhere must rebuild the hash)."""
    if details is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in details.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise ValueError(f"audit detail key {key!r} is not a simple name")
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, float) or not isinstance(item, str | int | bool | None):
                raise ValueError(f"audit detail {key!r} must hold strings, ints or booleans")
            if isinstance(item, str) and len(item) > 200:
                raise ValueError(f"audit detail {key!r} is too long for an identifier")
        out[key] = list(value) if isinstance(value, list | tuple) else value
    return out


def _build(tenant_id: str | None, seq: int, prev_hash: str, *, actor: str, action: str,
           customer_id: str | None, fields: Iterable[str], request_id: str | None,
           details: dict[str, Any]) -> Doc:
    entry: Doc = {
        "_id": f"{seq:012d}",
        "tenant": tenant_id or "",
        "seq": seq,
        "prev_hash": prev_hash,
        "time": now_iso(),
        "actor": actor,
        "action": action,
        "customer_id": customer_id or "",
        "fields": sorted(set(fields)),
        "request_id": request_id or "",
        "details": details,
    }
    entry["hash"] = entry_hash(entry)
    return entry


async def record(
    store: Store,
    tenant_id: str | None,
    *,
    actor: str,
    action: str,
    customer_id: str | None = None,
    fields: Iterable[str] = (),
    request_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one entry to ``tenant_id``'s log (None: the platform log) and return it.

    ``fields`` are field *names*; ``details`` identifiers only (see the module docstring).
    Raises ValueError for a malformed action, field name or detail (a programming error), and
    StoreUnavailable if the store fails or the log stays contended for too long.
    """
    if not _ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} is not a simple name")
    if not actor or len(actor) > 200:
        raise ValueError("audit actor must be a short non-empty string")
    names = list(fields)
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"audit field {name!r} is not a field name")
    clean = _check_details(details)
    coll = _collection(store, tenant_id)
    async with _lock(store, tenant_id):
        for attempt in range(_MAX_ATTEMPTS):
            head = await coll.find({}, sort=[("seq", -1)], limit=1)
            seq = head[0]["seq"] + 1 if head else 1
            prev = head[0]["hash"] if head else GENESIS
            entry = _build(tenant_id, seq, prev, actor=actor, action=action,
                           customer_id=customer_id, fields=names, request_id=request_id,
                           details=clean)
            try:
                await coll.insert_one(entry)
            except DuplicateKeyError:
                # Another process took this seq; back off a little (jitter, not security).
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311
                continue
            return public(entry)
    raise StoreUnavailable(f"audit log of {tenant_id or 'the platform'} stayed contended")


def _lock(store: Store, tenant_id: str | None) -> asyncio.Lock:
    locks = _LOCKS.setdefault(store, {})
    lock = locks.get(tenant_id)
    if lock is None:
        lock = locks[tenant_id] = asyncio.Lock()
    return lock


def public(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: entry.get(key) for key in PUBLIC_FIELDS}


async def entries(
    store: Store,
    tenant_id: str | None,
    *,
    action: str | None = None,
    customer_id: str | None = None,
    since: str | None = None,
    after: int = 0,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page in ``seq`` order after ``after``; returns (entries, next cursor or None).

    ``limit`` is clamped to 1..200. ``since`` is an ISO-8601 UTC time as :func:`now_iso` makes.
    """
    limit = max(1, min(MAX_PAGE, limit))
    flt: dict[str, Any] = {"seq": gt(after)}
    if action:
        flt["action"] = action
    if customer_id:
        flt["customer_id"] = customer_id
    if since:
        flt["time"] = gte(since)
    page = await _collection(store, tenant_id).find(flt, sort=[("seq", 1)], limit=limit)
    cursor = int(page[-1]["seq"]) if len(page) == limit else None
    return [public(e) for e in page], cursor


async def verify(store: Store, tenant_id: str | None) -> VerifyResult:
    """Walk the whole chain in ``seq`` order; report the first altered, missing or moved entry."""
    coll = _collection(store, tenant_id)
    total = await coll.count({})
    expected, prev_hash = 1, GENESIS
    while True:
        page = await coll.find({"seq": gte(expected)}, sort=[("seq", 1)], limit=_VERIFY_PAGE)
        for entry in page:
            problem = await _check(coll, entry, expected, prev_hash)
            if problem is not None:
                bad_seq, text = problem
                return VerifyResult(False, total, bad_seq, text)
            expected, prev_hash = expected + 1, str(entry["hash"])
        if len(page) < _VERIFY_PAGE:
            break
    if expected - 1 != total:
        # Entries whose seq was changed to something outside the sequence (or not a number).
        return VerifyResult(False, total, expected,
                            f"{total - (expected - 1)} entries are not part of the sequence")
    return VerifyResult(True, total)


async def _check(coll: Collection, entry: Mapping[str, Any], expected: int,
                 prev_hash: str) -> tuple[int, str] | None:
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < expected:
        return expected, f"entry {expected} has a malformed or repeated seq"
    if seq > expected:
        return expected, (f"entry {expected} is missing: the log jumps from "
                          f"{expected - 1} to {seq}")
    if entry.get("prev_hash") != prev_hash:
        # Does it point at an entry stored elsewhere in the log? Then entries were reordered.
        target = await coll.find_one({"hash": entry.get("prev_hash")})
        if target is not None:
            return seq, (f"entry {seq} is out of order: it was written after entry "
                         f"{target.get('seq')}")
        return seq, (f"chain broken at entry {seq}: its prev_hash does not match entry "
                     f"{seq - 1} (entry {seq - 1} was rewritten or entry {seq} altered)")
    if entry_hash(entry) != entry.get("hash"):
        return seq, f"entry {seq} was altered: its content does not match its hash"
    return None
