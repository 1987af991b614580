"""``kyc-host callbacks list | replay``: deliveries per tenant, and replaying dead letters.

Exit codes as for every command: 0 success; 1 the thing failed (no such event, not dead);
2 bad usage (unknown tenant). A replay is written to the tenant's audit log (actor ``cli``).
"""

from __future__ import annotations

import argparse
import json
import sys

from kyc_host import audit
from kyc_host.callbacks.events import public_view
from kyc_host.callbacks.outbox import Outbox
from kyc_host.errors import ApiError
from kyc_host.services import Services

OK, FAILED, USAGE = 0, 1, 2
CLI_ACTOR = "cli"


def _err(line: str) -> None:
    sys.stderr.write(f"kyc-host: {line}\n")


async def _outbox(services: Services, tenant_id: str) -> Outbox | None:
    if await services.tenants.get(tenant_id) is None:
        _err(f"no tenant {tenant_id!r}")
        return None
    return Outbox(services.store, tenant_id)


async def callbacks_list(services: Services, args: argparse.Namespace) -> int:
    outbox = await _outbox(services, args.tenant)
    if outbox is None:
        return USAGE
    events = [public_view(d) for d in await outbox.list(state=args.state, limit=args.limit)]
    if args.json:
        sys.stdout.write(json.dumps(events, indent=2) + "\n")
        return OK
    if not events:
        sys.stdout.write("no events\n")
    for e in events:
        where = e["endpoint"] or "wallet callback"
        sys.stdout.write(f"{e['id']}  {e['state']:<9} {e['type']:<24} attempts={e['attempts']:<3}"
                         f" customer={e['customer_id'] or '-'} {e['status'] or ''}  -> {where}\n")
        if e["last_error"]:  # on a line of its own, under the event it belongs to
            sys.stdout.write(f"    last error: {e['last_error']}\n")
    return OK


async def callbacks_replay(services: Services, args: argparse.Namespace) -> int:
    outbox = await _outbox(services, args.tenant)
    if outbox is None:
        return USAGE
    try:
        event = await outbox.replay(args.event_id)
    except ApiError as exc:  # not found / not dead
        _err(exc.message)
        return FAILED
    await audit.record(services.store, args.tenant, actor=CLI_ACTOR, action="callback.replay",
                       customer_id=str(event.get("customer_id") or "") or None,
                       details={"event_id": args.event_id, "type": str(event["type"])})
    sys.stdout.write(f"{args.event_id}: pending again (delivery within a poll interval of a "
                     "running server)\n")
    return OK
