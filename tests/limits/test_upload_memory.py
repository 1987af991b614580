"""``upload_bytes_in_flight``: the upload bytes one process holds, for every tenant together.

The budget and its line are checked directly (a hand-driven clock for the waits); over HTTP
the tests show that an upload waits unread while the process holds its bound, that the
other tenant's upload is let in before the holding tenant's next one, that a wait past half
the body timeout is answered 503 with ``Retry-After`` storing nothing, and that every way an
upload ends (answered, refused, cut mid-body, its client gone while a hook runs) gives its
bytes back, and only then.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conftest import MakeServer, RunningServer
from hooks.hooks_helpers import plugins_dir
from kyc_host.errors import ApiError, BadRequest
from kyc_host.ratelimit.budget import RETRY_AFTER_SECONDS, NoRoom, UploadBudget
from kyc_host.ratelimit.pacing import CHECK_SECONDS, MAX_WAITING, SMALL_BYTES
from limits.limits_helpers import silent_uploads_stay  # noqa: F401 (fixture)
from limits.test_upload_pacing import (
    Clock,
    by_tenant,
    eventually,
    paced_doc,
    photo_parts,
    raw_upload,
)
from sep12.sep12_helpers import Wallet, kyc_doc, multipart, png_of_size

KIB = 1024
MIB = 1024 * KIB

# Holders that send no body keep their place (see the fixture).
pytestmark = pytest.mark.usefixtures("silent_uploads_stay")


async def started(coro: Any) -> asyncio.Task[int]:
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    return task


async def test_uploads_are_held_while_they_fit_and_small_bodies_never() -> None:
    budget = UploadBudget(1000 * KIB)
    assert await budget.reserve("t1", 600 * KIB, 1.0) == 600 * KIB
    assert await budget.reserve("t2", 400 * KIB, 1.0) == 400 * KIB
    assert (budget.held, budget.held_by("t1"), budget.held_by("t2")) == (1000 * KIB, 600 * KIB,
                                                                         400 * KIB)
    # A JSON PUT or a form is bounded by its own small limit: it never waits here.
    assert await asyncio.wait_for(budget.reserve("t1", SMALL_BYTES, 1.0), 0.5) == 0
    budget.release("t1", 600 * KIB)
    budget.release("t2", 400 * KIB)
    assert (budget.held, budget.held_by("t1")) == (0, 0)
    unbounded = UploadBudget(0)
    assert await unbounded.reserve("t1", 10 ** 12, 1.0) == 0
    assert unbounded.held == 0


async def test_the_tenant_holding_least_goes_first_then_the_one_let_in_longest_ago() -> None:
    budget = UploadBudget(1000 * KIB)
    await budget.reserve("t1", 900 * KIB, 1.0)
    t1_next = [await started(budget.reserve("t1", 600 * KIB, 5.0)) for _ in range(2)]
    t2_only = await started(budget.reserve("t2", 600 * KIB, 5.0))
    assert (budget.waiting, budget.held) == (3, 900 * KIB)
    # t1's upload ends: room for one of them. Both tenants hold nothing now, and t2 was
    # never let in, so t2's upload goes before the two t1 uploads that came first.
    budget.release("t1", 900 * KIB)
    await asyncio.wait_for(t2_only, 0.5)
    await asyncio.sleep(0.05)
    assert not t1_next[0].done()
    assert (budget.held_by("t1"), budget.held_by("t2")) == (0, 600 * KIB)
    budget.release("t2", 600 * KIB)
    await asyncio.wait_for(t1_next[0], 0.5)
    assert not t1_next[1].done()
    budget.release("t1", 600 * KIB)
    await asyncio.wait_for(t1_next[1], 0.5)
    assert (budget.waiting, budget.held) == (0, 600 * KIB)


async def test_no_tenant_holds_more_than_half_so_another_finds_room_at_once() -> None:
    """t1's uploads trickle in (their bytes stay held): it gets half the bound, and t2's
    upload is let in at once, ahead of t1's waiting ones."""
    budget = UploadBudget(1000 * KIB)
    for _ in range(5):
        await budget.reserve("t1", 100 * KIB, 1.0)
    t1_more = await started(budget.reserve("t1", 100 * KIB, 30.0))
    assert (budget.held_by("t1"), budget.waiting) == (500 * KIB, 1)
    assert await asyncio.wait_for(budget.reserve("t2", 400 * KIB, 30.0), 0.5) == 400 * KIB
    assert not t1_more.done()  # room is left (100 KiB), but not in t1's share
    # One upload of a tenant holding nothing may be larger than the share.
    budget.release("t2", 400 * KIB)
    assert await asyncio.wait_for(budget.reserve("t3", 500 * KIB, 30.0), 0.5) == 500 * KIB
    budget.release("t1", 100 * KIB)
    await asyncio.wait_for(t1_more, 0.5)
    assert (budget.held_by("t1"), budget.held) == (500 * KIB, 1000 * KIB)


async def test_the_next_upload_is_not_passed_by_a_smaller_one_and_a_huge_one_runs_alone() -> None:
    budget = UploadBudget(1000 * KIB)
    await budget.reserve("t1", 600 * KIB, 1.0)
    huge = await started(budget.reserve("t2", 3000 * KIB, 5.0))  # larger than the bound
    small = await started(budget.reserve("t3", 300 * KIB, 5.0))  # would fit, but is behind
    assert not huge.done()
    assert not small.done()
    budget.release("t1", 600 * KIB)
    assert await asyncio.wait_for(huge, 0.5) == 3000 * KIB  # alone: nothing else held
    assert not small.done()
    budget.release("t2", 3000 * KIB)
    await asyncio.wait_for(small, 0.5)
    assert budget.held == 300 * KIB


async def test_no_room_in_time_is_a_503_holding_nothing_and_the_line_moves_on() -> None:
    clock = Clock()
    budget = UploadBudget(1000 * KIB, clock)
    await budget.reserve("t1", 900 * KIB, 1.0)
    big = await started(budget.reserve("t2", 800 * KIB, 2.0))
    behind = await started(budget.reserve("t3", 100 * KIB, 30.0))  # fits, but is behind big
    clock.now += 2.5
    with pytest.raises(NoRoom) as refused:
        await asyncio.wait_for(big, CHECK_SECONDS + 1.0)
    assert refused.value.headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}
    assert "upload_bytes_in_flight = 1024000 bytes" in refused.value.message
    # The one behind is let in as soon as the refused one left the head of the line.
    await asyncio.wait_for(behind, 0.5)
    assert (budget.waiting, budget.held_by("t2"), budget.held) == (0, 0, 1000 * KIB)


async def test_a_waiter_that_gives_up_or_is_cancelled_leaves_nothing_behind() -> None:
    budget = UploadBudget(1000 * KIB)
    await budget.reserve("t1", 900 * KIB, 1.0)
    reason: list[ApiError] = []
    leaving = await started(budget.reserve("t2", 500 * KIB, 30.0, lambda: next(iter(reason),
                                                                                None)))
    cancelled = await started(budget.reserve("t3", 500 * KIB, 30.0))
    reason.append(BadRequest("the client closed the connection while its upload waited"))
    with pytest.raises(BadRequest):
        await asyncio.wait_for(leaving, CHECK_SECONDS + 1.0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert (budget.waiting, budget.held) == (0, 900 * KIB)
    # Let in and cancelled in the same turn of the loop (its client left as room came): the
    # bytes it was given go back at once.
    granted_then_cancelled = await started(budget.reserve("t2", 500 * KIB, 30.0))
    budget.release("t1", 900 * KIB)
    assert budget.held == 500 * KIB
    granted_then_cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted_then_cancelled
    assert (budget.waiting, budget.held) == (0, 0)


async def test_a_tenant_with_its_line_full_is_refused_at_once_and_the_other_still_waits() -> None:
    budget = UploadBudget(100 * MIB)
    await budget.reserve("t1", 100 * MIB, 1.0)
    line = [await started(budget.reserve("t1", 100 * KIB, 30.0)) for _ in range(MAX_WAITING)]
    with pytest.raises(NoRoom):
        await asyncio.wait_for(budget.reserve("t1", 100 * KIB, 30.0), 0.5)
    other = await started(budget.reserve("t2", 100 * KIB, 30.0))
    assert budget.waiting == MAX_WAITING + 1
    budget.release("t1", 100 * MIB)
    await asyncio.wait_for(other, 0.5)  # t2 holds least: first, ahead of t1's whole line
    for task in line:
        await asyncio.wait_for(task, 0.5)
    assert budget.held_by("t1") == MAX_WAITING * 100 * KIB


# --- over HTTP -----------------------------------------------------------------------------


async def memory_server(make_server: MakeServer, **settings: Any) -> RunningServer:
    """t1 and t2 with a bandwidth share far above these tests' uploads, and 1 MiB of upload
    memory for the process."""
    return await make_server(paced_doc("t1", "a.test", 64 * MIB),
                             paced_doc("t2", "b.test", 64 * MIB),
                             upload_bytes_in_flight=1 * MIB, **settings)


async def in_flight(srv: RunningServer) -> float:
    reply = await srv.fetch("", "/metrics", admin=True)
    for line in reply.body.decode().splitlines():
        if line.startswith("kyc_upload_bytes_in_flight "):
            return float(line.split()[1])
    raise AssertionError("kyc_upload_bytes_in_flight not on /metrics")


async def test_the_other_tenants_upload_goes_before_the_holders_next_one(
        make_server: MakeServer) -> None:
    srv = await memory_server(make_server)
    budget = srv.services.upload_budget
    t1_token = Wallet(srv, "a.test", "t1").token
    holder = await raw_upload(srv, "a.test", t1_token, 900 * KIB)  # sends no body
    await eventually(lambda: budget.held_by("t1") == 900 * KIB, "t1's first upload held")
    assert await in_flight(srv) == 900 * KIB
    t1_next = await raw_upload(srv, "a.test", t1_token, 600 * KIB, expect=True)
    await eventually(lambda: budget.waiting_of("t1") == 1, "t1's next upload waiting")
    t2 = Wallet(srv, "b.test", "t2")
    body, content_type = multipart(photo_parts(png_of_size(600 * KIB)))
    t2_reader, t2_writer = await open_upload(srv, "b.test", t2.token, body, content_type)
    await eventually(lambda: budget.waiting_of("t2") == 1, "t2's upload waiting")
    holder[1].close()  # t1's first upload ends (cut mid-body): its bytes come back
    # t2 holds nothing and was never let in: its upload goes first, t1's next still waits.
    assert await asyncio.wait_for(t2_reader.readuntil(b"\r\n\r\n"), 5.0) == CONTINUE
    assert (budget.held_by("t2"), budget.held_by("t1"), budget.waiting_of("t1")) == (
        len(body), 0, 1)
    t2_writer.write(body)
    answer = await asyncio.wait_for(t2_reader.read(4096), 15.0)
    assert answer.startswith(b"HTTP/1.1 202"), answer
    assert "id" in (await t2.get()).json
    # Once t2's upload was answered, t1's next one is let in and told to send its body.
    assert await asyncio.wait_for(t1_next[0].readuntil(b"\r\n\r\n"), 5.0) == CONTINUE
    assert budget.held_by("t1") == 600 * KIB
    waits = await by_tenant(srv, "kyc_upload_memory_wait_seconds_total")
    assert waits["t1"] > 0
    assert waits["t2"] > 0
    t1_next[1].close()
    t2_writer.close()
    await eventually(lambda: budget.held == 0, "every upload's bytes given back")
    assert await in_flight(srv) == 0


CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"


async def open_upload(srv: RunningServer, host: str, token: str, body: bytes,
                      content_type: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT /kyc/customer of ``body`` with ``Expect: 100-continue``: its headers only."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
    writer.write((f"PUT /kyc/customer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                  f"{token}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
                  "\r\nExpect: 100-continue\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def test_one_tenants_trickling_uploads_cannot_keep_the_other_tenants_out(
        make_server: MakeServer) -> None:
    srv = await memory_server(make_server)
    budget = srv.services.upload_budget
    token = Wallet(srv, "a.test", "t1").token
    # t1's wallets declare uploads and send their bodies a byte now and then (they would
    # hold their bytes until the body timeout): t1 gets its half of the 1 MiB, no more.
    trickling = [await raw_upload(srv, "a.test", token, 200 * KIB, body=b"-")
                 for _ in range(4)]
    await eventually(lambda: budget.held_by("t1") == 400 * KIB
                     and budget.waiting_of("t1") == 2, "t1 at its share, two waiting")
    t2 = Wallet(srv, "b.test", "t2")
    reply = await asyncio.wait_for(t2.put_multipart(photo_parts(png_of_size(450 * KIB))), 10.0)
    assert reply.status == 202, reply.body
    assert (await t2.get()).json["id"] == reply.json["id"]
    assert (await by_tenant(srv, "kyc_upload_memory_wait_seconds_total")).get("t2", 0.0) == 0.0
    for _, writer in trickling:
        writer.close()
    await eventually(lambda: budget.held == 0 and budget.waiting == 0, "all given back")


async def test_an_upload_finding_no_room_in_time_gets_503_and_nothing_is_stored(
        make_server: MakeServer) -> None:
    srv = await memory_server(make_server, body_timeout_seconds=4.0)  # 2 s of waiting
    budget = srv.services.upload_budget
    holder = await raw_upload(srv, "a.test", Wallet(srv, "a.test", "t1").token, 900 * KIB)
    await eventually(lambda: budget.held_by("t1") == 900 * KIB, "t1's upload held")
    t2 = Wallet(srv, "b.test", "t2")
    refused = await t2.put_multipart(photo_parts(png_of_size(600 * KIB)))
    assert refused.status == 503, refused.body
    assert refused.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert "upload_bytes_in_flight" in refused.json["error"]
    assert "id" not in (await t2.get()).json  # nothing of it was stored
    assert (await by_tenant(srv, "kyc_upload_memory_refused_total")) == {"t2": 1.0}
    assert budget.held_by("t2") == 0
    holder[1].close()
    await eventually(lambda: budget.held == 0, "t1's bytes given back")
    again = await t2.put_multipart(photo_parts(png_of_size(600 * KIB)))
    assert again.status == 202, again.body


async def test_a_waiting_upload_whose_client_left_or_whose_server_stops_leaves_the_line(
        make_server: MakeServer) -> None:
    srv = await memory_server(make_server, body_timeout_seconds=60.0)  # 30 s of waiting
    budget = srv.services.upload_budget
    token = Wallet(srv, "a.test", "t1").token
    holder = await raw_upload(srv, "a.test", token, 900 * KIB)
    await eventually(lambda: budget.held_by("t1") == 900 * KIB, "t1's upload held")
    leaving = await raw_upload(srv, "b.test", Wallet(srv, "b.test", "t2").token, 600 * KIB)
    await eventually(lambda: budget.waiting_of("t2") == 1, "t2's upload waiting")
    leaving[1].close()
    await eventually(lambda: budget.waiting == 0, "the upload whose client left gone",
                     seconds=5.0)  # long before its 30 s
    reader, writer = await raw_upload(srv, "b.test", Wallet(srv, "b.test", "t2").token,
                                      600 * KIB, expect=True)
    await eventually(lambda: budget.waiting_of("t2") == 1, "another upload waiting")
    stop = asyncio.ensure_future(srv.server.stop(3.0))
    answer = await asyncio.wait_for(reader.read(4096), 10.0)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"Retry-After: 1" in answer  # the drain's answer, not a full line's
    assert b"100 (Continue)" not in answer
    assert budget.waiting == 0
    assert budget.held_by("t2") == 0
    assert srv.services.metrics.registry.get_sample_value(
        "kyc_upload_memory_refused_total", {"tenant": "t2"}) is None  # not a lack of room
    writer.close()
    holder[1].close()
    await asyncio.wait_for(stop, 15.0)
    assert budget.held == 0


async def test_refused_and_answered_uploads_give_their_bytes_back(
        make_server: MakeServer) -> None:
    srv = await memory_server(make_server)
    budget = srv.services.upload_budget
    wallet = Wallet(srv, "a.test", "t1")
    # Answered 202, answered 400 (a multipart body without its closing boundary), and a
    # file upload: each held its bytes while it ran and holds none once answered.
    ok = await wallet.put_multipart(photo_parts(png_of_size(300 * KIB)))
    assert ok.status == 202, ok.body
    broken = await wallet.call("PUT", "/kyc/customer", body=b"--b\r\n" + b"x" * 200 * KIB,
                               content_type="multipart/form-data; boundary=b")
    assert broken.status == 400, broken.body
    upload = await wallet.upload(png_of_size(300 * KIB))
    assert upload.status in (200, 201), upload.body
    assert budget.held == 0
    # Five uploads of 300 KiB at once, one tenant's: its half of 1 MiB holds one at a time;
    # every one is stored.
    wallets = [Wallet(srv, "b.test", "t2") for _ in range(5)]
    replies = await asyncio.gather(*(w.put_multipart(photo_parts(png_of_size(300 * KIB)))
                                     for w in wallets))
    assert [r.status for r in replies] == [202] * 5, [r.body for r in replies]
    assert budget.held == 0
    assert await in_flight(srv) == 0


async def test_bytes_stay_held_while_a_hook_works_on_a_body_whose_client_left(
        make_server: MakeServer, tmp_path: Path) -> None:
    doc = kyc_doc("t1", ["a.test"], plugin="hanging",
                  limits={"hook_timeout_seconds": 2.0, "upload_bytes_per_second": 64 * MIB})
    srv = await make_server(doc, paced_doc("t2", "b.test", 64 * MIB),
                            plugins_dir=plugins_dir(tmp_path), upload_bytes_in_flight=1 * MIB)
    budget = srv.services.upload_budget
    body, content_type = multipart(photo_parts(png_of_size(300 * KIB)))
    _, writer = await open_upload(srv, "a.test", Wallet(srv, "a.test", "t1").token, body,
                                  content_type)
    writer.write(body)
    await writer.drain()
    await eventually(lambda: budget.held_by("t1") == len(body), "the upload held")
    await asyncio.sleep(0.3)  # the whole body is read; the hook hangs
    writer.close()  # the client leaves while the body is still being worked on
    await asyncio.sleep(0.5)
    assert budget.held_by("t1") == len(body)  # still in memory: still counted
    await eventually(lambda: budget.held == 0, "given back once the hook timed out",
                     seconds=10.0)
