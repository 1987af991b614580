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
    # _id = tenant id, at = when that tenant last relayed an outbox event: one indexed query
    # tells every process's callback worker which tenants to look at (callbacks/outbox.py).
    CollectionSpec("outbox_wake", "platform", (Index(("at",)),)),
    # Checkpoints and leases of key jobs (crypto/jobs.py): _id = "<kind>:<tenant or *>".
    CollectionSpec("key_jobs", "platform"),
    # Per tenant.
    CollectionSpec("customers", "tenant", (Index(("status",)), Index(("updated_at",)),
                                           Index(("has_pending_events", "updated_at")),
                                           # blind indexes (crypto/records.py)
                                           Index(("email_ix",)), Index(("phone_ix",)))),
    # _id = blind index of "G|memo"; account_ix = blind index of the bare G (store/customers.py).
    CollectionSpec("identities", "tenant", (Index(("customer_id",)),
                                            Index(("customer_id", "account_ix")),
                                            Index(("account_ix",)))),
    # The review queue: one row per (customer, customer type) with that type's last computed
    # status and the customer's updated_at in microseconds (store/review_queue.py). Kept in
    # clear beside the encrypted record so admins can filter and page without decrypting.
    CollectionSpec("review_queue", "tenant", (Index(("customer_id",)),
                                              Index(("updated_us",)),
                                              Index(("status", "updated_us")),
                                              Index(("type", "updated_us")),
                                              Index(("type", "status", "updated_us")))),
    CollectionSpec("files", "tenant", (Index(("owner",)), Index(("customer_id",)),
                                       Index(("expires_at",)))),
    CollectionSpec("blobs", "tenant", large=True),
    # A file's chunks being written or deleted (_id = file id; store/files.py): what a crash
    # midway leaves behind is found here, not by scanning the blobs (reliability-plan F3).
    CollectionSpec("blob_journal", "tenant", (Index(("at",)),)),
    # SEP-12 transaction_id -> the customer that first used it (_id = blind index).
    CollectionSpec("transactions", "tenant", (Index(("customer_id",)),)),
    CollectionSpec("challenges", "tenant", (Index(("expires_at",)),)),
    # Callback and webhook events (_id = event id, so relaying twice inserts once) and the
    # claims on their delivery attempts (_id = "<event id>:<attempt>": the unique insert is
    # what makes an attempt exclusive across processes). See kyc_host/callbacks/.
    # (Indexes end in a range/sort field, from before the SQLite store wrote planner
    # statistics: without them its planner ignored an index used for equality only.)
    CollectionSpec("outbox", "tenant", (Index(("state", "due_at")),
                                        Index(("state", "updated_at")),
                                        Index(("customer_id", "created_at")),
                                        Index(("created_at",)))),
    CollectionSpec("outbox_leases", "tenant", (Index(("event_id",)), Index(("expires_at",)))),
    CollectionSpec("audit", "tenant",
                   (Index(("seq",), unique=True), Index(("customer_id", "seq")))),
    CollectionSpec("admin_tokens", "tenant", (Index(("prefix",), unique=True),)),
    CollectionSpec("counters", "tenant", (Index(("expires_at",)),)),
    # Rate-limit events (ratelimit/limiter.py): one per admitted request or failed login,
    # key = HMAC of limit + client IP or account; counted over a sliding window.
    CollectionSpec("rate_events", "tenant", (Index(("key", "at")), Index(("expires_at",)))),
    # Erased customers (crypto/erasure.py): _id = customer id. "held" while a retention
    # period or legal hold keeps the (still encrypted) record, then a tombstone that proves
    # the shredding and lets the purge job catch a record resurrected by a racing write.
    CollectionSpec("erasures", "tenant", (Index(("state", "shred_after")),)),
    # How far a periodic job got (_id = the job): the review queue's repair
    # (store/review_queue.py).
    CollectionSpec("checkpoints", "tenant"),
)

COLLECTIONS = MappingProxyType({spec.name: spec for spec in _SPECS})


def spec_for(name: str, scope: str) -> CollectionSpec:
    spec = COLLECTIONS.get(name)
    if spec is None or spec.scope != scope:
        raise KeyError(f"no {scope} collection named {name!r}")
    return spec
