"""SEP-12 request parameters: who the request is about, and the checks on plain params.

Identity (digest §4.3). The JWT ``sub`` says who is calling: ``G``, ``G:memo`` or ``M``
(muxed; treated exactly as ``G:memo`` with its mux id, both directions). The deprecated
``account`` and ``memo``/``memo_type`` params may narrow that, never widen it:

- ``account`` must be the token's ``G`` or its ``M``; any other account -> 403.
- a token with a memo reaches only that memo: another memo -> 403;
- a bare ``G`` token (the omnibus owner, e.g. a SEP-31 sending anchor) may address any
  memo under ``G``; it may not address another account.

A memo is canonicalized before it becomes part of a customer key, so ``"0100"`` and ``"100"``
are the same ID memo and never two principals (reliability-plan A9).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from stellar_sdk import MuxedAccount, StrKey

from kyc_host.errors import BadRequest, Forbidden, NotFound
from kyc_host.net.addresses import is_public_address
from kyc_host.sep.sep10_tokens import Identity
from kyc_host.tenancy.schema import TenantConfig

MAX_MEMO_ID = 2**64 - 1
MAX_TEXT_MEMO_BYTES = 28  # Stellar text memos
MEMO_TYPES = ("id", "text", "hash")
_ID_MEMO = re.compile(r"[0-9]{1,20}")
_LANG = re.compile(r"[a-z]{2}(?:[-_][A-Za-z0-9]{1,8})?")
_TRANSACTION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: The answer for an unknown *and* for a foreign customer id: identical on purpose (AP#1946).
CUSTOMER_NOT_FOUND = "customer not found"
FILE_NOT_FOUND = "file not found"


@dataclass(frozen=True, slots=True)
class Principal:
    """The customer identity a request addresses: a base account and an optional memo."""

    account: str
    memo: str | None = None
    memo_type: str | None = None  # "id" | "text" | "hash" when memo is set

    @property
    def key(self) -> str:
        """Canonical identity key, e.g. ``G...|`` or ``G...|id:123`` (blind-indexed)."""
        if self.memo is None:
            return f"{self.account}|"
        return f"{self.account}|{self.memo_type}:{self.memo}"


def token_principal(identity: Identity) -> Principal:
    """The identity of the token itself (used as the owner of uploaded files)."""
    if identity.memo is None:
        return Principal(identity.account)
    return Principal(identity.account, identity.memo, "id")


def resolve_principal(identity: Identity, account: str | None, memo: str | None,
                      memo_type: str | None) -> Principal:
    """Combine the token with the request's account/memo params (digest §4.3 table).

    Raises Forbidden when the params name someone else, BadRequest when they are malformed.
    """
    muxed_memo = _check_account(identity, account)
    if memo_type is not None and memo_type not in MEMO_TYPES:
        raise BadRequest("memo_type must be id, text or hash")
    if muxed_memo is not None:
        if memo is not None and _canonical_id(memo) != muxed_memo:
            raise Forbidden("memo does not match the muxed account")
        memo = muxed_memo
    if identity.memo is not None:
        # The token's memo wins; memo_type may be ignored when the sub carries a memo.
        if memo is not None and _canonical_id(memo) != identity.memo:
            raise Forbidden("memo does not match authorization token")
        return Principal(identity.account, identity.memo, "id")
    if memo is None:
        if memo_type is not None and memo_type != "id":
            raise BadRequest("memo_type given without memo")
        return Principal(identity.account)
    kind = memo_type or "id"
    return Principal(identity.account, _canonical_memo(memo, kind), kind)


def named_principal(account: str, memo: str | None, memo_type: str | None) -> Principal:
    """The identity an operator names (management API: search, link, unlink): a ``G``
    account with an optional memo, or an ``M`` account (its mux id is an ID memo). Memos
    are canonicalized exactly as for wallets, so both find the same customer key.
    Raises BadRequest naming the parameter."""
    if memo_type is not None and memo_type not in MEMO_TYPES:
        raise BadRequest("memo_type: must be id, text or hash")
    if StrKey.is_valid_med25519_public_key(account):
        muxed = MuxedAccount.from_account(account)
        if memo is not None or muxed.account_muxed_id is None:
            raise BadRequest("memo: not allowed with a muxed (M...) account")
        return Principal(muxed.account_id, str(muxed.account_muxed_id), "id")
    if not StrKey.is_valid_ed25519_public_key(account):
        raise BadRequest("account: must be a valid G... or M... Stellar account")
    if memo is None:
        if memo_type is not None:
            raise BadRequest("memo_type: given without memo")
        return Principal(account)
    kind = memo_type or "id"
    return Principal(account, _canonical_memo(memo, kind), kind)


def split_identity_key(key: str) -> Principal:
    """The inverse of :attr:`Principal.key` (``G...|`` or ``G...|id:123``)."""
    account, _, memo_part = key.partition("|")
    if not memo_part:
        return Principal(account)
    kind, _, memo = memo_part.partition(":")
    return Principal(account, memo, kind)


def _check_account(identity: Identity, account: str | None) -> str | None:
    """Check the ``account`` param against the token; returns a mux id it implies, if any."""
    if account is None or account == identity.account:
        return None
    if account == identity.muxed:
        return identity.memo
    if StrKey.is_valid_contract(account):
        raise BadRequest("contract (C...) accounts are not supported: use SEP-10")
    if StrKey.is_valid_med25519_public_key(account):
        muxed = MuxedAccount.from_account(account)
        if muxed.account_id == identity.account and muxed.account_muxed_id is not None:
            if identity.memo is not None and str(muxed.account_muxed_id) != identity.memo:
                raise Forbidden("account does not match authorization token")
            return str(muxed.account_muxed_id)
        raise Forbidden("account does not match authorization token")
    if StrKey.is_valid_ed25519_public_key(account):
        raise Forbidden("account does not match authorization token")
    raise BadRequest("account is not a valid Stellar account")


def _canonical_id(memo: str) -> str | None:
    """A decimal uint64 memo in canonical form, or None if ``memo`` is not one."""
    if not _ID_MEMO.fullmatch(memo) or int(memo) > MAX_MEMO_ID:
        return None
    return str(int(memo))


def _canonical_memo(memo: str, kind: str) -> str:
    if kind == "id":
        canonical = _canonical_id(memo)
        if canonical is None:
            raise BadRequest("memo must be an ID memo (an unsigned 64-bit integer)")
        return canonical
    if kind == "hash":
        try:
            raw = base64.b64decode(memo, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("a hash memo must be 32 bytes in base64") from None
        if len(raw) != 32:
            raise BadRequest("a hash memo must be 32 bytes in base64")
        return base64.b64encode(raw).decode()
    if not memo or len(memo.encode()) > MAX_TEXT_MEMO_BYTES or not memo.isprintable():
        raise BadRequest("a text memo must be 1 to 28 bytes of printable text")
    return memo


# --- plain parameters ---


def check_customer_id(value: str) -> str:
    """A customer id as issued (UUID4 text); anything else cannot exist -> 404."""
    return _check_uuid(value, CUSTOMER_NOT_FOUND)


def check_file_id(value: str) -> str:
    return _check_uuid(value, FILE_NOT_FOUND)


def _check_uuid(value: str, message: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise NotFound(message) from None
    if str(parsed) != value:
        raise NotFound(message)
    return value


def check_type(config: TenantConfig, value: str | None) -> str:
    """The customer type; omitted -> the tenant's default; unknown -> 400 (SEP-12 §4.4)."""
    if value is None or value == "":
        return config.default_customer_type
    if value not in config.customer_types:
        shown = value if len(value) <= 64 and value.isprintable() else "(given)"
        raise BadRequest(f"unknown customer type {shown!r}; this anchor offers: "
                         + ", ".join(sorted(config.customer_types)))
    return value


def check_transaction_id(value: str | None, type_given: bool) -> str | None:
    if value is None:
        return None
    if not type_given:
        raise BadRequest("transaction_id requires type (SEP-12 v1.13)")
    if not _TRANSACTION_ID.fullmatch(value):
        raise BadRequest("transaction_id must be 1 to 128 letters, digits or ._:-")
    return value


def check_lang(value: str | None) -> str:
    """ISO 639-1 language; anything unsupported or malformed falls back to English."""
    if value is None or not _LANG.fullmatch(value):
        return "en"
    return value[:2]


MAX_URL_CHARS = 2000
_NUMERIC_HOST = re.compile(r"[0-9.]+|0x[0-9a-fx.]*")


def check_callback_url(url: str | None, *, dev_mode: bool) -> str:
    """Check a SEP-12 callback URL at registration (reliability-plan A7).

    An absolute ``https`` URL with a host name or a public IP address, no credentials and no
    fragment. Dev mode also allows ``http`` and loopback hosts, so a wallet running on the
    developer's machine can receive callbacks. Where the name resolves is checked again at
    delivery, by the outbound client (DNS can change after registration).
    """
    if not url:
        raise BadRequest("url is required")
    problem = _url_problem(url, dev_mode)
    if problem:
        raise BadRequest(f"url: {problem}")
    return url


def _url_problem(url: str, dev_mode: bool) -> str | None:
    if len(url) > MAX_URL_CHARS or not url.isprintable() or any(c.isspace() for c in url):
        return "expected an absolute https URL"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "expected an absolute https URL"
    host = (parts.hostname or "").rstrip(".")
    schemes = ("https", "http") if dev_mode else ("https",)
    if parts.scheme.lower() not in schemes or not host:
        return "expected an absolute https URL"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed"
    if parts.fragment:
        return "a fragment is not allowed"
    if _is_local(host) and not dev_mode:
        return "the host must be a public internet address"
    return None


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # A bare name only resolves inside a private network; digits-and-dots or hex that
        # is not a standard address is an IP in disguise (127.1, 0x7f.1): refused too.
        return "." not in host or _NUMERIC_HOST.fullmatch(host.lower()) is not None
    # The outbound client's own test, not ``is_global``: that one passes IPv6 forms which
    # embed an IPv4 address (NAT64 64:ff9b::7f00:1, 6to4, ::7f00:1) that delivery refuses.
    return not is_public_address(address)
