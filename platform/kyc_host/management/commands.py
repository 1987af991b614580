"""``kyc-host token ...`` and ``kyc-host audit verify``: the CLI side of the management API.

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
from kyc_host.management.auth import (
    TOKEN_RE,
    ScopeError,
    check_scopes,
    create_token,
    list_tokens,
    locate,
    revoke_token,
)
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
