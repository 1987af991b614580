"""Delivery counters of one process.

The worker reports each outcome here; the counts are kept as plain numbers (tests and
``snapshot`` read them) and, once :meth:`CallbackMetrics.bind` has connected the process's
Prometheus metrics (``Services`` does), exported at ``/metrics`` as ``kyc_callback_events``
{tenant, outcome}, ``kyc_callback_delivery_seconds`` and ``kyc_callback_events_pending``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kyc_host.metrics import CALLBACK_LATENCY_BUCKETS

if TYPE_CHECKING:
    from kyc_host.metrics import Metrics

#: Upper bounds (seconds) of the delivery-latency buckets: event created -> delivered.
LATENCY_BUCKETS = (*CALLBACK_LATENCY_BUCKETS, float("inf"))
OUTCOMES = ("retried", "dead_lettered", "disabled")


@dataclass
class CallbackMetrics:
    """Counts since the process started; ``pending`` is per tenant, as last seen."""

    delivered: int = 0
    retried: int = 0  # failed attempts that were scheduled again
    dead_lettered: int = 0
    disabled: int = 0
    latency_count: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    pending_by_tenant: dict[str, int] = field(default_factory=dict)
    _prometheus: Metrics | None = None

    def bind(self, metrics: Metrics) -> None:
        self._prometheus = metrics

    @property
    def pending(self) -> int:
        return sum(self.pending_by_tenant.values())

    def observe_delivery(self, tenant_id: str, seconds: float) -> None:
        self.delivered += 1
        self.latency_count += 1
        self.latency_sum += seconds
        self.latency_max = max(self.latency_max, seconds)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break
        if self._prometheus is not None:
            self._prometheus.callback_events.labels(tenant_id, "delivered").inc()
            self._prometheus.callback_latency.observe(seconds)

    def count(self, tenant_id: str, outcome: str) -> None:
        """One attempt that ended in ``outcome`` (one of :data:`OUTCOMES`)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown callback outcome {outcome!r}")
        setattr(self, outcome, getattr(self, outcome) + 1)
        if self._prometheus is not None:
            self._prometheus.callback_events.labels(tenant_id, outcome).inc()

    def set_pending(self, tenant_id: str, count: int) -> None:
        self.pending_by_tenant[tenant_id] = count
        if self._prometheus is not None:
            self._prometheus.callback_pending.labels(tenant_id).set(count)

    def snapshot(self) -> dict[str, object]:
        return {
            "pending": self.pending, "delivered": self.delivered, "retried": self.retried,
            "dead_lettered": self.dead_lettered, "disabled": self.disabled,
            "latency_count": self.latency_count, "latency_sum": self.latency_sum,
            "latency_max": self.latency_max,
            "latency_buckets": dict(zip((str(b) for b in LATENCY_BUCKETS),
                                        self.latency_buckets, strict=True)),
        }
