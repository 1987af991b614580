"""Customer review, shared by the management API (management/customers.py) and the CLI.

- :func:`parse_decision` turns a decision body into a :class:`Decision` for one customer
  type; :func:`check_decision` checks it against the customer (409 when the customer's data
  does not allow it, e.g. ACCEPTED while a required field is missing).
- :func:`list_customers` pages the review queue (store/review_queue.py); an identity filter
  goes through the blind index, never a scan.
- :func:`customer_view` is the decrypted detail an authorised reviewer sees.

Errors are ApiErrors whose message names the offending key (``fields.email_address.status``);
no message ever repeats a submitted value.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from kyc_host.audit import iso
from kyc_host.errors import BadRequest, Conflict
from kyc_host.sep.sep12_params import named_principal, split_identity_key
from kyc_host.sep.sep12_service import Sep12Service
from kyc_host.sep.sep12_status import assess, canonical, is_provided, missing_required
from kyc_host.sep.sep12_types import (
    MAX_MESSAGE_CHARS,
    CustomerStatus,
    Decision,
    FieldDecision,
    FieldStatus,
)
from kyc_host.store.customers import CustomerRecord, CustomerRepository
from kyc_host.store.files import FileInfo
from kyc_host.store.review_queue import Position, QueueFilter, micros, moment_micros
from kyc_host.tenancy.schema import CustomerType, TenantConfig

#: Field statuses a reviewer may set (VERIFICATION_REQUIRED belongs to the code flow).
REVIEW_FIELD_STATUSES = (FieldStatus.ACCEPTED, FieldStatus.REJECTED, FieldStatus.PROCESSING)
_DECISION_KEYS = frozenset({"type", "status", "message", "fields"})
_FIELD_KEYS = frozenset({"status", "error"})
MAX_DECISION_FIELDS = 200
#: An account-only search reads at most this many identities (an omnibus account can hold
#: many memo customers; past this, the caller must name the memo).
MAX_ACCOUNT_CUSTOMERS = 1000


def _names(values: tuple[Any, ...]) -> str:
    return ", ".join(str(v) for v in values)


def _text(value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"{key}: must be a string of at most {MAX_MESSAGE_CHARS} characters")
    return value or None


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedDecision:
    type: str
    decision: Decision


def parse_decision(body: Mapping[str, Any], config: TenantConfig) -> ParsedDecision:
    """Validate a decision body's shape and names; raises BadRequest naming the key."""
    unknown = sorted(set(body) - _DECISION_KEYS)
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown key; a decision has type, status, message "
                         "and fields")
    type_name = _decision_type(body.get("type"), config)
    status = _decision_status(body.get("status"))
    message = _text(body.get("message"), "message")
    fields = _decision_fields(body.get("fields"), config.customer_types[type_name])
    if status is CustomerStatus.REJECTED and not message:
        raise BadRequest("message: required when status is REJECTED (SEP-12: the wallet "
                         "shows why)")
    rejected = [n for n, v in fields.items() if v.status is FieldStatus.REJECTED]
    if rejected and status not in (CustomerStatus.NEEDS_INFO, CustomerStatus.REJECTED):
        raise BadRequest(f"fields.{rejected[0]}.status: a REJECTED field needs status "
                         "NEEDS_INFO (to be resubmitted) or REJECTED (final)")
    if status is CustomerStatus.NEEDS_INFO and not (message or rejected):
        raise BadRequest("message: NEEDS_INFO needs a message or a REJECTED field saying "
                         "what to resubmit")
    return ParsedDecision(type_name, Decision(status, message, MappingProxyType(fields)))


def _decision_type(value: object, config: TenantConfig) -> str:
    if value is None:
        return config.default_customer_type
    if not isinstance(value, str) or value not in config.customer_types:
        raise BadRequest("type: unknown customer type; this anchor offers: "
                         + _names(tuple(sorted(config.customer_types))))
    return value


def _decision_status(value: object) -> CustomerStatus:
    if not isinstance(value, str) or value not in tuple(CustomerStatus):
        raise BadRequest("status: required, one of " + _names(tuple(CustomerStatus)))
    return CustomerStatus(value)


def _decision_fields(value: object, ctype: CustomerType) -> dict[str, FieldDecision]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest("fields: must be an object of field name -> {status, error}")
    if len(value) > MAX_DECISION_FIELDS:
        raise BadRequest(f"fields: at most {MAX_DECISION_FIELDS} fields")
    listed = {canonical(n): n for n in (*ctype.required, *ctype.optional)}
    out: dict[str, FieldDecision] = {}
    for name, verdict in value.items():
        key = f"fields.{name}" if len(name) <= 64 and name.isprintable() else "fields"
        listed_name = listed.get(canonical(name)) if isinstance(name, str) else None
        if listed_name is None:
            raise BadRequest(f"{key}: not a field of customer type {ctype.name} (it asks for "
                             f"{_names(tuple(listed.values()))})")
        if listed_name in out:
            raise BadRequest(f"{key}: given twice (as an alias too)")
        out[listed_name] = _field_verdict(verdict, key)
    return out


def _field_verdict(value: object, key: str) -> FieldDecision:
    if not isinstance(value, Mapping):
        raise BadRequest(f"{key}: must be an object {{status, error}}")
    unknown = sorted(set(value) - _FIELD_KEYS)
    if unknown:
        raise BadRequest(f"{key}.{unknown[0]}: unknown key; a field verdict has status and "
                         "error")
    status = value.get("status")
    if not isinstance(status, str) or status not in REVIEW_FIELD_STATUSES:
        raise BadRequest(f"{key}.status: required, one of " + _names(REVIEW_FIELD_STATUSES))
    error = _text(value.get("error"), f"{key}.error")
    if error is not None and status != FieldStatus.REJECTED:
        raise BadRequest(f"{key}.error: only a REJECTED field carries an error")
    return FieldDecision(FieldStatus(status), error)


def check_decision(record: CustomerRecord, ctype: CustomerType, decision: Decision) -> None:
    """409 unless the customer's data allows the decision (nothing missing for ACCEPTED,
    verdicts only on fields the customer provided)."""
    for name in decision.fields:
        if not is_provided(record, name):
            raise Conflict(f"fields.{name}: this customer has not provided it; only provided "
                           "fields can be judged")
    if decision.status is not CustomerStatus.ACCEPTED:
        return
    missing = missing_required(ctype, record)
    if missing:
        raise Conflict("cannot accept: required fields are missing: " + _names(missing))
    waiting = sorted(n for n, v in record.verifications.items()
                     if not v.verified and is_provided(record, n))
    if waiting:
        raise Conflict("cannot accept: fields still wait for their verification code: "
                       + _names(tuple(waiting)))


def preview_status(record: CustomerRecord, ctype: CustomerType,
                   decision: Decision) -> CustomerStatus:
    """The status the wallet will see once ``decision`` is stored (record left unchanged)."""
    state = record.type_state(ctype.name)
    old = state.decision
    state.decision = decision
    try:
        return assess(ctype, record).status
    finally:
        state.decision = old


def decision_json(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {"status": None if decision.status is None else str(decision.status),
            "message": decision.message,
            "fields": {n: {"status": str(v.status), "error": v.error}
                       for n, v in decision.fields.items()}}


def decision_audit(parsed: ParsedDecision, previous: str | None,
                   status: CustomerStatus) -> dict[str, Any]:
    """Audit details of a decision: statuses and names only, never the message text."""
    decision = parsed.decision
    return {"type": parsed.type, "decision": str(decision.status),
            "status": str(status), "previous_status": previous,
            "message": bool(decision.message),
            "field_statuses": [f"{n}:{v.status}" for n, v in decision.fields.items()]}


# --- listing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    status: str | None = None
    type: str | None = None
    updated_since: str | None = None
    account: str | None = None
    memo: str | None = None
    memo_type: str | None = None
    cursor: str | None = None
    order: str | None = None
    limit: int = 50


def parse_since(text: str) -> int:
    """``updated_since`` (ISO-8601, naive = UTC, or Unix seconds) in microseconds."""
    try:
        if text.replace(".", "", 1).isdigit():
            return micros(float(text))
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment_micros(moment)
    except (ValueError, OverflowError, OSError):
        raise BadRequest("updated_since: expected an ISO-8601 time or Unix seconds") from None


def encode_cursor(position: Position, newest: bool) -> str:
    raw = json.dumps([position.updated_us, position.customer_id, int(newest)],
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, newest: bool) -> Position:
    """A ``next_cursor`` of a listing in the same order; 400 for anything else."""
    problem = BadRequest("cursor: not a next_cursor of this listing (or of another order)")
    if len(text) > 200:
        raise problem
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        raise problem from None
    if (not isinstance(value, list) or len(value) != 3 or type(value[0]) is not int
            or not isinstance(value[1], str) or value[2] != int(newest)):
        raise problem
    return Position(value[0], value[1])


def _order(value: str | None) -> bool:
    """True for newest first (the default)."""
    if value in (None, "", "desc"):
        return True
    if value == "asc":
        return False
    raise BadRequest("order: desc (newest update first, default) or asc (oldest first)")


async def _identity_filter(customers: CustomerRepository,
                           query: ListQuery) -> tuple[str, ...] | None:
    if query.account is None:
        if query.memo is not None or query.memo_type is not None:
            raise BadRequest("memo: give account with memo")
        return None
    principal = named_principal(query.account, query.memo, query.memo_type)
    if principal.memo is not None:
        found = await customers.customer_id_for(principal.key)
        return () if found is None else (found,)
    ids = await customers.customers_of_account(principal.account, MAX_ACCOUNT_CUSTOMERS + 1)
    if len(ids) > MAX_ACCOUNT_CUSTOMERS:
        raise BadRequest(f"account: more than {MAX_ACCOUNT_CUSTOMERS} customers share this "
                         "account; add memo")
    return tuple(ids)


async def list_customers(customers: CustomerRepository, config: TenantConfig,
                         query: ListQuery) -> dict[str, Any]:
    """One page of the review queue (see the management OpenAPI ``CustomerPage``)."""
    newest = _order(query.order)
    if query.status is not None and query.status not in tuple(CustomerStatus):
        raise BadRequest("status: one of " + _names(tuple(CustomerStatus)))
    if query.type is not None and query.type not in config.customer_types:
        raise BadRequest("type: unknown customer type; this anchor offers: "
                         + _names(tuple(sorted(config.customer_types))))
    after = None if not query.cursor else decode_cursor(query.cursor, newest)
    ids = await _identity_filter(customers, query)
    flt = QueueFilter(status=query.status, type=query.type, customer_ids=ids,
                      since_us=None if query.updated_since is None
                      else parse_since(query.updated_since))
    positions, nxt = ([], None) if ids == () else await customers.queue.page(
        flt, limit=query.limit, newest_first=newest, after=after)
    summaries = await customers.summaries([p.customer_id for p in positions])
    rows = [summaries[p.customer_id] for p in positions if p.customer_id in summaries]
    return {
        "customers": [{"id": s.id, "created_at": iso(s.created_at),
                       "updated_at": iso(s.updated_at), "types": s.statuses,
                       "provided_fields": list(s.provided)} for s in rows],
        "next_cursor": None if nxt is None else encode_cursor(nxt, newest),
    }


# --- detail --------------------------------------------------------------------------------


def identity_json(key: str) -> dict[str, Any]:
    principal = split_identity_key(key)
    return {"account": principal.account, "memo": principal.memo,
            "memo_type": principal.memo_type}


def identities_json(record: CustomerRecord) -> list[dict[str, Any]]:
    return [identity_json(k) for k in sorted(record.identities.values())]


def file_json(info: FileInfo, field: str | None) -> dict[str, Any]:
    return {"file_id": info.id, "field": field, "content_type": info.content_type,
            "size": info.size, "created_at": iso(info.created_at),
            "expires_at": None if info.expires_at is None else iso(info.expires_at)}


def _type_view(config: TenantConfig, record: CustomerRecord, type_name: str) -> dict[str, Any]:
    state = record.types.get(type_name)
    ctype = config.customer_types.get(type_name)
    decision = None if state is None else state.decision
    if ctype is None:  # a type the tenant no longer offers: what was stored
        return {"status": None if state is None else state.status, "message": None,
                "missing": [], "provided_fields": {}, "decision": decision_json(decision)}
    result = assess(ctype, record)
    return {
        "status": str(result.status), "message": result.message,
        "missing": list(missing_required(ctype, record)),
        "provided_fields": {n: {"status": str(v.status), "error": v.error}
                            for n, v in result.fields.items()},
        "decision": decision_json(decision),
    }


async def customer_view(service: Sep12Service, record: CustomerRecord) -> dict[str, Any]:
    """The decrypted customer as a reviewer sees it (never verification codes)."""
    config = service.config
    by_file = {fid: name for name, fid in record.files.items()}
    files = await service.files.for_customer(record.id)
    types = sorted({*config.customer_types, *record.types})
    return {
        "id": record.id,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "fields": dict(sorted(record.fields.items())),
        "files": [file_json(f, by_file.get(f.id)) for f in files],
        "types": {t: _type_view(config, record, t) for t in types},
        "verifications": {n: {"state": "verified" if v.verified else "pending",
                              "attempts": v.attempts}
                          for n, v in sorted(record.verifications.items())},
        "identities": identities_json(record),
        "callback_url": record.callback_url,
    }


def provided_names(record: CustomerRecord) -> tuple[str, ...]:
    """The names of every value a detail view shows (for the audit entry)."""
    return tuple(sorted({*record.fields, *record.files}))
