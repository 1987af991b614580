"""SEP-12 statuses from the tenant's customer type, stored decisions and verifications.

The rules, in order (SEP-12 §GET /customer, digest §4.4):

1. A REJECTED decision is final: REJECTED with its message.
2. Required fields missing, a field waiting for its verification code, or a field a reviewer
   REJECTED -> NEEDS_INFO (``fields`` lists what is still missing).
3. Otherwise the decision's status (ACCEPTED, PROCESSING, NEEDS_INFO) if there is one,
   else PROCESSING: everything is in and waits for review (or for the plugin).

Field statuses: a reviewer's verdict on the field, else VERIFICATION_REQUIRED while a code
is pending, else ACCEPTED once verified or when the customer is ACCEPTED, else PROCESSING.

Field names are shown as the tenant lists them; values are looked up under their SEP-9
canonical name (``family_name`` is stored as ``last_name``).
"""

from __future__ import annotations

from typing import Any

from kyc_host.hooks.contract import StatusResult
from kyc_host.sep import sep9
from kyc_host.sep.sep12_types import (
    MAX_MESSAGE_CHARS,
    CustomerStatus,
    Decision,
    FieldDecision,
    FieldStatus,
)
from kyc_host.store.customers import CustomerRecord
from kyc_host.tenancy.schema import CustomerType


def canonical(name: str) -> str:
    """The name a SEP-9 value is stored under (aliases resolve to their target)."""
    spec = sep9.get(name)
    return spec.alias_of if spec is not None and spec.alias_of else name


def is_provided(record: CustomerRecord, name: str) -> bool:
    key = canonical(name)
    return key in record.fields or key in record.files


def missing_required(ctype: CustomerType, record: CustomerRecord | None) -> tuple[str, ...]:
    if record is None:
        return ctype.required
    return tuple(n for n in ctype.required if not is_provided(record, n))


def assess(ctype: CustomerType, record: CustomerRecord | None) -> StatusResult:
    """The platform's status of ``record`` for customer type ``ctype`` (rules above)."""
    if record is None:
        return StatusResult(CustomerStatus.NEEDS_INFO, None, {})
    state = record.types.get(ctype.name)
    decision = state.decision if state is not None else None
    accepted = decision is not None and decision.status is CustomerStatus.ACCEPTED
    provided = {name: _field_status(record, name, decision, accepted)
                for name in (*ctype.required, *ctype.optional) if is_provided(record, name)}
    message = decision.message if decision is not None else None
    if decision is not None and decision.status is CustomerStatus.REJECTED:
        return StatusResult(CustomerStatus.REJECTED, message, provided)
    blocked = {FieldStatus.VERIFICATION_REQUIRED, FieldStatus.REJECTED}
    if missing_required(ctype, record) or any(v.status in blocked for v in provided.values()):
        keep = message if decision is not None and decision.status is not None else None
        return StatusResult(CustomerStatus.NEEDS_INFO, keep, provided)
    if decision is not None and decision.status is not None:
        return StatusResult(decision.status, message, provided)
    return StatusResult(CustomerStatus.PROCESSING, message, provided)


def _field_status(record: CustomerRecord, name: str, decision: Decision | None,
                  accepted: bool) -> FieldDecision:
    key = canonical(name)
    if decision is not None:
        verdict = decision.fields.get(name) or decision.fields.get(key)
        if verdict is not None:
            return verdict
    pending = record.verifications.get(key)
    if pending is not None and not pending.verified:
        return FieldDecision(FieldStatus.VERIFICATION_REQUIRED)
    if (pending is not None and pending.verified) or accepted:
        return FieldDecision(FieldStatus.ACCEPTED)
    return FieldDecision(FieldStatus.PROCESSING)


def check_result(result: object, computed: StatusResult, ctype: CustomerType,
                 record: CustomerRecord | None) -> bool:
    """Whether a ``get`` hook's answer is one the platform may send (digest §4.4 rules).

    ``computed`` is what the platform itself computed (the hook's input).
    """
    if not isinstance(result, StatusResult) or not isinstance(result.status, CustomerStatus):
        return False
    if result.message is not None and (not isinstance(result.message, str)
                                       or len(result.message) > MAX_MESSAGE_CHARS):
        return False
    if result.status is CustomerStatus.REJECTED and not result.message:
        return False
    try:
        Decision(fields=result.fields).check()
    except ValueError:
        return False
    if set(result.fields) - set(computed.fields):
        return False
    if result.status is CustomerStatus.ACCEPTED:
        waiting = {FieldStatus.VERIFICATION_REQUIRED, FieldStatus.REJECTED}
        if missing_required(ctype, record) or any(
                v.status in waiting for v in result.fields.values()):
            return False
    return True


def render(ctype: CustomerType, record: CustomerRecord | None, result: StatusResult,
           lang: str) -> dict[str, Any]:
    """The GET /customer body (also the callback body and the deprecated PUT /verification)."""
    body: dict[str, Any] = {}
    if record is not None:
        body["id"] = record.id
    body["status"] = str(result.status)
    fields = _missing_fields(ctype, record, lang)
    if result.status is not CustomerStatus.REJECTED:
        # A field a reviewer REJECTED is asked for again, so wallets that read only
        # ``fields`` resubmit it (its verdict and error stay in ``provided_fields``).
        fields.update({name: field_object(ctype, name, lang)
                       for name, verdict in result.fields.items()
                       if verdict.status is FieldStatus.REJECTED})
    if fields or result.status is CustomerStatus.NEEDS_INFO:
        body["fields"] = fields  # required with NEEDS_INFO, even when empty (digest §9)
    if result.fields:
        body["provided_fields"] = {name: _provided_field(name, verdict, ctype, lang)
                                   for name, verdict in result.fields.items()}
    if result.message:
        body["message"] = result.message
    return body


def field_object(ctype: CustomerType, name: str, lang: str) -> dict[str, Any]:
    """A SEP-12 ``fields`` entry: type, description, choices, optional.

    The tenant's own description in ``lang`` wins, then its English one, then SEP-9's
    English; the tenant's choices narrow SEP-9's.
    """
    spec = sep9.FIELDS[name]
    override = ctype.fields.get(name)
    texts = override.descriptions if override is not None else {}
    description = texts.get(lang) or texts.get("en") or sep9.description(name, lang)
    entry: dict[str, Any] = {"type": str(spec.type), "description": description}
    choices = override.choices if override is not None and override.choices else spec.choices
    if choices:
        entry["choices"] = list(choices)
    if name in ctype.optional:
        entry["optional"] = True
    return entry


def allowed_choices(ctype: CustomerType, name: str) -> tuple[str, ...] | None:
    """The tenant's narrowed choices for a field of this type (by listed or canonical name)."""
    for listed in (name, *(n for n in ctype.fields if canonical(n) == name)):
        override = ctype.fields.get(listed)
        if override is not None and override.choices:
            return override.choices
    return None


def _missing_fields(ctype: CustomerType, record: CustomerRecord | None,
                    lang: str) -> dict[str, Any]:
    fields = {n: field_object(ctype, n, lang) for n in missing_required(ctype, record)}
    for name in ctype.optional:
        if record is None or not is_provided(record, name):
            fields[name] = field_object(ctype, name, lang)
    return fields


def _provided_field(name: str, verdict: FieldDecision, ctype: CustomerType,
                    lang: str) -> dict[str, Any]:
    entry = field_object(ctype, name, lang)
    entry["status"] = str(verdict.status)
    if verdict.error:
        entry["error"] = verdict.error
    return entry

