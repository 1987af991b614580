"""Turn-taking on the event loop: a tenant with many requests in flight lets the others go first.

One process serves every tenant on one event loop, and the loop runs whatever is ready in
the order it became ready. A tenant flooding its routes (a wallet at 5x its limits, 64
connections into a hung plugin hook, 50 logins waiting on a wallet site that never answers)
therefore put its requests' work -- reading the token, the store, answering the refusal --
in front of every other tenant's, and a quiet tenant's p95 went up by half while the process
had CPU to spare (the noisy-neighbour benchmark, BENCHMARKS.md).

:class:`LoopTurns` counts each tenant's requests in flight in this process. A tenant with
``busy_at`` or more of them, and more than ``BUSY_SHARE`` times as many as the other tenants
with requests in flight have on average, is *busy*. So tenants under like loads (two
anchors' wallets at the process's knee) never hold each other back: that only spread both
tenants' latencies (longer p99s, BENCHMARKS.md). A tenant alone with requests in flight is
busy from ``busy_at``. A request whose body is on its way (or waits for its turn to be read)
does not count until the body is in: it costs the loop nothing meanwhile, and 200 uploads
trickling from one tenant's wallets made that tenant busy and slowed its other wallets'
requests (the slow-clients benchmark, BENCHMARKS.md).

A request of a busy tenant waits for a turn at the two moments its work re-enters the loop
in bulk: once its headers are read (before anything else is done for it: web/serving.py),
and when it comes back from a long wait (for a plugin worker, an outbound fetch, its
upload's bandwidth turn: :func:`take_turn`). A turn is a loop iteration in which nothing
else ran, so every other request that is ready goes first. Nothing is refused, and when
the process has time to spare the wait is a few microseconds; a request never waits longer
than ``max_wait`` seconds, so a busy tenant is slowed when the loop is never idle, not
starved. A tenant below ``busy_at`` (the ordinary case: a wallet's requests take
milliseconds) never waits here.

Those turns work on any event loop, but between them a busy tenant's requests still do
their short steps (a body chunk read, a refusal written, a hook's timeout ending) in the
order they became ready, and in the noisy-neighbour benchmark those steps -- each under a
millisecond, about 7 % of the loop's time -- were what was left of the quiet tenant's
slowdown (BENCHMARKS.md). The server therefore runs on :class:`TurnTakingLoop`, which applies
the same rule to every step: a step of a busy tenant's request runs in a loop iteration in
which nothing else is ready, or once it has waited ``max_wait``. A step belongs to the tenant
named in the context it runs in: the connection's, from the moment its request's headers
name the tenant (:meth:`LoopTurns.mark`), and every task the request starts. On that loop
the turn points above have nothing left to do and let the request go on at once (they are
still counted). Work that belongs to no tenant (the callback worker, the purge job, the
listeners accepting) is never held back.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVarTuple, Unpack

#: Requests of one tenant in flight in one process from which it is busy (a setting:
#: ``busy_tenant_requests``).
DEFAULT_BUSY_AT = 16
#: A tenant at that count or over is busy only with more than this many times the average
#: in flight of the other tenants that have any.
BUSY_SHARE = 2
#: The longest a request waits for its turn (a loop that is never idle still serves it).
MAX_WAIT_SECONDS = 0.05
#: A busy tenant whose steps have been the only tenant's steps on the loop for this long is
#: alone (say, one tenant saturating the process): :class:`TurnTakingLoop` holds its steps
#: for one iteration only, since there is no one to let go first.
ALONE_SECONDS = 0.05
#: A loop iteration shorter than this ran nothing but the turn-giver itself (one
#: ``epoll_wait(0)`` and one task step: 10-40 us here; a step of any request takes longer).
IDLE_ITERATION_SECONDS = 0.0002

#: The process's turns and the tenant of the request being served (set in its prepare()).
_serving: ContextVar[tuple[LoopTurns, str] | None] = ContextVar("kyc_turns", default=None)

_Args = TypeVarTuple("_Args")


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[None]
    since: float


class LoopTurns:
    """Per process: each tenant's requests in flight, and the line of busy tenants'
    requests waiting for a turn."""

    def __init__(self, busy_at: int = DEFAULT_BUSY_AT, max_wait: float = MAX_WAIT_SECONDS,
                 on_wait: Callable[[str], None] | None = None,
                 loop_orders_steps: bool = False) -> None:
        #: 0: no tenant is ever busy.
        self.busy_at = busy_at
        self.max_wait = max_wait
        self._on_wait = on_wait
        #: The process runs on a :class:`TurnTakingLoop` (which takes this one's
        #: ``max_wait``): a turn is then counted but not waited for here.
        self.loop_orders_steps = loop_orders_steps
        self._inflight: collections.Counter[str] = collections.Counter()
        #: Sum of ``_inflight``.
        self._total = 0
        self._line: collections.deque[_Waiter] = collections.deque()
        self._giver: asyncio.Task[None] | None = None

    def started(self, tenant_id: str) -> None:
        """A request of ``tenant_id`` is being served (until :meth:`ended`), in the
        current context: :func:`take_turn` in it knows its tenant."""
        self.resumed(tenant_id)
        _serving.set((self, tenant_id))

    def resumed(self, tenant_id: str) -> None:
        """A request of ``tenant_id`` counted out by :meth:`ended` while it waited on its
        client (web/base.py ``waiting_on_client``) counts again."""
        self._inflight[tenant_id] += 1
        self._total += 1

    def mark(self, tenant_id: str) -> None:
        """The current context works for ``tenant_id`` (a connection, once its request's
        headers name the tenant): on a :class:`TurnTakingLoop` its steps wait while that
        tenant is busy."""
        _serving.set((self, tenant_id))

    def ended(self, tenant_id: str) -> None:
        left = self._inflight[tenant_id] - 1
        self._total -= 1
        if left > 0:
            self._inflight[tenant_id] = left
        else:
            del self._inflight[tenant_id]

    def in_flight(self, tenant_id: str) -> int:
        return self._inflight.get(tenant_id, 0)

    def busy(self, tenant_id: str) -> bool:
        """``busy_at`` or more requests in flight, and more than ``BUSY_SHARE`` times the
        average of the other tenants with requests in flight (if there are any)."""
        mine = self._inflight.get(tenant_id, 0)
        if not self.busy_at or mine < self.busy_at:
            return False
        others = len(self._inflight) - 1  # tenants with requests in flight, this one aside
        return not others or mine * others > BUSY_SHARE * (self._total - mine)

    def turn(self, tenant_id: str) -> asyncio.Future[None] | None:
        """None if a request of ``tenant_id`` may go on now (the tenant is not busy), else
        a future that is done at its turn."""
        if not self.busy(tenant_id):
            return None
        if self._on_wait is not None:
            self._on_wait(tenant_id)
        if self.loop_orders_steps:
            return None
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), loop.time())
        self._line.append(waiter)
        if self._giver is None or self._giver.done():
            # In a context of its own: the turn-giver works for no tenant.
            self._giver = loop.create_task(self._give_turns(), context=contextvars.Context())
        return waiter.future

    async def _give_turns(self) -> None:
        """One turn per idle loop iteration, oldest first, and at once to every request
        that has waited ``max_wait``, until the line is empty."""
        loop = asyncio.get_running_loop()
        line = self._line
        last = loop.time()
        while line:
            await asyncio.sleep(0)  # to the back of the ready queue: all that is ready runs
            now = loop.time()
            idle = now - last < IDLE_ITERATION_SECONDS
            while line and (idle or line[0].future.done()
                            or now - line[0].since >= self.max_wait):
                head = line.popleft()
                if not head.future.done():  # else cancelled: its request ended meanwhile
                    head.future.set_result(None)
                    idle = False  # one turn per idle iteration
            last = loop.time()


async def take_turn() -> None:
    """In a request of a busy tenant, wait for a turn; elsewhere return at once.

    Called where a request comes back from a long wait, since a busy tenant's parked
    requests come back many at a time (all 64 of a flood into a hung hook within its
    timeout), and each then does its work in front of other tenants' ready requests."""
    serving = _serving.get()
    if serving is not None:
        turn = serving[0].turn(serving[1])
        if turn is not None:
            await turn


class TurnTakingLoop(asyncio.SelectorEventLoop):
    """The server's event loop: every step of a busy tenant's work waits for an idle loop
    iteration, or ``max_wait`` seconds at most (see the module's text).

    A step is a callback the loop is asked to run soon with a context: a task's next step
    and a future's done-callbacks (a task waking up) come that way. The tenant is the one
    that context was marked with (:meth:`LoopTurns.started`, :meth:`LoopTurns.mark`). Such
    a step, while its tenant is busy, goes into a line of its own; at the end of each loop
    iteration in which nothing else became ready, the oldest one runs, and every one that
    has waited ``max_wait`` runs at once. I/O readiness and timers (which do not come
    through ``call_soon``) and callbacks scheduled without a context are never held back:
    a socket is read as soon as it is ready, and the quiet tenant's steps run before any
    held one. When no step of a tenant that is not busy has come for ``ALONE_SECONDS``,
    the held steps all go at the next iteration (ordering them would cost a loop iteration
    per step and help no one: about 10 % of the throughput of stellar.toml, the cheapest
    route, with one tenant saturating the process).

    This reads the loop's ready queue (``_ready``, CPython's since asyncio began): "nothing
    else is ready" has no public form. tests/foundation/test_loop_turns.py checks the order
    it gives, so a Python that changes it fails there.
    """

    def __init__(self, selector: Any = None) -> None:
        super().__init__(selector)
        #: Held steps, oldest first, each with the loop time by which it runs at the latest.
        self._held: collections.deque[tuple[asyncio.Handle, float]] = collections.deque()
        self._giving = False
        #: Steps held since the loop began.
        self.steps_held = 0
        #: Steps of tenants that are not busy since the loop began, the count last seen by
        #: :meth:`_give`, and the loop time it last changed at.
        self._others = 0
        self._others_seen = 0
        self._others_at = float("-inf")

    def call_soon(self, callback: Callable[[Unpack[_Args]], object], *args: *_Args,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        if context is not None:
            serving = context.get(_serving)
            if serving is not None:
                if serving[0].busy(serving[1]):
                    return self._hold(callback, args, context, serving[0].max_wait)
                self._others += 1
        return super().call_soon(callback, *args, context=context)

    @property
    def holding(self) -> int:
        """Steps held now."""
        return len(self._held)

    def _hold(self, callback: Callable[..., object], args: tuple[Any, ...],
              context: contextvars.Context, max_wait: float) -> asyncio.Handle:
        self._check_closed()  # type: ignore[attr-defined]
        handle = asyncio.Handle(callback, args, self, context)
        self._held.append((handle, self.time() + max_wait))
        self.steps_held += 1
        if not self._giving:
            self._giving = True
            super().call_soon(self._give)
        return handle

    def _give(self) -> None:
        """Once per loop iteration while steps are held: to the ready queue go the oldest
        held step if nothing else is ready, and every held step that waited ``max_wait``
        (all of them if the busy tenants are alone)."""
        held = self._held
        ready: collections.deque[asyncio.Handle] = self._ready  # type: ignore[attr-defined]
        idle = not ready
        now = self.time()
        if self._others != self._others_seen:
            self._others_seen, self._others_at = self._others, now
        alone = now - self._others_at > ALONE_SECONDS
        while held and (idle or alone or held[0][1] <= now):
            handle, _ = held.popleft()
            if not handle.cancelled():
                ready.append(handle)
                idle = False  # one step per idle iteration
        if held:
            super().call_soon(self._give)
        else:
            self._giving = False
