"""Turn-taking on the event loop (web/turns.py, reliability-plan L4 "noisy neighbour").

A tenant with ``busy_tenant_requests`` or more requests in flight in a process, and more than
twice the average of the other tenants with requests in flight, is busy; its next requests
let every other ready piece of work go first, and are still served. The unit
tests drive :class:`LoopTurns` on a real event loop with other work queued, and
:class:`TurnTakingLoop` (the loop every test here runs on, as the server does) with steps of
a busy tenant's tasks; the HTTP tests hold a tenant's requests in a hanging plugin hook on a
real server and look at who waited.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from conftest import MakeServer, RunningServer
from faults.raw_http import request_bytes
from foundation.test_metrics import sample
from hooks.hooks_helpers import plugins_dir
from kyc_host.web.turns import LoopTurns, TurnTakingLoop, take_turn
from sep12.sep12_helpers import Wallet, kyc_doc, multipart, png_of_size

# --- LoopTurns on an event loop --------------------------------------------------------


def other_work(steps: int, step_seconds: float, log: list[str],
               context: contextvars.Context | None = None) -> asyncio.Future[None]:
    """A chain of ``steps`` callbacks, each busy for ``step_seconds`` and scheduling the
    next (in ``context``: another tenant's work): the loop is never idle until the chain
    ends (the returned future)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def step(left: int) -> None:
        end = time.perf_counter() + step_seconds
        while time.perf_counter() < end:
            pass
        if left:
            loop.call_soon(step, left - 1, context=context)
        else:
            log.append("other work done")
            done.set_result(None)

    loop.call_soon(step, steps - 1, context=context)
    return done


def tenants_context(turns: LoopTurns, tenant_id: str) -> contextvars.Context:
    """A context working for ``tenant_id`` (as a request's is), without a request counted."""
    context = contextvars.copy_context()
    context.run(turns.mark, tenant_id)
    return context


def count_request(turns: LoopTurns, tenant_id: str) -> None:
    """Count a request of ``tenant_id`` in flight, in a context of its own (as a request's
    task is). Counted in the test's own context, the mark would make the test's own steps
    and callbacks that tenant's: held by the server's loop while it is busy."""
    contextvars.copy_context().run(turns.started, tenant_id)


async def order_of_turn_and_work(turns: LoopTurns, steps: int) -> list[str]:
    """Queue ``steps`` ms of other work, then ask for a turn of the busy tenant "busy":
    what finished first."""
    log: list[str] = []
    chain = other_work(steps, 0.001, log)
    turn = turns.turn("busy")
    assert turn is not None
    turn.add_done_callback(lambda _: log.append("busy tenant's turn"))
    await asyncio.wait_for(turn, 5)
    await chain
    return log


async def test_a_busy_tenants_request_goes_after_the_work_that_is_ready() -> None:
    turns = LoopTurns(busy_at=2, max_wait=10.0)
    for _ in range(2):
        count_request(turns, "busy")
    assert await order_of_turn_and_work(turns, 30) == ["other work done", "busy tenant's turn"]


async def test_a_tenant_below_the_mark_never_waits_and_nor_does_one_with_it_off() -> None:
    turns = LoopTurns(busy_at=3)
    count_request(turns, "quiet")
    count_request(turns, "quiet")
    assert turns.turn("quiet") is None
    assert turns.turn("nobody") is None
    off = LoopTurns(busy_at=0)
    for _ in range(100):
        count_request(off, "flood")
    assert off.turn("flood") is None


async def test_a_busy_tenant_is_slowed_not_starved_when_the_loop_is_never_idle() -> None:
    turns = LoopTurns(busy_at=1, max_wait=0.05)
    count_request(turns, "busy")
    # ~0.4 s without an idle iteration: the turn comes after 50 ms all the same.
    assert await order_of_turn_and_work(turns, 400) == ["busy tenant's turn", "other work done"]


async def test_every_request_that_waited_max_wait_goes_on_together() -> None:
    """With the loop never idle, the requests past ``max_wait`` are let through at once,
    not one per loop iteration (a line of 64 would otherwise wait 64 more iterations)."""
    turns = LoopTurns(busy_at=1, max_wait=0.05)
    count_request(turns, "busy")
    log: list[str] = []
    loop = asyncio.get_running_loop()

    def step(left: int) -> None:
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
        log.append("step")
        if left:
            loop.call_soon(step, left - 1)

    loop.call_soon(step, 300)
    waiting = [turns.turn("busy") for _ in range(10)]
    for turn in waiting:
        assert turn is not None
        turn.add_done_callback(lambda _: log.append("turn"))
    await asyncio.gather(*waiting)  # type: ignore[arg-type]
    first = log.index("turn")
    assert log[first:first + 10] == ["turn"] * 10, log[first - 2:first + 12]
    assert log[:first].count("step") < 301  # all while the loop was still never idle


async def test_turns_are_given_oldest_first_and_the_count_follows_requests() -> None:
    turns = LoopTurns(busy_at=1)
    for tenant_id in ("a", "a", "a", "b", "b", "b", "c", "d", "e", "f"):
        count_request(turns, tenant_id)
    assert turns.busy("a")  # 3, against 7 / 5 = 1.4 for the others
    assert turns.busy("b")
    order: list[int] = []
    waiting = [turns.turn("a" if n % 2 else "b") for n in range(6)]
    for n, turn in enumerate(waiting):
        assert turn is not None
        turn.add_done_callback(lambda _, n=n: order.append(n))
    await asyncio.gather(*waiting)  # type: ignore[arg-type]
    assert order == list(range(6))
    for tenant_id in ("a", "a", "a", "b", "b", "b", "c", "d", "e", "f"):
        turns.ended(tenant_id)
    assert (turns.in_flight("a"), turns.in_flight("b")) == (0, 0)
    assert turns.turn("a") is None


def test_busy_is_relative_to_the_other_tenants_in_flight() -> None:
    """From ``busy_at``, a tenant is busy only with more than BUSY_SHARE (2) times the
    average in flight of the other tenants that have any: tenants under like loads never
    hold each other back, and one alone is busy from ``busy_at``."""
    turns = LoopTurns(busy_at=4)

    def to(tenant_id: str, count: int) -> None:
        while turns.in_flight(tenant_id) < count:
            turns.started(tenant_id)
        while turns.in_flight(tenant_id) > count:
            turns.ended(tenant_id)

    def busy() -> set[str]:
        return {t for t in ("a", "b", "c", "d") if turns.busy(t)}

    context = contextvars.copy_context()  # started() marks the context it runs in
    context.run(to, "a", 3)
    assert context.run(busy) == set()  # below busy_at, alone
    context.run(to, "a", 4)
    assert context.run(busy) == {"a"}  # at busy_at, alone
    context.run(to, "b", 4)
    assert context.run(busy) == set()  # two alike: neither
    context.run(to, "a", 50)
    context.run(to, "b", 25)
    assert context.run(busy) == set()  # exactly twice the other: not more
    context.run(to, "a", 51)
    assert context.run(busy) == {"a"}
    context.run(to, "b", 3)
    assert context.run(busy) == {"a"}  # the other below busy_at, however near
    # Among more tenants, against their average: a 20, b 20, c 1, d 1.
    context.run(to, "a", 20)
    context.run(to, "b", 20)
    context.run(to, "c", 1)
    context.run(to, "d", 1)
    assert context.run(busy) == {"a", "b"}  # 20 > 2 * 22 / 3
    context.run(to, "d", 30)
    assert context.run(busy) == {"d"}  # 30 > 2 * 41 / 3; a and b no longer: 20 < 2 * 51 / 3
    context.run(to, "d", 28)
    context.run(to, "c", 0)
    assert context.run(busy) == set()  # 28 against 20: not more than twice
    context.run(to, "b", 0)
    context.run(to, "a", 0)
    assert context.run(busy) == {"d"}  # alone again
    assert LoopTurns(busy_at=0).busy("d") is False


async def test_take_turn_waits_only_inside_a_busy_tenants_request() -> None:
    turns = LoopTurns(busy_at=2, max_wait=10.0)
    await take_turn()  # outside any request: at once

    async def request(tenant_id: str) -> bool:
        turns.started(tenant_id)  # as BaseHandler.prepare does, in the request's own task
        log: list[str] = []
        chain = other_work(20, 0.001, log)
        await take_turn()
        waited = log == ["other work done"]
        await chain
        return waited

    assert await asyncio.create_task(request("quiet")) is False  # 1 in flight: no wait
    assert await asyncio.create_task(request("quiet")) is True  # now 2: busy, waited


# --- TurnTakingLoop: every step of a busy tenant's work ---------------------------------


def this_loop() -> TurnTakingLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, TurnTakingLoop)  # tests/conftest.py: the server's loop
    return loop


async def steps_of(turns: LoopTurns, tenant_id: str, steps: int, log: list[str]) -> None:
    """A request's task: marked as working for ``tenant_id``, then ``steps`` steps."""
    turns.started(tenant_id)
    for _ in range(steps):
        await asyncio.sleep(0)
        log.append(tenant_id)


async def test_each_step_of_a_busy_tenants_task_waits_for_the_ready_work() -> None:
    turns = LoopTurns(busy_at=2, max_wait=10.0, loop_orders_steps=True)
    count_request(turns, "busy")  # one request already in flight; the task below is the second
    log: list[str] = []
    held_before = this_loop().steps_held
    chain = other_work(30, 0.001, log, tenants_context(turns, "quiet"))
    await asyncio.gather(chain, asyncio.create_task(steps_of(turns, "busy", 3, log)))
    assert log == ["other work done", "busy", "busy", "busy"]
    assert this_loop().steps_held - held_before >= 3
    assert this_loop().holding == 0


async def test_a_tenant_below_the_mark_is_not_held_and_nor_is_work_of_no_tenant() -> None:
    turns = LoopTurns(busy_at=3, max_wait=10.0, loop_orders_steps=True)
    # 1 + the task's own = 2, below 3 (counted elsewhere: this test's own task works for
    # no tenant, nor do the tasks it starts until they say so)
    count_request(turns, "busy")
    log: list[str] = []
    held_before = this_loop().steps_held
    chain = other_work(30, 0.001, log, tenants_context(turns, "other"))
    await asyncio.gather(chain, asyncio.create_task(steps_of(turns, "busy", 3, log)))
    assert log == ["busy", "busy", "busy", "other work done"]  # each step in its turn
    assert this_loop().steps_held == held_before
    # Now "busy" is busy (3 in flight); work of no tenant and the quiet tenant's steps are
    # still never held.
    count_request(turns, "busy")
    assert turns.busy("busy")
    chain = other_work(30, 0.001, log)
    await asyncio.gather(chain, asyncio.create_task(steps_of(turns, "quiet", 3, log)))
    assert log[4:] == ["quiet", "quiet", "quiet", "other work done"]
    assert this_loop().steps_held == held_before


async def test_a_held_step_runs_after_max_wait_when_the_loop_is_never_idle() -> None:
    turns = LoopTurns(busy_at=1, max_wait=0.05, loop_orders_steps=True)
    log: list[str] = []
    # ~0.4 s of another tenant's work without an idle iteration
    chain = other_work(400, 0.001, log, tenants_context(turns, "quiet"))
    await asyncio.gather(chain, asyncio.create_task(steps_of(turns, "busy", 3, log)))
    # Three steps, each held up to 50 ms: all done while the other work still ran.
    assert log == ["busy", "busy", "busy", "other work done"]


async def test_a_done_callback_in_a_busy_tenants_context_is_held_too() -> None:
    """A task waking up from a future (a store call, a hook's answer) is such a callback."""
    turns = LoopTurns(busy_at=1, max_wait=10.0, loop_orders_steps=True)
    context = contextvars.copy_context()
    context.run(turns.started, "busy")
    log: list[str] = []
    loop = this_loop()
    answer = loop.create_future()
    answer.add_done_callback(lambda _: log.append("busy woke"), context=context)
    chain = other_work(20, 0.001, log, tenants_context(turns, "quiet"))
    answer.set_result(None)
    await chain
    await asyncio.sleep(0.01)
    assert log == ["other work done", "busy woke"]


async def test_a_cancelled_held_step_never_runs_and_a_cancelled_task_still_ends() -> None:
    turns = LoopTurns(busy_at=1, max_wait=10.0, loop_orders_steps=True)
    context = contextvars.copy_context()
    context.run(turns.started, "busy")
    loop = this_loop()
    log: list[str] = []
    chain = other_work(20, 0.001, log, tenants_context(turns, "quiet"))
    handle = loop.call_soon(log.append, "cancelled step ran", context=context)
    assert loop.holding == 1
    handle.cancel()
    task = asyncio.create_task(steps_of(turns, "busy", 1000, log))
    await asyncio.sleep(0)  # the task's first step ran; its next one is held
    task.cancel()
    await chain
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert "cancelled step ran" not in log
    assert loop.holding == 0


async def test_a_busy_tenant_alone_on_the_loop_is_not_held_step_by_step() -> None:
    """With no other tenant's step for ALONE_SECONDS, holding would only cost an
    iteration per step: the held steps all go at the next iteration instead, even while
    work of no tenant (here a chain that is always ready) keeps the loop from being idle."""
    turns = LoopTurns(busy_at=1, max_wait=10.0, loop_orders_steps=True)
    loop = this_loop()
    iterations = 0
    done = False

    def count() -> None:  # one call per loop iteration, of no tenant
        nonlocal iterations
        iterations += 1
        if not done:
            loop.call_soon(count)

    await asyncio.sleep(0.06)  # longer than ALONE_SECONDS since any other tenant's step
    loop.call_soon(count)
    log: list[str] = []
    await asyncio.wait_for(asyncio.gather(
        *(asyncio.create_task(steps_of(turns, "busy", 50, log)) for _ in range(10))), 5)
    done = True
    assert len(log) == 500
    assert iterations < 150  # one step per iteration would be 500 (and 10 s each here)


def test_the_loop_shuts_down_with_a_busy_tenants_task_still_held() -> None:
    """asyncio.Runner cancels what is left at the end (as ``kyc-host serve`` exits): a task
    held at that moment is cancelled and ends; closing the loop does not wait on it."""
    outcome: list[asyncio.Task[None]] = []
    held_at_return: list[int] = []

    async def main() -> None:
        turns = LoopTurns(busy_at=1, max_wait=10.0, loop_orders_steps=True)
        outcome.append(asyncio.create_task(steps_of(turns, "busy", 10**9, [])))
        await asyncio.sleep(0.05)  # the task runs its steps when the loop is idle...
        # ...and is held behind another tenant's work when main returns.
        other_work(10, 0.001, [], tenants_context(turns, "quiet"))
        await asyncio.sleep(0)
        held_at_return.append(this_loop().holding)

    with asyncio.Runner(loop_factory=TurnTakingLoop) as runner:
        runner.run(main())
    assert held_at_return == [1]
    assert outcome[0].cancelled()


# --- over HTTP, with requests held in a hanging plugin hook -----------------------------


def hung() -> list[asyncio.Task[None]]:
    """The hook calls now inside the hanging plugin (each server loads it afresh)."""
    module = sys.modules.get("kyc_host_plugins.hanging")
    return [] if module is None else [task for task in module.ENTERED if not task.done()]


async def hold(srv: RunningServer, count: int, host: str = "a.test",
               tenant_id: str = "t1") -> list[asyncio.Future[object]]:
    """``count`` GET /customer of a tenant (t1), each inside its hanging hook."""
    before = len(hung())
    held = [asyncio.ensure_future(Wallet(srv, host, tenant_id).get()) for _ in range(count)]
    for _ in range(3000):
        if len(hung()) == before + count:
            break
        await asyncio.sleep(0.01)
    assert len(hung()) == before + count
    return held


async def release(held: list[asyncio.Future[object]]) -> None:
    """End the hook calls now hanging and wait for the held requests' answers."""
    for task in hung():
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def turns_taken(srv: RunningServer, tenant: str) -> float:
    metrics = (await srv.fetch("localhost", "/metrics", admin=True)).body.decode()
    return sample(metrics, "kyc_busy_tenant_turns_total", tenant=tenant)


async def held_counts(srv: RunningServer) -> tuple[int, float]:
    """The loop's count of held steps and the server's ``kyc_loop_steps_held_total``, read
    once the lag probe that adds the one to the other has ticked (every 0.1 s)."""
    await asyncio.sleep(0.35)
    steps = this_loop().steps_held
    metrics = (await srv.fetch("localhost", "/metrics", admin=True)).body.decode()
    return steps, sample(metrics, "kyc_loop_steps_held_total")


async def test_a_busy_tenants_requests_wait_their_turn_and_are_served(
        make_server: MakeServer, tmp_path: Path) -> None:
    srv = await make_server(
        kyc_doc("t1", ["a.test"], plugin="hanging", limits={"hook_timeout_seconds": 30}),
        kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
        plugins_dir=plugins_dir(tmp_path), busy_tenant_requests=3)
    held: list[asyncio.Future[object]] = []
    try:
        held += await hold(srv, 2)
        held += await hold(srv, 1)  # the third request makes t1 busy...
        assert await turns_taken(srv, "t1") == 0  # ...and none of the three waited
        held += await hold(srv, 1)  # the fourth waited for its turn, and reached the hook
        assert await turns_taken(srv, "t1") == 1
        assert srv.services.turns.in_flight("t1") == 4
        # The other tenant, below the mark, is served as usual and never waits for a turn:
        # no step of its requests was held by the loop.
        loop = this_loop()
        assert srv.services.turns.loop_orders_steps
        held_before = loop.steps_held
        steps_before, counted_before = await held_counts(srv)
        for _ in range(3):
            replies = await asyncio.gather(*[Wallet(srv, "b.test", "t2").get()
                                             for _ in range(2)])
            assert {r.status for r in replies} == {200}
        assert await turns_taken(srv, "t2") == 0
        assert loop.steps_held == held_before
        # A busy tenant's other routes wait too (their steps are held), and are answered.
        assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 200
        assert await turns_taken(srv, "t1") == 2
        assert loop.steps_held > held_before
        # /metrics counts every held step.
        steps, counted = await held_counts(srv)
        assert steps > steps_before
        assert counted - counted_before == steps - steps_before
    finally:
        await release(held)
    assert srv.services.turns.in_flight("t1") == 0  # every request that ended was counted out
    assert srv.services.turns.in_flight("t2") == 0


async def test_two_tenants_with_like_loads_never_wait_for_each_other(
        make_server: MakeServer, tmp_path: Path) -> None:
    """Both over busy_tenant_requests, neither with more than twice the other's requests in
    flight: no request waits and no step is held; one with more than twice is busy."""
    srv = await make_server(
        kyc_doc("t1", ["a.test"], plugin="hanging", limits={"hook_timeout_seconds": 30}),
        kyc_doc("t2", ["b.test"], plugin="hanging", limits={"hook_timeout_seconds": 30}),
        plugins_dir=plugins_dir(tmp_path), busy_tenant_requests=3)
    srv.client.close()  # 10 requests at a time: too few for the 13 held here and those beside
    srv.client = AsyncHTTPClient(force_instance=True, max_clients=40)
    loop = this_loop()
    held: list[asyncio.Future[object]] = []
    try:
        held += await hold(srv, 4)  # t1 alone: its 4th request waited
        held += await hold(srv, 4, "b.test", "t2")
        held_before = loop.steps_held
        t1_turns = await turns_taken(srv, "t1")
        # A request's turn is asked for once its headers are read, before it is counted;
        # its steps after that, with it counted.
        held += await hold(srv, 3)  # t1 7 (8 with the request below) against t2's 4
        assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 200
        assert (await srv.fetch("b.test", "/.well-known/stellar.toml")).code == 200
        assert await turns_taken(srv, "t1") == t1_turns
        assert await turns_taken(srv, "t2") == 0
        assert loop.steps_held == held_before
        held += await hold(srv, 2)  # t1 9 against 4: busy, and its next request waits
        assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 200
        assert await turns_taken(srv, "t1") == t1_turns + 1
        assert loop.steps_held > held_before
        assert (await srv.fetch("b.test", "/.well-known/stellar.toml")).code == 200
        assert await turns_taken(srv, "t2") == 0
    finally:
        await release(held)
    assert srv.services.turns.in_flight("t1") == srv.services.turns.in_flight("t2") == 0


async def test_with_turns_off_no_request_waits(make_server: MakeServer, tmp_path: Path) -> None:
    srv = await make_server(
        kyc_doc("t1", ["a.test"], plugin="hanging", limits={"hook_timeout_seconds": 30}),
        kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
        plugins_dir=plugins_dir(tmp_path), busy_tenant_requests=0)
    held: list[asyncio.Future[object]] = []
    try:
        held += await hold(srv, 4)
        assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 200
        assert await turns_taken(srv, "t1") == 0
        assert srv.services.turns.in_flight("t1") == 4  # counted all the same
    finally:
        await release(held)


async def test_uploads_whose_bodies_are_on_their_way_do_not_make_their_tenant_busy(
        make_server: MakeServer, tmp_path: Path) -> None:
    """A request counts in its tenant's requests in flight except while its body is on its
    way: four t1 uploads stalled half-way (a wallet's phone on a poor network) leave t1 below
    the mark, so its other requests take no turn. Each counts again once its body is in (here
    it then hangs in the hook), and one whose client gives up mid-body is not counted out a
    second time."""
    srv = await make_server(
        kyc_doc("t1", ["a.test"], plugin="hanging", limits={"hook_timeout_seconds": 30}),
        kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
        plugins_dir=plugins_dir(tmp_path), busy_tenant_requests=3)
    turns, budget = srv.services.turns, srv.services.upload_budget
    wallet = Wallet(srv, "a.test", "t1")
    body, content_type = multipart([("first_name", "Ada", None),
                                    ("photo_id_front", png_of_size(200 * 1024), "id.png")])
    head = request_bytes("PUT", "/kyc/customer", "a.test",
                         {"Authorization": f"Bearer {wallet.token}",
                          "Content-Type": content_type}, body)[0]
    streams = []
    held: list[asyncio.Future[object]] = []
    try:
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
            writer.write(head + body[:len(body) // 2])
            await writer.drain()
            streams.append((reader, writer))
        for _ in range(500):  # all four admitted, their bodies half read
            if budget.held == 4 * len(body):
                break
            await asyncio.sleep(0.01)
        assert budget.held == 4 * len(body)
        assert turns.in_flight("t1") == 0
        assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 200
        assert await turns_taken(srv, "t1") == 0
        # Three bodies arrive: each request counts again (and hangs in the put hook).
        before = len(hung())
        for _, writer in streams[:3]:
            writer.write(body[len(body) // 2:])
            await writer.drain()
        for _ in range(500):
            if len(hung()) == before + 3:
                break
            await asyncio.sleep(0.01)
        assert len(hung()) == before + 3
        assert turns.in_flight("t1") == 3
        assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 200
        assert await turns_taken(srv, "t1") == 1  # t1 is busy now, and its request waited
        # The fourth client leaves mid-body: its memory comes back, the count stays 3.
        streams[3][1].close()
        for _ in range(500):
            if budget.held == 3 * len(body):
                break
            await asyncio.sleep(0.01)
        assert budget.held == 3 * len(body)
        assert turns.in_flight("t1") == 3
        held += await hold(srv, 1)
        assert turns.in_flight("t1") == 4
    finally:
        for _, writer in streams:
            writer.close()
        await release(held)
        for task in hung():
            task.cancel()
    for _ in range(500):
        if turns.in_flight("t1") == 0:
            break
        await asyncio.sleep(0.01)
    assert turns.in_flight("t1") == 0
    assert turns.in_flight("t2") == 0
