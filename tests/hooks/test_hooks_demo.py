"""The shipped demo plugin (plugins/demo_anchor.py), run through the plugin test kit."""

from __future__ import annotations

from typing import Any

from conftest import ROOT
from kyc_host.hooks.loader import load_plugin_class
from kyc_host.hooks.testing import PluginHarness

ADA = {"first_name": "Ada", "last_name": "Lovelace", "email_address": "ada@example.com"}


def demo(**settings: Any) -> PluginHarness:
    hooks_class = load_plugin_class("demo_anchor", ROOT / "plugins")
    return PluginHarness(hooks_class(), plugin_settings=settings)


async def test_screening_match_rejects_with_a_message() -> None:
    async with demo(sanctions_list=["Ada Lovelace"]) as kit:
        wallet = kit.wallet()
        await kit.put(wallet, {**ADA, "first_name": "  ADA ", "last_name": "lovelace"})
        body = await kit.get(wallet)
        assert body["status"] == "REJECTED"
        assert body["message"]
        other = kit.wallet()
        await kit.put(other, {**ADA, "first_name": "Grace", "last_name": "Hopper"})
        assert (await kit.get(other))["status"] == "PROCESSING"


async def test_default_list_matches_accents_and_case() -> None:
    async with demo() as kit:
        wallet = kit.wallet()
        await kit.put(wallet, {**ADA, "first_name": "Ívan", "last_name": "sanctioned"})
        assert (await kit.get(wallet))["status"] == "REJECTED"


async def test_auto_accept_only_complete_customers_of_listed_domains() -> None:
    async with demo(auto_accept_email_domains=["example.com"]) as kit:
        wallet = kit.wallet()
        await kit.put(wallet, {"first_name": "Ada", "email_address": "ada@example.com"})
        assert (await kit.get(wallet))["status"] == "NEEDS_INFO"
        await kit.put(wallet, {"last_name": "Lovelace"})
        assert (await kit.get(wallet))["status"] == "ACCEPTED"
        other = kit.wallet()
        await kit.put(other, {**ADA, "email_address": "ada@elsewhere.org"})
        assert (await kit.get(other))["status"] == "PROCESSING"


async def test_review_message_follows_lang() -> None:
    async with demo() as kit:
        wallet = kit.wallet()
        await kit.put(wallet, ADA)
        assert (await kit.get(wallet, lang="es"))["message"].startswith("Gracias")
        assert (await kit.get(wallet, lang="xx"))["message"].startswith("Thank you")


async def test_custom_verification_policy() -> None:
    async with demo(verify_email=True, sandbox_code="424242") as kit:
        wallet = kit.wallet()
        customer_id = await kit.put(wallet, {**ADA, "mobile_number": "+14155552671"})
        provided = (await kit.get(wallet))["provided_fields"]
        assert provided["email_address"]["status"] == "VERIFICATION_REQUIRED"
        assert provided["mobile_number"]["status"] == "VERIFICATION_REQUIRED"
        code = await kit.verification_code(customer_id, "mobile_number")
        assert code is not None
        await kit.put(wallet, {"mobile_number_verification": f"{code[:3]}-{code[3:]}",
                               "email_address_verification": "424242"})
        body = await kit.get(wallet)
        assert body["status"] == "PROCESSING"
        assert {v["status"] for v in body["provided_fields"].values()} == {"ACCEPTED",
                                                                           "PROCESSING"}
