"""``kyc-host purge`` and the auditor path: ``kyc-host customer show-held | legal-hold``.

Held records (an erased customer kept for a retention period) are out of every wallet's and
admin listing's reach; this CLI is the one way to see them. Listing shows identifiers, dates
and field *names*; ``show-held --customer ID`` decrypts the values and is audited (who, which
fields -- never the values). Exit codes: 0 done, 1 not found, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kyc_host import audit
from kyc_host.retention.purge import erasures_for, purge_tenant
from kyc_host.services import Services
from kyc_host.tenancy.registry import Tenant

OK, FAILED, USAGE = 0, 1, 2
CLI_ACTOR = "cli"


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(f"kyc-host: {line}\n")


def _tenant(services: Services, tenant_id: str) -> Tenant | None:
    tenant = services.registry.get(tenant_id)
    if tenant is None:
        _err(f"no tenant {tenant_id!r}")
    return tenant


async def purge(services: Services, args: argparse.Namespace) -> int:
    if args.all:
        tenants = list(services.registry)
    else:
        one = _tenant(services, args.tenant)
        if one is None:
            return USAGE
        tenants = [one]
    reports = [await purge_tenant(services, t, actor=CLI_ACTOR, dry_run=args.dry_run,
                                  progress=not args.json) for t in tenants]
    if args.json:
        _out(json.dumps([r.to_json() for r in reports], indent=2))
        return OK
    verb = "would shred" if args.dry_run else "shredded"
    for r in reports:
        _out(f"{r.tenant}: {verb} {len(r.shredded)}, finished {len(r.finished)} interrupted, "
             f"removed {len(r.resurrected)} resurrected, {len(r.paused)} paused by legal hold, "
             f"{r.expired_files} expired uploads, {r.attached_files} attached (named by a "
             f"record a cut PUT wrote), review-queue rows of {len(r.queue_repaired)} "
             f"customers repaired"
             + ("; KEK rotated so copies taken before these erasures cannot be read"
                if r.kek_rotated else ""))
    return OK


def _held_line(doc: dict[str, Any]) -> str:
    hold = "  LEGAL HOLD" if doc.get("legal_hold") else ""
    return (f"{doc['_id']}  deleted {audit.iso(float(doc['deleted_at']))}  shred after "
            f"{audit.iso(float(doc['shred_after']))}  types {','.join(doc.get('types', []))}"
            f"  files {len(doc.get('files', []))}{hold}")


async def customer_show_held(services: Services, args: argparse.Namespace) -> int:
    tenant = _tenant(services, args.tenant)
    if tenant is None:
        return USAGE
    erasures = erasures_for(tenant, services.store)
    if args.customer is None:
        held = await erasures.held()
        if args.json:
            _out(json.dumps([_held_json(d) for d in held], indent=2))
        else:
            for doc in held:
                _out(_held_line(doc))
            if not held:
                _out("no held customers")
        return OK
    fields = await erasures.open_held(args.customer)
    if fields is None:
        _err(f"no held customer {args.customer!r}")
        return FAILED
    await audit.record(services.store, tenant.id, actor=CLI_ACTOR, action="customer.read_held",
                       customer_id=args.customer, fields=sorted(fields))
    [meta] = await erasures.held(args.customer)
    _out(json.dumps({**_held_json(meta), "fields": fields}, indent=2, ensure_ascii=False))
    return OK


def _held_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], "deleted_at": audit.iso(float(doc["deleted_at"])),
            "shred_after": audit.iso(float(doc["shred_after"])),
            "legal_hold": bool(doc.get("legal_hold")), "types": doc.get("types", []),
            "files": len(doc.get("files", [])), "kek_version": doc.get("kek_version")}


async def customer_legal_hold(services: Services, args: argparse.Namespace) -> int:
    tenant = _tenant(services, args.tenant)
    if tenant is None:
        return USAGE
    on = args.state == "on"
    state = await erasures_for(tenant, services.store).set_legal_hold(args.customer, on)
    if state is None:
        _err(f"no customer {args.customer!r} (live or held)")
        return FAILED
    await audit.record(services.store, tenant.id, actor=CLI_ACTOR,
                       action="customer.legal_hold_set" if on else "customer.legal_hold_clear",
                       customer_id=args.customer, details={"state": state})
    _out(f"{args.customer}: legal hold {'set' if on else 'cleared'} ({state} customer)")
    return OK
