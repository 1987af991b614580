"""SEP-10 challenges for one tenant: build, verify, consume.

Building, reading and signature weighting are stellar-sdk's
(``stellar_sdk.sep.stellar_web_authentication``); this module adds what the SDK leaves out or
gets wrong (sep-digest §1 items 7-8, §6):

- memo ``0`` is silently dropped by ``build_challenge_transaction``: we set it ourselves and
  re-sign;
- the SDK accepts a challenge without a ``web_auth_domain`` op: we require exactly one, and no
  op names we never issue;
- the SDK counts weight-0 signers when the threshold is 0: we drop weight-0 signers (and the
  server key, which must never vouch for a client) and require weight >= max(med, 1);
- the SDK misses "memo with a muxed account" when the mux id is 0: we check it;
- non-canonical encodings (ignored padding bits, stray base64 characters) are refused, so one
  challenge has exactly one accepted spelling.

Replay (SEP-10: one JWT per challenge, reliability-plan A4): after *every* other check passed,
the challenge hash is inserted into the tenant's ``challenges`` collection with ``_id`` = hash.
A unique insert is the one primitive that is atomic on every backend (FerretDB included) and
across processes, so of N concurrent submissions exactly one gets a token. A challenge that
fails a check is never consumed, so a forged copy cannot burn a wallet's real one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from stellar_sdk import IdMemo, Keypair, MuxedAccount, TimeBounds, TransactionEnvelope
from stellar_sdk.operation import ManageData
from stellar_sdk.sep.ed25519_public_key_signer import Ed25519PublicKeySigner
from stellar_sdk.sep.exceptions import InvalidSep10ChallengeError
from stellar_sdk.sep.stellar_web_authentication import (
    ChallengeTransaction,
    build_challenge_transaction,
    read_challenge_transaction,
    verify_challenge_transaction_signers,
    verify_challenge_transaction_threshold,
)

from kyc_host.errors import BadGateway, BadRequest, ServiceUnavailable
from kyc_host.net import AccountSigners, HorizonBadAnswer, HorizonClient, HorizonUnavailable
from kyc_host.sep import client_domain as wallet_domain
from kyc_host.store.base import DuplicateKeyError, Store, StoreError, lt
from kyc_host.tenancy.registry import Tenant

log = logging.getLogger(__name__)

#: SEP-10 servers should refuse oversized input before decoding it (reliability-plan B2).
MAX_TRANSACTION_CHARS = 50_000
#: Our own challenges start "now"; allow this much clock difference between our processes.
CLOCK_SKEW_SECONDS = 60
PURGE_INTERVAL_SECONDS = 60.0
#: Consumed hashes are kept this long past the challenge's maxTime before purging, so a
#: process whose clock runs behind still finds them while it would accept the challenge.
PURGE_GRACE_SECONDS = 300
_OUR_OP_NAMES = frozenset({"web_auth_domain", "client_domain"})


@dataclass(frozen=True, slots=True)
class ChallengeRequest:
    """A validated ``GET /auth`` request."""

    account: str  # G... or M...
    memo: int | None
    home_domain: str
    client_domain: str | None = None
    client_signing_key: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedChallenge:
    """A challenge that passed every check except replay; ``consume`` it before issuing."""

    tx_hash: str
    sub: str
    home_domain: str
    client_domain: str | None
    expires_at: int


# --- building ---


def build_challenge(tenant: Tenant, request: ChallengeRequest) -> str:
    """The server-signed challenge XDR: seq 0, minTime now, maxTime now + the tenant's
    challenge timeout, ``"<home_domain> auth"`` with a 48-byte nonce, ``web_auth_domain``
    (and ``client_domain`` sourced by the wallet's key when requested)."""
    xdr: str = build_challenge_transaction(
        server_secret=tenant.secrets.signing_seed,
        client_account_id=request.account,
        home_domain=request.home_domain,
        web_auth_domain=tenant.web_auth_domain,
        network_passphrase=tenant.config.network_passphrase,
        timeout=tenant.config.sep10.challenge_timeout_seconds,
        client_domain=request.client_domain,
        client_signing_key=request.client_signing_key,
        memo=request.memo or None,
    )
    if request.memo == 0:
        xdr = _with_memo_zero(tenant, xdr)
    return xdr


def _with_memo_zero(tenant: Tenant, xdr: str) -> str:
    # The SDK tests ``if memo:`` and so drops a legal ID memo of 0 (sep-digest §1.7).
    envelope = TransactionEnvelope.from_xdr(xdr, tenant.config.network_passphrase)
    envelope.transaction.memo = IdMemo(0)
    envelope.signatures.clear()
    envelope.sign(tenant.secrets.signing_keypair)
    out: str = envelope.to_xdr()
    return out


# --- verifying ---


def _sdk_args(tenant: Tenant, xdr: str,
              server: str) -> tuple[str, str, tuple[str, ...], str, str]:
    return (xdr, server, tenant.home_domains, tenant.web_auth_domain,
            tenant.config.network_passphrase)


def server_keys(tenant: Tenant) -> list[str]:
    """The signing keys a challenge may be signed by: the current SIGNING_KEY, then a key
    replaced by ``kyc-host keys rotate-signing`` while challenges it signed can still be
    valid (challenge lifetime + a propagation margin), so no login fails at the switch."""
    secrets = tenant.secrets
    now = time.time()
    return [secrets.signing_keypair.public_key,
            *(Keypair.from_secret(p.seed).public_key for p in secrets.signing_previous
              if p.until > now)]


def read_challenge(tenant: Tenant, xdr: str) -> ChallengeTransaction:
    """The parsed challenge, after the SDK's and our structural checks.

    Everything that can be decided without Horizon is decided here; raises BadRequest.
    """
    return _read_signed(tenant, xdr)[0]


def _read_signed(tenant: Tenant, xdr: str) -> tuple[ChallengeTransaction, str]:
    """The challenge and the server key that signed it (current first, then previous)."""
    current, *previous = server_keys(tenant)
    try:
        return _read(tenant, xdr, current), current
    except BadRequest:
        for server in previous:  # only during a rotation's overlap window
            with contextlib.suppress(BadRequest):
                return _read(tenant, xdr, server), server
        raise


def _read(tenant: Tenant, xdr: str, server: str) -> ChallengeTransaction:
    if len(xdr) > MAX_TRANSACTION_CHARS:
        raise BadRequest(f"transaction is longer than {MAX_TRANSACTION_CHARS} characters")
    try:
        challenge = read_challenge_transaction(*_sdk_args(tenant, xdr, server))
    except InvalidSep10ChallengeError as exc:
        raise BadRequest(f"invalid challenge: {exc}") from None
    except Exception as exc:
        # The SDK's XDR decoder raises many exception types; undecodable input of any kind
        # is the client's error, never a 500 (reliability-plan B2).
        raise BadRequest("transaction is not a base64 XDR transaction envelope",
                         log_detail=f"undecodable challenge: {type(exc).__name__}") from None
    envelope: TransactionEnvelope = challenge.transaction
    if envelope.to_xdr() != xdr:
        raise BadRequest("transaction is not canonical base64 XDR")
    _check_operations(tenant, envelope, server)
    _check_time_bounds(tenant, envelope)
    if challenge.client_account_id.startswith("M") and challenge.memo is not None:
        raise BadRequest("invalid challenge: a memo is not allowed with a muxed account")
    return challenge


def _check_operations(tenant: Tenant, envelope: TransactionEnvelope, server: str) -> None:
    names: list[str] = []
    for op in envelope.transaction.operations[1:]:
        if not isinstance(op, ManageData) or op.data_name not in _OUR_OP_NAMES:
            raise BadRequest("invalid challenge: unexpected operation")
        names.append(op.data_name)
        if op.data_name == "web_auth_domain" and (op.source is None
                                                  or op.source.account_muxed is not None
                                                  or op.source.account_id != server):
            raise BadRequest("invalid challenge: web_auth_domain must be sourced by the server")
    # The SDK accepts a challenge without this op; SEP-10 v3 servers always add it.
    if names.count("web_auth_domain") != 1 or names.count("client_domain") > 1:
        raise BadRequest("invalid challenge: expected one web_auth_domain operation")
    domain = client_domain_of(envelope)
    wallet_domain.check_policy(tenant, domain)


def _time_bounds(envelope: TransactionEnvelope) -> TimeBounds:
    preconditions = envelope.transaction.preconditions
    if preconditions is None or preconditions.time_bounds is None:
        raise BadRequest("invalid challenge: transaction requires time bounds")
    return preconditions.time_bounds


def _check_time_bounds(tenant: Tenant, envelope: TransactionEnvelope) -> None:
    bounds = _time_bounds(envelope)
    now = time.time()
    if bounds.min_time > now + CLOCK_SKEW_SECONDS:
        raise BadRequest("invalid challenge: not valid yet")
    if bounds.max_time - bounds.min_time > tenant.config.sep10.challenge_timeout_seconds:
        raise BadRequest("invalid challenge: validity window too long")


def client_domain_of(envelope: TransactionEnvelope) -> str | None:
    for op in envelope.transaction.operations[1:]:
        if isinstance(op, ManageData) and op.data_name == "client_domain":
            value = op.data_value or b""
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                raise BadRequest("invalid challenge: client_domain is not ASCII") from None
    return None


async def verify_challenge(tenant: Tenant, horizon: HorizonClient,
                           xdr: str) -> VerifiedChallenge:
    """Every SEP-10 check except replay; raises BadRequest, ServiceUnavailable, BadGateway."""
    challenge, server = _read_signed(tenant, xdr)
    client: str = challenge.client_account_id
    account = MuxedAccount.from_account(client).account_id
    try:
        record = await horizon.account(tenant.config.horizon_url, account)
    except HorizonUnavailable as exc:
        # Never fall back to the "account does not exist" rules: that would let a disabled
        # master key in while Horizon is down.
        raise ServiceUnavailable("Horizon is unavailable; try again later",
                                 log_detail=f"horizon: {exc}") from None
    except HorizonBadAnswer as exc:
        raise BadGateway("Horizon gave an unreadable answer",
                         log_detail=f"horizon: {exc}") from None
    _verify_signatures(tenant, xdr, server, account, record)
    envelope: TransactionEnvelope = challenge.transaction
    memo: int | None = challenge.memo
    return VerifiedChallenge(
        tx_hash=envelope.hash_hex(),
        sub=client if memo is None else f"{client}:{memo}",
        home_domain=challenge.matched_home_domain,
        client_domain=client_domain_of(envelope),
        expires_at=int(_time_bounds(envelope).max_time),
    )


def _verify_signatures(tenant: Tenant, xdr: str, server: str, account: str,
                       record: AccountSigners | None) -> None:
    """Signatures per SEP-10: existing accounts by their signers and medium threshold,
    missing accounts by exactly their master key (plus the client_domain key, if any)."""
    args = _sdk_args(tenant, xdr, server)
    try:
        if record is None:
            # What verify_challenge_transaction_signed_by_client_master_key does, minus one
            # of its two extra decodes of the XDR: the master key is the only signer, and
            # every other signature (except the client_domain key's) is refused.
            master = Ed25519PublicKeySigner(account, 255)
            verify_challenge_transaction_signers(*args, signers=[master])
            return
        server = args[1]
        signers = [Ed25519PublicKeySigner(key, weight) for key, weight in record.signers
                   if weight > 0 and key != server]
        if not signers:
            raise BadRequest("invalid challenge: the account has no signer that can log in")
        threshold = max(record.med_threshold, 1)
        verify_challenge_transaction_threshold(*args, threshold=threshold, signers=signers)
    except InvalidSep10ChallengeError as exc:
        raise BadRequest(f"invalid challenge: {exc}") from None


# --- replay ---


async def consume(store: Store, tenant: Tenant, challenge: VerifiedChallenge) -> None:
    """Mark the challenge used, exactly once across all processes; BadRequest on replay."""
    challenges = store.tenant(tenant.id, "challenges")
    try:
        await challenges.insert_one({"_id": challenge.tx_hash,
                                     "expires_at": challenge.expires_at})
    except DuplicateKeyError:
        raise BadRequest("challenge already used: SEP-10 issues one token per challenge"
                         ) from None
    await _maybe_purge(store, tenant)


async def _maybe_purge(store: Store, tenant: Tenant) -> None:
    """Delete long-expired challenge hashes, at most once a minute per tenant and process
    (the test backend has no TTL indexes)."""
    now = time.monotonic()
    if now - tenant.cache.get("challenges_purged_at", -PURGE_INTERVAL_SECONDS) \
            < PURGE_INTERVAL_SECONDS:
        return
    tenant.cache["challenges_purged_at"] = now
    try:
        await store.tenant(tenant.id, "challenges").delete_many(
            {"expires_at": lt(int(time.time()) - PURGE_GRACE_SECONDS)})
    except StoreError as exc:
        log.warning("purging used challenges failed: %s", exc, extra={"tenant": tenant.id})
