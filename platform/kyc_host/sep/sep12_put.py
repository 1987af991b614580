"""PUT /customer input: sorting a body into parameters, SEP-9 values, files and codes.

Every name in a PUT body is one of: a control parameter (``id``, ``account``, ``memo``,
``memo_type``, ``type``, ``transaction_id``, ``lang``), a SEP-9 field, a ``<binary>_file_id``
reference, a ``<field>_verification`` code, or a binary SEP-9 field sent as a file part.
Anything else is refused with 400 naming it. That is also what keeps server-owned state out
of reach (reliability-plan B4): ``status``, ``provided_fields``, ``tenant_id``, ``_id``,
``$set`` or ``__proto__`` are simply unknown names, and no value is ever used as a query
operator or as a key of a stored document.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from kyc_host.errors import BadRequest
from kyc_host.sep import sep9
from kyc_host.sep.sep12_body import Body, safe_name
from kyc_host.sep.sep12_status import allowed_choices, canonical
from kyc_host.tenancy.schema import CustomerType, TenantConfig

CONTROL = frozenset({"id", "account", "memo", "memo_type", "type", "transaction_id", "lang"})
VERIFICATION_SUFFIX = "_verification"
MAX_CODE_CHARS = 64
#: Wrong codes allowed per issued code; then the field must be sent again for a new code.
MAX_CODE_ATTEMPTS = 5


@dataclass(slots=True)
class PutInput:
    """A PUT body, sorted. SEP-9 names are canonical (aliases resolved)."""

    control: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # raw text, validated later
    file_ids: dict[str, str] = field(default_factory=dict)  # binary field -> file id
    uploads: dict[str, bytes] = field(default_factory=dict)  # binary field -> contents
    codes: dict[str, str] = field(default_factory=dict)  # field -> submitted code
    sent_as: dict[str, str] = field(default_factory=dict)  # canonical -> name as sent

    @property
    def has_data(self) -> bool:
        return bool(self.values or self.file_ids or self.uploads)


def split_put(body: Body) -> PutInput:
    """Sort a body's names; raises BadRequest for unknown, duplicate or misplaced names."""
    put = PutInput()
    for name, value in body.values.items():
        if name in CONTROL:
            if value != "":  # an empty control param means "not given" (some wallets send it)
                put.control[name] = value
        elif name.endswith(VERIFICATION_SUFFIX):
            _add_code(put, name, value)
        else:
            _add_value(put, name, value)
    for name, data in body.files.items():
        spec = sep9.get(name)
        if spec is None or spec.type is not sep9.FieldType.BINARY:
            raise BadRequest(f"{safe_name(name)}: unexpected file part (only binary SEP-9 "
                             "fields are sent as files)")
        _claim_name(put, name, name)
        put.uploads[name] = data
    return put


def _add_code(put: PutInput, name: str, code: str) -> None:
    target = name.removesuffix(VERIFICATION_SUFFIX)
    spec = sep9.get(target)
    if spec is None or spec.type is sep9.FieldType.BINARY:
        raise BadRequest(f"{safe_name(name)}: unknown field")
    if not code or len(code) > MAX_CODE_CHARS or not code.isprintable():
        raise BadRequest(f"{name}: expected a verification code")
    key = canonical(target)
    if key in put.codes:
        raise BadRequest(f"{name}: given more than once")
    put.codes[key] = code.strip()


def _add_value(put: PutInput, name: str, value: str) -> None:
    spec = sep9.get(name)
    if spec is None:
        raise BadRequest(f"{safe_name(name)}: unknown field (not a SEP-9 field)")
    if spec.file_id_of is not None:
        _claim_name(put, spec.file_id_of, name)
        put.file_ids[spec.file_id_of] = value
        return
    if spec.type is sep9.FieldType.BINARY:
        raise BadRequest(f"{name}: send this field as a file part or as {name}_file_id")
    _claim_name(put, canonical(name), name)
    put.values[canonical(name)] = value


def _claim_name(put: PutInput, key: str, name: str) -> None:
    other = put.sent_as.get(key)
    if other is not None:
        raise BadRequest(f"{name}: the same field was also sent as {other}")
    put.sent_as[key] = name


def collected_fields(config: TenantConfig) -> frozenset[str]:
    """Canonical names of every field any of the tenant's customer types asks for."""
    names = {canonical(n) for t in config.customer_types.values()
             for n in (*t.required, *t.optional)}
    if "mobile_number" in names:
        names.add("mobile_number_format")  # qualifies mobile_number (SEP-9 v1.17.0)
    return frozenset(names)


def validate_values(put: PutInput, collected: frozenset[str], stored_format: str | None,
                    ctype: CustomerType) -> dict[str, str]:
    """Validate each SEP-9 value; returns normalized values by canonical name.

    A field no customer type of the tenant asks for is refused: the anchor does not keep
    data it did not ask for. Choices the tenant narrowed for the PUT's ``type`` apply.
    Raises BadRequest naming the field (never the value).
    """
    for key in (*put.values, *put.file_ids, *put.uploads):
        if key not in collected:
            raise BadRequest(f"{put.sent_as.get(key, key)}: not collected by this anchor")
    number_format = put.values.get("mobile_number_format", stored_format)
    out: dict[str, str] = {}
    for key, raw in put.values.items():
        try:
            out[key] = sep9.validate(sep9.FIELDS[put.sent_as[key]], raw,
                                     mobile_number_format=number_format)
        except sep9.FieldValueError as exc:
            raise BadRequest(str(exc)) from None
        choices = allowed_choices(ctype, key)
        if choices is not None and out[key] not in choices:
            raise BadRequest(f"{put.sent_as[key]}: expected one of: {', '.join(choices)}")
    return out


def new_code() -> str:
    """A 6-digit verification code from the OS CSPRNG."""
    return f"{secrets.randbelow(10**6):06d}"
