"""The loader keeps one imported module per plugin file, the latest.

Modules used to be cached by (path, mtime), so every change of a plugin file followed by a
rebuild of a tenant's service kept the previous module, and its globals, until the process
ended. A tenant version built from an older file keeps working: it holds its own class.
"""

from __future__ import annotations

import os
from pathlib import Path

from kyc_host.hooks import loader
from kyc_host.hooks.loader import load_plugin_class

SOURCE = '''
from kyc_host.hooks import CustomerHooks

BALLAST = bytearray(1024 * 1024)  # globals that a stale module would keep alive


class Hooks(CustomerHooks):
    version = {version}
'''


def write_version(path: Path, version: int) -> None:
    path.write_text(SOURCE.format(version=version))
    os.utime(path, ns=(version * 10**9, version * 10**9))  # a distinct mtime for each


def cached_for(path: Path) -> list[object]:
    """What the loader's cache holds for ``path``, whatever its key looks like."""
    resolved = str(path.resolve())
    return [module for key, module in loader._modules.items()
            if resolved in (key if isinstance(key, tuple) else (key,))]


def test_only_the_latest_module_of_a_changed_plugin_file_is_cached(tmp_path: Path) -> None:
    plugin = tmp_path / "changing.py"
    other = tmp_path / "steady.py"
    write_version(other, 7)
    steady = load_plugin_class("steady", tmp_path)
    loaded = []
    for version in (1, 2, 3):  # the file changes twice after its first load
        write_version(plugin, version)
        loaded.append(load_plugin_class("changing", tmp_path))
        assert loaded[-1].version == version  # type: ignore[attr-defined]
        assert load_plugin_class("changing", tmp_path) is loaded[-1]  # cached while unchanged
    assert len(cached_for(plugin)) == 1
    assert len(cached_for(other)) == 1
    # The classes built from older versions still work for whoever holds them.
    assert [c.version for c in loaded] == [1, 2, 3]  # type: ignore[attr-defined]
    assert load_plugin_class("steady", tmp_path) is steady  # another file's entry stays
