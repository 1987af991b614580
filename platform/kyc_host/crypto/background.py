"""Key jobs started through the management API, run as background tasks of this process.

``rotate-kek`` and ``reindex`` wait ``2 x tenant_refresh_seconds`` between stages (so every
process has loaded a stage before the next one starts), far longer than an HTTP request should
stay open. The API starts them here and answers at once; progress is read from the job's
checkpoint (crypto/jobs.py), which looks the same whichever process runs the job.

A run started here takes the job's lease exactly like a CLI run, so at most one run works on a
job across every process and host: :meth:`KeyJobs.start` returns once the lease is held, or
raises :class:`~kyc_host.crypto.jobs.JobBusy` before anything was changed. A run that fails
after it started is logged and its one-line reason is written into the checkpoint
(``last_error``, ``failed_at``); the checkpoint stays where it was, so triggering the job again
(or ``kyc-host keys rotate|reindex``) resumes it. On shutdown the tasks are cancelled: the
lease is released on the way out and the checkpoint kept, with the same effect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from kyc_host.crypto.jobs import JobBusy
from kyc_host.crypto.rotation import JobContext
from kyc_host.crypto.tenant_keys import KeyOperationError
from kyc_host.store.base import Doc

log = logging.getLogger("kyc_host.keys")

#: A key job bound to its tenant: runs to the end (or raises) and returns the final state.
JobRun = Callable[[JobContext], Awaitable[Doc]]
STOP_WAIT_SECONDS = 5.0


class KeyJobs:
    """The key jobs this process runs in the background, by job id."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Doc | None]] = {}

    def running(self, job_id: str) -> bool:
        task = self._tasks.get(job_id)
        return task is not None and not task.done()

    async def start(self, job_id: str, ctx: JobContext, run: JobRun) -> None:
        """Start ``run(ctx)`` in the background; return once it holds the job's lease.

        Raises JobBusy if a run (here or in any other process) works on the job, or whatever
        stopped the run before it took the lease (the store being unreachable)."""
        if self.running(job_id):
            raise JobBusy(f"job {job_id} is already running in this server process")
        task = asyncio.create_task(self._guarded(job_id, ctx, run), name=f"key-job {job_id}")
        self._tasks[job_id] = task
        started = asyncio.create_task(ctx.started.wait())
        try:
            await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if not ctx.started.is_set():
            task.result()  # finished without starting: raises its reason (JobBusy, ...)

    async def _guarded(self, job_id: str, ctx: JobContext, run: JobRun) -> Doc | None:
        try:
            state = await run(ctx)
        except Exception as exc:
            if not ctx.started.is_set():
                raise  # reported to the caller of start()
            log.exception("key job %s failed", job_id)
            await _record_failure(ctx, job_id, exc)
            return None
        log.info("key job %s finished (actor %s)", job_id, ctx.actor)
        return state

    async def stop(self, wait_seconds: float = STOP_WAIT_SECONDS) -> None:
        """Cancel every running job (each releases its lease; checkpoints stay)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=wait_seconds)
        self._tasks.clear()


async def _record_failure(ctx: JobContext, job_id: str, exc: Exception) -> None:
    # A KeyOperationError is a one-line reason meant for operators; anything else may carry
    # internals, so only its kind is kept (the log has the traceback).
    reason = str(exc) if isinstance(exc, KeyOperationError | JobBusy) else (
        f"{type(exc).__name__}; see the server log")
    try:
        await ctx.store.platform("key_jobs").update_one(
            {"_id": job_id}, set={"last_error": reason, "failed_at": time.time()})
    except Exception:  # the store may be what failed; the log line above is what remains
        log.warning("could not record the failure of key job %s", job_id)
