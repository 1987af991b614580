"""Signatures of outgoing events, and the receiver-side checks (for wallets, anchors, tests).

SEP-12 callbacks (sep-digest §4.8, §1 item 11): ``Signature: t=<unix>, s=<base64>`` where
``s`` is a raw Ed25519 signature by the tenant's SEP-10 ``SIGNING_KEY`` over the UTF-8 bytes
``"<t>.<host[:port] of the callback URL>.<body>"``. Not SEP-53 ``sign_message`` (which
hashes a prefixed message). The host is the URL's, never a Host header, so a signature
captured for one wallet cannot be replayed to another (v1.9.1). The same value goes out as
``X-Stellar-Signature`` for wallets built before v1.11.0.

Tenant webhooks: ``Webhook-Signature: t=<unix>,v1=<hex HMAC-SHA256 over "<t>.<body>">``, one
``v1`` per active secret (current and, during a rotation, the previous one), the scheme of
Stripe and Standard Webhooks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from stellar_sdk import Keypair
from stellar_sdk.exceptions import BadSignatureError

#: Receivers should refuse signatures older (or newer) than this (SEP-12: 1-2 minutes).
MAX_SKEW_SECONDS = 120


def url_host(url: str) -> str:
    """``host[:port]`` of ``url`` as written in it (the port only when the URL names one)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal: keep the brackets, as in the URL
        host = f"[{host}]"
    return host if parts.port is None else f"{host}:{parts.port}"


def sep12_payload(timestamp: int, url: str, body: bytes) -> bytes:
    return f"{timestamp}.{url_host(url)}.".encode() + body


def sep12_signature(keypair: Keypair, url: str, body: bytes, timestamp: int) -> str:
    """The ``Signature`` header value for ``body`` sent to ``url`` at ``timestamp``."""
    signature = keypair.sign(sep12_payload(timestamp, url, body))
    return f"t={timestamp}, s={base64.b64encode(signature).decode()}"


def verify_sep12(header: str, url: str, body: bytes, public_key: str, *,
                 now: float | None = None, max_skew: float = MAX_SKEW_SECONDS) -> bool:
    """A wallet's check (SEP-12 §callbacks): parse, check the age, verify with SIGNING_KEY."""
    fields = _fields(header)
    try:
        timestamp = int(fields["t"][0])
        signature = base64.b64decode(fields["s"][0], validate=True)
    except (KeyError, ValueError, binascii.Error):
        return False
    if abs((time.time() if now is None else now) - timestamp) > max_skew:
        return False
    try:
        Keypair.from_public_key(public_key).verify(sep12_payload(timestamp, url, body),
                                                   signature)
    except (BadSignatureError, ValueError):
        return False
    return True


def webhook_signature(secrets: Sequence[bytes], body: bytes, timestamp: int) -> str:
    """The ``Webhook-Signature`` header value: ``t=...`` then one ``v1=`` per secret."""
    macs = [hmac.new(s, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
            for s in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={m}" for m in macs)])


def verify_webhook(header: str, body: bytes, secret: bytes, *, now: float | None = None,
                   max_skew: float = MAX_SKEW_SECONDS) -> bool:
    """A receiver's check: any ``v1`` matches the HMAC under ``secret`` and ``t`` is fresh."""
    fields = _fields(header)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > max_skew:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def _fields(header: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            out.setdefault(key.strip(), []).append(value.strip())
    return out
