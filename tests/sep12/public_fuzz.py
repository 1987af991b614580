"""Cases for the wallet-facing schema fuzz (tests/sep12/test_public_schema_fuzz.py).

:class:`WalletFuzz` reads the served wallet-facing OpenAPI document and, for every operation
it lists, makes requests from the operation's own parameters and request body schema
(schema-driven: :class:`management.schema_fuzz.Fuzzer` supplies the path/query junk and the
values a schema rejects), in every encoding the operation accepts, plus hand-made malformed
bodies (XDR, multipart, JSON, form) and wrong credentials:

- valid by the schema (the baseline, and each optional parameter with a real value);
- each query/path parameter: wrong type, huge, empty, unicode, NUL, operator-like text,
  another customer's or tenant's ids, given twice, ``name[$gt]`` / ``name[]`` forms;
- each body property: values the schema rejects (wrong types, operator dicts, arrays),
  hostile text the schema accepts, removed when required, unknown and server-owned keys;
- malformed bodies: broken JSON, duplicate keys, invalid UTF-8 forms, multipart with a wrong
  or missing boundary, parts without names or headers, file parts whose Content-Type lies,
  oversized parts and bodies, Content-Types that lie about the body.

Values that only exist at run time are markers replaced when a case is sent (see
:data:`MARKERS`): the wallet's customer can be erased by a valid DELETE and re-created with a
new id. Deterministic: one ``random.Random(seed)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from kyc_host.sep import sep9
from management.schema_fuzz import (
    HOSTILE_TEXT,
    JUNK_BODIES,
    OPERATOR_KEYS,
    OPERATOR_VALUES,
    Fuzzer,
)
from sep12.sep12_helpers import PNG, png_of_size

#: Markers (letters only: unchanged by every encoding) replaced at send time.
W1_ID, W1_FILE, W1_TOKEN, T2_TOKEN = "zzWONEIDzz", "zzWONEFILEzz", "zzWONETOKENzz", "zzTTWOzz"
FRESH_XDR = "zzXDRzz"  # a fresh challenge signed by the wallet; zzXDR<n>zz: mutation n of one
MARKERS = (W1_ID, W1_FILE, W1_TOKEN, T2_TOKEN)
XDR_MUTATIONS = ("truncated", "one char flipped", "one byte flipped", "unsigned",
                 "signed by a stranger", "signed twice", "trailing junk", "urlsafe base64",
                 "with newlines", "t2's challenge", "60,000 chars", "replayed", "empty")
METHODS = ("get", "put", "post", "delete")
JSON, FORM, MULTIPART = "application/json", "application/x-www-form-urlencoded", \
    "multipart/form-data"
BOUNDARY = "fuzzb0undary"
HTML = b"<html><script>alert(1)</script></html>"
#: What a property needs beside it to be looked at closely (a text memo is checked as text;
#: transaction_id needs type).
COMPANIONS: dict[str, dict[str, str]] = {"memo": {"memo_type": "text"},
                                         "transaction_id": {"type": "individual"}}
#: Longest query value sent (a longer one is refused by the HTTP layer, not the app).
MAX_QUERY_CHARS = 8000


@dataclass(frozen=True)
class Known:
    """Real values of the world the cases address (the bystanders' are fixed)."""

    account: str  # the wallet W1's G...
    bystander_account: str  # another wallet's G... on t1
    bystander_id: str
    bystander_file: str
    t2_id: str
    t2_file: str
    home_domain: str


@dataclass(frozen=True)
class Case:
    """One request; ``encoding`` says how markers in the body are escaped."""

    label: str
    op: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    encoding: str = "raw"  # json | form | multipart | raw
    auth: str | None = f"Bearer {W1_TOKEN}"


def text(value: Any) -> str:
    """A value as form/multipart text (non-strings as their JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def encode_json(body: Mapping[str, Any]) -> bytes:
    return json.dumps({k: (v.decode("latin-1") if isinstance(v, bytes) else v)
                       for k, v in body.items()}).encode()


def encode_form(body: Mapping[str, Any]) -> bytes:
    return "&".join(
        f"{quote(k, safe='', errors='surrogatepass')}="
        + (quote(v, safe="") if isinstance(v, bytes)
           else quote(text(v), safe="", errors="surrogatepass"))
        for k, v in body.items()).encode()


def part(name: str | None, value: bytes, filename: str | None = None,
         content_type: str | None = None, disposition: str = "form-data") -> bytes:
    """One multipart part (``name=None``: a part without a name)."""
    head = disposition + ("" if name is None else f'; name="{name}"')
    if filename is not None:
        head += f'; filename="{filename}"'
    lines = [f"Content-Disposition: {head}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    header = "\r\n".join(lines).encode("utf-8", "surrogatepass")
    return b"--" + BOUNDARY.encode() + b"\r\n" + header + b"\r\n\r\n" + value + b"\r\n"


def encode_multipart(body: Mapping[str, Any], lie: bool = False) -> bytes:
    """Bytes values become file parts (their declared type a lie when ``lie``)."""
    out = b""
    for name, value in body.items():
        safe = name.replace('"', "").replace("\r", "").replace("\n", "")
        if isinstance(value, bytes):
            out += part(safe, value, "id.png", "text/html" if lie else "image/png")
        else:
            out += part(safe, text(value).encode("utf-8", "surrogatepass"))
    return out + f"--{BOUNDARY}--\r\n".encode()


MULTIPART_TYPE = f"{MULTIPART}; boundary={BOUNDARY}"


def malformed_multipart(file_name: str) -> list[tuple[str, bytes, str]]:
    """(label, body, content type): multipart bodies broken by hand."""
    good = part("first_name", b"Alice")
    end = f"--{BOUNDARY}--\r\n".encode()
    return [
        ("boundary mismatch", good + end, f"{MULTIPART}; boundary=other"),
        ("no boundary parameter", good + end, MULTIPART),
        ("empty boundary", good + end, f"{MULTIPART}; boundary="),
        ("quoted boundary", good + end, f'{MULTIPART}; boundary="{BOUNDARY}"'),
        ("no final boundary", good, MULTIPART_TYPE),
        ("part without a name", part(None, b"x") + end, MULTIPART_TYPE),
        ("part with an empty name", part("", b"x") + end, MULTIPART_TYPE),
        ("part without headers", f"--{BOUNDARY}\r\nno headers here\r\n".encode() + end,
         MULTIPART_TYPE),
        ("part not form-data", part("first_name", b"x", disposition="attachment") + end,
         MULTIPART_TYPE),
        ("header not UTF-8", f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\xff"
         "\"\r\n\r\nx\r\n".encode("latin-1") + end, MULTIPART_TYPE),
        ("part name with NUL", part("first\x00name", b"x") + end, MULTIPART_TYPE),
        ("filename traversal", part(file_name, PNG, "../../etc/passwd", "image/png") + end,
         MULTIPART_TYPE),
        ("HTML declared image/png", part(file_name, HTML, "id.png", "image/png") + end,
         MULTIPART_TYPE),
        ("PNG declared text/html", part(file_name, PNG, "id.html", "text/html") + end,
         MULTIPART_TYPE),
        ("empty file part", part(file_name, b"", "id.png", "image/png") + end,
         MULTIPART_TYPE),
        ("file part without filename", part(file_name, PNG) + end, MULTIPART_TYPE),
        ("oversized file part", part(file_name, png_of_size(70 * 1024), "id.png",
                                     "image/png") + end, MULTIPART_TYPE),
        ("oversized body", part(file_name, b"\x00" * 300 * 1024, "id.png") + end,
         MULTIPART_TYPE),
        ("file twice", 2 * part(file_name, PNG, "a.png", "image/png") + end, MULTIPART_TYPE),
        ("3000 parts", part("first_name", b"x") * 3000 + end, MULTIPART_TYPE),
        ("nested multipart/mixed", part("first_name", good + end, None,
                                        f"multipart/mixed; boundary={BOUNDARY}") + end,
         MULTIPART_TYPE),
        ("only the final boundary", end, MULTIPART_TYPE),
        ("multipart/form-dataxyz", good + end, f"{MULTIPART}xyz; boundary={BOUNDARY}"),
    ]


MALFORMED_OTHER: list[tuple[str, bytes, str | None]] = [
    *((f"JSON {junk[:16]!r}", junk, JSON) for junk in JUNK_BODIES),
    ("JSON nested 100,000 deep", b"[" * 100_000, JSON),
    ("JSON duplicate keys", b'{"first_name": "a", "first_name": "b"}', JSON),
    ("JSON as UTF-16", json.dumps({"first_name": "a"}).encode("utf-16"),
     "application/json; charset=utf-16"),
    ("form not UTF-8", b"first_name=%FF%FE", FORM),
    ("form empty name", b"=x", FORM),
    ("form only separators", b"&&&==&", FORM),
    ("form bare percent", b"first_name=%", FORM),
    ("form 70 kB", b"first_name=" + b"x" * 70_000, FORM),
    ("JSON sent as form", b'{"first_name": "a"}', FORM),
    ("form sent as JSON", b"first_name=a", JSON),
    ("form sent as multipart", b"first_name=a", MULTIPART_TYPE),
    ("text/plain", b"first_name=a", "text/plain"),
    ("no Content-Type", b'{"first_name": "a"}', None),
    ("Content-Type junk", b"{}", "x/y;;;==;boundary"),
    ("gzip-encoded claim", b"{}", "application/json; charset=gzip"),
]


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid(case: Case) -> bool:
    """A case valid by the document (kept whatever the sample)."""
    return (case.label == "valid" or case.label.endswith(" valid")
            or case.label.startswith("valid "))


class WalletFuzz:
    """Builds every case of one wallet-facing OpenAPI document."""

    def __init__(self, doc: Mapping[str, Any], known: Known, seed: int) -> None:
        self.doc = doc
        self.known = known
        self.seed = seed
        self.schema = Fuzzer(doc, probes=OPERATOR_VALUES)

    def operations(self) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
        for template, item in self.doc["paths"].items():
            for method in METHODS:
                if method in item:
                    yield template, method.upper(), item[method]

    # --- per-operation values ---

    def query_baseline(self, op_id: str) -> dict[str, str]:
        return {"challenge": {"account": self.known.account},
                "listFiles": {"customer_id": W1_ID}}.get(op_id, {})

    def valid_query(self, op_id: str, name: str) -> list[dict[str, str | None]]:
        """Real values of one optional parameter (with what it needs beside it; None: leave
        that baseline parameter out)."""
        k = self.known
        table: dict[str, dict[str, list[dict[str, str | None]]]] = {
            "challenge": {"memo": [{"memo": "5"}, {"memo": "18446744073709551615"}],
                          "home_domain": [{"home_domain": k.home_domain.upper()}]},
            "getCustomer": {"id": [{"id": W1_ID}], "account": [{"account": k.account}],
                            "memo": [{"memo": "7", "memo_type": "id"}],
                            "memo_type": [{"memo_type": "id"}],
                            "type": [{"type": "individual"}, {"type": "business"}],
                            "transaction_id": [{"transaction_id": "tx-1", "type": "individual"}],
                            "lang": [{"lang": "es"}, {"lang": "zz"}]},
            "listFiles": {"file_id": [{"file_id": W1_FILE, "customer_id": None}]},
        }
        return table.get(op_id, {}).get(name, [])

    def foreign(self, name: str) -> list[str]:
        """Another customer's / tenant's values for a parameter name."""
        k = self.known
        return {"id": [k.bystander_id, k.t2_id], "customer_id": [k.bystander_id, k.t2_id],
                "file_id": [k.bystander_file, k.t2_file, W1_ID],
                "account": [k.bystander_account]}.get(name, [])

    def body_baseline(self, op_id: str) -> dict[str, Any]:
        return {
            "token": {"transaction": FRESH_XDR},
            # The stored values again: valid, and an identical PUT writes nothing.
            "putCustomer": {"first_name": "Alice", "last_name": "Liddell",
                            "email_address": "alice@example.com"},
            "putVerification": {"mobile_number_verification": "000000"},
            "putCallback": {"url": "http://127.0.0.1:9/callback"},
            "uploadFile": {"file": PNG},
            "deleteCustomer": {},
        }[op_id]

    # --- cases ---

    def cases(self, count: int) -> list[Case]:
        """Every systematic case, then random combinations up to ``count`` (a sample of the
        systematic ones if ``count`` is smaller, keeping each operation's valid cases)."""
        rng = random.Random(self.seed)
        systematic = [c for template, method, op in self.operations()
                      for c in self.operation_cases(template, method, op, rng)]
        if count <= len(systematic):
            keep = set(rng.sample(range(len(systematic)), count))
            return [c for i, c in enumerate(systematic) if i in keep or is_valid(c)]
        ops = list(self.operations())
        extra = [self.random_case(*rng.choice(ops), rng)
                 for _ in range(count - len(systematic))]
        return systematic + extra

    def operation_cases(self, template: str, method: str, op: Mapping[str, Any],
                        rng: random.Random) -> Iterator[Case]:
        op_id = str(op["operationId"])
        secured = bool(op.get("security"))
        base = Case("valid", op_id, method, self.path(template, op),
                    auth=f"Bearer {W1_TOKEN}" if secured else None)
        if "requestBody" in op:
            yield from self.body_cases(base, op, rng)
        else:
            yield replace(base, path=base.path + self.query(self.query_baseline(op_id)))
        yield from self.query_cases(base, template, op, rng)
        if secured:
            yield from self.auth_cases(base, op)

    def path(self, template: str, op: Mapping[str, Any], **override: str) -> str:
        return self.schema.fill_path(template, op, {"account": self.known.account}, **override)

    @staticmethod
    def query(values: Mapping[str, str], *extra: str) -> str:
        pairs = [quote(k, safe="") + "="
                 + quote(v[:MAX_QUERY_CHARS], safe="", errors="surrogatepass")
                 for k, v in values.items()]
        joined = "&".join([*pairs, *extra])
        return f"?{joined}" if joined else ""

    def query_cases(self, base: Case, template: str, op: Mapping[str, Any],
                    rng: random.Random) -> Iterator[Case]:
        baseline = self.query_baseline(base.op)
        body = self.body_baseline(base.op) if "requestBody" in op else None
        encoded = replace(base, **self._encoded(body, JSON if body is not None and JSON in
                                                op["requestBody"]["content"] else None))

        def with_query(label: str, values: Mapping[str, str], *extra: str) -> Case:
            return replace(encoded, label=label, path=base.path + self.query(values, *extra))

        for p in self.schema.parameters(op):
            name = p["name"]
            if p["in"] == "path":
                for segment in [*self.schema.path_segments(p, rng),
                                *(quote(v, safe="") for v in self.foreign(name))]:
                    yield replace(encoded, label=f"path {name}={segment[:40]}",
                                  path=self.path(template, op, **{name: segment}))
                continue
            for valid in self.valid_query(base.op, name):
                merged = {**baseline, **valid}
                yield with_query(f"valid {valid}",
                                 {n: v for n, v in merged.items() if v is not None})
            junk = [*self.schema.query_values(p, rng), *rng.sample(HOSTILE_TEXT, 6),
                    *self.foreign(name)]
            for value in junk:
                yield with_query(f"query {name}={value[:40]!r}", {**baseline, name: value})
            one = baseline.get(name, "1")
            yield with_query(f"query {name} twice", baseline, f"{name}={quote(one)}")
            yield with_query(f"query {name}[$gt]", baseline, f"{quote(name)}%5B%24gt%5D=")
            yield with_query(f"query {name}[]", {k: v for k, v in baseline.items()
                                                 if k != name}, f"{name}%5B%5D=a",
                             f"{name}%5B%5D=b")
            if not p.get("required") and name in baseline:
                yield with_query(f"query without {name}",
                                 {k: v for k, v in baseline.items() if k != name})
        yield with_query("unknown query parameters", baseline, "%24where=1", "zz=%00")

    def auth_cases(self, base: Case, op: Mapping[str, Any]) -> Iterator[Case]:
        body = self.body_baseline(base.op) if "requestBody" in op else None
        media = None if body is None else next(iter(op["requestBody"]["content"]))
        encoded = replace(base, path=base.path + self.query(self.query_baseline(base.op)),
                          **self._encoded(body, media))
        for label, auth in (("no token", None), ("token of tenant t2", f"Bearer {T2_TOKEN}"),
                            ("garbage token", "Bearer a.b.c"), ("Basic auth", "Basic dXNlcg=="),
                            ("token + junk", f"Bearer {W1_TOKEN}x"),
                            ("two tokens", f"Bearer {W1_TOKEN} {W1_TOKEN}"),
                            ("lower-case scheme", f"bearer {W1_TOKEN}")):
            yield replace(encoded, label=label, auth=auth)

    def _encoded(self, body: Mapping[str, Any] | None, media: str | None,
                 lie: bool = False) -> dict[str, Any]:
        if body is None or media is None:
            return {"body": None, "content_type": None, "encoding": "raw"}
        if media == JSON:
            return {"body": encode_json(body), "content_type": JSON, "encoding": "json"}
        if media == FORM:
            return {"body": encode_form(body), "content_type": FORM, "encoding": "form"}
        return {"body": encode_multipart(body, lie), "content_type": MULTIPART_TYPE,
                "encoding": "multipart"}

    def body_variants(self, op_id: str, schema: Mapping[str, Any], media: list[str],
                      rng: random.Random) -> Iterator[tuple[str, dict[str, Any], list[str]]]:
        """(label, body, the encodings to send it in): the valid body, then each with one
        thing broken. Each property gets a sample of the hostile texts in each encoding, and
        in JSON always the ones only a JSON escape can spell (lone surrogates)."""
        baseline = self.body_baseline(op_id)
        yield "valid", baseline, media
        for label, mutated in self.schema.body_mutations(schema, baseline, (), rng):
            if isinstance(mutated, dict):
                yield f"schema: {label}", mutated, media
            else:  # a JSON root of another type
                yield f"schema: {label}", {"(root)": mutated}, media
        resolved = self.schema.resolve(schema)
        names = [*resolved.get("properties", {}), *baseline]
        for name in dict.fromkeys(names):
            if baseline.get(name) is not None and isinstance(baseline[name], bytes):
                continue
            sample = set(rng.sample(range(len(HOSTILE_TEXT)), 4))
            json_sample = sample | set(rng.sample(range(len(HOSTILE_TEXT)), 4))
            for i, value in enumerate(HOSTILE_TEXT):
                in_json = i in json_sample or not _is_unicode(value)
                where = [m for m in media if (in_json if m == JSON else i in sample)]
                body = {**baseline, **COMPANIONS.get(name, {}), name: value}
                if where:
                    yield f"{name}={value[:30]!r}", body, where
        for key in rng.sample(OPERATOR_KEYS, 6):
            yield (f"extra key {key[:30]}",
                   {**baseline, key: rng.choice(["x", *OPERATOR_VALUES])}, media)
        for label, body in self._sep12_variants(op_id, baseline, rng):
            yield label, body, media

    def _sep12_variants(self, op_id: str, baseline: dict[str, Any],
                        rng: random.Random) -> Iterator[tuple[str, dict[str, Any]]]:
        """Names only a SEP-12 body has: SEP-9 fields, file references, codes, control."""
        k = self.known
        if op_id in ("putCustomer", "putVerification", "putCallback", "deleteCustomer"):
            for name, value in (("id", W1_ID), ("id", k.bystander_id), ("id", k.t2_id),
                                ("account", k.bystander_account), ("memo", "9"),
                                ("memo_type", "hash"), ("memo_type", "text"),
                                ("type", "business"), ("type", "sep31-sender"),
                                ("transaction_id", "tx-9")):
                yield f"{name}={value[:20]}", {**baseline, name: value}
        if op_id != "putCustomer":
            return
        for name in rng.sample(sorted(sep9.FIELDS), 12):
            value = rng.choice(["Alice", "1990-02-30", "USA", "+14155552671", "a@example.com",
                                "2" * 64, *rng.sample(HOSTILE_TEXT, 2)])
            yield f"SEP-9 {name}={value[:20]!r}", {**baseline, name: value}
        for file_id in (W1_FILE, k.bystander_file, k.t2_file, "not-a-uuid", ""):
            yield f"photo_id_front_file_id={file_id}", {**baseline,
                                                        "photo_id_front_file_id": file_id}
        for name, code in (("mobile_number_verification", "123456"),
                           ("email_address_verification", "x" * 65),
                           ("photo_id_front_verification", "1")):
            yield f"{name}={code[:10]}", {**baseline, name: code}
        for photo in (PNG, png_of_size(300, seed=rng.randrange(256)), HTML, b""):
            yield f"photo_id_front file {photo[:8]!r}", {**baseline, "photo_id_front": photo}

    def body_cases(self, base: Case, op: Mapping[str, Any],
                   rng: random.Random) -> Iterator[Case]:
        content: Mapping[str, Any] = op["requestBody"]["content"]
        schema = next(iter(content.values()))["schema"]
        query = self.query(self.query_baseline(base.op))
        base = replace(base, path=base.path + query)
        for label, body, where in self.body_variants(base.op, schema, list(content), rng):
            for media in where:
                if media == JSON and any(isinstance(v, bytes) for v in body.values()):
                    continue  # files travel in multipart only
                raw = ({"body": json.dumps(body["(root)"]).encode(), "content_type": JSON,
                        "encoding": "json"} if "(root)" in body and media == JSON
                       else self._encoded(body, media, lie=rng.random() < 0.3))
                yield replace(base, label=f"{media.split('/')[1]} {label}", **raw)
        file_name = "file" if base.op == "uploadFile" else "photo_id_front"
        for label, raw, ctype in malformed_multipart(file_name):
            yield replace(base, label=f"multipart {label}", body=raw, content_type=ctype)
        for label, raw, ctype in MALFORMED_OTHER:
            yield replace(base, label=label, body=raw, content_type=ctype)
        if base.op == "token":
            for n, mutation in enumerate(XDR_MUTATIONS):
                body = {"transaction": f"zzXDR{n}zz"}
                for media in content:
                    yield replace(base, label=f"{media.split('/')[1]} XDR {mutation}",
                                  **self._encoded(body, media))

    def random_case(self, template: str, method: str, op: Mapping[str, Any],
                    rng: random.Random) -> Case:
        """A few breaks at once: random query junk and/or a body with several changes."""
        op_id = str(op["operationId"])
        auth = f"Bearer {W1_TOKEN}" if op.get("security") else None
        values = dict(self.query_baseline(op_id))
        for p in rng.sample(self.schema.parameters(op), min(2, len(self.schema.parameters(op)))):
            if p["in"] == "query":
                values[p["name"]] = rng.choice([*HOSTILE_TEXT, *self.foreign(p["name"]),
                                                *(json.dumps(v) for v in OPERATOR_VALUES)])
        case = Case(f"random {op_id}", op_id, method,
                    self.path(template, op) + self.query(values), auth=auth)
        if "requestBody" not in op:
            return case
        content = op["requestBody"]["content"]
        schema = next(iter(content.values()))["schema"]
        variants = list(self.body_variants(op_id, schema, list(content), rng))
        body: dict[str, Any] = {}
        for _, variant, _ in rng.sample(variants, min(3, len(variants))):
            body.update(variant)
        body.pop("(root)", None)
        media = rng.choice([m for m in content if m != JSON or not any(
            isinstance(v, bytes) for v in body.values())] or [MULTIPART])
        return replace(case, label=f"random {op_id} {media} {sorted(body)[:6]}",
                       **self._encoded(body, media, lie=rng.random() < 0.3))
