"""Every collection the platform uses, with its indexes, declared once for both backends."""

from __future__ import annotations

from types import MappingProxyType

from kyc_host.store.base import CollectionSpec, Index

_SPECS = (
    # Platform-wide.
    CollectionSpec("tenants", "platform", (Index(("updated_at",)),)),
    CollectionSpec("tenant_hosts", "platform", (Index(("tenant",)),)),
    CollectionSpec("operator_tokens", "platform", (Index(("prefix",), unique=True),)),
    # prefix -> where the token lives ({"kind": "operator"|"tenant", "tenant": id or ""}), so a
    # bearer token is found with one lookup instead of a scan of every tenant.
    CollectionSpec("token_index", "platform", (Index(("tenant",)),)),
    # Hash-chained log of platform-level events (tenant onboarding/offboarding, operator
    # tokens); a tenant's own log is dropped with its data, this one keeps the proof.
    CollectionSpec("platform_audit", "platform", (Index(("seq",), unique=True),)),
    # Per tenant.
    CollectionSpec("customers", "tenant", (Index(("status",)), Index(("updated_at",)))),
    # _id = blind index of "G|memo"; account_ix = blind index of the bare G (store/customers.py).
    CollectionSpec("identities", "tenant", (Index(("customer_id",)),
                                            Index(("customer_id", "account_ix")))),
    CollectionSpec("files", "tenant", (Index(("owner",)), Index(("customer_id",)),
                                       Index(("expires_at",)))),
    CollectionSpec("blobs", "tenant"),
    # SEP-12 transaction_id -> the customer that first used it (_id = blind index).
    CollectionSpec("transactions", "tenant", (Index(("customer_id",)),)),
    CollectionSpec("challenges", "tenant", (Index(("expires_at",)),)),
    CollectionSpec("outbox", "tenant", (Index(("state", "due_at")), Index(("customer_id",)))),
    CollectionSpec("audit", "tenant",
                   (Index(("seq",), unique=True), Index(("customer_id", "seq")))),
    CollectionSpec("admin_tokens", "tenant", (Index(("prefix",), unique=True),)),
    CollectionSpec("counters", "tenant", (Index(("expires_at",)),)),
)

COLLECTIONS = MappingProxyType({spec.name: spec for spec in _SPECS})


def spec_for(name: str, scope: str) -> CollectionSpec:
    spec = COLLECTIONS.get(name)
    if spec is None or spec.scope != scope:
        raise KeyError(f"no {scope} collection named {name!r}")
    return spec
