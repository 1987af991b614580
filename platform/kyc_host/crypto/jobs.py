"""Resumable key jobs: one lease per job, a checkpoint after every batch, a progress bar.

A key job (rotate, reindex, rotate-master) keeps its state in the platform ``key_jobs``
collection under ``_id = "<kind>:<tenant or *>"``: the stage it reached, a cursor (the last
record id done in the current pass) and counters. Every stage and every batch is idempotent,
so a run killed at any point (``kill -9`` included) is finished by running the same command
again, which resumes from the checkpoint.

Only one run of a job may work at a time. The lease is a separate document
``<job id>:lease`` created with a unique insert (the one exclusivity primitive that works on
every backend), renewed while the run works and deleted at the end. A lease whose holder is
gone -- expired, or a process on this host that no longer exists -- is taken over.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from kyc_host.store.base import Collection, Doc, DuplicateKeyError, Store

LEASE_SECONDS = 60.0
#: Called after every batch with (pass name, records done in the pass); tests use it to
#: "crash" a run midway by raising.
BatchHook = Callable[[str, int], Awaitable[None] | None]


class JobBusy(Exception):
    """Another run holds this job's lease."""


def lease_id(job_id: str) -> str:
    """The ``key_jobs`` id of the lease of ``job_id``."""
    return f"{job_id}:lease"


class Lease:
    def __init__(self, jobs: Collection, job_id: str) -> None:
        self._jobs = jobs
        self._id = lease_id(job_id)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def acquire(self) -> None:
        for _ in range(3):
            try:
                await self._jobs.insert_one(self._doc())
                return
            except DuplicateKeyError:
                held = await self._jobs.find_one({"_id": self._id})
                if held is not None and not _stale(held):
                    raise JobBusy(f"another run ({held.get('owner')}) is working on this job; "
                                  "it resumes from its checkpoint, or rerun when it stops"
                                  ) from None
                if held is not None:
                    await self._jobs.delete_one({"_id": self._id, "owner": held.get("owner")})
        raise JobBusy("could not take the job's lease")

    def _doc(self) -> Doc:
        return {"_id": self._id, "owner": self.owner, "host": socket.gethostname(),
                "pid": os.getpid(), "until": time.time() + LEASE_SECONDS}

    async def renew(self) -> None:
        await self._jobs.update_one({"_id": self._id, "owner": self.owner},
                                    set={"until": time.time() + LEASE_SECONDS})

    async def release(self) -> None:
        await self._jobs.delete_one({"_id": self._id, "owner": self.owner})


async def live_lease(jobs: Collection, job_id: str) -> Doc | None:
    """The lease of ``job_id`` if a live run holds it (None: no run is working on it)."""
    held = await jobs.find_one({"_id": lease_id(job_id)})
    return None if held is None or _stale(held) else held


def _stale(lease: Doc) -> bool:
    if float(lease.get("until", 0)) < time.time():
        return True
    if lease.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(lease.get("pid", 0)), 0)
    except ProcessLookupError:
        return True  # the holder on this host died (kill -9): take over at once
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


class Checkpoint:
    """The persistent state of one job (a plain document, read and written whole)."""

    def __init__(self, store: Store, job_id: str) -> None:
        self.jobs = store.platform("key_jobs")
        self.job_id = job_id
        self.state: Doc = {}

    async def load(self) -> Doc | None:
        doc = await self.jobs.find_one({"_id": self.job_id})
        self.state = dict(doc) if doc else {}
        return doc

    async def save(self, **changes: Any) -> None:
        self.state.update(changes, _id=self.job_id, updated_at=time.time())
        await self.jobs.replace_one({"_id": self.job_id}, self.state, upsert=True)


class Progress:
    """A one-line progress bar with rate and ETA, redrawn in place (``\\r``) on stderr.

    When the stream is not a terminal (a log file, a pipe, CI) there is no redrawing: a plain
    line every :attr:`LOG_INTERVAL` seconds of a long pass, and one final line at close.
    """

    #: Seconds between bar redraws on a terminal, and between plain lines elsewhere.
    TTY_INTERVAL = 0.2
    LOG_INTERVAL = 10.0

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = _isatty(self.stream)
        self._start = time.monotonic()
        self._drawn = 0.0 if self.tty else self._start

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty:
            due = now - self._drawn >= self.TTY_INTERVAL or self.done >= self.total
        else:  # the final count is close()'s line
            due = now - self._drawn >= self.LOG_INTERVAL and self.done < self.total
        if due:
            self._drawn = now
            self._draw(now)

    def _line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        total = max(self.total, self.done)
        left = (total - self.done) / rate if rate > 0 else 0.0
        filled = int(30 * self.done / total) if total else 30
        bar = "#" * filled + "." * (30 - filled)
        return f"{self.label:<18} [{bar}] {self.done}/{total} {rate:7.1f}/s ETA {_clock(left)}"

    def _draw(self, now: float) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write(f"\r{self._line(now)} ")
        else:
            self.stream.write(f"{self._line(now)}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def note(message: str, stream: TextIO | None = None, enabled: bool = True) -> None:
    """A status line of a job (stage reached, waiting for processes) on stderr."""
    if enabled:
        out = stream or sys.stderr
        out.write(f"{message}\n")
        out.flush()
