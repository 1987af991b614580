"""``limits.upload_bytes_per_second``: one tenant's uploads are metered per process.

The bucket and its waiting line are checked with a hand-driven clock (no timing in tests);
over HTTP the tests show that a paced upload is held back and still stored whole, that the
other tenant's uploads are not held back at all, that uploads beyond the tenant's share wait
for their turn and are then stored, and that uploads whose turn cannot come within half the
body timeout are refused with a 429 naming the limit, leaving nothing stored.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MakeServer, RunningServer
from kyc_host.errors import ApiError, LimitExceeded, ServiceUnavailable
from kyc_host.ratelimit.pacing import (
    CHECK_SECONDS,
    MAX_WAITING,
    PRUNE_SECONDS,
    BytePacer,
    UploadPacers,
)
from limits.limits_helpers import silent_uploads_stay  # noqa: F401 (fixture)
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc, png_of_size

KIB = 1024

# Holders that send no body keep their place (see the fixture).
pytestmark = pytest.mark.usefixtures("silent_uploads_stay")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_holds_one_second_and_concurrent_uploads_share_it() -> None:
    clock = Clock()
    pacer = BytePacer(100 * KIB, clock)
    assert pacer.take(100 * KIB) == 0.0  # a full second's worth at once
    assert pacer.take(50 * KIB) == pytest.approx(0.5)  # then it has to wait
    # A second upload of the same tenant waits behind the first one's debt.
    assert pacer.take(50 * KIB) == pytest.approx(1.0)
    clock.now += 1.0
    assert pacer.take(0) == 0.0  # the debt is paid after waiting
    clock.now += 60.0
    assert pacer.take(100 * KIB) == 0.0  # idle time refills at most one second


async def test_a_process_forgets_only_the_buckets_no_upload_needs() -> None:
    """Buckets of tenants with no upload going on are dropped every PRUNE_SECONDS (an
    offboarded tenant's too); a bucket in debt, with bytes admitted or uploads waiting is
    kept, since a new one would give its tenant a fresh second's worth or lose its line (the
    "waiting" bucket is full again by the prune and has nothing admitted: only its line
    keeps it)."""
    clock = Clock()
    pacers = UploadPacers(clock)
    idle, in_debt = pacers.pacer("idle", 100 * KIB), pacers.pacer("in-debt", 100 * KIB)
    admitted, waiting = pacers.pacer("admitted", 100 * KIB), pacers.pacer("waiting", 100 * KIB)
    idle.take(100 * KIB)  # a whole second's worth, refilled long before the prune
    await admitted.admit(150 * KIB, max_wait=3.0)
    waiting.take(400 * KIB)  # bytes that arrived, nothing admitted: 3 s in debt ...
    in_line = asyncio.create_task(waiting.admit(300 * KIB, max_wait=3.0))
    await asyncio.sleep(0)
    assert (waiting.waiting, waiting.queued) == (1, 0)  # ... so this one waits its turn
    clock.now += PRUNE_SECONDS
    assert in_debt.take(200 * KIB) == pytest.approx(1.0)  # full again 2 s after the prune
    assert pacers.pacer("other", 100 * KIB) is not idle  # the call that prunes
    assert {name: pacers.get(name) for name in ("idle", "in-debt", "admitted", "waiting")} == {
        "idle": None, "in-debt": in_debt, "admitted": admitted, "waiting": waiting}
    fresh = pacers.pacer("idle", 100 * KIB)
    assert fresh is not idle
    assert fresh.take(100 * KIB) == 0.0  # a new bucket, full
    assert len(pacers) == 5
    in_line.cancel()
    with pytest.raises(asyncio.CancelledError):
        await in_line
    admitted.release(150 * KIB)
    clock.now += PRUNE_SECONDS
    pacers.pacer("idle", 100 * KIB)
    assert len(pacers) == 1  # only the bucket just asked for; the others refilled, let go


async def test_admission_at_once_while_it_fits_then_first_come_first_served() -> None:
    clock = Clock()
    pacer = BytePacer(100 * KIB, clock)
    await pacer.admit(300 * KIB, max_wait=3.0)  # 1 s in the bucket + 2 s of refill: fits
    assert pacer.queued == 300 * KIB
    # Two more would end 5 s out: they wait, in order, and nothing of theirs is queued.
    second = asyncio.create_task(pacer.admit(300 * KIB, max_wait=3.0))
    third = asyncio.create_task(pacer.admit(200 * KIB, max_wait=3.0))
    await asyncio.sleep(0.05)
    assert (pacer.waiting, pacer.queued) == (2, 300 * KIB)
    assert not second.done()
    assert not third.done()
    # A small body (a JSON PUT) does not wait behind them.
    await asyncio.wait_for(pacer.admit(2 * KIB, max_wait=3.0), 1.0)
    pacer.release(2 * KIB)
    # The first upload's bytes arrive: the head of the line fits now, the one behind not yet.
    pacer.release(200 * KIB)
    await asyncio.wait_for(second, 1.0)
    assert (pacer.waiting, pacer.queued) == (1, 400 * KIB)
    pacer.release(400 * KIB)
    await asyncio.wait_for(third, 1.0)
    assert (pacer.waiting, pacer.queued) == (0, 200 * KIB)


async def test_admission_waits_at_most_max_wait_and_refuses_queuing_nothing() -> None:
    clock = Clock()
    pacer = BytePacer(100 * KIB, clock)
    await pacer.admit(300 * KIB, max_wait=3.0)
    waiter = asyncio.create_task(pacer.admit(100 * KIB, max_wait=1.0))  # alone it would fit
    await asyncio.sleep(0.05)
    assert pacer.waiting == 1
    clock.now += 1.5  # past its second of waiting, and nothing arrived
    pacer.release(0)  # (the queue moving wakes it to look again)
    with pytest.raises(LimitExceeded) as refused:
        await asyncio.wait_for(waiter, 1.0)
    assert refused.value.limit == "upload_bytes_per_second"
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert (pacer.waiting, pacer.queued) == (0, 300 * KIB)


async def test_the_line_is_bounded_and_a_client_that_leaves_frees_its_place() -> None:
    pacer = BytePacer(100 * KIB, Clock())
    await pacer.admit(300 * KIB, max_wait=3.0)
    line = [asyncio.create_task(pacer.admit(300 * KIB, max_wait=3.0))
            for _ in range(MAX_WAITING)]
    await asyncio.sleep(0.05)
    assert pacer.waiting == MAX_WAITING
    with pytest.raises(LimitExceeded):  # refused at once, not after its 3 s
        await asyncio.wait_for(pacer.admit(300 * KIB, max_wait=3.0), 1.0)
    line[0].cancel()  # the first waiter's client went away
    await asyncio.gather(line[0], return_exceptions=True)
    assert pacer.waiting == MAX_WAITING - 1
    pacer.release(300 * KIB)  # the next one in line is admitted
    await asyncio.wait_for(line[1], 1.0)
    assert pacer.queued == 300 * KIB
    for task in line[2:]:
        task.cancel()
    await asyncio.gather(*line[2:], return_exceptions=True)
    assert (pacer.waiting, pacer.queued) == (0, 300 * KIB)


async def test_a_waiting_upload_stops_when_told_to_give_up() -> None:
    pacer = BytePacer(100 * KIB)
    await pacer.admit(300 * KIB, max_wait=3.0)
    reason: list[ApiError] = []
    waiter = asyncio.create_task(pacer.admit(200 * KIB, max_wait=3.0,
                                             give_up=lambda: reason[0] if reason else None))
    await asyncio.sleep(0.05)
    assert pacer.waiting == 1
    reason.append(ServiceUnavailable("draining", retry_after=1))
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(waiter, CHECK_SECONDS + 1.0)  # well before its 3 s
    assert (pacer.waiting, pacer.queued) == (0, 300 * KIB)


async def test_an_upload_that_could_never_arrive_in_time_is_refused_at_once() -> None:
    pacer = BytePacer(100 * KIB, Clock())
    with pytest.raises(LimitExceeded) as refused:
        await asyncio.wait_for(pacer.admit(301 * KIB, max_wait=3.0), 1.0)
    assert "cannot arrive" in refused.value.message
    assert "Retry-After" not in refused.value.headers  # retrying would not help
    assert (pacer.waiting, pacer.queued) == (0, 0)


async def by_tenant(srv: RunningServer, sample_name: str) -> dict[str, float]:
    """A per-tenant counter of the admin /metrics, by tenant id."""
    reply = await srv.fetch("", "/metrics", admin=True)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == sample_name:
                out[sample.labels["tenant"]] = sample.value
    return out


async def paced_seconds(srv: RunningServer) -> dict[str, float]:
    return await by_tenant(srv, "kyc_upload_paced_seconds_total")


async def admission_waits(srv: RunningServer) -> dict[str, float]:
    return await by_tenant(srv, "kyc_upload_admission_wait_seconds_total")


async def t1_takes_uploads_again_and_t2_was_never_held(srv: RunningServer,
                                                        t1: Wallet) -> None:
    """Once t1's queue has drained it is admitted again; t2's share was never touched."""
    again = await t1.put_multipart(photo_parts(png_of_size(8 * KIB)))
    assert again.status == 202, again.body
    other = await Wallet(srv, "b.test", "t2").put_multipart(photo_parts(png_of_size(8 * KIB)))
    assert other.status == 202, other.body
    assert (await paced_seconds(srv)).get("t2", 0.0) == 0.0
    assert (await admission_waits(srv)).get("t2", 0.0) == 0.0


def paced_doc(tenant_id: str, host: str, rate: int) -> dict[str, Any]:
    return kyc_doc(tenant_id, [host], limits={"upload_bytes_per_second": rate})


def photo_parts(photo: bytes) -> list[tuple[str, str | bytes, str | None]]:
    return [*((k, v, None) for k, v in ALICE.items()), ("photo_id_front", photo, "id.png")]


async def test_paced_upload_is_stored_whole_and_the_other_tenant_is_not_held(
        make_server: MakeServer) -> None:
    srv = await make_server(paced_doc("t1", "a.test", 64 * KIB),
                            paced_doc("t2", "b.test", 4096 * KIB))
    one, two = Wallet(srv, "a.test", "t1"), Wallet(srv, "b.test", "t2")
    photo = png_of_size(200 * KIB)  # three seconds' worth for t1, a fraction of one for t2
    first, second = await asyncio.gather(one.put_multipart(photo_parts(photo)),
                                         two.put_multipart(photo_parts(photo)))
    assert (first.status, second.status) == (202, 202), (first.body, second.body)
    paced = await paced_seconds(srv)
    assert paced.get("t1", 0.0) > 0.0
    assert paced.get("t2", 0.0) == 0.0
    for wallet, reply in ((one, first), (two, second)):
        got = await wallet.get()
        assert got.json["id"] == reply.json["id"]
        assert "photo_id_front" in got.json["provided_fields"]


async def concurrent_uploads(make_server: MakeServer, body_timeout: float, count: int,
                             size: int) -> tuple[RunningServer, list[Wallet], list[Any]]:
    """t1 and t2 at 64 KiB/s each; ``count`` t1 wallets upload a ``size`` photo at once."""
    srv = await make_server(paced_doc("t1", "a.test", 64 * KIB),
                            paced_doc("t2", "b.test", 64 * KIB),
                            body_timeout_seconds=body_timeout)
    wallets = [Wallet(srv, "a.test", "t1") for _ in range(count)]
    photo = png_of_size(size)
    replies = await asyncio.gather(*(w.put_multipart(photo_parts(photo)) for w in wallets))
    return srv, wallets, list(replies)


@pytest.mark.slow
async def test_uploads_beyond_the_share_wait_their_turn_and_are_stored(
        make_server: MakeServer) -> None:
    # 10 s body timeout: t1 may queue 5 s of its 64 KiB/s (plus what its bucket holds), so of
    # five concurrent 100 KiB uploads three start at once and two wait for room (until the
    # first bytes have arrived: about a second at most), well within their 5 s.
    srv, wallets, replies = await concurrent_uploads(make_server, 10.0, 5, 100 * KIB)
    assert [r.status for r in replies] == [202] * 5, [r.body for r in replies]
    for wallet, reply in zip(wallets, replies, strict=True):
        assert (await wallet.get()).json["id"] == reply.json["id"]
    assert (await admission_waits(srv)).get("t1", 0.0) > 0.0
    await t1_takes_uploads_again_and_t2_was_never_held(srv, wallets[0])


async def test_uploads_whose_turn_cannot_come_in_time_are_refused_before_reading(
        make_server: MakeServer) -> None:
    # 6 s body timeout: t1 may queue 3 s of its 64 KiB/s. Of four concurrent 180 KiB uploads
    # the first starts at once, the second once about 1.6 s of the first have arrived; the
    # third could start only about 4.4 s from now and the fourth later still: past their 3 s
    # of waiting, so both are refused, with their bodies never read.
    srv, wallets, replies = await concurrent_uploads(make_server, 6.0, 4, 180 * KIB)
    statuses = sorted(r.status for r in replies)
    assert statuses == [202, 202, 429, 429], statuses
    for wallet, reply in zip(wallets, replies, strict=True):
        got = (await wallet.get()).json
        if reply.status == 429:
            assert "upload_bytes_per_second" in reply.json["error"]
            assert int(reply.headers["Retry-After"]) >= 1
            assert "id" not in got  # nothing of a refused upload is stored
        else:
            assert got["id"] == reply.json["id"]
    await t1_takes_uploads_again_and_t2_was_never_held(srv, wallets[0])


async def raw_upload(srv: RunningServer, host: str, token: str, length: int, *,
                     expect: bool = False, body: bytes = b"") -> tuple[asyncio.StreamReader,
                                                                        asyncio.StreamWriter]:
    """A multipart PUT /kyc/customer declaring ``length`` bytes: headers and ``body`` sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
    head = (f"PUT /kyc/customer HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "")
            + "\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    return reader, writer


async def eventually(check: Any, what: str, seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds:g} s: {what}")


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def held_line(make_server: MakeServer) -> tuple[RunningServer, str, Stream, BytePacer]:
    """64 KiB/s, 20 s body timeout: t1 may queue 10 s. One admitted 600 KiB upload (the
    returned stream) that never sends its body keeps the line waiting: a 400 KiB upload could
    start only after it."""
    srv = await make_server(paced_doc("t1", "a.test", 64 * KIB),
                            paced_doc("t2", "b.test", 64 * KIB), body_timeout_seconds=20.0)
    token = Wallet(srv, "a.test", "t1").token
    holder = await raw_upload(srv, "a.test", token, 600 * KIB)
    await eventually(lambda: (p := srv.services.upload_pacers.get("t1")) is not None
                     and p.queued == 600 * KIB, "the first upload admitted")
    pacer = srv.services.upload_pacers.get("t1")
    assert pacer is not None
    return srv, token, holder, pacer


@pytest.mark.slow
async def test_a_client_that_leaves_while_waiting_loses_its_place(
        make_server: MakeServer) -> None:
    srv, token, holder, pacer = await held_line(make_server)
    # Three waiters: one sent headers only, one part of its body, one is reset (RST).
    waiters = [await raw_upload(srv, "a.test", token, 400 * KIB),
               await raw_upload(srv, "a.test", token, 400 * KIB, body=b"x" * 50 * KIB),
               await raw_upload(srv, "a.test", token, 400 * KIB, expect=True)]
    await eventually(lambda: pacer.waiting == 3, "three uploads waiting")
    waiters[0][1].close()
    waiters[1][1].close()
    sock = waiters[2][1].get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    waiters[2][1].close()  # SO_LINGER 0: the close sends a reset
    # Their places are freed long before their 10 s of waiting would end.
    await eventually(lambda: pacer.waiting == 0, "the waiters that left gone from the line",
                     seconds=5.0)
    assert pacer.queued == 600 * KIB  # nothing of theirs was queued
    holder[1].close()
    await eventually(lambda: pacer.queued == 0, "the holder's share released")
    # t1 takes uploads again at once.
    again = await Wallet(srv, "a.test", "t1").put_multipart(photo_parts(png_of_size(8 * KIB)))
    assert again.status == 202, again.body


async def test_an_upload_waiting_when_the_server_stops_is_answered_503(
        make_server: MakeServer) -> None:
    srv, token, holder, pacer = await held_line(make_server)
    reader, writer = await raw_upload(srv, "a.test", token, 400 * KIB, expect=True)
    await eventually(lambda: pacer.waiting == 1, "an upload waiting")
    stop = asyncio.ensure_future(srv.server.stop(3.0))
    # It is answered (not cut, not kept until its 10 s of waiting end), 503 with Retry-After,
    # and never told to continue.
    answer = await asyncio.wait_for(reader.read(4096), 10.0)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 503"), answer
    assert b"Retry-After: 1" in rest
    assert b"100 (Continue)" not in answer
    writer.close()
    holder[1].close()
    await asyncio.wait_for(stop, 15.0)
