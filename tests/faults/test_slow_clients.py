"""reliability-plan L5 / issue 9 §5: slow clients are cut by timers and cannot starve others.

Real sockets against the real server (``make_server``, both backends), with the three
timeouts set short through settings overrides (web/serving.py maps them to Tornado's):

- ``header_timeout_seconds``: a request whose headers stop half-way -- or trickle in, one
  line at a time -- is disconnected, long before the idle timeout; a connection that sat
  idle longer than the header timeout and then sends its request at once is served (the
  header timer starts at the request's first byte);
- ``body_timeout_seconds``: a body trickled slower than allowed is cut, nothing of it is
  written (no customer, no file), and the wallet can still write afterwards;
- ``idle_timeout_seconds``: an idle keep-alive connection (and one that never sends a
  byte) is closed; before that the connection does carry a second request;
- while 200 slow connections (idle, half headers, half bodies) are held open, the other
  tenant's and the same tenant's GET /kyc/customer are answered 200.

The figures (sockets and server RSS with 1 000 idle keep-alive connections and 200 trickled
uploads, and their reclaiming) come from ``test_figures_...`` with ``-s``; they are printed,
not asserted beyond the connections being held and then reclaimed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MakeServer, RunningServer, make_tenant_doc
from faults.deploy import Deployment, connect
from faults.raw_http import BROKEN, read_response, request_bytes, wait_closed
from sep12.sep12_helpers import Wallet, multipart, png_of_size

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: Bound for "the server closed it" when the timer under test is short (never a measurement).
CLOSE_BOUND = 10.0


async def _two(make_server: MakeServer, **timeouts: float) -> RunningServer:
    return await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]),
                             **timeouts)


@contextlib.asynccontextmanager
async def _connection(port: int) -> AsyncIterator[Stream]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(*BROKEN):
            await writer.wait_closed()


def _get_customer(wallet: Wallet, *, keep_alive: bool = False) -> bytes:
    head, _ = request_bytes("GET", "/kyc/customer", wallet.host,
                            {"Authorization": f"Bearer {wallet.token}"}, keep_alive=keep_alive)
    return head


# --- header timeout -------------------------------------------------------------------------


async def test_half_headers_are_cut_at_the_header_timeout(make_server: MakeServer) -> None:
    srv = await _two(make_server, header_timeout_seconds=0.5, idle_timeout_seconds=60)
    wallet = Wallet(srv, "a.test", "t1")
    head = _get_customer(wallet)
    async with _connection(srv.public_port) as (reader, writer):
        writer.write(head[: len(head) // 2])  # the request line and part of the headers
        await writer.drain()
        # Closed by the header timer (the idle one is 60 s), with nothing answered.
        assert await wait_closed(reader, CLOSE_BOUND)
    # The same request sent whole is served.
    async with _connection(srv.public_port) as (reader, writer):
        writer.write(head)
        status, _, body = await read_response(reader)
        assert status == 200, body


async def test_headers_trickled_line_by_line_are_cut(make_server: MakeServer) -> None:
    """Slowloris: bytes keep coming, but the headers never complete in time."""
    srv = await _two(make_server, header_timeout_seconds=0.5, idle_timeout_seconds=60)
    async with _connection(srv.public_port) as (reader, writer):
        writer.write(b"GET /kyc/customer HTTP/1.1\r\nHost: a.test\r\n")
        closed = False
        for n in range(100):  # up to ~20 s of trickling, far past the header timeout
            try:
                writer.write(f"X-Pad-{n}: {'x' * 10}\r\n".encode())
                await writer.drain()
            except BROKEN:
                closed = True
                break
            if await wait_closed(reader, 0.2):
                closed = True
                break
        assert closed, "a trickled header block kept its connection for 100 lines"


async def test_idle_before_the_first_byte_is_not_a_header_timeout(
        make_server: MakeServer) -> None:
    """The header timer starts at the request's first byte: a connection idle for longer
    than the header timeout (but less than the idle timeout) is still served."""
    srv = await _two(make_server, header_timeout_seconds=0.3, idle_timeout_seconds=60)
    wallet = Wallet(srv, "b.test", "t2")
    async with _connection(srv.public_port) as (reader, writer):
        assert not await wait_closed(reader, 1.5)  # five header timeouts of silence
        writer.write(_get_customer(wallet))
        status, _, body = await read_response(reader)
        assert status == 200, body


# --- body timeout ---------------------------------------------------------------------------


async def _trickle_until_cut(port: int, head: bytes, body: bytes) -> tuple[bool, bytes]:
    """Send ``head`` and half of ``body`` at once, then the rest a few bytes at a time (far
    slower than the body timeout allows). Returns (cut, anything the server answered)."""
    async with _connection(port) as (reader, writer):
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        rest = body[len(body) // 2:]
        for i in range(0, len(rest), 4):
            try:
                writer.write(rest[i:i + 4])
                await writer.drain()
            except BROKEN:
                return True, b""
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            except BROKEN:  # reset: the server cut it before the client's next write failed
                return True, b""
            return answer == b"", answer
        return False, b""


async def test_slow_json_body_is_cut_and_nothing_is_written(make_server: MakeServer) -> None:
    srv = await _two(make_server, body_timeout_seconds=1.0)
    wallet = Wallet(srv, "a.test", "t1")
    body = json.dumps({"first_name": "Slow", "last_name": "Loris",
                       "email_address": "slow@example.com", "x": "p" * 400}).encode()
    head, _ = request_bytes("PUT", "/kyc/customer", "a.test",
                            {"Authorization": f"Bearer {wallet.token}",
                             "Content-Type": "application/json"}, body)
    cut, answer = await _trickle_until_cut(srv.public_port, head, body)
    assert cut, f"the body was not cut; the server answered {answer[:200]!r}"
    for tenant_id in ("t1", "t2"):
        assert await srv.services.store.tenant(tenant_id, "customers").count({}) == 0
    mine = await wallet.get()
    assert mine.status == 200, mine.body
    assert "id" not in mine.json, mine.body
    # The wallet is not penalised: the same PUT sent at normal speed is written.
    assert (await wallet.put({"first_name": "Slow", "last_name": "Loris",
                              "email_address": "slow@example.com"})).status == 202


async def test_slow_upload_is_cut_and_no_file_is_stored(make_server: MakeServer) -> None:
    srv = await _two(make_server, body_timeout_seconds=1.0)
    wallet = Wallet(srv, "b.test", "t2")
    body, content_type = multipart([("file", png_of_size(8 * 1024), "id.png")])
    head, _ = request_bytes("POST", "/kyc/customer/files", "b.test",
                            {"Authorization": f"Bearer {wallet.token}",
                             "Content-Type": content_type}, body)
    cut, answer = await _trickle_until_cut(srv.public_port, head, body)
    assert cut, f"the upload was not cut; the server answered {answer[:200]!r}"
    for tenant_id in ("t1", "t2"):
        assert await srv.services.store.tenant(tenant_id, "files").count({}) == 0
    # The wallet is not penalised: the same upload sent at normal speed is stored.
    uploaded = await wallet.upload(png_of_size(8 * 1024))
    assert uploaded.status == 200, uploaded.body
    assert await srv.services.store.tenant("t2", "files").count({}) == 1


# --- idle timeout ---------------------------------------------------------------------------


async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
        make_server: MakeServer) -> None:
    srv = await _two(make_server, idle_timeout_seconds=1.0, header_timeout_seconds=30)
    wallet = Wallet(srv, "a.test", "t1")
    async with _connection(srv.public_port) as (reader, writer):
        for _ in range(2):  # keep-alive works: two requests on one connection
            writer.write(_get_customer(wallet, keep_alive=True))
            status, headers, body = await read_response(reader)
            assert status == 200, body
            assert headers.get("connection") != "close"
        assert await wait_closed(reader, CLOSE_BOUND)
    # A connection that never sends a byte is closed by the same timer.
    async with _connection(srv.public_port) as (reader, _writer):
        assert await wait_closed(reader, CLOSE_BOUND)


# --- others keep being served ---------------------------------------------------------------


async def test_other_tenant_is_served_while_200_slow_connections_are_held(
        make_server: MakeServer) -> None:
    srv = await _two(make_server, header_timeout_seconds=60, idle_timeout_seconds=60,
                     body_timeout_seconds=60)
    slow_wallet = Wallet(srv, "a.test", "t1")
    put_head, _ = request_bytes("PUT", "/kyc/customer", "a.test",
                                {"Authorization": f"Bearer {slow_wallet.token}",
                                 "Content-Type": "application/json"}, b"x" * 4096)
    half_headers = _get_customer(slow_wallet)[:40]
    held: list[Stream] = []
    try:
        for n in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
            held.append((reader, writer))
            if n % 3 == 1:
                writer.write(half_headers)
            elif n % 3 == 2:
                writer.write(put_head + b'{"first_name": "')
        await asyncio.gather(*(w.drain() for _, w in held))
        await _until_held(srv, 200)
        for host, tenant_id in (("b.test", "t2"), ("a.test", "t1")):
            reply = await Wallet(srv, host, tenant_id).get()
            assert reply.status == 200, reply.body
        # None of the slow ones was answered or dropped meanwhile.
        assert await asyncio.gather(*(wait_closed(r, 0.01) for r, _ in held)) == [False] * 200
    finally:
        await _close_all(held)


async def _close_all(held: list[Stream]) -> None:
    """Close the test's connections and wait until the loop has let go of their sockets
    (a socket still open when the test's loop closes is a ResourceWarning, and an error)."""
    for _, writer in held:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for _, writer in held), return_exceptions=True)


async def _until_held(srv: RunningServer, count: int) -> None:
    end = time.monotonic() + 30
    while sum(len(s._connections) for s in srv.server.http_servers) < count:
        assert time.monotonic() < end, "the server did not accept the slow connections"
        await asyncio.sleep(0.05)


# --- figures: sockets and RSS of a real `serve` process -------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


IDLE = 1000
TRICKLING = 200


@pytest.mark.slow
async def test_figures_idle_keep_alive_and_trickled_uploads(tmp_path: Path) -> None:
    """1 000 idle keep-alive connections and 200 uploads (POST /kyc/customer/files with a
    wallet token) trickling at ~1 KB/s, held by one ``serve`` process (sqlite), then
    reclaimed by its idle and body timeouts (10 s and 15 s here; an upload that could not
    arrive before the body timer is answered 408 from 2.5 s on: ratelimit/bodyrate.py).
    Prints sockets and RSS; asserts only that they are held, that a healthy request is
    answered meanwhile, and that the timers give the sockets back."""
    deployment = Deployment(tmp_path, f"sqlite:///{tmp_path}/store.db",
                            [make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"])],
                            settings={"rate_limits": False, "idle_timeout_seconds": 10.0,
                                      "body_timeout_seconds": 15.0})
    deployment.start()
    held: list[Stream] = []
    try:
        await deployment.ready()
        async with connect(deployment) as srv:
            await _figures(deployment, srv, held)
    finally:
        await _close_all(held)
        deployment.kill_if_running()


async def _figures(deployment: Deployment, srv: RunningServer, held: list[Stream]) -> None:
    assert deployment.process is not None
    pid, port = deployment.process.pid, deployment.public_port
    head = request_bytes("GET", "/.well-known/stellar.toml", "a.test", keep_alive=True)[0]
    async with _connection(port) as (reader, writer):
        writer.write(head)
        assert (await read_response(reader))[0] == 200
    base_rss, base_sockets = _rss_kib(pid), _sockets(pid)
    for _ in range(IDLE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        assert (await read_response(reader))[0] == 200
        held.append((reader, writer))
    idle_rss, idle_sockets = _rss_kib(pid), _sockets(pid)
    wallet = Wallet(srv, "a.test", "t1")
    tasks = [asyncio.create_task(_trickle_upload(port, wallet)) for _ in range(TRICKLING)]
    await asyncio.sleep(2.0)  # before the first of them could be judged too slow (2.5 s)
    busy_rss, busy_sockets = _rss_kib(pid), _sockets(pid)
    other = await Wallet(srv, "b.test", "t2").get()
    assert other.status == 200, other.body
    closed = await asyncio.gather(*(wait_closed(r, 60) for r, _ in held))
    ended = collections.Counter(await asyncio.gather(*tasks))
    await asyncio.sleep(0.5)
    after_rss, after_sockets = _rss_kib(pid), _sockets(pid)
    files = await srv.services.store.tenant("t1", "files").count({})
    lag = await _loop_lag(srv)
    print(f"\nL5 figures (serve pid {pid}, load {os.getloadavg()[0]:.2f}): "  # noqa: T201
          f"baseline {base_sockets} sockets / {base_rss} KiB RSS; "
          f"{IDLE} idle keep-alive: {idle_sockets} sockets / {idle_rss} KiB "
          f"(+{idle_rss - base_rss} KiB, {(idle_rss - base_rss) * 1024 // IDLE} B each); "
          f"+{TRICKLING} uploads trickling at 1 KB/s: {busy_sockets} sockets / {busy_rss} KiB; "
          f"after the idle timeout ({sum(closed)} closed) and the uploads' ends "
          f"({dict(ended)}): "
          f"{after_sockets} sockets / {after_rss} KiB; files stored: {files}; "
          f"event-loop lag: max {lag['max'] * 1000:.1f} ms, {lag['over']:.0f} of "
          f"{lag['count']:.0f} probes > 100 ms")
    assert idle_sockets >= IDLE
    assert all(closed)
    assert set(ended) <= {"closed", "408"}, ended  # each cut: by its timer, or earlier
    assert files == 0
    assert after_sockets <= base_sockets + 5


async def _loop_lag(srv: RunningServer) -> dict[str, float]:
    """The serve process's event-loop lag figures from its /metrics (looplag.py)."""
    text = (await srv.fetch("localhost", "/metrics", admin=True)).body.decode()
    values = {s.name + s.labels.get("le", ""): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    count = values.get("kyc_event_loop_lag_seconds_count", 0.0)
    return {"max": values.get("kyc_event_loop_lag_max_seconds", 0.0), "count": count,
            "over": count - values.get("kyc_event_loop_lag_seconds_bucket0.1", 0.0)}


async def _trickle_upload(port: int, wallet: Wallet) -> str:
    """A 64 KiB upload sent at ~1 KB/s (256 bytes every 0.25 s, so it would need ~64 s).
    Returns how the server ended it: ``closed`` (cut by the body timer, no answer) or the
    status it answered with (408 once its rest could not arrive before that timer:
    ratelimit/bodyrate.py); ``sent`` if it never did (it must: the body timeout is shorter)."""
    body, content_type = multipart([("file", png_of_size(64 * 1024), "id.png")])
    head = request_bytes("POST", "/kyc/customer/files", wallet.host,
                         {"Authorization": f"Bearer {wallet.token}",
                          "Content-Type": content_type}, body)[0]
    async with _connection(port) as (reader, writer):
        writer.write(head)
        answer = asyncio.ensure_future(read_response(reader))
        try:
            for i in range(0, len(body), 256):
                try:
                    writer.write(body[i:i + 256])
                    await writer.drain()
                except BROKEN:
                    break
                await asyncio.wait([answer], timeout=0.25)
                if answer.done():
                    break
            try:
                return str((await asyncio.wait_for(answer, 5.0))[0])
            except (*BROKEN, TimeoutError):
                return "closed" if answer.done() else "sent"
        finally:
            answer.cancel()
