"""The suite's one exception to "every warning is an error" (setup.cfg) stays narrow.

pymongo's async client can leave a socket to the garbage collector when an operation that
is opening a connection is cancelled; setup.cfg lets exactly those through, recognised by
their peer, a test FerretDB on a port of ``FERRETDB_PORTS``. A socket left open to anything
else (a server under test, a receiver) must still fail the test that leaks it. Each case
runs pytest on a one-test file with the project's warning filters.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, ferretdb_port, free_port

LEAKING_TEST = """
import socket


def test_leaks_a_connected_socket():
    listener = socket.create_server(("127.0.0.1", {port}))
    client = socket.create_connection(("127.0.0.1", {port}))
    accepted, _ = listener.accept()
    del client  # never closed: collected, with a ResourceWarning naming its peer
    accepted.close()
    listener.close()
"""


def run_leaking_test(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    project = configparser.ConfigParser(interpolation=None)
    project.read(ROOT / "setup.cfg")
    filters = project["tool:pytest"]["filterwarnings"].strip().splitlines()
    assert "error" in filters
    lines = "".join(f"    {line}\n" for line in filters)
    (tmp_path / "setup.cfg").write_text(f"[tool:pytest]\nfilterwarnings =\n{lines}")
    (tmp_path / "test_leak.py").write_text(LEAKING_TEST.format(port=port))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
         "--rootdir", str(tmp_path), str(tmp_path / "test_leak.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)


def test_a_socket_left_open_to_a_server_fails_the_test(tmp_path: Path) -> None:
    port = free_port()
    result = run_leaking_test(tmp_path, port)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert f"raddr=('127.0.0.1', {port})" in result.stdout


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_socket_left_open_to_a_test_ferretdb_port_is_let_through(
        tmp_path: Path, attempt: int) -> None:
    del attempt  # two random ports of the range
    result = run_leaking_test(tmp_path, ferretdb_port())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
