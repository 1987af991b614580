"""Refusals decided from a process's own count, without the store (ratelimit/limiter.py).

A server counts the events it stored itself that are still in the window; when they alone
reach the limit it refuses without a store round trip (a flood costs no store writes). The
store stays the authority for everything else, so two servers sharing it still admit exactly
``count`` per window between them, and a refusal leaves no event behind.

How the tests see that the store was not asked: they remove the tenant's rate events from
the store (which never happens while the events are inside their window: the sweep deletes
only expired ones). A server that still refuses then decided from its own count; a second
server with no count of its own asks the store and is admitted.
"""

from __future__ import annotations

import asyncio

from stellar_sdk import Keypair

from conftest import MakeServer, RunningServer
from kyc_host.ratelimit.limiter import event_key
from limits.limits_helpers import (
    assert_limited,
    get_auth,
    limited_doc,
    limited_server,
    refused_count,
)


async def stored_events(srv: RunningServer, tenant_id: str, limit: str, subject: str) -> int:
    """Rate events of ``subject`` under ``limit`` in the store (any server's)."""
    tenant = srv.services.registry.get(tenant_id)
    assert tenant is not None
    key = event_key(tenant.secrets.index_key, limit, subject)
    return await srv.services.store.tenant(tenant_id, "rate_events").count({"key": key})


async def two_servers(make_server: MakeServer, **limits: str) -> tuple[RunningServer,
                                                                     RunningServer]:
    """Two servers (separate process state) on one store; T1 limited, T2 with the same."""
    first = await limited_server(make_server, limited_doc("t1", "a.test", **limits),
                                 limited_doc("t2", "b.test", **limits))
    second = await limited_server(make_server)
    await second.services.registry.refresh()
    return first, second


async def test_refusal_from_the_local_count_needs_no_store(make_server: MakeServer) -> None:
    first, second = await two_servers(make_server, auth_per_account="3/6s")
    alice = Keypair.random().public_key
    for _ in range(3):
        assert (await get_auth(first, "a.test", alice)).code == 200
    assert await stored_events(first, "t1", "auth_per_account", alice) == 3
    await first.services.store.tenant("t1", "rate_events").delete_many({})
    # Later in the window (a token bucket refilled at 3 per 6 s would have let one request
    # through to the store by now), the store holds none of alice's events: asking it would
    # admit. ``first`` refuses from its own three, with a Retry-After within the window,
    # and stores nothing.
    await asyncio.sleep(2.5)
    refused = await get_auth(first, "a.test", alice)
    assert_limited(refused, "auth_per_account")
    assert 1 <= int(refused.headers["Retry-After"]) <= 6
    assert refused_count(first, "t1", "auth_per_account") == 1
    assert await stored_events(first, "t1", "auth_per_account", alice) == 0
    # ``second`` has no count of its own: the store decides (0 + 1 <= 3).
    assert (await get_auth(second, "a.test", alice)).code == 200
    assert await stored_events(first, "t1", "auth_per_account", alice) == 1
    # Another account on the same server, and the same account on the other tenant, have
    # counts of their own.
    assert (await get_auth(first, "a.test", Keypair.random().public_key)).code == 200
    assert (await get_auth(first, "b.test", alice)).code == 200


async def test_two_servers_share_one_count_and_refusals_leave_no_events(
        make_server: MakeServer) -> None:
    first, second = await two_servers(make_server, auth_per_account="4/min")
    alice = Keypair.random().public_key
    for srv in (first, first, second, second):  # 2 each: neither alone reaches 4
        assert (await get_auth(srv, "a.test", alice)).code == 200
    # Each server's own count is 2 < 4, so these go to the store, which holds 4.
    for srv in (first, second, first, second):
        assert_limited(await get_auth(srv, "a.test", alice), "auth_per_account")
    assert await stored_events(first, "t1", "auth_per_account", alice) == 4
    assert refused_count(first, "t1", "auth_per_account") == 2
    assert refused_count(second, "t1", "auth_per_account") == 2
    # The other tenant's count of the same account is separate.
    assert (await get_auth(second, "b.test", alice)).code == 200
    assert await stored_events(first, "t2", "auth_per_account", alice) == 1


async def test_concurrent_requests_on_two_servers_admit_exactly_the_limit(
        make_server: MakeServer) -> None:
    first, second = await two_servers(make_server, auth_per_account="5/min")
    alice = Keypair.random().public_key
    # Alternating servers, all at once: racing requests may both be refused (stricter for a
    # moment), never both admitted past the limit.
    answers = await asyncio.gather(*(get_auth((first, second)[n % 2], "a.test", alice)
                                     for n in range(12)))
    admitted = sum(1 for a in answers if a.code == 200)
    assert {a.code for a in answers} <= {200, 429}
    assert admitted <= 5
    assert await stored_events(first, "t1", "auth_per_account", alice) == admitted
    # Sequentially, the window fills up to exactly 5 and no further.
    for n in range(5 - admitted):
        assert (await get_auth((first, second)[n % 2], "a.test", alice)).code == 200
    for srv in (first, second):
        assert_limited(await get_auth(srv, "a.test", alice), "auth_per_account")
    assert await stored_events(first, "t1", "auth_per_account", alice) == 5


async def test_the_local_count_forgets_events_that_left_the_window(
        make_server: MakeServer) -> None:
    first, _ = await two_servers(make_server, auth_per_account="2/1s")
    alice = Keypair.random().public_key
    for _ in range(2):
        assert (await get_auth(first, "a.test", alice)).code == 200
    assert_limited(await get_auth(first, "a.test", alice), "auth_per_account")
    await asyncio.sleep(1.3)  # the window is 1 s: both events have left it
    assert (await get_auth(first, "a.test", alice)).code == 200


async def test_a_process_drops_the_counts_that_hold_nothing_any_more(
        make_server: MakeServer) -> None:
    first, _ = await two_servers(make_server, auth_per_account="2/1s")
    limiter = first.services.limiter
    assert (await get_auth(first, "a.test", Keypair.random().public_key)).code == 200
    held = len(limiter)  # the address's counts and this account's
    for _ in range(5):
        assert (await get_auth(first, "a.test", Keypair.random().public_key)).code == 200
    assert len(limiter) == held + 5  # one count per new account
    await asyncio.sleep(1.3)  # the accounts' 1 s windows are empty now
    assert (await get_auth(first, "a.test", Keypair.random().public_key)).code == 200
    # The six accounts' counts are gone (the address's, 60 s windows, stay); the new
    # account has its own.
    assert len(limiter) == held
