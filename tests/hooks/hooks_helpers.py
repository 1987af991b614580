"""Plugins for the hook tests, written into a temporary plugins directory.

Each plugin is ordinary source text, loaded by the platform's real loader; the demo plugin is
copied beside them so one server can run both.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from conftest import ROOT

HANGING = '''
import asyncio

from kyc_host.hooks import CustomerHooks

ENTERED: list[asyncio.Task] = []


class Hooks(CustomerHooks):
    """Every hook hangs for a minute (tests cancel the tasks in ENTERED to end it)."""

    async def _hang(self):
        ENTERED.append(asyncio.current_task())
        await asyncio.sleep(60)

    async def get(self, ctx, request, result):
        await self._hang()
        return result

    async def put(self, ctx, request):
        await self._hang()
'''

BROKEN = '''
from kyc_host.hooks import CustomerHooks, HookRejected


class Hooks(CustomerHooks):
    """Raises in every hook; the message quotes customer data (it must never be shown)."""

    async def get(self, ctx, request, result):
        raise RuntimeError("get failed for " + ",".join(request.customer.fields.values()))

    async def put(self, ctx, request):
        if request.data.get("last_name") == "Refuse":
            raise HookRejected("We do not serve this region yet.")
        raise ValueError("cannot handle " + request.data.get("first_name", ""))
'''

STUBBORN = '''
import asyncio

from kyc_host.hooks import CustomerHooks


class Hooks(CustomerHooks):
    """Swallows the first cancellation and keeps going for a while."""

    async def put(self, ctx, request):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)
        return None
'''

NONSENSE = '''
import dataclasses

from kyc_host.hooks import CustomerHooks, CustomerStatus


class Hooks(CustomerHooks):
    """Returns values of the wrong shape, chosen by the customer's first name."""

    async def get(self, ctx, request, result):
        name = request.customer.fields.get("first_name") if request.customer else None
        if name == "Approved":
            return dataclasses.replace(result, status="APPROVED")
        if name == "Early":
            return dataclasses.replace(result, status=CustomerStatus.ACCEPTED)
        if name == "Silent":
            return dataclasses.replace(result, status=CustomerStatus.REJECTED, message=None)
        if name == "Ghost":
            fields = dict(result.fields)
            fields["tax_id"] = fields["first_name"]
            return dataclasses.replace(result, fields=fields)
        return result

    async def put(self, ctx, request):
        if request.data.get("first_name") == "Dict":
            return {"status": "ACCEPTED"}
        return None

    async def verification_fields(self, ctx, type_name):
        if type_name == "business":
            return ["mobile_number"]  # a list, not a set
        return frozenset({"mobile_number"})
'''

PLUGINS = {"hanging": HANGING, "broken": BROKEN, "stubborn": STUBBORN, "nonsense": NONSENSE}


def plugins_dir(tmp_path: Path) -> Path:
    """A plugins directory with the test plugins and a copy of the demo plugin."""
    directory = tmp_path / "plugins"
    directory.mkdir(exist_ok=True)
    for name, source in PLUGINS.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    shutil.copy(ROOT / "plugins" / "demo_anchor.py", directory / "demo_anchor.py")
    return directory
