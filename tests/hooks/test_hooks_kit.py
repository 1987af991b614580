"""The plugin authors' kit (kyc_host.hooks.testing) runs hooks inside a real tenant."""

from __future__ import annotations

import dataclasses

import pytest

from kyc_host.errors import ApiError
from kyc_host.hooks import (
    CustomerHooks,
    CustomerStatus,
    Decision,
    DeleteRequest,
    GetRequest,
    HookRejected,
    PutRequest,
    SendCodeRequest,
    StatusResult,
    TenantContext,
)
from kyc_host.hooks.testing import PluginHarness

ADA = {"first_name": "Ada", "last_name": "Lovelace", "email_address": "ada@example.com"}


class Recording(CustomerHooks):
    """Accepts complete customers, refuses one surname, records what it was given."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    async def put(self, ctx: TenantContext, request: PutRequest) -> Decision | None:
        self.seen.append(request)
        if request.data.get("last_name") == "Nope":
            raise HookRejected("surname not accepted")
        return None if request.missing else Decision(CustomerStatus.ACCEPTED)

    async def get(self, ctx: TenantContext, request: GetRequest,
                  result: StatusResult) -> StatusResult:
        self.seen.append(request)
        if result.message:
            return result
        return dataclasses.replace(result, message=f"threshold {ctx.settings['threshold']}")

    async def delete(self, ctx: TenantContext, request: DeleteRequest) -> None:
        self.seen.append(request)

    async def send_verification(self, ctx: TenantContext, request: SendCodeRequest) -> None:
        self.seen.append(request)


async def test_kit_runs_hooks_against_the_platform() -> None:
    hooks = Recording()
    async with PluginHarness(hooks, plugin_settings={"threshold": 3}) as kit:
        wallet = kit.wallet()
        customer_id = await kit.put(wallet, {"first_name": "Ada"})
        assert (await kit.get(wallet))["status"] == "NEEDS_INFO"
        assert await kit.put(wallet, ADA) == customer_id
        body = await kit.get(wallet)
        assert (body["status"], body["message"]) == ("ACCEPTED", "threshold 3")
        puts = [r for r in hooks.seen if isinstance(r, PutRequest)]
        assert puts[0].customer_id is None
        assert puts[0].missing == ("last_name",
                                                                   "email_address")
        assert puts[1].customer_id == customer_id
        assert puts[1].data == ADA
        assert kit.ctx.tenant_id == "plugin-test"
        record = await kit.customers.load(customer_id)
        assert record is not None
        assert record.fields == ADA


async def test_kit_surfaces_platform_and_hook_errors() -> None:
    async with PluginHarness(Recording(), plugin_settings={"threshold": 1}) as kit:
        wallet = kit.wallet(memo=7)
        with pytest.raises(ApiError) as refused:
            await kit.put(wallet, {**ADA, "last_name": "Nope"})
        assert (refused.value.status, refused.value.message) == (400, "surname not accepted")
        with pytest.raises(ApiError) as invalid:
            await kit.put(wallet, {**ADA, "birth_date": "1815-13-10"})
        assert invalid.value.status == 400
        assert "birth_date" in invalid.value.message
        assert "id" not in await kit.get(wallet)


async def test_kit_verification_decisions_and_delete() -> None:
    hooks = Recording()
    async with PluginHarness(hooks, plugin_settings={"threshold": 0}) as kit:
        wallet = kit.wallet(muxed_id=42)
        customer_id = await kit.put(wallet, {**ADA, "mobile_number": "+447700900123"})
        sent = [r for r in hooks.seen if isinstance(r, SendCodeRequest)]
        code = await kit.verification_code(customer_id, "mobile_number")
        assert [(r.field, r.value, r.code) for r in sent] == [
            ("mobile_number", "+447700900123", code)]
        assert (await kit.get(wallet))["status"] == "NEEDS_INFO"
        assert code is not None
        await kit.put(wallet, {"mobile_number_verification": code})
        assert (await kit.get(wallet))["status"] == "ACCEPTED"
        await kit.decide(customer_id, "individual", Decision(CustomerStatus.REJECTED, "No."))
        assert (await kit.get(wallet))["message"] == "No."
        await kit.delete(wallet)
        assert any(isinstance(r, DeleteRequest) for r in hooks.seen)
        assert "id" not in await kit.get(wallet)


async def test_context_customers_view_is_the_tenants_own() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    async with PluginHarness(CustomerHooks()) as kit:
        wallet = kit.wallet()
        customer_id = await kit.put(wallet, ADA, files={"photo_id_front": png})
        view = await kit.ctx.customers.get(customer_id)
        assert view is not None
        assert view.fields == ADA
        ref = view.files["photo_id_front"]
        assert (ref.content_type, ref.size) == ("image/png", len(png))
        assert ref.file_id is not None
        assert await kit.ctx.customers.file_contents(ref.file_id) == png
        assert await kit.ctx.customers.set_decision(customer_id, "individual",
                                                    Decision(CustomerStatus.ACCEPTED))
        assert (await kit.get(wallet))["status"] == "ACCEPTED"
        assert await kit.ctx.customers.get("00000000-0000-4000-8000-000000000000") is None
