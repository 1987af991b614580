"""``kyc-host token ...``, ``audit verify`` and ``customer decide|list``: the CLI side of the
management API.

Each command takes the started Services and the parsed arguments and returns the exit code
(cli.py opens and closes the store). Exit codes: 0 success; 1 the thing failed (token not
found, audit chain tampered); 2 bad usage (unknown tenant or scope). Operator tokens are
created only here: whoever can run this command against the store already holds the platform.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kyc_host import audit
from kyc_host.errors import ApiError, NotFound
from kyc_host.management import review
from kyc_host.management.auth import (
    TOKEN_RE,
    ScopeError,
    check_scopes,
    create_token,
    list_tokens,
    locate,
    revoke_token,
)
from kyc_host.sep.sep12_params import CUSTOMER_NOT_FOUND, check_customer_id
from kyc_host.sep.sep12_service import Sep12Service
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.services import Services

OK, FAILED, USAGE = 0, 1, 2
CLI_ACTOR = "cli"


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(f"kyc-host: {line}\n")


def _scopes(raw: list[str] | None) -> list[str]:
    """``--scopes a b`` and ``--scopes a,b`` both work."""
    return [s for item in raw or [] for s in item.split(",") if s]


async def token_create(services: Services, args: argparse.Namespace) -> int:
    tenant_id: str | None = None if args.operator else args.tenant
    requested = _scopes(args.scopes) or (["operator"] if tenant_id is None else [])
    if tenant_id is not None and await services.tenants.get(tenant_id) is None:
        _err(f"no tenant {tenant_id!r}")
        return USAGE
    try:
        scopes = check_scopes(requested, operator=tenant_id is None)
    except ScopeError as exc:
        _err(str(exc))
        return USAGE
    expires = None if args.expires_in is None else time.time() + args.expires_in * 86400
    issued = await create_token(services.store, tenant_id=tenant_id, scopes=scopes,
                                created_by=CLI_ACTOR, expires_at=expires, note=args.note or "")
    await audit.record(services.store, tenant_id, actor=CLI_ACTOR, action="token.create",
                       details={"token": issued.info["prefix"], "kind": issued.info["kind"],
                                "scopes": scopes, "expires_at": issued.info["expires_at"]})
    if args.json:
        _out(json.dumps({"token": issued.token, **issued.info}, indent=2))
        return OK
    whose = "operator" if tenant_id is None else f"tenant {tenant_id}"
    _out(f"created {whose} token {issued.info['prefix']}")
    _out(f"  token:   {issued.token}")
    _out(f"  scopes:  {' '.join(scopes)}")
    _out(f"  expires: {issued.info['expires_at'] or 'never'}")
    _out("Store the token now: it is shown only once and cannot be recovered.")
    return OK


async def token_list(services: Services, args: argparse.Namespace) -> int:
    tenant_id: str | None = args.tenant
    if tenant_id is not None and await services.tenants.get(tenant_id) is None:
        _err(f"no tenant {tenant_id!r}")
        return USAGE
    tokens = await list_tokens(services.store, tenant_id)
    if args.json:
        _out(json.dumps(tokens, indent=2))
    elif not tokens:
        _out("no tokens")
    else:
        for info in tokens:
            _out(_token_line(info))
    return OK


def _token_line(info: dict[str, Any]) -> str:
    state = "revoked" if info["revoked_at"] else "active"
    if state == "active" and info["expires_at"] and info["expires_at"] < audit.now_iso():
        state = "expired"
    expires = info["expires_at"] or "never"
    note = f"  {info['note']}" if info["note"] else ""
    return (f"{info['prefix']}  {state:<8} expires {expires:<27} "
            f"{','.join(info['scopes'])}{note}")


async def token_revoke(services: Services, args: argparse.Namespace) -> int:
    prefix: str = args.prefix
    match = TOKEN_RE.fullmatch(prefix)
    if match is not None:  # a whole token was pasted: use its prefix, never print it
        prefix = match.group(1)
    prefix = prefix.removeprefix("kyc_")
    where = await locate(services.store, prefix)
    info = None if where is None else await revoke_token(services.store, where[1], prefix)
    if where is None or info is None:
        _err(f"no token with prefix {prefix!r}")
        return FAILED
    await audit.record(services.store, where[1], actor=CLI_ACTOR, action="token.revoke",
                       details={"token": prefix, "kind": where[0]})
    _out(f"revoked token {prefix} (running servers stop accepting it within seconds)")
    return OK


async def audit_verify(services: Services, args: argparse.Namespace) -> int:
    tenant_id: str | None = None if args.platform else args.tenant
    if tenant_id is not None and await services.tenants.get(tenant_id) is None:
        _err(f"no tenant {tenant_id!r}")
        return USAGE
    result = await audit.verify(services.store, tenant_id)
    name = "the platform audit log" if tenant_id is None else f"audit log of tenant {tenant_id}"
    if args.json:
        _out(json.dumps(result.to_json(), indent=2))
    elif result.ok:
        _out(f"{name}: {result.entries} entries, hash chain intact")
    else:
        _out(f"{name}: TAMPERED at seq {result.first_bad_seq}: {result.problem}")
    return OK if result.ok else FAILED


# --- customers (``kyc-host customer decide|list``) -----------------------------------------


def _field_verdicts(raw: list[str] | None) -> dict[str, dict[str, str]]:
    """``--field name=STATUS[:error]`` -> the API's ``fields`` object; ValueError if
    malformed."""
    out: dict[str, dict[str, str]] = {}
    for item in raw or []:
        name, sep, verdict = item.partition("=")
        if not sep or not name or not verdict:
            raise ValueError(f"--field {item!r}: expected name=STATUS or name=STATUS:error")
        status, has_error, error = verdict.partition(":")
        out[name] = {"status": status.upper(), **({"error": error} if has_error else {})}
    return out


class _UnknownTenant(Exception):
    pass


def _sep12(services: Services, tenant_id: str) -> Sep12Service:
    """The tenant's SEP-12 service; raises _UnknownTenant, or ServiceUnavailable when its
    plugin cannot be loaded."""
    tenant = services.registry.get(tenant_id)
    if tenant is None:
        raise _UnknownTenant
    return service_for(tenant, services.store, services.settings, services.http,
                       services.metrics)


async def customer_decide(services: Services, args: argparse.Namespace) -> int:
    """The management API's decision in one command (same validation, same audit entry
    with actor ``cli``, same status path): 0 stored, 1 customer not found or the customer's
    data does not allow it, 2 bad usage."""
    try:
        service = _sep12(services, args.tenant)
        body: dict[str, Any] = {"type": args.type, "status": args.status.upper(),
                                "fields": _field_verdicts(args.field)}
        if args.message is not None:
            body["message"] = args.message
        parsed = review.parse_decision(body, service.config)
        record = await service.customers.load(check_customer_id(args.customer_id))
        if record is None:
            raise NotFound(CUSTOMER_NOT_FOUND)
        ctype = service.config.customer_types[parsed.type]
        review.check_decision(record, ctype, parsed.decision)
    except _UnknownTenant:
        _err(f"no tenant {args.tenant!r}")
        return USAGE
    except ValueError as exc:
        _err(str(exc))
        return USAGE
    except ApiError as exc:
        _err(exc.message)
        return USAGE if exc.status == 400 else FAILED
    previous = record.type_state(parsed.type).status
    expected = review.preview_status(record, ctype, parsed.decision)
    await audit.record(services.store, args.tenant, actor=CLI_ACTOR, action="customer.decision",
                       customer_id=record.id, fields=tuple(parsed.decision.fields),
                       details=review.decision_audit(parsed, previous, expected))
    status = await service.decide(record, parsed.type, parsed.decision)
    if args.json:
        _out(json.dumps({"id": record.id, "type": parsed.type, "status": str(status),
                         "previous_status": previous,
                         "decision": review.decision_json(parsed.decision)}, indent=2))
    else:
        _out(f"customer {record.id} ({parsed.type}): {previous or 'none'} -> {status}")
        for name, verdict in parsed.decision.fields.items():
            _out(f"  {name}: {verdict.status}" + (f" ({verdict.error})" if verdict.error
                                                  else ""))
    return OK


async def customer_list(services: Services, args: argparse.Namespace) -> int:
    """One page of the review queue: 0 listed (even if empty), 2 bad usage."""
    query = review.ListQuery(status=args.status and args.status.upper(), type=args.type,
                             cursor=args.cursor, limit=max(1, min(200, args.limit)))
    try:
        service = _sep12(services, args.tenant)
        page = await review.list_customers(service.customers, service.config, query)
    except _UnknownTenant:
        _err(f"no tenant {args.tenant!r}")
        return USAGE
    except ApiError as exc:
        _err(exc.message)
        return USAGE if exc.status == 400 else FAILED
    if args.json:
        _out(json.dumps(page, indent=2))
        return OK
    if not page["customers"]:
        _out("no customers")
    for row in page["customers"]:
        types = " ".join(f"{t}:{s or '-'}" for t, s in sorted(row["types"].items()))
        _out(f"{row['id']}  {row['updated_at']}  {types}  "
             f"({len(row['provided_fields'])} fields)")
    if page["next_cursor"]:
        _out(f"more: --cursor {page['next_cursor']}")
    return OK
