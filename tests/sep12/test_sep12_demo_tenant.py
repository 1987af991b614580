"""The shipped demo tenant (tenants/demo.toml) with its plugin, end to end over HTTP."""

from __future__ import annotations

import tomllib

from conftest import ROOT, MakeServer
from sep12.sep12_helpers import Wallet


async def test_demo_tenant_serves_sep12_with_its_plugin(make_server: MakeServer) -> None:
    with (ROOT / "tenants" / "demo.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    srv = await make_server(doc)
    wallet = Wallet(srv, "demo.localhost", "demo")
    fields = (await wallet.get(lang="es")).json["fields"]
    assert fields["address_country_code"]["description"].startswith("País")
    person = {"first_name": "Ada", "last_name": "Lovelace", "birth_date": "1815-12-10",
              "email_address": "ada@example.com", "mobile_number": "+447700900123"}
    assert (await wallet.put(person)).status == 202
    body = (await wallet.get()).json
    assert body["status"] == "NEEDS_INFO"  # auto-accept waits for the mobile number's code
    assert (await wallet.put({"mobile_number_verification": "000-000"})).status == 202
    assert (await wallet.get()).json["status"] == "ACCEPTED"  # example.com: auto-accept
    listed = Wallet(srv, "demo.localhost", "demo")
    await listed.put({**person, "first_name": "Jane", "last_name": "Blocked",
                      "email_address": "jane@elsewhere.org"})
    body = (await listed.get()).json
    assert body["status"] == "REJECTED"
    assert body["message"]
