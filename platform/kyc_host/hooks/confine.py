"""Kernel-enforced confinement of an untrusted plugin's worker process (reliability-plan F8).

The worker (hooks/worker.py) already gets a minimal environment, no secrets and a memory
cap. That alone does not stop a plugin running as the server's user from reading what the
user can read -- ``/proc/<server pid>/environ`` and ``cmdline``, the settings file, the
master key file, the SQLite store -- or from opening a socket to the database or anywhere
else. Python-level guards (audit hooks) are bypassed with ``ctypes``; these are not:

1. :func:`isolate_network` -- a new user + network namespace (``unshare(CLONE_NEWUSER |
   CLONE_NEWNET)``, unprivileged on Linux, identity uid/gid maps so file ownership looks
   unchanged). The worker's only network is a loopback that is down: no TCP, UDP or DNS,
   to the store or anywhere (ASVS 5 15.2.5 "egress blocked"). Its outbound HTTP goes through
   ``ctx.http``, which the platform runs with its SSRF-safe client. Must run while the
   process has one thread.
2. :func:`restrict_filesystem` -- Landlock (Linux >= 5.13): from then on the process and its
   children may only read (and execute) beneath the Python installation, ``sys.path``, the
   system library directories and the plugins directory, and read/write ``/dev/null``. Every
   other path (``/proc``, ``/etc``, the settings, keys, tenants and store) is EACCES, and
   nothing can be created or written. With Landlock ABI >= 4 TCP ``connect``/``bind`` are
   denied too (a second wall if (1) was refused), with ABI >= 6 signals to, and abstract
   UNIX sockets of, processes outside the worker.

Both are best effort: a kernel or container that refuses them (seccomp, an AppArmor policy
on user namespaces, an old kernel) leaves the worker unconfined in that respect; the worker
then tells the platform, which logs a warning under the tenant (hooks/worker.py).
Limits: a UNIX socket reachable by path (e.g. ``/var/run/docker.sock``, a database socket) can
still be connected to -- neither a network namespace nor Landlock up to ABI 7 covers it (checked
on this machine); keep such sockets out of the worker's user's reach. CPU time is bounded by the
hook timeout and the worker's niceness, not here.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
#: Landlock system calls (the same numbers on x86_64 and the generic table, e.g. arm64).
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
# Landlock filesystem rights (uapi/linux/landlock.h).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
#: Rights a rule on a file (not a directory) may carry.
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
#: Read-only system directories (shared libraries of extension modules, zoneinfo).
SYSTEM_DIRS = ("/usr", "/lib", "/lib64")


class ConfinementError(OSError):
    """The kernel refused a confinement step (the worker goes on without it)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> ConfinementError:
    errno = ctypes.get_errno()
    return ConfinementError(errno, f"{what}: {os.strerror(errno)}")


def isolate_network() -> None:
    """Enter a new user and network namespace; raises ConfinementError if refused."""
    if threading.active_count() != 1:  # the kernel refuses CLONE_NEWUSER with threads
        raise ConfinementError(0, "unshare needs a single-threaded process")
    uid, gid = os.getuid(), os.getgid()
    if _libc().unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        raise _fail("unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    # Identity maps: the process keeps its uid/gid for file access (an unmapped id could
    # not create or chown anything, and would show files as owned by "nobody").
    for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as handle:
            handle.write(text)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    version = _libc().syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                              CREATE_RULESET_VERSION)
    return max(int(version), 0)


def readable_roots(plugins_dir: Path) -> list[str]:
    """What a worker may read: Python, its import path, system libraries, the plugins.

    Never ``/`` (an empty ``sys.path`` entry or cwd would otherwise open everything)."""
    candidates: Iterable[str] = (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                 sys.base_exec_prefix, *sys.path, *SYSTEM_DIRS, str(plugins_dir))
    roots: list[str] = []
    for entry in candidates:
        if not entry:
            continue
        path = os.path.realpath(entry)
        if path != "/" and os.path.exists(path) and path not in roots:
            roots.append(path)
    return roots


def restrict_filesystem(plugins_dir: Path) -> int:
    """Landlock the process (see the module doc); returns the ABI used.

    Raises ConfinementError when Landlock is unavailable or a step is refused."""
    if threading.active_count() != 1:  # Landlock binds the calling thread (and later ones)
        raise ConfinementError(0, "Landlock needs a single-threaded process")
    abi = landlock_abi()
    if abi < 1:
        raise ConfinementError(0, "Landlock is not available in this kernel")
    fs_rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    fs_rights |= (1 << 13 if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    fs_rights |= FS_IOCTL_DEV if abi >= 5 else 0
    net_rights = 0b11 if abi >= 4 else 0  # bind_tcp, connect_tcp: no rule allows any
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets, signals
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = ctypes.create_string_buffer(
        struct.pack("=QQQ", fs_rights, net_rights, scoped)[:size], size)
    libc = _libc()
    ruleset = int(libc.syscall(SYS_CREATE_RULESET, attr, ctypes.c_size_t(size), 0))
    if ruleset < 0:
        raise _fail("landlock_create_ruleset")
    try:
        for root in readable_roots(plugins_dir):
            _allow(libc, ruleset, root, READ_ONLY & fs_rights)
        _allow(libc, ruleset, os.devnull, (FS_READ_FILE | FS_WRITE_FILE) & fs_rights)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FS_FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, rule, 0) != 0:
            raise _fail(f"landlock_add_rule({path})")
    finally:
        os.close(fd)
