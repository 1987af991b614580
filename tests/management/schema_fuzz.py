"""A small schema-driven fuzzer, generated from an OpenAPI document: the management API's
(tests/management/test_isolation.py uses :meth:`Fuzzer.cases` whole) and the wallet-facing
one's (tests/sep12/test_public_schema_fuzz.py builds its cases from the parts:
:meth:`Fuzzer.fill_path`, :meth:`Fuzzer.path_segments`, :meth:`Fuzzer.query_values`,
:meth:`Fuzzer.violations`, :meth:`Fuzzer.body_mutations`).

No hypothesis/schemathesis: for every documented operation, :func:`cases` starts from a valid
baseline request (path parameters from real ids, a request body given by the caller) and makes
cases that each break exactly ONE thing:

- one path parameter: junk segments (encoded NUL, slash, invalid UTF-8, very long, operators)
  and, for an enum, values outside it;
- one query parameter: values the parameter's schema rejects (non-integers, enum misses) and
  junk strings, or the parameter given twice;
- the body as a whole: raw bytes that are not JSON, JSON of the wrong type;
- one property of the body, at any depth the baseline reaches: a value its schema rejects
  (wrong type, below minimum / above maximum, too short / too long, pattern or enum miss, too
  many items), a required property removed, an unknown property added.

Schema rejections are checked with jsonschema against the document itself, so a "violation"
really violates it. Because every case breaks something, a baseline that would act (offboard,
start a key job) is never sent whole. Deterministic: each operation's choices come from a
``random.Random`` seeded with its operationId.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:kyc-host:fuzz"
MAX_DEPTH = 3

#: Path segments, already percent-encoded (never empty: that is another route).
JUNK_SEGMENTS = ("nope", "%00", "%2F", "%2E%2E", "%FF%FE", "%C3%A9%E4%B8%AD", "x" * 300,
                 "%7B%22%24gt%22%3A%22%22%7D", "-1", "0" * 64, "%20", "%25", "t1%00",
                 "00000000-0000-4000-8000-000000000000")
#: Query values (raw; encoded when sent).
JUNK_STRINGS = ("", "abc", "-5", "1.5", "1e999", "NaN", "99999999999999999999", "\x00",
                "é中文", "x" * 3000, "{\"$gt\": \"\"}", "[]", "null", "../..", "%")
JUNK_BODIES: tuple[bytes, ...] = (b"{", b"[]", b"null", b"\"x\"", b"\xff\xfe", b"{\"a\": NaN}",
                                  json.dumps({"a": [[[[[]]]]]}).encode(),
                                  b"{" * 5000 + b"}" * 5000, b"1" * 400)
#: Text a string schema accepts but a server may choke on: NUL, RTL override, lone
#: surrogate, BOM, fullwidth digits, 100 kB, injection-looking strings (reliability-plan B3).
HOSTILE_TEXT = ("", " ", "\x00", "a\x00b", "\u202eevil", "שלום", "😀" * 3, "\ud800", "\u2028",
                "Zoë", "\ufeffx", "\uff11\uff12", "x" * 100_000, "\r\n\r\n", "<script>",
                "' OR 1=1 --", "{\"$ne\": null}", "%00", "\\", "null", "true", "-0", "1e999",
                "18446744073709551616", "../../etc/passwd", "$where")
#: Names that address server-owned state or look like query operators (reliability-plan B4).
OPERATOR_KEYS = ("$set", "$ne", "$where", "first_name[$gt]", "__proto__", "__class__",
                 "constructor", "status", "_id", "tenant", "tenant_id", "created_at",
                 "provided_fields", "fields", "first_name.$", "x" * 300)
#: Values that look like query operators (never a valid string).
OPERATOR_VALUES: tuple[Any, ...] = ({"$gt": ""}, {"$ne": None}, {"$regex": ".*"},
                                    {"$where": "1"}, ["$in", []], 2**63, -(2**63) - 1)
#: Values tried against a schema; the ones it accepts are dropped.
_PROBES: tuple[Any, ...] = (None, True, 0, 7, -1, 1.5, 10**30, "", "x", "!!", [], {},
                            ["x"], {"zz": 1})


@dataclass(frozen=True)
class Case:
    """One request: what it breaks (for messages), and what to send."""

    label: str
    method: str
    path: str
    body: bytes | None


class Fuzzer:
    """Builds cases from a management OpenAPI document."""

    def __init__(self, doc: Mapping[str, Any], probes: tuple[Any, ...] = ()) -> None:
        """``probes``: more values to try against every schema (besides the built-in ones)."""
        self.doc = doc
        self.probes = (*_PROBES, *probes)
        resource = Resource.from_contents(dict(doc), default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource(DOC_URI, resource)

    # --- schema helpers ---------------------------------------------------------------------

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            node: Any = self.doc
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = node
        return schema

    def accepts(self, schema: Mapping[str, Any], value: Any) -> bool:
        absolute = _absolute_refs(schema)
        return bool(Draft202012Validator(absolute, registry=self.registry).is_valid(value))

    def violations(self, schema: Mapping[str, Any], rng: random.Random,
                   limit: int = 5) -> list[Any]:
        """Values ``schema`` rejects (a sample of at most ``limit``)."""
        s = self.resolve(schema)
        found = [v for v in (*self.probes, *_edges(s)) if not self.accepts(s, v)]
        unique = list({json.dumps(v, sort_keys=True): v for v in found}.values())
        return rng.sample(unique, min(limit, len(unique)))

    def parameters(self, op: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return [self.resolve(p) for p in op.get("parameters", [])]

    # --- cases ------------------------------------------------------------------------------

    def cases(self, template: str, method: str, op: Mapping[str, Any],
              path_values: Mapping[str, str], body: Any) -> Iterator[Case]:
        """Every case of one operation (see the module docstring)."""
        rng = random.Random(zlib.crc32(str(op.get("operationId", template)).encode()))
        params = self.parameters(op)
        raw = json.dumps(body).encode() if body is not None else None
        base = self.fill_path(template, op, path_values)
        for p in params:
            if p["in"] == "path":
                for segment in self.path_segments(p, rng):
                    yield Case(f"path {p['name']}={segment[:40]}", method,
                               self.fill_path(template, op, path_values,
                                              **{p["name"]: segment}), raw)
            elif p["in"] == "query":
                for value in self.query_values(p, rng):
                    query = f"?{p['name']}={quote(value, safe='')}"
                    yield Case(f"query {p['name']}={value[:40]!r}", method, base + query, raw)
                yield Case(f"query {p['name']} twice", method,
                           f"{base}?{p['name']}=1&{p['name']}=2", raw)
        if method == "GET":
            yield Case("unknown query parameter", method, base + "?zz=%00", raw)
        if "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            for junk in JUNK_BODIES:
                yield Case(f"raw body {junk[:20]!r}", method, base, junk)
            yield Case("no body", method, base, None)
            mutations = list(self.body_mutations(schema, body, (), rng))
            for label, mutated in rng.sample(mutations, min(40, len(mutations))):
                yield Case(f"body {label}", method, base, json.dumps(mutated).encode())

    def fill_path(self, template: str, op: Mapping[str, Any], path_values: Mapping[str, str],
                  **override: str) -> str:
        """``template`` with its path parameters: ``override`` (already encoded) or, for the
        others, ``path_values`` percent-encoded."""
        path = template
        for p in self.parameters(op):
            if p["in"] == "path":
                value = override.get(p["name"], quote(path_values[p["name"]], safe=""))
                path = path.replace("{" + p["name"] + "}", value)
        return path

    def path_segments(self, param: Mapping[str, Any], rng: random.Random) -> list[str]:
        """Junk (percent-encoded) values of one path parameter."""
        schema = self.resolve(param.get("schema", {}))
        picked = rng.sample(JUNK_SEGMENTS, 6)
        if "enum" in schema:
            picked += [quote(v, safe="") for v in self.violations(schema, rng)
                       if isinstance(v, str) and v]
        return [s for s in picked if s]

    def query_values(self, param: Mapping[str, Any], rng: random.Random) -> list[str]:
        """Junk (raw) values of one query parameter, enum misses included."""
        schema = self.resolve(param.get("schema", {}))
        values = list(rng.sample(JUNK_STRINGS, 5))
        if "enum" in schema:
            values = [v for v in values if v not in schema["enum"]] + ["NOT_IN_ENUM"]
        return values

    def body_mutations(self, schema: Mapping[str, Any], value: Any, at: tuple[Any, ...],
                       rng: random.Random) -> Iterator[tuple[str, Any]]:
        """(label, the whole body with exactly one thing broken at or below ``at``)."""
        s = self.resolve(schema)
        where = "/".join(map(str, at)) or "(root)"
        for bad in self.violations(s, rng, limit=3):
            yield f"{where}={json.dumps(bad)[:40]}", bad
        if len(at) >= MAX_DEPTH:
            return
        if isinstance(value, dict) and s.get("type", "object") == "object":
            yield from self._object_mutations(s, value, at, rng)
        elif isinstance(value, list) and value and "items" in s:
            for label, bad in self.body_mutations(s["items"], value[0], (*at, 0), rng):
                yield label, [bad, *value[1:]]

    def _object_mutations(self, s: Mapping[str, Any], value: dict[str, Any],
                          at: tuple[Any, ...], rng: random.Random
                          ) -> Iterator[tuple[str, Any]]:
        where = "/".join(map(str, at)) or "(root)"
        props: Mapping[str, Any] = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        for key in s.get("required", []):
            if key in value:
                yield f"{where} without {key}", {k: v for k, v in value.items() if k != key}
        if extra is False:
            yield f"{where} with an unknown key", {**value, "zz_unknown": 1}
        for key, sub in props.items():
            for label, bad in self.body_mutations(sub, value.get(key), (*at, key), rng):
                yield label, {**value, key: bad}
        if isinstance(extra, dict):
            for key in [k for k in value if k not in props][:2]:
                for label, bad in self.body_mutations(extra, value[key], (*at, key), rng):
                    yield label, {**value, key: bad}


def _edges(s: Mapping[str, Any]) -> list[Any]:
    """Values just outside the limits a schema declares."""
    out: list[Any] = []
    if "enum" in s:
        out += ["NOT_IN_ENUM", *(str(v).lower() + "x" for v in s["enum"] if v is not None)]
    if "const" in s:
        out.append(f"not-{s['const']}")
    if "minLength" in s:
        out.append("x" * max(int(s["minLength"]) - 1, 0))
    if "maxLength" in s:
        out.append("x" * (int(s["maxLength"]) + 1))
    if "pattern" in s or s.get("format") == "uuid":
        out += ["not valid!", "Z" * 80]
    if "minimum" in s:
        out += [int(s["minimum"]) - 1]
    if "maximum" in s:
        out += [int(s["maximum"]) + 1]
    if "minItems" in s:
        out.append([])
    if "maxItems" in s:
        out.append(["x"] * (int(s["maxItems"]) + 1))
    if "minProperties" in s:
        out.append({})
    if "maxProperties" in s:
        out.append({f"k{i}": {} for i in range(int(s["maxProperties"]) + 1)})
    return out


def _absolute_refs(schema: Any) -> Any:
    """``schema`` with local ``#/...`` references pointing into the registered document."""
    if isinstance(schema, dict):
        return {k: (DOC_URI + v if k == "$ref" and isinstance(v, str) and v.startswith("#")
                    else _absolute_refs(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_absolute_refs(v) for v in schema]
    return schema
