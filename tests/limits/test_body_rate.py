"""Uploads whose bodies cannot arrive in time are cut early (ratelimit/bodyrate.py).

From a sixth of ``body_timeout_seconds`` after an upload was admitted, the rest of its body
must be able to arrive before the body timer at twice the rate its client kept so far; time
the server itself paused the reading (its tenant's bandwidth pacing) does not count against
the client. The rule and the watch are checked on a real event loop; over HTTP, a trickled
upload is answered 408 long before the body timer with nothing stored and its memory given
back, while another customer's and another tenant's uploads at the same time are stored,
and a slow upload that can still make it is stored too.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import MakeServer, RunningServer
from faults.raw_http import BROKEN, read_response
from kyc_host.errors import RequestTimeout
from kyc_host.ratelimit.bodyrate import BodyRate, cannot_arrive
from limits.test_upload_pacing import by_tenant, eventually, paced_doc, photo_parts
from sep12.sep12_helpers import Wallet, multipart, png_of_size

KIB = 1024
MIB = 1024 * KIB


@pytest.mark.parametrize(("remaining", "received", "sending", "left", "cut"), [
    (0, 1000, 1.0, 1.0, False),  # all in
    (1, 1000, 1.0, 0.0, True),  # the body timer is up
    (10 * MIB, 10 * KIB, 10.0, 50.0, True),  # 1 KiB/s, 10 MiB to go: hopeless
    (100 * KIB, 0, 10.0, 50.0, True),  # nothing sent in the grace time
    (100 * KIB, 10 * KIB, 10.0, 50.0, False),  # 1 KiB/s: 100 KiB fits at 2 KiB/s in 50 s
    (100 * KIB + 1, 10 * KIB, 10.0, 50.0, True),  # ...and one byte more does not
    (100, 10, 0.0, 1.0, False),  # no sending time yet: no judgement
])
def test_the_rest_must_fit_at_twice_the_rate_so_far(remaining: int, received: int,
                                                      sending: float, left: float,
                                                      cut: bool) -> None:
    assert cannot_arrive(remaining=remaining, received=received, sending_seconds=sending,
                         seconds_left=left) is cut


async def test_a_stuck_body_is_cut_after_the_grace_time_and_a_stopped_watch_never() -> None:
    cuts: list[tuple[float, RequestTimeout]] = []
    start = time.monotonic()
    BodyRate(1000, 0.6, lambda: 0, lambda e: cuts.append((time.monotonic() - start, e)))
    stopped = BodyRate(1000, 0.6, lambda: 0, lambda e: cuts.append((-1.0, e)))
    stopped.stop()
    await asyncio.sleep(0.55)
    assert len(cuts) == 1
    after, error = cuts[0]
    assert 0.09 <= after < 0.5  # from a sixth of the body timeout (0.1 s) on, before its end
    assert error.status == 408
    assert "body_timeout_seconds" in str(error)
    assert "1000 bytes could not arrive" in str(error)


async def test_a_body_arriving_fast_enough_is_never_cut() -> None:
    cuts: list[RequestTimeout] = []
    start = time.monotonic()
    # 1000 bytes over 0.5 s of a 0.6 s body timeout: slow, and in time.
    watch = BodyRate(1000, 0.6, lambda: min(1000, int(2000 * (time.monotonic() - start))),
                     cuts.append)
    await asyncio.sleep(0.55)
    watch.stop()
    assert cuts == []


async def test_time_the_server_paused_the_reading_is_not_the_clients() -> None:
    """Both clients sent 50 of 1000 bytes in the first second of a 6 s body timeout; the
    server held one's reading back for 0.95 s of it (pacing). That one is judged on 0.05 s
    of sending and keeps going; the other is cut at once."""
    cuts: dict[str, float] = {}
    start = time.monotonic()

    def cut(name: str) -> object:
        return lambda _: cuts.setdefault(name, time.monotonic() - start)

    paced = BodyRate(1000, 6.0, lambda: 50, cut("paced"))
    paced.paused(0.95)
    BodyRate(1000, 6.0, lambda: 50, cut("unpaced"))
    await asyncio.sleep(1.45)  # the paced one could be cut at 1.6 s at the earliest
    assert list(cuts) == ["unpaced"]
    assert cuts["unpaced"] < 1.45
    await asyncio.sleep(0.85)  # at 50 bytes still, the paced one's rate falls behind too
    assert "paced" in cuts
    paced.stop()


# --- over HTTP ------------------------------------------------------------------------------


async def rate_server(make_server: MakeServer) -> RunningServer:
    """Two tenants with bandwidth to spare and a 6 s body timeout: judged from 1 s on,
    every 0.2 s."""
    return await make_server(paced_doc("t1", "a.test", 64 * MIB),
                             paced_doc("t2", "b.test", 64 * MIB), body_timeout_seconds=6.0)


async def send_slowly(srv: RunningServer, host: str, token: str, photo_bytes: int,
                      piece: int, every: float) -> tuple[int, dict[str, str], bytes, float]:
    """A multipart PUT /kyc/customer with a photo of ``photo_bytes``, its body sent ``piece``
    bytes every ``every`` seconds until it is all sent or the server answers. Returns the
    answer (status, headers, body) and the seconds from the headers to the answer."""
    body, content_type = multipart(photo_parts(png_of_size(photo_bytes)))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
    writer.write((f"PUT /kyc/customer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                  f"{token}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
                  "\r\n\r\n").encode())
    started = time.monotonic()
    answer = asyncio.ensure_future(read_response(reader))
    try:
        for offset in range(0, len(body), piece):
            writer.write(body[offset:offset + piece])
            try:
                await writer.drain()
            except BROKEN:
                break
            await asyncio.wait([answer], timeout=every)
            if answer.done():
                break
        status, headers, data = await asyncio.wait_for(answer, 15.0)
        return status, headers, data, time.monotonic() - started
    finally:
        answer.cancel()
        writer.close()


async def test_an_upload_that_cannot_arrive_in_time_is_cut_early_and_stores_nothing(
        make_server: MakeServer) -> None:
    srv = await rate_server(make_server)
    budget = srv.services.upload_budget
    slow, other_customer = Wallet(srv, "a.test", "t1"), Wallet(srv, "a.test", "t1")
    other_tenant = Wallet(srv, "b.test", "t2")
    # 1 MiB at 20 KiB/s needs 50 s; the body timer gives 6. Meanwhile another customer of
    # the same tenant and a wallet of the other tenant upload at full speed.
    cut, *stored = await asyncio.gather(
        send_slowly(srv, "a.test", slow.token, 1 * MIB, 2 * KIB, 0.1),
        other_customer.put_multipart(photo_parts(png_of_size(300 * KIB))),
        other_tenant.put_multipart(photo_parts(png_of_size(300 * KIB))))
    status, headers, data, seconds = cut
    assert status == 408, data
    assert headers["content-type"].startswith("application/json")
    error = data.decode()
    assert "upload too slow" in error
    assert "body_timeout_seconds" in error
    assert 0.9 <= seconds < 4.0  # judged from 1 s on, long before the 6 s body timer
    assert "id" not in (await slow.get()).json  # nothing of it was stored
    for wallet, reply in zip((other_customer, other_tenant), stored, strict=True):
        assert reply.status == 202, reply.body
        assert "photo_id_front" in (await wallet.get()).json["provided_fields"]
    await eventually(lambda: budget.held == 0, "the cut upload's memory given back")
    assert await by_tenant(srv, "kyc_upload_too_slow_total") == {"t1": 1.0}


async def test_a_slow_upload_that_can_arrive_in_time_is_stored(
        make_server: MakeServer) -> None:
    srv = await rate_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    # 400 KiB at about 130 KiB/s: 3 s of the 6, checked from 1 s on every 0.2 s.
    status, _, data, seconds = await send_slowly(srv, "a.test", wallet.token, 400 * KIB,
                                                 13 * KIB, 0.1)
    assert status == 202, data
    assert seconds > 2.0  # it was slow, and judged several times
    assert "photo_id_front" in (await wallet.get()).json["provided_fields"]
    assert await by_tenant(srv, "kyc_upload_too_slow_total") == {}
