"""Every collection the platform uses, with its indexes, declared once for both backends."""

from __future__ import annotations

from types import MappingProxyType

from kyc_host.store.base import CollectionSpec, Index

_SPECS = (
    # Platform-wide.
    CollectionSpec("tenants", "platform", (Index(("updated_at",)),)),
    CollectionSpec("tenant_hosts", "platform", (Index(("tenant",)),)),
    CollectionSpec("operator_tokens", "platform", (Index(("prefix",), unique=True),)),
    # Per tenant.
    CollectionSpec("customers", "tenant", (Index(("status",)), Index(("updated_at",)))),
    CollectionSpec("identities", "tenant", (Index(("customer_id",)),)),
    CollectionSpec("files", "tenant", (Index(("owner",)), Index(("customer_id",)))),
    CollectionSpec("blobs", "tenant"),
    CollectionSpec("challenges", "tenant", (Index(("expires_at",)),)),
    CollectionSpec("outbox", "tenant", (Index(("state", "due_at")), Index(("customer_id",)))),
    CollectionSpec("audit", "tenant", (Index(("seq",), unique=True),)),
    CollectionSpec("admin_tokens", "tenant", (Index(("prefix",), unique=True),)),
    CollectionSpec("counters", "tenant", (Index(("expires_at",)),)),
)

COLLECTIONS = MappingProxyType({spec.name: spec for spec in _SPECS})


def spec_for(name: str, scope: str) -> CollectionSpec:
    spec = COLLECTIONS.get(name)
    if spec is None or spec.scope != scope:
        raise KeyError(f"no {scope} collection named {name!r}")
    return spec
