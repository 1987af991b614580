"""The long-lived objects a process builds at start and hands to every handler.

Handlers reach them through ``BaseHandler.services`` (Tornado application settings), never
through module globals, so tests can run several independent servers in one process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kyc_host.callbacks.metrics import CallbackMetrics
from kyc_host.crypto.background import KeyJobs
from kyc_host.crypto.master import KeyProvider
from kyc_host.looplag import LoopLagProbe
from kyc_host.management.auth import TokenCache
from kyc_host.metrics import Metrics
from kyc_host.net import HorizonClient, SafeHttpClient
from kyc_host.ratelimit.budget import UploadBudget
from kyc_host.ratelimit.limiter import RateLimiter
from kyc_host.ratelimit.pacing import UploadPacers
from kyc_host.sep.sep10_tokens import VerifiedTokens
from kyc_host.settings import PlatformSettings
from kyc_host.store.base import Store
from kyc_host.tenancy.registry import TenantRegistry
from kyc_host.tenancy.service import TenantService
from kyc_host.web.turns import LoopTurns


class Inflight:
    """Requests being served now; graceful shutdown waits until there are none."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, grace_seconds: float) -> bool:
        """True once no request is in flight, False if ``grace_seconds`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace_seconds)
        except TimeoutError:
            return False
        return True


@dataclass
class Services:
    settings: PlatformSettings
    store: Store
    keys: KeyProvider
    tenants: TenantService
    registry: TenantRegistry
    inflight: Inflight = field(default_factory=Inflight)
    #: Each tenant's requests in flight; a busy tenant's next ones let the others go first.
    turns: LoopTurns = field(default_factory=LoopTurns)
    #: Recent management-token verifications of this process (see management/auth.py).
    token_cache: TokenCache = field(default_factory=TokenCache)
    #: Recent SEP-10 token verifications of this process, all tenants (sep/sep10_tokens.py).
    verified_tokens: VerifiedTokens = field(default_factory=VerifiedTokens)
    #: The one client for untrusted URLs (SSRF-safe); build_services sets dev mode from settings.
    http: SafeHttpClient = field(default_factory=SafeHttpClient)
    #: Account signers from a tenant's (operator-configured) Horizon.
    horizon: HorizonClient = field(default_factory=HorizonClient)
    #: Prometheus metrics of this process (exported at the admin listener's /metrics).
    metrics: Metrics = field(default_factory=Metrics)
    #: Callback/webhook delivery counters of this process (callbacks/metrics.py).
    callback_metrics: CallbackMetrics = field(default_factory=CallbackMetrics)
    #: Per-tenant request rate limits: local counts + store windows (ratelimit/limiter.py).
    limiter: RateLimiter = field(default_factory=RateLimiter)
    #: Per-tenant upload bandwidth buckets and waiting lines (ratelimit/pacing.py).
    upload_pacers: UploadPacers = field(default_factory=UploadPacers)
    #: The upload bytes this process holds at once (ratelimit/budget.py); build_services
    #: sets its limit from ``upload_bytes_in_flight``.
    upload_budget: UploadBudget = field(default_factory=lambda: UploadBudget(0))
    #: Key jobs (rotate-kek, reindex) started through the management API in this process.
    key_jobs: KeyJobs = field(default_factory=KeyJobs)
    draining: bool = False
    #: This process's event-loop lag probe (looplag.py), set by Server.start; public
    #: requests are shed while it is behind by more than ``overload_lag_seconds``.
    loop_lag: LoopLagProbe | None = None

    def __post_init__(self) -> None:
        self.callback_metrics.bind(self.metrics)
