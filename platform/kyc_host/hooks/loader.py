"""Finding a tenant's plugin class by name.

The name comes only from operator-controlled config (the tenant file's ``plugin = "..."``,
checked to be a plain Python identifier), never from a request. It is looked up:

1. in the platform's ``plugins_dir``: ``<name>.py`` or a package ``<name>/__init__.py``,
   whose module attribute ``Hooks`` is the plugin class;
2. else in the ``kyc_host.plugins`` entry-point group of installed distributions, whose
   entry point ``<name>`` names the class (``pkg.module:ClassName``).

A module is imported once per process (per file version) however many tenants use it; each
tenant gets its own instance. Only the latest version of a file is kept: a tenant version
built from an older one holds its class (and so its module) for as long as it lives.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from kyc_host.hooks.contract import CustomerHooks

ENTRY_POINT_GROUP = "kyc_host.plugins"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The imported module of each plugin file, by resolved path, with the file's mtime then.
_modules: dict[str, tuple[float, ModuleType]] = {}


class PluginError(Exception):
    """A plugin cannot be loaded; ``str()`` says which and why (for operators' logs)."""


def load_plugin_class(name: str, plugins_dir: Path) -> type[CustomerHooks]:
    """The CustomerHooks subclass called ``name``; raises PluginError."""
    if not _NAME.fullmatch(name):
        raise PluginError(f"plugin name {name!r} is not a Python identifier")
    module_file = _module_file(plugins_dir, name)
    if module_file is not None:
        module = _import_file(name, module_file)
        found = getattr(module, "Hooks", None)
        where = f"{module_file}: attribute Hooks"
    else:
        found = _from_entry_point(name)
        where = f"entry point {ENTRY_POINT_GROUP}:{name}"
    if not (isinstance(found, type) and issubclass(found, CustomerHooks)):
        raise PluginError(f"plugin {name!r}: {where} is not a CustomerHooks subclass")
    return found


def _module_file(plugins_dir: Path, name: str) -> Path | None:
    for candidate in (plugins_dir / f"{name}.py", plugins_dir / name / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_file(name: str, path: Path) -> ModuleType:
    key, mtime = str(path.resolve()), path.stat().st_mtime
    cached = _modules.get(key)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    module_name = f"kyc_host_plugins.{name}"
    locations = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(module_name, path,
                                                  submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {name!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # lets the plugin's dataclasses and relative imports work
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginError(f"plugin {name!r}: importing {path} raised "
                          f"{type(exc).__name__}: {exc}") from exc
    _modules[key] = (mtime, module)
    return module


def _from_entry_point(name: str) -> object:
    matches = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not matches:
        raise PluginError(f"plugin {name!r} not found in the plugins directory or the "
                          f"{ENTRY_POINT_GROUP} entry points")
    entry = next(iter(matches))
    try:
        return entry.load()
    except Exception as exc:
        raise PluginError(f"plugin {name!r}: loading {entry.value} raised "
                          f"{type(exc).__name__}: {exc}") from exc
