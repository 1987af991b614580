"""Delivery counters of one process, kept small and dependency-free on ``Services``, so the
Prometheus endpoint can export them (``snapshot``) without the worker knowing about it."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Upper bounds (seconds) of the delivery-latency buckets: event created -> delivered.
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0, float("inf"))


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

    @property
    def pending(self) -> int:
        return sum(self.pending_by_tenant.values())

    def observe_delivery(self, seconds: float) -> None:
        self.delivered += 1
        self.latency_count += 1
        self.latency_sum += seconds
        self.latency_max = max(self.latency_max, seconds)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break

    def snapshot(self) -> dict[str, object]:
        return {
            "pending": self.pending, "delivered": self.delivered, "retried": self.retried,
            "dead_lettered": self.dead_lettered, "disabled": self.disabled,
            "latency_count": self.latency_count, "latency_sum": self.latency_sum,
            "latency_max": self.latency_max,
            "latency_buckets": dict(zip((str(b) for b in LATENCY_BUCKETS),
                                        self.latency_buckets, strict=True)),
        }
