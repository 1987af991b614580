"""Process lifetimes: a child process that must not outlive the process that started it."""

from __future__ import annotations

import ctypes
import os
import signal

#: prctl(2) option: the signal the kernel sends this process when its parent ends (Linux).
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send ``signum`` to this process when ``parent`` (its parent) ends,
    however it ends, and exit at once if it already has (Linux; elsewhere nothing is set)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
