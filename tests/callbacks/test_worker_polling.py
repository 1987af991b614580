"""How the worker decides which tenants to look at (each look reads the due list, a full scan
on FerretDB): a wake-up marker is acted on while it is new, not at every poll of its window.

The worker is a real one (a running server's services); ``_woken`` is given explicit clock
values, so nothing here depends on timing.
"""

from __future__ import annotations

from callbacks.cb_helpers import FAST, cb_doc
from conftest import MakeServer
from kyc_host.callbacks.outbox import WAKE_EVERY
from kyc_host.callbacks.worker import CallbackWorker


async def test_a_marker_is_acted_on_while_new_then_once_more_then_not(
        make_server: MakeServer) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]), **FAST)
    worker = CallbackWorker(srv.services)
    try:
        t0 = 1000.0
        assert worker._woken({"t1": 990.0}, t0) == {"t1"}
        # Within WAKE_EVERY of first seeing it: looked at again (a writer writes one marker
        # per WAKE_EVERY, so events relayed just after this one have no marker of their own).
        assert worker._woken({"t1": 990.0}, t0 + WAKE_EVERY / 2) == {"t1"}
        # The first poll past WAKE_EVERY looks once more, then the marker is done.
        assert worker._woken({"t1": 990.0}, t0 + WAKE_EVERY) == {"t1"}
        assert worker._woken({"t1": 990.0}, t0 + WAKE_EVERY + 0.5) == set()
        assert worker._woken({"t1": 990.0}, t0 + 4.0) == set()
        # Another tenant's marker wakes only that tenant.
        assert worker._woken({"t1": 990.0, "t2": 1003.0}, t0 + 4.0) == {"t2"}
        assert worker._woken({"t1": 990.0, "t2": 1003.0}, t0 + 6.0) == {"t2"}  # its last look
        # A new marker value (any process, any clock: even an older-looking one) is new.
        assert worker._woken({"t1": 985.0, "t2": 1003.0}, t0 + 7.0) == {"t1"}
        assert worker._woken({"t1": 985.0}, t0 + 9.0) == {"t1"}  # its last look
        # A marker no longer in the query's window is forgotten once done ...
        assert worker._woken({}, t0 + 10.0) == set()
        assert worker._markers == {}
        # ... and one that left the window before it was done still gets its last look.
        assert worker._woken({"t2": 1020.0}, t0 + 20.0) == {"t2"}
        assert worker._woken({}, t0 + 20.0 + WAKE_EVERY) == {"t2"}
        assert worker._woken({}, t0 + 22.0) == set()
    finally:
        worker.http.close()
