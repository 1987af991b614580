"""Event-loop lag probe (reliability-plan F8 and L5: "no event-loop stall > 100 ms").

Every ``interval`` seconds the probe asks the loop to call it back ``interval`` seconds
later and, when it runs, records how late it ran: ``lag = loop.time() - due``. While the
loop is free the lag is a fraction of a millisecond; a callback that blocks the loop (a
trusted in-process plugin, a synchronous store call, CPU-heavy crypto) delays the probe by
about as long as it blocks. Each lag goes into the histogram ``kyc_event_loop_lag_seconds``;
the gauge ``kyc_event_loop_lag_max_seconds`` holds the largest lag **since the process
started** (not since the last scrape: with ``--workers N`` any worker answers a scrape, so a
reset-on-scrape would only reset that worker's value, and a second scraper would steal the
first one's maximum; use the histogram's ``rate``/``increase`` for windows).

Overload (reliability-plan L2: beyond the knee, shed load with 503, not timeouts):
:meth:`LoopLagProbe.current_lag` is how far behind the loop is *now* -- the larger of the
last measured lag and how overdue the pending probe already is. Under overload every
iteration of the loop works through a backlog of ready connections, a newly arrived request
waits about one iteration, and the probe waits with it; web/base.py refuses public requests
with 503 + ``Retry-After`` while it exceeds ``overload_lag_seconds``, which costs far less
than serving them, so the backlog drains instead of growing into client timeouts.

Turn-taking (web/turns.py): on the server's ``TurnTakingLoop`` each tick also adds the steps
of busy tenants' work the loop held back since the last tick to ``kyc_loop_steps_held_total``
(counted from :meth:`LoopLagProbe.start`: the loop's own count runs from its start).

Resolution: a stall of ``s`` seconds delays the next probe by between ``s - interval`` and
``s``, so with the default 0.1 s interval a stall over 0.2 s always shows above the 0.1 s
bucket. Cost: one timer callback per interval (~10 a second), no task, no thread.
"""

from __future__ import annotations

import asyncio
import logging

from kyc_host.metrics import Metrics
from kyc_host.web.turns import TurnTakingLoop

log = logging.getLogger(__name__)

#: Default probe period (seconds).
INTERVAL_SECONDS = 0.1
#: A lag above this is logged (at warning level) as well as counted.
LOG_ABOVE_SECONDS = 0.5


class LoopLagProbe:
    """Measures how late the running loop runs a timer, into ``metrics``.

    :meth:`start` must be called from the loop to watch; :meth:`stop` cancels the pending
    timer (idempotent). ``max_lag`` is the largest lag seen since :meth:`start`.
    """

    def __init__(self, metrics: Metrics, interval: float = INTERVAL_SECONDS) -> None:
        self.metrics = metrics
        self.interval = interval
        self.max_lag = 0.0
        self.last_lag = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        #: The loop's ``steps_held`` last added to the counter (TurnTakingLoop only).
        self._held_seen = 0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        if isinstance(loop, TurnTakingLoop):
            self._held_seen = loop.steps_held
        self._schedule(loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def current_lag(self) -> float:
        """Seconds the loop is behind: the last measured lag, or how overdue the pending
        probe is if that is more (0 when stopped). Call it from the watched loop."""
        if self._handle is None or self._loop is None:
            return 0.0
        return max(self.last_lag, self._loop.time() - self._due)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + self.interval
        self._loop, self._due = loop, due
        self._handle = loop.call_at(due, self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        lag = max(0.0, loop.time() - due)
        self.last_lag = lag
        self.metrics.loop_lag.observe(lag)
        if lag > self.max_lag:
            self.max_lag = lag
            self.metrics.loop_lag_max.set(lag)
        if lag > LOG_ABOVE_SECONDS:
            log.warning("event loop stalled for about %.3f s", lag)
        if isinstance(loop, TurnTakingLoop) and loop.steps_held != self._held_seen:
            self.metrics.steps_held.inc(loop.steps_held - self._held_seen)
            self._held_seen = loop.steps_held
        self._schedule(loop)
