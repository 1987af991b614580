"""The rate keys of a tenant's ``[limits]`` section.

```toml
[limits]
auth_per_ip = "120/min"              # GET + POST /auth per client IP
auth_per_account = "60/min"          # GET /auth per requested account, POST per logged-in one
failed_logins_per_ip = "20/min"      # POST /auth answered 4xx, per client IP
customer_puts_per_ip = "120/min"     # PUT /kyc/customer per client IP
customer_puts_per_account = "30/min" # ... per token subject (account, or account:memo)
uploads_per_ip = "60/min"            # multipart PUT /kyc/customer or POST /kyc/customer/files
uploads_per_account = "20/min"
```

A rate is ``"<count>/<window>"``: the window is a unit (``s``, ``min``, ``h``, ``day``),
optionally with a number in front (``"5/10min"``), at most one day. ``"off"`` disables a limit.
The defaults follow reliability-plan A14 (60/min per IP and account on ``/auth`` — here
counted over GET and POST together, so 120 per IP is 60 logins —, 20/min failed logins,
30/min ``PUT /customer`` per subject). Per-account limits key on the token's subject, not
the bare ``G``: the users of a custodial wallet share one ``G`` with different memos.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from kyc_host.tenancy.reader import Table

_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "day": 86400}
_RATE = re.compile(r"([0-9]{1,7})/([0-9]{0,5})(" + "|".join(_UNITS) + r")")
MAX_WINDOW_SECONDS = 86400
MAX_COUNT = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` events in any ``seconds``-long window."""

    count: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds}s"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Each field is a limit name (as written in the tenant file); None means off."""

    auth_per_ip: Rate | None = Rate(120, 60)
    auth_per_account: Rate | None = Rate(60, 60)
    failed_logins_per_ip: Rate | None = Rate(20, 60)
    customer_puts_per_ip: Rate | None = Rate(120, 60)
    customer_puts_per_account: Rate | None = Rate(30, 60)
    uploads_per_ip: Rate | None = Rate(60, 60)
    uploads_per_account: Rate | None = Rate(20, 60)

    def get(self, name: str) -> Rate | None:
        """The rate of the limit called ``name`` (a field name); KeyError if unknown."""
        if name not in RATE_NAMES:
            raise KeyError(name)
        rate: Rate | None = getattr(self, name)
        return rate


RATE_NAMES = frozenset(f.name for f in fields(RateLimits))


def parse_rate(text: str) -> Rate | None:
    """``"60/min"`` -> Rate(60, 60); ``"off"`` -> None; ValueError otherwise."""
    if text == "off":
        return None
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError("expected \"<count>/<window>\" such as \"60/min\" or \"5/10s\" "
                         "(units s, min, h, day), or \"off\"")
    count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
    seconds = multiple * _UNITS[unit]
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"the count must be from 1 to {MAX_COUNT}")
    if not 1 <= seconds <= MAX_WINDOW_SECONDS:
        raise ValueError("the window must be from 1 second to 1 day")
    return Rate(count, seconds)


def parse_rates(table: Table) -> RateLimits:
    """Read the rate keys of ``[limits]`` (the caller reads the other keys and finishes)."""
    defaults = RateLimits()
    values: dict[str, Rate | None] = {}
    for name in sorted(RATE_NAMES):
        default = defaults.get(name)
        raw = table.raw(name, None)
        if raw is None:
            values[name] = default
            continue
        if not isinstance(raw, str):
            raise table.error(name, "expected a string such as \"60/min\" or \"off\"", raw)
        try:
            values[name] = parse_rate(raw)
        except ValueError as exc:
            raise table.error(name, str(exc), raw) from None
    return RateLimits(**values)
