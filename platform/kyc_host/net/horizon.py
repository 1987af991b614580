"""Reading an account's signers and thresholds from Horizon (SEP-10 §"Verifying the signed
challenge": accounts that exist are checked against their on-chain signers).

Horizon URLs come from operator-controlled tenant config, not from wallets, so this client
does not go through the SSRF filter of :mod:`kyc_host.net.safe_http`; it is a separate client
so that the two can never be confused. Every failure other than an honest 404 is an error:
treating "Horizon is down" like "account does not exist" would let a master key log in to an
account whose master key was disabled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from stellar_sdk import StrKey
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPInputError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from kyc_host.net.limits import KeyedLimiter, NoSlot

DEFAULT_TIMEOUT = 4.0
MAX_RESPONSE_BYTES = 1024 * 1024


class HorizonUnavailable(Exception):
    """Horizon could not be reached, timed out or answered 5xx/429: retry later (503)."""


class HorizonBadAnswer(Exception):
    """Horizon answered, but not with an account record we can read (502)."""


@dataclass(frozen=True, slots=True)
class AccountSigners:
    """The ed25519 signers of an existing account and its medium threshold."""

    account_id: str
    signers: tuple[tuple[str, int], ...]  # (G... key, weight), weight 0..255
    med_threshold: int


class HorizonClient:
    """``await account(horizon_url, G)`` -> AccountSigners, or None if Horizon says 404.

    At most ``per_horizon_limit`` lookups run against one Horizon URL at a time, so a tenant
    whose (custom) Horizon hangs cannot take every connection from the others.
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, max_clients: int = 128,
                 per_horizon_limit: int = 32) -> None:
        self.timeout = min(timeout, 5.0)
        self._max_clients = max_clients
        self._limiter = KeyedLimiter(per_horizon_limit)
        self._client: SimpleAsyncHTTPClient | None = None

    def _http(self) -> SimpleAsyncHTTPClient:
        if self._client is None:
            self._client = SimpleAsyncHTTPClient(
                force_instance=True, max_clients=self._max_clients,
                max_body_size=MAX_RESPONSE_BYTES)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def account(self, horizon_url: str, account_id: str) -> AccountSigners | None:
        if not StrKey.is_valid_ed25519_public_key(account_id):
            raise ValueError("account_id must be a G... address")
        request = HTTPRequest(
            f"{horizon_url}/accounts/{account_id}", headers={"Accept": "application/json"},
            connect_timeout=self.timeout, request_timeout=self.timeout,
            follow_redirects=False)
        try:
            async with self._limiter.slot(horizon_url, self.timeout):
                response = await self._http().fetch(request, raise_error=False)
        except NoSlot:
            raise HorizonUnavailable("too many lookups in progress") from None
        except (HTTPClientError, HTTPInputError, OSError) as exc:
            raise HorizonUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.code == 404:
            return None
        if response.code == 429 or response.code >= 500:
            raise HorizonUnavailable(f"HTTP {response.code}")
        if response.code != 200:
            raise HorizonBadAnswer(f"HTTP {response.code}")
        return _parse_account(account_id, response.body)


def _parse_account(account_id: str, body: bytes) -> AccountSigners:
    try:
        doc: Any = json.loads(body)
        thresholds = doc["thresholds"]
        med = _weight(thresholds["med_threshold"])
        signers = tuple(
            (str(s["key"]), _weight(s["weight"])) for s in doc["signers"]
            if s.get("type", "ed25519_public_key") == "ed25519_public_key")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HorizonBadAnswer(f"unreadable account record: {type(exc).__name__}") from None
    if doc.get("account_id", account_id) != account_id:
        raise HorizonBadAnswer("account record is for another account")
    for key, _weight_value in signers:
        if not StrKey.is_valid_ed25519_public_key(key):
            raise HorizonBadAnswer("signer key is not a G... address")
    return AccountSigners(account_id, signers, med)


def _weight(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError("weight/threshold must be an integer 0..255")
    return value
