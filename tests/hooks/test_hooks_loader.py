"""Loading plugins by name: plugins directory (module or package), entry points, failures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hooks_helpers import plugins_dir

from conftest import MakeServer
from kyc_host.hooks.contract import CustomerHooks
from kyc_host.hooks.loader import PluginError, load_plugin_class
from kyc_host.sep.sep12_tenant import service_for
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc, tenant_of

ENTRY_POINT_MODULE = '''
from kyc_host.hooks import CustomerHooks


class FromEntryPoint(CustomerHooks):
    pass
'''


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_loads_a_module_and_a_package_from_the_plugins_dir(tmp_path: Path) -> None:
    write(tmp_path / "single.py", "from kyc_host.hooks import CustomerHooks\n"
                                  "class Hooks(CustomerHooks):\n    pass\n")
    write(tmp_path / "pkg" / "__init__.py", "from .rules import Hooks\n")
    write(tmp_path / "pkg" / "rules.py", "from kyc_host.hooks import CustomerHooks\n"
                                         "class Hooks(CustomerHooks):\n    kind = 'pkg'\n")
    single = load_plugin_class("single", tmp_path)
    package = load_plugin_class("pkg", tmp_path)
    assert issubclass(single, CustomerHooks)
    assert issubclass(package, CustomerHooks)
    assert package.kind == "pkg"  # type: ignore[attr-defined]
    assert load_plugin_class("single", tmp_path) is single  # imported once per process


def test_loads_from_the_entry_point_group(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "site" / "ep_plugin_mod.py", ENTRY_POINT_MODULE)
    dist = tmp_path / "site" / "ep_plugin-1.0.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    write(dist / "entry_points.txt",
          "[kyc_host.plugins]\nep_demo = ep_plugin_mod:FromEntryPoint\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = load_plugin_class("ep_demo", tmp_path / "empty")
    assert found.__name__ == "FromEntryPoint"


@pytest.mark.parametrize(("name", "source", "problem"), [
    ("../etc", None, "not a Python identifier"),
    ("missing_plugin", None, "not found"),
    ("no_hooks", "x = 1\n", "not a CustomerHooks subclass"),
    ("wrong_type", "class Hooks:\n    pass\n", "not a CustomerHooks subclass"),
    ("raises", "raise RuntimeError('boom')\n", "RuntimeError"),
])
def test_bad_plugins_raise_plugin_error(tmp_path: Path, name: str, source: str | None,
                                        problem: str) -> None:
    if source is not None:
        write(tmp_path / f"{name}.py", source)
    with pytest.raises(PluginError, match=problem):
        load_plugin_class(name, tmp_path)


async def test_one_instance_per_tenant(make_server: MakeServer) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="demo_anchor"),
                            kyc_doc("t2", ["b.test"], plugin="demo_anchor"))
    await Wallet(srv, "a.test", "t1").put(ALICE)
    await Wallet(srv, "b.test", "t2").put(ALICE)
    store, settings = srv.services.store, srv.services.settings
    one = service_for(tenant_of(srv, "t1"), store, settings).runner.hooks
    two = service_for(tenant_of(srv, "t2"), store, settings).runner.hooks
    assert type(one) is type(two)
    assert one is not two
    assert service_for(tenant_of(srv, "t1"), store, settings).runner.hooks is one


async def test_a_missing_plugin_disables_only_its_tenant(make_server: MakeServer,
                                                         tmp_path: Path) -> None:
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="not_installed"),
                            kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
                            plugins_dir=plugins_dir(tmp_path))
    reply = await Wallet(srv, "a.test", "t1").get()
    assert reply.status == 503
    assert reply.json["error"]
    assert (await Wallet(srv, "b.test", "t2").put(ALICE)).status == 202
