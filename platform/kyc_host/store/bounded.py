"""Store work run on a thread pool, refused unrun when it waited too long for its thread.

Both the SQLite backend (store/sqlite.py: its reader and writer threads) and the file store
(store/files.py: the file-crypto threads) queue work on small pools. Work that waited longer
than a bound is refused before it runs -- :class:`StoreUnavailable`, which the request
answers as 503 + Retry-After like a MongoDB operation past the client's timeoutMS -- so an
overloaded process sheds load instead of letting requests run into client timeouts
(reliability-plan L2 and F1: 503 within 5 s), and nothing of the refused work is half-done.

The bound holds for a whole request too (:func:`start_request`, called as a request begins):
a request whose operations each waited under the bound but together over it is refused at
its next one. A PUT makes several store operations in a row; each waiting 2-3 s behind a
busy writer, it ran into its client's 10 s timeout without any one of them being refused.

A wallet request's MongoDB operations are bounded the same way (:func:`store_time`, used by
store/mongo.py): they may take the ``request_store_seconds`` setting in all (4 s by default),
each one getting what is left as its timeout. The client's own timeout is per operation, so
on a slow (not stopped) server a PUT's four or five operations, or a DELETE's twenty, of a
second or more each ran past the clients' timeouts.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from kyc_host.store.base import StoreUnavailable

T = TypeVar("T")

#: The default bound (the MongoDB client's timeoutMS is 4 s too).
QUEUE_TIMEOUT_SECONDS = 4.0
#: Seconds the running request's work has waited for store threads so far (a one-item list,
#: shared by the request's tasks and the threads working for it); None outside a request.
_WAITED: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "kyc_store_waited", default=None)


@dataclass
class StoreTime:
    """The store time one request may still spend (its MongoDB operations' durations)."""

    owner: asyncio.Task[object] | None
    limit: float
    spent: float = 0.0

    def left(self) -> float:
        return self.limit - self.spent


#: The running request's store time; None outside a request and for admin requests.
_STORE_TIME: contextvars.ContextVar[StoreTime | None] = contextvars.ContextVar(
    "kyc_store_time", default=None)


def start_request(*, store_seconds: float | None = None) -> None:
    """Start counting the store-queue time of the request running in this task and, with
    ``store_seconds``, bound the time its MongoDB operations take in all (:func:`store_time`).
    """
    _WAITED.set([0.0])
    _STORE_TIME.set(None if store_seconds is None
                    else StoreTime(asyncio.current_task(), store_seconds))


def store_time() -> StoreTime | None:
    """The running request's store-time budget, if the running task is the request's own.

    Tasks a request starts inherit its context; those that outlive it or run beside it (a
    rate-limit sweep, a hook's task bounded by its own timeout) neither spend nor are held to
    the request's budget.
    """
    budget = _STORE_TIME.get()
    if budget is None or budget.owner is not asyncio.current_task():
        return None
    return budget


def charge(seconds: float) -> float:
    """Count ``seconds`` more of store waiting for the running request and return its total
    so far (outside a request: ``seconds``). For waits that are not a thread queue's (the
    SQLite loop writes waiting for the writer thread's transaction)."""
    request = _WAITED.get()
    if request is None:
        return seconds
    request[0] += seconds
    return request[0]


async def run_bounded(pool: Executor, fn: Callable[[], T], *, bound: float, busy: str) -> T:
    """Run ``fn`` on ``pool`` and return its result.

    If ``fn`` waited more than ``bound`` seconds for its thread -- or, within a request, the
    request's store work has waited more than ``bound`` in all -- it is not run:
    ``StoreUnavailable(f"{busy} (waited over {bound:g} s)")`` is raised instead. ``fn`` runs
    in a copy of the caller's context, so the thread's log lines and traces name the request
    they work for (logs.bind_request), as work done on the event loop does.
    """
    queued_at = time.monotonic()

    def call() -> T:
        waited = charge(time.monotonic() - queued_at)
        if waited > bound:
            raise StoreUnavailable(f"{busy} (waited over {bound:g} s)")
        return fn()

    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(pool, context.run, call)
