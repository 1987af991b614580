"""The C allocator's settings (kyc_host/memory.py): two glibc arenas however many threads
allocate, and big buffers reused once freed instead of faulted in again, unless the
environment says otherwise. Each case runs in a fresh interpreter, since the settings are
per process and must come before its threads."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")

#: Eight threads allocate blocks too big for Python's own pools and, all alive at once, the
#: main thread counts glibc's heaps (one per arena) in malloc_info(3)'s report.
SCRIPT = r"""
import ctypes, json, re, sys, threading
from kyc_host.memory import tune_malloc

applied = tune_malloc() if sys.argv[1] == "tune" else {}
barrier = threading.Barrier(9)


def work():
    kept = [bytearray(4096) for _ in range(100)]
    barrier.wait()
    barrier.wait()


threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
barrier.wait()
libc = ctypes.CDLL(None)
libc.open_memstream.restype = ctypes.c_void_p
report, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(report), ctypes.byref(size)))
libc.malloc_info(0, stream)
libc.fclose(stream)
barrier.wait()
for thread in threads:
    thread.join()
print(json.dumps({"applied": applied,
                  "heaps": len(re.findall(r'<heap nr="\d+">', report.value.decode()))}))
"""


def heaps(mode: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60,
        check=True, env={**clean, "PYTHONPATH": str(ROOT / "platform"), **env})
    return json.loads(result.stdout)


def test_glibc_defaults_give_each_thread_an_arena() -> None:
    # The control: without tune_malloc the threads get arenas of their own (up to eight
    # per core: nine here with two cores or more).
    plain = heaps("plain")
    assert plain["applied"] == {}
    assert plain["heaps"] == min(9, 8 * (os.cpu_count() or 1))


MMAP = {"MALLOC_MMAP_THRESHOLD_": 32 * MIB}
TRIM = {"MALLOC_TRIM_THRESHOLD_": 64 * MIB}


def test_tune_malloc_keeps_every_thread_on_two_arenas() -> None:
    assert heaps("tune") == {"applied": {"MALLOC_ARENA_MAX": 2, **MMAP, **TRIM}, "heaps": 2}


def test_the_environment_overrides_each_setting() -> None:
    assert heaps("tune", MALLOC_ARENA_MAX="4") == {"applied": {**MMAP, **TRIM}, "heaps": 4}
    assert heaps("tune", MALLOC_MMAP_THRESHOLD_="131072") == {
        "applied": {"MALLOC_ARENA_MAX": 2, **TRIM}, "heaps": 2}
    assert heaps("tune", MALLOC_TRIM_THRESHOLD_="131072") == {
        "applied": {"MALLOC_ARENA_MAX": 2, **MMAP}, "heaps": 2}


#: Buffers the size of an upload's (3 MiB, written to, as a body or a copy of one is) made
#: and freed one after another, while the process counts its page faults.
FAULTS = r"""
import json, resource, sys
from kyc_host.memory import tune_malloc

tune_malloc()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    buffer = b"x" * (3 << 20)
    del buffer
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def faults(**env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=60,
        check=True, env={**clean, "PYTHONPATH": str(ROOT / "platform"), **env})
    return int(json.loads(result.stdout))


def test_a_freed_big_buffer_is_reused_not_faulted_in_again() -> None:
    pages = (3 << 20) // resource.getpagesize()
    # Tuned: the first buffer's pages are faulted in, later ones reuse them.
    assert faults() < 3 * pages
    # The control, this module's earlier setting (a 256 KiB mmap threshold, so each buffer
    # is mapped, faulted in page by page and unmapped): every buffer faults all its pages.
    assert faults(MALLOC_MMAP_THRESHOLD_="262144") >= 40 * pages
