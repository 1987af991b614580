"""The pure parts: retry schedule, Retry-After, signatures, and the tenant sections."""

from __future__ import annotations

import base64
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from stellar_sdk import Keypair

from conftest import make_tenant_doc
from kyc_host.callbacks.retry import Backoff, plan, retry_after
from kyc_host.callbacks.signing import (
    MAX_SKEW_SECONDS,
    sep12_signature,
    url_host,
    verify_sep12,
    verify_webhook,
    webhook_signature,
)
from kyc_host.errors import ConfigError
from kyc_host.tenancy.schema import parse_tenant

HOUR = 3600.0


def schedule(horizon_hours: float, attempts: int, base: float = 30.0,
             seed: int = 1) -> list[float]:
    """When each attempt happens (seconds after the first), as the worker plans them."""
    cap, planned = plan(horizon_hours * HOUR, attempts, base)
    assert planned >= attempts
    rng = random.Random(seed)
    times, now = [0.0], 0.0
    for attempt in range(1, planned):
        now += Backoff(base, cap).delay(attempt, rng)
        if now > horizon_hours * HOUR:
            break
        times.append(now)
    return times


@pytest.mark.parametrize(("hours", "attempts"), [(24, 8), (72, 20), (72, 8), (720, 200)])
def test_schedule_spans_the_horizon_with_at_least_8_attempts(hours: float,
                                                             attempts: int) -> None:
    times = schedule(hours, attempts)
    assert len(times) >= 8
    # Attempts keep coming until close to the horizon (jitter only lengthens waits).
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] + max(gaps) >= hours * HOUR * 0.9
    assert gaps[0] < 60  # the first retry is quick; a brief outage costs little
    assert max(gaps) <= plan(hours * HOUR, attempts, 30)[0] * 1.25


def test_default_plan() -> None:
    cap, attempts = plan(72 * HOUR, 20, 30.0)
    assert attempts == 20
    assert 6 * HOUR < cap < 8 * HOUR
    assert plan(24 * HOUR, 8, 30.0)[1] >= 12  # raised: doubling from 30 s needs 12 waits


def test_backoff_is_exponential_with_bounded_jitter() -> None:
    backoff = Backoff(1.0, 100.0)
    rng = random.Random(7)
    delays = [backoff.delay(n, rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        plain = min(2.0 ** (n - 1), 100.0)
        assert plain <= delay <= plain * 1.25
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after({"Retry-After": "120"}, 0.0) == 120.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
                       1445412480.0 - 60) == 60.0
    assert retry_after({"Retry-After": "999999999"}, 0.0) == 6 * HOUR  # capped
    assert retry_after({"Retry-After": "soon"}, 0.0) is None
    assert retry_after({}, 0.0) is None


def test_sep12_signature_matches_the_spec_formula() -> None:
    keypair = Keypair.random()
    body = b'{"id":"x","status":"ACCEPTED"}'
    url = "https://wallet.example:8443/cb?x=1"
    header = sep12_signature(keypair, url, body, 1_700_000_000)
    t, s = (part.split("=", 1)[1] for part in header.split(", "))
    assert t == "1700000000"
    payload = b"1700000000.wallet.example:8443." + body
    keypair.verify(payload, base64.b64decode(s))  # raw Ed25519 over "<t>.<host>.<body>"
    assert url_host("https://wallet.example/cb") == "wallet.example"
    assert url_host("http://[::1]:80/cb") == "[::1]:80"
    now = 1_700_000_010.0
    assert verify_sep12(header, url, body, keypair.public_key, now=now)
    assert not verify_sep12(header, url, body, Keypair.random().public_key, now=now)
    assert not verify_sep12(header, "https://wallet.example/cb", body, keypair.public_key,
                            now=now)
    assert not verify_sep12(header, url, body + b" ", keypair.public_key, now=now)
    assert not verify_sep12(header, url, body, keypair.public_key, now=now + 600)  # stale
    assert not verify_sep12("t=x, s=y", url, body, keypair.public_key, now=now)


def test_webhook_signature_carries_one_v1_per_secret() -> None:
    header = webhook_signature([b"new-secret", b"old-secret"], b"{}", 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert header.count("v1=") == 2
    for secret in (b"new-secret", b"old-secret"):
        assert verify_webhook(header, b"{}", secret, now=1_700_000_000)
    assert not verify_webhook(header, b"{}", b"other", now=1_700_000_000)
    assert not verify_webhook(header, b"{}", b"new-secret", now=1_700_001_000)


SKEW_URL = "https://wallet.example/cb"
SKEW_BODY = b'{"id":"x","status":"PROCESSING"}'
SKEW_KEY = Keypair.random()
SKEW_SECRET = b"skew-test-secret-0123456789abcdef"


def _sep12_check(t: int, now: float | None, max_skew: float) -> bool:
    header = sep12_signature(SKEW_KEY, SKEW_URL, SKEW_BODY, t)
    return verify_sep12(header, SKEW_URL, SKEW_BODY, SKEW_KEY.public_key, now=now,
                        max_skew=max_skew)


def _webhook_check(t: int, now: float | None, max_skew: float) -> bool:
    header = webhook_signature([SKEW_SECRET], SKEW_BODY, t)
    return verify_webhook(header, SKEW_BODY, SKEW_SECRET, now=now, max_skew=max_skew)


VERIFIERS = pytest.mark.parametrize("check", [_sep12_check, _webhook_check],
                                    ids=["sep12", "webhook"])
Check = Callable[[int, float | None, float], bool]


@VERIFIERS
@pytest.mark.parametrize(("offset", "accepted"), [
    (0, True),
    (-MAX_SKEW_SECONDS, True),  # exactly at the bound, either side, still fresh
    (MAX_SKEW_SECONDS, True),
    (-(MAX_SKEW_SECONDS + 1), False),  # stale: a captured request replayed later
    (MAX_SKEW_SECONDS + 1, False),  # from the future: a sender clock ahead, or a forged t
    (-24 * 3600, False),
    (24 * 3600, False),
])
def test_verifier_refuses_t_outside_the_skew_either_way(check: Check, offset: int,
                                                         accepted: bool) -> None:
    """A correctly signed header is accepted only while |now - t| <= MAX_SKEW_SECONDS (the
    SEP-12 "1-2 minutes" receivers are told to allow); ``offset`` is t - now."""
    now = 1_700_000_000
    assert check(now + offset, float(now), MAX_SKEW_SECONDS) is accepted


@VERIFIERS
def test_verifier_skew_is_the_receivers_choice_and_uses_its_clock(check: Check) -> None:
    """A receiver may tighten the bound (the reliability plan's 5 s); without ``now`` the
    receiver's own clock is used."""
    now = 1_700_000_000
    assert check(now - 5, float(now), 5)
    assert check(now + 5, float(now), 5)
    assert not check(now - 6, float(now), 5)
    assert not check(now + 6, float(now), 5)
    wall = int(time.time())
    assert check(wall, None, MAX_SKEW_SECONDS)
    assert not check(wall - 3600, None, MAX_SKEW_SECONDS)
    assert not check(wall + 3600, None, MAX_SKEW_SECONDS)


def tenant(**sections: Any) -> dict[str, Any]:
    return make_tenant_doc("t1", ["a.test"], **sections)


def test_callback_and_webhook_sections_parse() -> None:
    config = parse_tenant(tenant(
        callbacks={"notify_on_field_change": True, "retry_horizon_hours": 24,
                   "max_attempts": 8,
                   "default_url": [{"client_domain": "Wallet.Example",
                                    "url": "https://wallet.example/cb"}]},
        webhooks=[{"url": "https://anchor.example/hooks", "events": ["customer.deleted"],
                   "secret_env": "HOOK_SECRET", "previous_secret_env": "HOOK_SECRET_OLD"}]),
        "test")
    assert config.callbacks.notify_on_field_change
    assert config.callbacks.default_url == {"wallet.example": "https://wallet.example/cb"}
    assert config.callbacks.horizon_seconds == 24 * HOUR
    assert config.webhooks[0].events == frozenset({"customer.deleted"})
    defaults = parse_tenant(tenant(), "test")
    assert defaults.callbacks.retry_horizon_hours == 72
    assert defaults.webhooks == ()


@pytest.mark.parametrize(("sections", "key"), [
    ({"callbacks": {"retry_horizon_hours": 12}}, "callbacks.retry_horizon_hours"),
    ({"callbacks": {"max_attempts": 3}}, "callbacks.max_attempts"),
    ({"callbacks": {"typo": 1}}, "callbacks.typo"),
    ({"callbacks": {"default_url": [{"client_domain": "w.example", "url": "ftp://x"}]}},
     "callbacks.default_url[0].url"),
    ({"webhooks": [{"url": "https://a.example", "events": ["customer.exploded"],
                    "secret_env": "S"}]}, "webhooks[0].events"),
    ({"webhooks": [{"url": "https://u:p@a.example", "events": [], "secret_env": "S"}]},
     "webhooks[0].url"),
    ({"webhooks": [{"url": "https://a.example", "events": ["customer.deleted"],
                    "secret": "inline-secrets-are-not-allowed"}]}, "webhooks[0].secret_env"),
])
def test_bad_sections_are_refused_naming_the_key(sections: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tenant(tenant(**sections), "test")
    assert key in str(caught.value)
