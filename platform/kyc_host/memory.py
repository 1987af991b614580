"""The C allocator's settings for a server that runs for months (glibc only).

glibc's malloc gives each thread that allocates its own arena, up to eight per core, and
keeps memory freed in an arena for reuse by that arena. The server's threads (the SQLite
writer, the executor's workers, the store driver's) take turns on short jobs, so each arena
fills and empties at its own pace, and the freed memory held across them added up: in two
30-minute soaks side by side (BENCHMARKS.md), glibc's defaults held 14-27 MB of freed memory
and the process ran 15-20 MiB larger than with two arenas. Python's own small objects are
not affected (they live in its allocator's pools).

Big blocks are the other half. An upload passes through several buffers of its size (the
body, the file's value, each sealed 1 MiB chunk). A block that is ``mmap``'ed is returned to
the system when freed, and the next one is faulted in again page by page, each page zeroed
by the kernel: about 1 ms of CPU per MiB on the 2-vCPU VM of BENCHMARKS.md, where a 256 KiB
threshold made a 1 MiB upload cost 15.6-16.4 ms of server CPU (11.0-14.2 ms with the
settings here) and put one process past its knee at the L1 mix's 200 req/s. So blocks up to
glibc's ceiling (32 MiB, above the largest request body) come from the arenas, and an arena
gives memory back only when more than 64 MiB lies free at its top (glibc pairs its own
thresholds so once it has raised them). Freed memory is reused instead of faulted in again;
the price is RSS: the process keeps what its busiest moment needed (twenty concurrent
9.5 MiB uploads: a peak of about 375 MiB against 250 MiB).

:func:`tune_malloc` sets all three at start-up, before any thread exists, through
``mallopt(3)``, and leaves alone each one the operator set in the environment
(``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``: glibc has
read them already). Workers forked later inherit the settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Two arenas: the event loop's thread and one shared by the others.
ARENA_MAX = 2
#: Blocks from this size are mmap'ed (and unmapped when freed): glibc's ceiling. glibc's
#: default starts at 128 KiB and rises with each larger block freed.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: An arena gives memory back to the system when more than this lies free at its top.
TRIM_THRESHOLD = 64 * 1024 * 1024

#: Each setting and the environment variable that overrides it.
_SETTINGS = ((M_ARENA_MAX, ARENA_MAX, "MALLOC_ARENA_MAX"),
             (M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
             (M_TRIM_THRESHOLD, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"))


#: What :func:`tune_malloc` set in this process (forked workers inherit it), for the log.
applied: dict[str, int] = {}


def tune_malloc() -> dict[str, int]:
    """Apply the settings above unless the environment sets them; returns what was set
    (by environment variable name), empty where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return {}
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc without mallopt
        return {}
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for param, value, variable in _SETTINGS:
        if variable not in os.environ and mallopt(param, value) == 1:
            applied[variable] = value
    return dict(applied)


def describe() -> str:
    """What the start-up log line says about the C allocator."""
    if not applied:  # not glibc, or the environment set them all
        return "C allocator left as it was"
    return "C allocator " + " ".join(f"{k}={v}" for k, v in applied.items())
