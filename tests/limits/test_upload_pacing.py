"""``limits.upload_bytes_per_second``: one tenant's uploads are metered per process.

The bucket itself is checked with a hand-driven clock (no timing in tests); over HTTP the
tests show that a paced upload is held back and still stored whole, that the other tenant's
uploads are not held back at all, and that uploads that could not arrive within half the
body timeout are refused up front with a 429 naming the limit, leaving nothing stored.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MakeServer, RunningServer
from kyc_host.errors import LimitExceeded
from kyc_host.ratelimit.pacing import BytePacer
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc, png_of_size

KIB = 1024


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


def test_admission_refuses_what_could_not_arrive_in_time() -> None:
    clock = Clock()
    pacer = BytePacer(100 * KIB, clock)
    pacer.admit(300 * KIB, max_wait=3.0)  # 1 s in the bucket + 2 s of refill: fits
    assert pacer.queued == 300 * KIB
    with pytest.raises(LimitExceeded) as refused:
        pacer.admit(300 * KIB, max_wait=3.0)  # would end 5 s out
    assert refused.value.limit == "upload_bytes_per_second"
    assert refused.value.headers["Retry-After"] == "2"
    assert pacer.queued == 300 * KIB  # the refused upload queued nothing
    pacer.release(200 * KIB)  # the first upload's bytes arrive (or it ends short)
    pacer.admit(300 * KIB, max_wait=3.0)
    assert pacer.queued == 400 * KIB


async def paced_seconds(srv: RunningServer) -> dict[str, float]:
    reply = await srv.fetch("", "/metrics", admin=True)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == "kyc_upload_paced_seconds_total":
                out[sample.labels["tenant"]] = sample.value
    return out


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


async def test_uploads_that_could_not_arrive_in_time_are_refused_before_reading(
        make_server: MakeServer) -> None:
    # With a 4 s body timeout t1 may queue 2 s of its 64 KiB/s: 128 KiB (plus what its
    # bucket holds). Of six concurrent 48 KiB uploads some must be refused up front.
    srv = await make_server(paced_doc("t1", "a.test", 64 * KIB),
                            paced_doc("t2", "b.test", 64 * KIB), body_timeout_seconds=4.0)
    wallets = [Wallet(srv, "a.test", "t1") for _ in range(6)]
    photo = png_of_size(48 * KIB)
    replies = await asyncio.gather(*(w.put_multipart(photo_parts(photo)) for w in wallets))
    statuses = sorted(r.status for r in replies)
    assert set(statuses) == {202, 429}, statuses
    for wallet, reply in zip(wallets, replies, strict=True):
        got = (await wallet.get()).json
        if reply.status == 429:
            assert "upload_bytes_per_second" in reply.json["error"]
            assert int(reply.headers["Retry-After"]) >= 1
            assert "id" not in got  # nothing of a refused upload is stored
        else:
            assert got["id"] == reply.json["id"]
    # Once the queue has drained, t1 is admitted again; t2's share was never touched.
    again = await wallets[0].put_multipart(photo_parts(png_of_size(8 * KIB)))
    assert again.status == 202, again.body
    other = await Wallet(srv, "b.test", "t2").put_multipart(photo_parts(png_of_size(8 * KIB)))
    assert other.status == 202, other.body
    assert (await paced_seconds(srv)).get("t2", 0.0) == 0.0
