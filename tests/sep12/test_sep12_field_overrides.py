"""Per-tenant field wording per language and narrowed choices (customer_types.<t>.fields)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import MakeServer
from kyc_host.errors import ConfigError
from kyc_host.sep import sep9
from kyc_host.tenancy.schema import parse_tenant
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc

TYPES: dict[str, Any] = {
    "individual": {
        "required": ["first_name", "last_name", "email_address", "id_type"],
        "optional": ["address_country_code", "sex"],
        "fields": {
            "id_type": {"choices": ["passport", "id_card"],
                        "description": {"en": "Which ID you will show.",
                                        "es": "Qué documento mostrará."}},
            "address_country_code": {"choices": ["USA", "MEX"]},
            "sex": {"description": {"de": "Geschlecht."}},
        },
    },
    "other": {"required": ["first_name", "id_type"]},
}


async def test_descriptions_follow_lang_with_fallbacks(make_server: MakeServer) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], customer_types=TYPES,
                                    default_customer_type="individual"))
    wallet = Wallet(srv, "a.test", "t1")
    spanish = (await wallet.get(lang="es")).json["fields"]
    assert spanish["id_type"]["description"] == "Qué documento mostrará."
    assert spanish["id_type"]["choices"] == ["passport", "id_card"]
    assert spanish["address_country_code"]["choices"] == ["USA", "MEX"]
    assert spanish["first_name"]["description"] == sep9.description("first_name", "en")
    french = (await wallet.get(lang="fr")).json["fields"]
    assert french["id_type"]["description"] == "Which ID you will show."
    assert french["sex"]["description"] == sep9.description("sex", "en")
    assert french["sex"]["choices"] == ["male", "female", "other"]
    assert (await wallet.get(lang="de")).json["fields"]["sex"]["description"] == "Geschlecht."


async def test_narrowed_choices_are_enforced_for_that_type(make_server: MakeServer) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], customer_types=TYPES,
                                    default_customer_type="individual"))
    wallet = Wallet(srv, "a.test", "t1")
    refused = await wallet.put({**ALICE, "id_type": "drivers_license"})
    assert refused.status == 400
    assert "id_type" in refused.json["error"]
    assert (await wallet.put({**ALICE, "address_country_code": "FRA"})).status == 400
    assert (await wallet.put({**ALICE, "id_type": "passport",
                              "address_country_code": "mex"})).status == 202
    other = Wallet(srv, "a.test", "t1")  # another type does not narrow id_type
    assert (await other.put({"first_name": "Bo", "id_type": "drivers_license",
                             "type": "other"})).status == 202


@pytest.mark.parametrize(("fields", "problem"), [
    ({"tax_id": {"choices": ["1"]}}, "not a required or optional field"),
    ({"id_type": {"description": {"english": "x"}}}, "ISO 639-1"),
    ({"address_country_code": {"choices": ["XXX"]}}, "alpha-3"),
    ({"address_country_code": {"choices": ["usa"]}}, "write it as 'USA'"),
    ({"sex": {"choices": ["unknown"]}}, "expected one of"),
    ({"id_type": {"colour": "red"}}, "unknown key"),
])
def test_bad_overrides_are_config_errors(fields: dict[str, Any], problem: str) -> None:
    types = {"individual": {"required": ["id_type"], "optional": ["address_country_code",
                                                                 "sex", "photo_id_front"],
                            "fields": fields}}
    doc = kyc_doc("t1", ["a.test"], customer_types=types, default_customer_type="individual")
    with pytest.raises(ConfigError, match=problem):
        parse_tenant(doc, "test")


def test_binary_fields_take_no_choices() -> None:
    types = {"individual": {"required": ["photo_id_front"],
                            "fields": {"photo_id_front": {"choices": ["x"]}}}}
    doc = kyc_doc("t1", ["a.test"], customer_types=types, default_customer_type="individual")
    with pytest.raises(ConfigError, match="binary"):
        parse_tenant(doc, "test")
