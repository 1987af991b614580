"""The purge job: periodically in every server process, and on demand (``kyc-host purge``).

Each run goes through the tenants this process serves and lets each tenant's
:class:`~kyc_host.retention.erasure.Erasures` shred held records whose retention period is
over (legal holds pause that), finish erasures a crash interrupted, remove records that a
racing write resurrected, drop expired unattached uploads, remove the chunks of file
writes or deletes a crash interrupted (store/files.py), and rewrite review-queue rows that a
save cut midway left behind its record (store/review_queue.py). Every step is idempotent, so N
processes running it at once do the same work N times at worst and never corrupt anything;
a random start offset spreads them out.
"""

from __future__ import annotations

import asyncio
import logging
import random

from kyc_host.crypto.jobs import JobBusy
from kyc_host.crypto.records import TenantCipher
from kyc_host.crypto.rotation import JobContext, rotate_kek
from kyc_host.crypto.tenant_keys import read_secrets
from kyc_host.retention.erasure import Erasures, PurgeReport
from kyc_host.services import Services
from kyc_host.store.base import Store
from kyc_host.store.review_queue import ReviewQueue
from kyc_host.tenancy.registry import Tenant

log = logging.getLogger(__name__)
STOP_WAIT_SECONDS = 2.0


def erasures_for(tenant: Tenant, store: Store) -> Erasures:
    """The tenant's Erasures, built once per tenant version (``tenant.cache``)."""
    cached = tenant.cache.get("erasures")
    if isinstance(cached, Erasures) and cached.store is store:
        return cached
    erasures = Erasures(store, tenant.id, TenantCipher.from_secrets(tenant.id, tenant.secrets),
                        tenant.config.retention)
    tenant.cache["erasures"] = erasures
    return erasures


async def purge_tenant(services: Services, tenant: Tenant, *, actor: str = "system",
                       dry_run: bool = False, progress: bool = False) -> PurgeReport:
    """One purge run for one tenant, then -- if a shredded customer's data key was wrapped
    by a KEK version the tenant still holds -- a KEK rotation that retires that version.

    Why the rotation: the wrapped data key of a shredded customer also sits in every copy
    of the store taken before the erasure; only once no held KEK can unwrap it are those
    copies unreadable (the tenant's secrets in such a copy stay unwrappable with the master
    key until ``keys rotate-master`` retires the master key version too; see README).
    """
    erasures = erasures_for(tenant, services.store)
    report = await erasures.purge(actor=actor, dry_run=dry_run)
    # After the erasures: a customer whose erasure was finished has no rows to repair.
    report.queue_repaired = await ReviewQueue(services.store, tenant.id).repair(dry_run=dry_run)
    held = await read_secrets(services.store, services.keys, tenant.id)
    report.exposed = await erasures.exposed(sorted(held.data_keks))
    if report.exposed and not dry_run:
        ctx = JobContext(services.store, services.keys,
                         services.settings.tenant_refresh_seconds, actor=actor,
                         progress=progress)
        try:
            await rotate_kek(ctx, tenant.id)
            report.kek_rotated = True
        except JobBusy:
            pass  # another process (or an operator) is rotating this tenant's KEK already
    if report.shredded or report.finished or report.resurrected or report.queue_repaired:
        log.info("purge: tenant %s shredded %d, finished %d, removed %d resurrected, "
                 "repaired the review-queue rows of %d", tenant.id, len(report.shredded),
                 len(report.finished), len(report.resurrected), len(report.queue_repaired),
                 extra={"tenant": tenant.id})
    return report


class PurgeLoop:
    """Runs :func:`purge_tenant` for every served tenant every ``interval`` seconds."""

    def __init__(self, services: Services, interval: float) -> None:
        self.services = services
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention-purge")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: a store call slow to honour the cancellation must not hold up
            # shutdown (every purge step is idempotent, so an abandoned one is harmless).
            await asyncio.wait([self._task], timeout=STOP_WAIT_SECONDS)
            self._task = None

    async def run_once(self) -> list[PurgeReport]:
        reports = []
        registry = self.services.registry
        for served in registry.served():  # the others' processes purge them
            # Looked up again: the tenants before it took a while (a KEK rotation waits
            # several refresh intervals). One offboarded meanwhile is skipped -- purging it
            # would write for a dropped tenant (the review queue's checkpoint), recreating
            # its data; one changed meanwhile is purged as it is now.
            tenant = registry.get(served.id)
            if tenant is None:
                continue
            try:
                reports.append(await purge_tenant(self.services, tenant))
            except Exception:  # one tenant's failure must not stop the others' purges
                log.exception("purge of tenant %s failed", tenant.id,
                              extra={"tenant": tenant.id})
        return reports

    async def _loop(self) -> None:
        # Not security: jitter so N processes started together do not purge in lockstep.
        await asyncio.sleep(random.uniform(0, self.interval))  # noqa: S311
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)
