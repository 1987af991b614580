"""Plain data across the isolation boundary: hook arguments, results and framing.

An untrusted plugin's hooks run in a worker process (hooks/isolation.py). Only plain data
crosses to it: the typed request objects of the contract, encoded as JSON with tags for the
few non-JSON shapes (enums, frozen dataclasses, tuples, sets, mappings, bytes). Decoding
rebuilds only the types listed here, so a compromised worker can never make the platform
instantiate anything else (no pickle: unpickling a worker's reply would run its code in the
server). Values still pass through the same ``check`` the in-process path applies.

Framing: each message is a 4-byte big-endian length and that many bytes of UTF-8 JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
from collections.abc import Mapping
from enum import Enum
from typing import Any

from kyc_host.hooks.contract import (
    CallbackRequest,
    Caller,
    CheckCodeRequest,
    CustomerData,
    DeleteRequest,
    FileRef,
    GetRequest,
    PutRequest,
    SendCodeRequest,
    StatusResult,
)
from kyc_host.sep.sep12_types import CustomerStatus, Decision, FieldDecision, FieldStatus

#: Largest message a worker may send the platform (a reply, a log line, a fetch body).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
HEADER = struct.Struct(">I")

DATACLASSES: Mapping[str, type[Any]] = {cls.__name__: cls for cls in (
    CallbackRequest, Caller, CheckCodeRequest, CustomerData, DeleteRequest, FileRef,
    GetRequest, PutRequest, SendCodeRequest, StatusResult, Decision, FieldDecision)}
ENUMS: Mapping[str, type[Enum]] = {cls.__name__: cls for cls in (CustomerStatus, FieldStatus)}


class WireError(Exception):
    """A message that is not valid plain data of the contract (a protocol violation)."""


def encode(value: object) -> Any:
    """``value`` as JSON-ready data; raises WireError for anything outside the contract."""
    if isinstance(value, Enum):  # before str: the contract's enums are StrEnums
        if type(value).__name__ not in ENUMS:
            raise WireError(f"enum {type(value).__name__} cannot cross the boundary")
        return {"$enum": type(value).__name__, "v": value.value}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if DATACLASSES.get(name) is not type(value):
            raise WireError(f"{name} cannot cross the boundary")
        return {"$dc": name, "f": {f.name: encode(getattr(value, f.name))
                                   for f in dataclasses.fields(value)}}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, frozenset | set):
        return {"$set": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise WireError("mapping keys must be strings")
        return {"$map": {k: encode(v) for k, v in value.items()}}
    raise WireError(f"{type(value).__name__} cannot cross the boundary")


def decode(data: Any) -> Any:
    """The inverse of :func:`encode`; raises WireError for unknown tags or shapes."""
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise WireError("malformed value")
    try:
        if "$dc" in data:
            cls = DATACLASSES[data["$dc"]]
            return cls(**{str(k): decode(v) for k, v in _dict(data["f"]).items()})
        if "$enum" in data:
            return ENUMS[data["$enum"]](data["v"])
        if "$map" in data:
            return {str(k): decode(v) for k, v in _dict(data["$map"]).items()}
        if "$tuple" in data:
            return tuple(decode(v) for v in _list(data["$tuple"]))
        if "$set" in data:
            return frozenset(decode(v) for v in _list(data["$set"]))
        if "$bytes" in data:
            return base64.b64decode(str(data["$bytes"]), validate=True)
    except WireError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed value ({type(exc).__name__})") from None
    raise WireError("unknown tag")


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError("expected an object")
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise WireError("expected an array")
    return value


def frame(message: Mapping[str, Any]) -> bytes:
    """One framed message: length prefix and compact JSON."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()
    return HEADER.pack(len(body)) + body


def parse_length(header: bytes, limit: int = MAX_MESSAGE_BYTES) -> int:
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise WireError(f"message of {length} bytes exceeds {limit}")
    return int(length)


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError:
        raise WireError("message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise WireError("message without op")
    return message
