"""The OpenAPI 3.1 document of the wallet-facing API: SEP-1, SEP-10 and SEP-12 as every tenant
host serves them (sep/sep1.py, sep/sep10.py, sep/sep12.py), errors included.

Served on the admin listener at ``/api/v1/openapi-public.json`` (management/openapi.py); the
wallet-facing hosts serve only the SEPs themselves. Written by hand as data, like the
management document; tests validate it and check real SEP answers against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from kyc_host.sep import sep9
from kyc_host.sep.sep12_types import CustomerStatus, FieldStatus

API_VERSION = "1.0.0"
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_STRING = {"type": "string"}
_ERRORS = {
    400: ("BadRequest", "Malformed or invalid request; the message names the parameter."),
    401: ("Unauthorized", "No SEP-10 token, or an invalid, expired or foreign one."),
    403: ("Forbidden", "The token may not act for the account or memo named."),
    404: ("NotFound", "Unknown host, or a customer or file this token cannot reach "
                      "(identical answers on purpose)."),
    413: ("PayloadTooLarge", "Body or file over the anchor's limit."),
    421: ("MisdirectedRequest", "This server does not serve the anchor (a load balancer "
                                "routing error of the platform; serve_tenants)."),
    415: ("UnsupportedMediaType", "Content-Type not accepted here."),
    429: ("TooManyRequests", "A tenant limit (named in the message) is used up; rates send "
                             "Retry-After."),
    500: ("InternalError", "The anchor's plugin failed; nothing was stored."),
    502: ("BadGateway", "An upstream (Horizon) answered wrongly."),
    503: ("Unavailable", "The anchor is suspended or the platform is briefly unavailable; "
                        "see Retry-After."),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": list(required),
            "properties": properties}


def _ok(description: str, schema: dict[str, Any], media: str = _JSON) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _op(op_id: str, summary: str, responses: dict[str, Any], errors: tuple[int, ...], *,
        auth: bool = True, params: tuple[str, ...] = (),
        body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation; every one may also answer 404 (unknown host), 421 (misrouted) and
    503 (suspended)."""
    codes = sorted({404, 421, 503, *errors, *((401,) if auth else ())})
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "security": [{"sep10": []}] if auth else [],
        "responses": {**responses,
                      **{str(c): {"$ref": f"#/components/responses/{_ERRORS[c][0]}"}
                         for c in codes}},
    }
    if params:
        op["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in params]
    if body is not None:
        op["requestBody"] = body
    return op


def _body(schema: dict[str, Any], *media: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {m: {"schema": schema} for m in media}}


# --- schemas -------------------------------------------------------------------------------


def _field_spec(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "type": {"enum": [str(t) for t in sep9.FieldType]},
        "description": _STRING,
        "choices": {"type": "array", "items": _STRING},
        "optional": {"type": "boolean"},
        **(extra or {}),
    }
    return {"type": "object", "additionalProperties": False,
            "required": ["type", "description", *(["status"] if extra else [])],
            "properties": properties}


def _schemas() -> dict[str, Any]:
    jwk = {"type": "object", "required": ["kty", "kid"],
           "properties": {k: _STRING for k in ("kty", "crv", "alg", "use", "kid", "x")}}
    return {
        "Error": _object(("error",), error=_STRING),
        "Challenge": _object(("transaction", "network_passphrase"),
                             transaction={"type": "string",
                                          "description": "base64 XDR of the challenge"},
                             network_passphrase=_STRING),
        "SignedChallenge": _object(("transaction",), transaction={"type": "string"}),
        "Token": _object(("token",), token={"type": "string", "description": "SEP-10 JWT"}),
        "Jwks": {"type": "object", "required": ["keys"],
                 "properties": {"keys": {"type": "array", "items": jwk}}},
        "Field": _field_spec(),
        "ProvidedField": _field_spec({"status": {"enum": [str(s) for s in FieldStatus]},
                                      "error": _STRING}),
        "Customer": {
            **_object(("status",),
                      id={"type": "string", "description": "absent until the customer exists"},
                      status={"enum": [str(s) for s in CustomerStatus]},
                      fields={"type": "object", "additionalProperties": _ref("Field"),
                              "description": "fields still needed (always with NEEDS_INFO), "
                                             "including provided fields a reviewer REJECTED"},
                      provided_fields={"type": "object",
                                       "additionalProperties": _ref("ProvidedField")},
                      message={"type": "string",
                               "description": "always present with REJECTED"}),
            "description": "SEP-12 GET /customer; also the callback body."},
        "CustomerId": _object(("id",), id=_STRING),
        "CustomerPut": {
            "type": "object",
            "description": "id / account / memo / memo_type / type / transaction_id / lang, "
                           "SEP-9 fields of the type, <binary>_file_id references and "
                           "<field>_verification codes. Unknown names are refused (400).",
            "properties": {k: _STRING for k in ("id", "account", "memo", "memo_type", "type",
                                                "transaction_id", "lang")},
            "additionalProperties": {"type": "string"},
        },
        "CallbackPut": {
            **_object(("url",), url={"type": "string", "format": "uri"},
                      **{k: _STRING for k in ("id", "account", "memo", "memo_type")}),
            "description": "An absolute https URL (http and loopback only in dev mode)."},
        "DeleteBody": _object((), memo=_STRING, memo_type={"enum": ["id", "text", "hash"]}),
        "FileUpload": _object(("file",), file={"type": "string", "format": "binary"}),
        "File": _object(("file_id", "content_type", "size", "customer_id"),
                        file_id=_STRING, content_type=_STRING,
                        size={"type": "integer", "minimum": 0},
                        customer_id={"type": ["string", "null"]},
                        expires_at={"type": "string", "format": "date-time",
                                    "description": "only while no customer references it"}),
        "FileList": _object(("files",), files={"type": "array", "items": _ref("File")}),
        "Empty": _object(()),
    }


def _parameters() -> dict[str, Any]:
    def query(name: str, description: str, *, required: bool = False,
              schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": required,
                "description": description, "schema": schema or _STRING}

    return {
        "Account": query("account", "G... or M...", required=True),
        "AuthMemo": query("memo", "ID memo (decimal uint64); not with an M... account"),
        "HomeDomain": query("home_domain", "one of the anchor's home domains"),
        "ClientDomain": query("client_domain", "the wallet's domain (SEP-10 client "
                                               "attribution)"),
        "CustomerId": query("id", "a customer id from PUT /customer"),
        "CustomerAccount": query("account", "deprecated: the token's account (or its M...)"),
        "Memo": query("memo", "deprecated: a memo under the token's account"),
        "MemoType": query("memo_type", "id, text or hash",
                          schema={"enum": ["id", "text", "hash"]}),
        "Type": query("type", "customer type (default: the anchor's default)"),
        "TransactionId": query("transaction_id", "needs type (SEP-12 v1.13)"),
        "Lang": query("lang", "ISO 639-1; unknown values fall back to en"),
        "FileId": query("file_id", "exactly one of file_id or customer_id"),
        "FilesCustomerId": query("customer_id", "exactly one of file_id or customer_id"),
        "AccountPath": {"name": "account", "in": "path", "required": True,
                        "description": "the token's G... or M... account", "schema": _STRING},
    }


def _components() -> dict[str, Any]:
    responses = {
        name: {"description": text, "content": {_JSON: {"schema": _ref("Error")}}}
        for name, text in _ERRORS.values()}
    return {
        "securitySchemes": {"sep10": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A SEP-10 token from POST /auth on the same anchor host."}},
        "parameters": _parameters(),
        "responses": responses,
        "schemas": _schemas(),
    }


# --- paths ---------------------------------------------------------------------------------


def _sep1_and_10_paths() -> dict[str, Any]:
    toml = {"description": "SEP-1 stellar.toml: NETWORK_PASSPHRASE, SIGNING_KEY, "
                           "WEB_AUTH_ENDPOINT, KYC_SERVER and the anchor's extra tables",
            "content": {"text/plain": {"schema": _STRING}}}
    signed = _body(_ref("SignedChallenge"), _JSON, _FORM, _MULTIPART)
    return {
        "/.well-known/stellar.toml": {"get": _op(
            "stellarToml", "SEP-1 stellar.toml", {"200": toml}, (), auth=False)},
        "/.well-known/jwks.json": {"get": _op(
            "jwks", "Public keys of the anchor's SEP-10 JWTs (empty for HS256)",
            {"200": _ok("JWK set", _ref("Jwks"))}, (), auth=False)},
        "/auth": {
            "get": _op("challenge", "SEP-10 challenge transaction",
                       {"200": _ok("Challenge", _ref("Challenge"))}, (400, 403, 429),
                       auth=False, params=("Account", "AuthMemo", "HomeDomain",
                                           "ClientDomain")),
            "post": _op("token", "Exchange a signed challenge for a SEP-10 JWT",
                        {"200": _ok("Token", _ref("Token"))}, (400, 413, 415, 429, 502),
                        auth=False, body=signed),
        },
    }


def _sep12_paths() -> dict[str, Any]:
    status = _ok("Customer status", _ref("Customer"))
    put_body = _body(_ref("CustomerPut"), _MULTIPART, _FORM, _JSON)
    who = ("CustomerAccount", "Memo", "MemoType")
    empty = _ok("Done", _ref("Empty"))
    return {
        "/kyc/customer": {
            "get": _op("getCustomer", "SEP-12 GET /customer", {"200": status},
                       (400, 403, 413, 500),
                       params=("CustomerId", *who, "Type", "TransactionId", "Lang")),
            "put": _op("putCustomer", "SEP-12 PUT /customer (creates or updates)",
                       {"202": _ok("Accepted", _ref("CustomerId"))},
                       (400, 403, 413, 415, 429, 500), body=put_body),
        },
        "/kyc/customer/verification": {"put": _op(
            "putVerification", "SEP-12 PUT /customer/verification (deprecated)",
            {"200": status}, (400, 403, 413, 415, 500), body=put_body)},
        "/kyc/customer/callback": {"put": _op(
            "putCallback", "SEP-12 PUT /customer/callback", {"200": empty},
            (400, 403, 413, 415, 500), body=_body(_ref("CallbackPut"), _JSON, _FORM,
                                                  _MULTIPART))},
        "/kyc/customer/files": {
            "get": _op("listFiles", "SEP-12 GET /customer/files",
                       {"200": _ok("Files (empty when none is visible)", _ref("FileList"))},
                       (400, 413), params=("FileId", "FilesCustomerId")),
            "post": _op("uploadFile", "SEP-12 POST /customer/files",
                        {"200": _ok("The stored file", _ref("File"))},
                        (400, 413, 415, 429),
                        body=_body(_ref("FileUpload"), _MULTIPART)),
        },
        "/kyc/customer/{account}": {"delete": _op(
            "deleteCustomer", "SEP-12 DELETE /customer/{account}: erase the customer",
            {"200": empty}, (400, 403, 413, 415, 500), params=("AccountPath",),
            body=_body(_ref("DeleteBody"), _JSON, _FORM, _MULTIPART, required=False))},
    }


@cache
def wallet_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kyc-host wallet-facing API (SEP-1, SEP-10, SEP-12)",
            "version": API_VERSION,
            "description": "Served on every anchor (tenant) host, which selects the anchor; "
                           "an unknown host gets 404, a host this server does not serve 421 "
                           "and a suspended anchor 503. Errors are "
                           "{\"error\": message}. Every route answers CORS preflights. "
                           "KYC_SERVER is <origin>/kyc and WEB_AUTH_ENDPOINT <origin>/auth.",
        },
        "servers": [{"url": "https://{anchor_host}",
                     "variables": {"anchor_host": {"default": "anchor.example.com",
                                                   "description": "a tenant's host"}}}],
        "paths": {**_sep1_and_10_paths(), **_sep12_paths()},
        "components": _components(),
    }
