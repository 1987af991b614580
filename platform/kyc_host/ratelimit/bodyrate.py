"""Uploads whose bodies cannot arrive in time are cut early instead of at the body timer.

An admitted upload holds its declared length of the process's upload memory (budget.py) and
its place in its tenant's bandwidth share (pacing.py) until it is answered. A client that
sends it far slower than it could ever finish within ``body_timeout_seconds`` -- a phone on a
dying link, or a client trickling on purpose to hold the server's memory -- used to keep both
until the body timer cut it, up to 60 s, with every byte it had sent wasted anyway: a
handful of accounts sending 10 MiB uploads at 1 KB/s could keep a tenant's share of the
upload memory full, and with it every other upload of that tenant waiting or refused.

:class:`BodyRate` watches one upload from its admission. From a sixth of the body timeout on
(:data:`GRACE_SHARE`: 10 s of the default 60), every 2 s (:data:`CHECK_SHARE`), the rest of
the body must be able to arrive before the body timer at :data:`SPEEDUP` times the rate the
client kept so far (time the server itself held the reading back, pacing the tenant's
bandwidth, is not counted against the client). An upload that could not is answered 408 at
once, nothing of it is stored, and its bytes go back. An upload that can still make it in
time is never cut, however slow, and one whose client speeds up is judged on its whole
average. Only uploads with a ``Content-Length`` over 64 KiB are watched (smaller bodies
neither wait in line nor hold upload memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kyc_host.errors import RequestTimeout

#: Share of ``body_timeout_seconds`` after admission before an upload's rate is judged (10 s
#: of the default 60: a connection's first seconds, TCP slow start and a phone waking its
#: radio, say little about its rate).
GRACE_SHARE = 1 / 6
#: How often, as a share of ``body_timeout_seconds``, an upload still arriving is judged
#: again (every 2 s of the default 60).
CHECK_SHARE = 1 / 30
#: How much faster than so far a client may still send: an upload is cut only when even at
#: this multiple of its rate the rest could not arrive before the body timer.
SPEEDUP = 2.0


def cannot_arrive(*, remaining: int, received: int, sending_seconds: float,
                  seconds_left: float) -> bool:
    """Whether ``remaining`` more bytes cannot arrive in ``seconds_left`` at :data:`SPEEDUP`
    times the rate of ``received`` bytes in ``sending_seconds``."""
    if remaining <= 0:
        return False
    if seconds_left <= 0:
        return True
    rate = received / sending_seconds if sending_seconds > 0 else float("inf")
    return remaining > SPEEDUP * rate * seconds_left


class BodyRate:
    """The watch over one upload's body, from its admission until it is in or answered.

    ``received()`` gives the body bytes read so far; ``cut(error)`` answers the request with
    ``error`` (a 408). The owner calls :meth:`paused` with each pause of its reading it
    imposed itself, and :meth:`stop` when the body is in or the request ended.
    """

    def __init__(self, declared: int, body_timeout: float, received: Callable[[], int],
                 cut: Callable[[RequestTimeout], None]) -> None:
        self.declared = declared
        self.body_timeout = body_timeout
        self._received = received
        self._cut = cut
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._paused = 0.0
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            GRACE_SHARE * body_timeout, self._check)

    def paused(self, seconds: float) -> None:
        """The server held this body's reading back for ``seconds`` (its tenant's pacing)."""
        self._paused += seconds

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        elapsed = self._loop.time() - self._started
        received = self._received()
        if cannot_arrive(remaining=self.declared - received, received=received,
                         sending_seconds=elapsed - self._paused,
                         seconds_left=self.body_timeout - elapsed):
            rate = received / max(elapsed - self._paused, 0.001)
            self._cut(RequestTimeout(
                f"upload too slow: {rate:.0f} bytes/s after {elapsed:.0f} s; its other "
                f"{self.declared - received} bytes could not arrive within the "
                f"{self.body_timeout:g} s the server waits for a body "
                f"(body_timeout_seconds); send it faster or in smaller parts"))
            return
        self._timer = self._loop.call_later(CHECK_SHARE * self.body_timeout, self._check)
