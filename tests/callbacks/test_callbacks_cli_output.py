"""``kyc-host callbacks list`` as text: one line per event, and the last error of a failed
delivery on an indented line of its own under it."""

from __future__ import annotations

import argparse

import pytest

from conftest import MakeServer, make_tenant_doc
from kyc_host.callbacks import commands
from kyc_host.callbacks.events import sep12_event
from kyc_host.callbacks.outbox import Outbox


async def test_last_error_is_on_its_own_line(make_server: MakeServer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    outbox = Outbox(srv.services.store, "t1")
    failed = {**sep12_event("c-1", "individual", 1, {"id": "c-1", "status": "ACCEPTED"}),
              "state": "dead", "attempt": 8,
              "last_error": "could not fetch: host name could not be resolved"}
    ok = {**sep12_event("c-2", "individual", 1, {"id": "c-2", "status": "PROCESSING"}),
          "state": "delivered", "attempt": 1, "created_at": float(failed["created_at"]) - 1}
    await outbox.events.insert_one(failed)
    await outbox.events.insert_one(ok)
    args = argparse.Namespace(tenant="t1", state=None, limit=50, json=False)
    assert await commands.callbacks_list(srv.services, args) == commands.OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(str(failed["_id"]))
    assert "error" not in lines[0]
    assert lines[1] == "    last error: could not fetch: host name could not be resolved"
    assert lines[2].startswith(str(ok["_id"]))
