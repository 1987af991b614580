"""A strict reader over one table of a TOML/JSON document.

Each accessor takes a key, checks the type and range, and remembers that the key was read;
:meth:`Table.finish` then rejects any key nobody read. Every error is a ConfigError naming
the source (file path or "API"), the dotted key and the bad value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from kyc_host.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()


class Table:
    def __init__(self, data: Mapping[str, Any], source: str, path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(source, path or "document", "expected a table", data)
        self.data = data
        self.source = source
        self.path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str, value: object = None) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem, value)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, "is required")
            return default
        return self.data[name]

    def string(self, name: str, default: Any = _MISSING, *, pattern: str | None = None,
            max_len: int = 1000, what: str = "") -> Any:
        value = self.raw(name, default)
        if not self.has(name):  # absent: the default (an explicit null is not "absent")
            return value
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise self.error(name, f"expected a non-empty string of at most {max_len} chars",
                             value)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.error(name, f"expected {what or 'a value matching ' + pattern}", value)
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if not self.has(name):
            return value
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(choices)}", value)
        return value

    def integer(self, name: str, default: Any = _MISSING, *, min: int = 0,
            max: int = 2**62) -> Any:
        value = self.raw(name, default)
        if not self.has(name):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not min <= value <= max:
            raise self.error(name, f"expected a whole number from {min} to {max}", value)
        return value

    def number(self, name: str, default: Any = _MISSING, *, min: float = 0.0,
               max: float = 1e9) -> Any:
        value = self.raw(name, default)
        if not self.has(name):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not min <= value <= max:
            raise self.error(name, f"expected a number from {min:g} to {max:g}", value)
        return float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "expected true or false", value)
        return value

    def strings(self, name: str, default: Any = _MISSING, *, max_items: int = 1000) -> Any:
        value = self.raw(name, default)
        if not self.has(name):
            return value
        if (not isinstance(value, list) or len(value) > max_items
                or not all(isinstance(v, str) and v for v in value)):
            raise self.error(name, f"expected a list of at most {max_items} non-empty strings",
                             value)
        return tuple(value)

    def table(self, name: str, *, required: bool = False) -> Table:
        value = self.raw(name, _MISSING if required else {})
        if not isinstance(value, Mapping):
            raise self.error(name, "expected a table", value)
        return Table(value, self.source, self.key(name))

    def tables(self, name: str) -> Iterator[Table]:
        """An array of tables (``[[name]]``)."""
        value = self.raw(name, [])
        if not isinstance(value, list):
            raise self.error(name, "expected an array of tables", value)
        for i, item in enumerate(value):
            yield Table(item, self.source, f"{self.key(name)}[{i}]")

    def finish(self) -> None:
        """Reject keys that no accessor read (typos must not be ignored silently)."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key", self.data[unknown[0]])


def plain_json(value: Any, source: str, path: str) -> Any:
    """Check that a free-form value (e.g. plugin settings) holds only JSON types."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v, source, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ConfigError(source, path, "only strings, numbers, booleans, lists and tables allowed",
                      value)
