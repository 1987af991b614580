"""Outbox events: what one event document holds, and how event bodies are built.

An event is written once with its body already serialized: the bytes that are signed and
sent are the bytes that were stored (sep-digest §4.8: serialize once, sign those bytes). Each
delivery attempt adds only a fresh timestamp and signature.

Document fields (collection ``outbox``, ``_id`` = event id):

- ``kind`` ``sep12`` (to the customer's wallet) or ``webhook`` (to the anchor's backend);
  ``type`` ``sep12.status`` or one of :data:`~kyc_host.callbacks.config.WEBHOOK_EVENTS`.
- ``channel`` ``sep12`` or ``webhook:<hash of the endpoint URL>``; ``after`` the id of the
  previous event of the same customer and channel: an event waits while that one is pending
  (a newer status never overtakes an older one). ``seq`` orders a customer's events.
- ``customer_id``, ``customer_type``, ``status``: identifiers and statuses only, never PII.
- ``body`` (bytes), ``url`` (webhooks only: the tenant's endpoint; a SEP-12 callback is sent
  to the URL the customer has registered *at delivery time*, so re-registration, a 410 and
  erasure all take effect, and the URL exists only sealed in the customer record).
- ``state`` pending | delivered | dead | disabled; ``attempt`` (attempts claimed so far),
  ``due_at``, ``cycle_at`` (start of the retry horizon; reset by a replay), ``last_error``,
  ``last_status``, ``delivered_at``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from kyc_host.audit import iso
from kyc_host.store.base import Doc

SEP12 = "sep12"
WEBHOOK = "webhook"
SEP12_STATUS = "sep12.status"
FINAL_STATUSES = frozenset({"ACCEPTED", "REJECTED"})
#: Longest ``last_error`` kept (it never holds response bodies or URLs).
MAX_ERROR_CHARS = 200


class EventState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # gave up after the retry horizon (dead-letter; an admin may replay it)
    DISABLED = "disabled"  # nowhere to send it: 410, no URL any more, customer erased


def new_id() -> str:
    return uuid.uuid4().hex


def serialize(body: Mapping[str, Any]) -> bytes:
    """JSON exactly as the SEP-12 handlers write it (``BaseHandler.write_json``)."""
    return json.dumps(body, separators=(",", ":")).encode()


def webhook_channel(url: str) -> str:
    return "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]


def _event(event_id: str, *, kind: str, event_type: str, channel: str, customer_id: str,
           customer_type: str, status: str, seq: int, body: bytes, url: str = "") -> Doc:
    now = time.time()
    return {
        "_id": event_id, "kind": kind, "type": event_type, "channel": channel,
        "customer_id": customer_id, "customer_type": customer_type, "status": status,
        "seq": seq, "after": "", "body": body, "url": url, "state": str(EventState.PENDING),
        "attempt": 0,
        "due_at": now, "created_at": now, "cycle_at": now, "updated_at": now,
        "last_error": "", "last_status": 0, "delivered_at": None,
    }


def sep12_event(customer_id: str, customer_type: str, seq: int, body: Mapping[str, Any], *,
                event_id: str | None = None) -> Doc:
    """A SEP-12 callback: ``body`` is the GET /customer answer for that customer and type."""
    return _event(event_id or new_id(), kind=SEP12, event_type=SEP12_STATUS, channel=SEP12,
                  customer_id=customer_id, customer_type=customer_type,
                  status=str(body.get("status", "")), seq=seq, body=serialize(body))


def webhook_event(tenant_id: str, url: str, event_type: str, data: Mapping[str, Any], *,
                  customer_id: str = "", customer_type: str = "", status: str = "",
                  seq: int = 0, event_id: str | None = None) -> Doc:
    """A tenant webhook event for the endpoint at ``url``; ``data`` holds ids and statuses."""
    event_id = event_id or new_id()
    body = {"id": event_id, "type": event_type, "created_at": iso(time.time()),
            "tenant_id": tenant_id, "data": dict(data)}
    return _event(event_id, kind=WEBHOOK, event_type=event_type, channel=webhook_channel(url),
                  customer_id=customer_id, customer_type=customer_type, status=status,
                  seq=seq, body=serialize(body), url=url)


def derived_id(*parts: str) -> str:
    """A deterministic event id, so an event written twice (a retried delete, two processes
    dead-lettering one event) is inserted once."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def public_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An event as operators and tenant admins see it: no body, no wallet URL."""
    delivered = doc.get("delivered_at")
    return {
        "id": doc["_id"], "kind": doc["kind"], "type": doc["type"],
        "customer_id": doc.get("customer_id", ""),
        "customer_type": doc.get("customer_type", ""), "status": doc.get("status", ""),
        "state": doc["state"], "attempts": int(doc.get("attempt", 0)),
        "created_at": iso(float(doc["created_at"])), "updated_at": iso(float(doc["updated_at"])),
        "next_attempt_at": (iso(float(doc["due_at"]))
                            if doc["state"] == EventState.PENDING else None),
        "delivered_at": None if delivered is None else iso(float(delivered)),
        "last_error": doc.get("last_error", ""), "last_status": int(doc.get("last_status", 0)),
        "endpoint": doc.get("url", "") if doc["kind"] == WEBHOOK else "",
    }
