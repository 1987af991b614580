"""When to try an event again: exponential backoff with jitter, spread over the horizon.

Attempt ``n`` failed -> wait ``min(base * 2**(n-1), cap)`` plus up to 25 % jitter, and honour
a receiver's ``Retry-After``. :func:`plan` chooses ``cap`` so that the tenant's
``max_attempts`` attempts span its horizon: with the defaults (30 s base, 20 attempts, 72 h)
the waits grow to about 7 h. When doubling from ``base`` needs more attempts than that to
reach the horizon (8 attempts over 24 h would end after one hour), the attempts are raised
instead: the count never cuts the horizon short. The jitter only ever lengthens a wait. An
event is given up (dead-lettered) once its next attempt would fall after the horizon, or
after the planned number of attempts (reliability-plan "Callbacks": >= 24 h, >= 8
attempts; Stripe 3 days, Standard Webhooks ~75 h).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Mapping
from dataclasses import dataclass

JITTER = 0.25
#: A Retry-After longer than this is not believed (a receiver must not park us for days).
MAX_RETRY_AFTER = 6 * 3600.0


def plan(horizon: float, attempts: int, base: float) -> tuple[float, int]:
    """``(cap, attempts)``: the smallest cap with which the attempts (one more than the
    waits) last at least ``horizon`` seconds, raising ``attempts`` when doubling from
    ``base`` could not reach the horizon with that many (binary search; the total grows
    with the cap)."""
    waits = max(attempts - 1, 1)
    while base * (2.0 ** waits - 1) < horizon:
        waits += 1

    def total(cap: float) -> float:
        return sum(min(base * 2.0 ** n, cap) for n in range(waits))

    low, high = base, max(base, horizon)
    for _ in range(60):
        middle = (low + high) / 2
        if total(middle) >= horizon:
            high = middle
        else:
            low = middle
    return high, waits + 1


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float
    cap: float

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        plain = min(self.base * 2.0 ** min(attempt - 1, 60), self.cap)
        return plain * (1.0 + JITTER * rng.random())


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        seconds = float(raw)
    else:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    return max(0.0, min(seconds, MAX_RETRY_AFTER))
