"""The tenant's ``[retention]`` section: how long an erased customer's data is held.

```toml
[retention]
keep_days = 0                 # default: shred at once on DELETE
[retention.customer_types]
business = 3650               # a legal period per customer type, in days
```

A customer known under several types is held for the longest of their periods. 0 means the
data is shredded at once; a positive period keeps it encrypted, out of the wallet's reach and
readable only through the audited auditor path, until the purge job shreds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kyc_host.tenancy.reader import Table

MAX_KEEP_DAYS = 3650 * 3  # 30 years: longer than any KYC record-keeping rule we know of


@dataclass(frozen=True, slots=True)
class Retention:
    keep_days: int = 0
    by_type: Mapping[str, int] = field(default_factory=dict)

    def days_for(self, types: Iterable[str]) -> int:
        """The holding period of a customer known under ``types`` (the longest applies)."""
        return max((self.by_type.get(t, self.keep_days) for t in types), default=self.keep_days)


def parse_retention(table: Table, customer_types: Iterable[str]) -> Retention:
    """Parse ``[retention]``; customer types named must be the tenant's own."""
    keep_days = table.integer("keep_days", 0, min=0, max=MAX_KEEP_DAYS)
    per_type = table.table("customer_types")
    known = set(customer_types)
    by_type: dict[str, int] = {}
    for name in list(per_type.data):
        if name not in known:
            raise per_type.error(str(name), "not one of customer_types")
        by_type[name] = per_type.integer(name, min=0, max=MAX_KEEP_DAYS)
    per_type.finish()
    table.finish()
    return Retention(keep_days, MappingProxyType(by_type))
