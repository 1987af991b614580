"""SEP-10 challenges for one tenant: build, verify, consume.

Building (with the SDK's ``TransactionBuilder``, as its ``build_challenge_transaction`` does)
and reading are stellar-sdk's (``stellar_sdk.sep.stellar_web_authentication``);
signature weighting applies the rules of the SDK's ``verify_challenge_transaction_signers``
to the envelope ``read_challenge_transaction`` decoded once (``_client_signers``: the SDK
helper would decode and hash the XDR again). This module adds what the SDK leaves out or
gets wrong (sep-digest §1 items 7-8, §6):

- memo ``0`` is silently dropped by ``build_challenge_transaction``: we build the challenge
  with the SDK's builder ourselves (``build_challenge``) and keep it;
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

import base64
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass

from stellar_sdk import (
    Account,
    Keypair,
    MuxedAccount,
    Network,
    TimeBounds,
    TransactionBuilder,
    TransactionEnvelope,
)
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.exceptions import BadSignatureError
from stellar_sdk.operation import ManageData
from stellar_sdk.sep.ed25519_public_key_signer import Ed25519PublicKeySigner
from stellar_sdk.sep.exceptions import InvalidSep10ChallengeError
from stellar_sdk.sep.stellar_web_authentication import (
    ChallengeTransaction,
    read_challenge_transaction,
)
from xdrlib3 import Packer

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
    (and ``client_domain`` sourced by the wallet's key when requested).

    The transaction is what stellar-sdk 16's ``build_challenge_transaction`` builds, with
    the same builder calls, except: an ID memo of 0 is kept (the SDK tests ``if memo:`` and
    drops it, sep-digest §1.7), the tenant's cached signing keypair is used (no key
    derivation per challenge), and the transaction is converted to XDR once for both the
    signature and the envelope (the SDK converts and packs it twice: ~0.4 ms a challenge).
    """
    if request.account.startswith("M") and request.memo is not None:
        raise ValueError("memos are not valid for challenge transactions with a muxed account")
    server = tenant.secrets.signing_keypair
    now = int(time.time())
    builder = TransactionBuilder(Account(server.public_key, -1),
                                 tenant.config.network_passphrase, 100)
    builder.add_time_bounds(min_time=now,
                            max_time=now + tenant.config.sep10.challenge_timeout_seconds)
    builder.append_manage_data_op(data_name=f"{request.home_domain} auth",
                                  data_value=base64.b64encode(os.urandom(48)),
                                  source=request.account)
    builder.append_manage_data_op(data_name="web_auth_domain",
                                  data_value=tenant.web_auth_domain, source=server.public_key)
    if request.client_domain:
        if not request.client_signing_key:
            raise ValueError("client_signing_key is required if client_domain is provided")
        builder.append_manage_data_op(data_name="client_domain",
                                      data_value=request.client_domain,
                                      source=request.client_signing_key)
    if request.memo is not None:
        builder.add_id_memo(request.memo)
    return _signed_xdr(builder.build(), server)


def _signed_xdr(envelope: TransactionEnvelope, signer: Keypair) -> str:
    """``envelope.sign(signer); envelope.to_xdr()`` with one XDR conversion of the
    transaction (the signature base is network id + ENVELOPE_TYPE_TX + transaction, as in
    ``TransactionEnvelope.signature_base`` for a v1 transaction)."""
    if not envelope.transaction.v1 or envelope.signatures:
        raise ValueError("expected an unsigned v1 transaction")
    tx = envelope.transaction.to_xdr_object()
    if not isinstance(tx, stellar_xdr.Transaction):  # pragma: no cover - v1 checked above
        raise ValueError("expected a v1 transaction")
    packer = Packer()
    stellar_xdr.EnvelopeType.ENVELOPE_TYPE_TX.pack(packer)
    tx.pack(packer)
    base = Network(envelope.network_passphrase).network_id() + packer.get_buffer()
    signature = signer.sign_decorated(hashlib.sha256(base).digest())
    v1 = stellar_xdr.TransactionV1Envelope(tx, [signature.to_xdr_object()])
    out: str = stellar_xdr.TransactionEnvelope(
        type=stellar_xdr.EnvelopeType.ENVELOPE_TYPE_TX, v1=v1).to_xdr()
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
    envelope: TransactionEnvelope = challenge.transaction
    # The hash is computed once here (it re-packs the transaction) and serves both the
    # signature checks and the replay key.
    tx_hash = envelope.hash()
    _verify_signatures(envelope, tx_hash, server, account, record)
    memo: int | None = challenge.memo
    return VerifiedChallenge(
        tx_hash=tx_hash.hex(),
        sub=client if memo is None else f"{client}:{memo}",
        home_domain=challenge.matched_home_domain,
        client_domain=client_domain_of(envelope),
        expires_at=int(_time_bounds(envelope).max_time),
    )


def _verify_signatures(envelope: TransactionEnvelope, tx_hash: bytes, server: str,
                       account: str, record: AccountSigners | None) -> None:
    """Signatures per SEP-10: existing accounts by their signers and medium threshold,
    missing accounts by exactly their master key (plus the client_domain key, if any)."""
    try:
        if record is None:
            # verify_challenge_transaction_signed_by_client_master_key's rule: the master key
            # is the only client signer, and every other signature (except the server's and
            # the client_domain key's) is refused.
            _client_signers(envelope, tx_hash, server,
                            [Ed25519PublicKeySigner(account, 255)])
            return
        signers = [Ed25519PublicKeySigner(key, weight) for key, weight in record.signers
                   if weight > 0 and key != server]
        if not signers:
            raise BadRequest("invalid challenge: the account has no signer that can log in")
        threshold = max(record.med_threshold, 1)
        weight = sum(s.weight for s in _client_signers(envelope, tx_hash, server, signers))
        if weight < threshold:
            raise InvalidSep10ChallengeError(
                f"signers with weight {weight} do not meet threshold {threshold}.")
    except InvalidSep10ChallengeError as exc:
        raise BadRequest(f"invalid challenge: {exc}") from None


def _client_signers(envelope: TransactionEnvelope, tx_hash: bytes, server: str,
                    signers: list[Ed25519PublicKeySigner]) -> list[Ed25519PublicKeySigner]:
    """stellar-sdk 16's ``verify_challenge_transaction_signers`` rules, applied to the
    envelope ``read_challenge_transaction`` already decoded and checked (the SDK helper
    decodes the XDR twice more and re-hashes it, ~1.5 ms of a 9.5 ms login, BENCHMARKS.md).

    Every signature must be consumed by exactly one signer (server, client_domain key or a
    client signer), the server's and the client_domain key's must be present, and at least
    one client signer must have signed; returns the client signers found (deduplicated).
    """
    client_signers = [s for s in signers if s.account_id != server]
    domain_key = next((op.source.account_id for op in envelope.transaction.operations
                       if isinstance(op, ManageData) and op.data_name == "client_domain"
                       and op.source is not None), None)
    extra = [Ed25519PublicKeySigner(server)]
    if domain_key:
        extra.append(Ed25519PublicKeySigner(domain_key))
    matched = _signatures_of(envelope, tx_hash, [*client_signers, *extra])
    found: list[Ed25519PublicKeySigner] = []
    server_found = domain_key_found = False
    for signer in matched:
        if signer.account_id == server:
            server_found = True
        elif domain_key and signer.account_id == domain_key:
            domain_key_found = True
        elif all(f.account_id != signer.account_id for f in found):
            found.append(signer)
    if not server_found:
        raise InvalidSep10ChallengeError(f"Transaction not signed by server: {server}.")
    if domain_key and not domain_key_found:
        raise InvalidSep10ChallengeError(
            "Transaction not signed by the source account of the 'client_domain' "
            "ManageData operation")
    if not found:
        raise InvalidSep10ChallengeError("Transaction not signed by any client signer.")
    if len(matched) != len(envelope.signatures):
        raise InvalidSep10ChallengeError("Transaction has unrecognized signatures.")
    return found


def _signatures_of(envelope: TransactionEnvelope, tx_hash: bytes,
                   signers: list[Ed25519PublicKeySigner]) -> list[Ed25519PublicKeySigner]:
    """The signers with a valid signature over ``tx_hash``, each signature used at most once
    (so one signature cannot count for two signers), in ``signers`` order."""
    if not envelope.signatures:
        raise InvalidSep10ChallengeError("Transaction has no signatures.")
    found: list[Ed25519PublicKeySigner] = []
    used: set[int] = set()
    for signer in signers:
        keypair = Keypair.from_public_key(signer.account_id)
        hint = keypair.signature_hint()
        for index, decorated in enumerate(envelope.signatures):
            if index in used or decorated.signature_hint != hint:
                continue
            try:
                keypair.verify(tx_hash, decorated.signature)
            except BadSignatureError:
                continue
            used.add(index)
            found.append(signer)
            break
    return found


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
