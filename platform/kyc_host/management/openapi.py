"""OpenAPI 3.1 documents served on the admin listener, written by hand as data.

``DOCUMENTS`` maps a file name under ``/api/v1/`` to the function that builds it: the
management API is ``openapi.json``, the wallet-facing SEP-1/10/12 API as each tenant host
serves it is ``openapi-public.json`` (built in openapi_public.py). Every management operation
carries ``x-scope`` (the scope it needs, or null) so tests can enumerate the routes; the tests
validate both documents and check answers against them, so keep them in step with the
handlers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from kyc_host.crypto.operations import JOB_OPERATIONS, OPERATIONS
from kyc_host.errors import NotFound
from kyc_host.management.auth import ALL_SCOPES, TENANT_SCOPES
from kyc_host.management.openapi_public import wallet_document
from kyc_host.sep.sep12_types import CustomerStatus, FieldStatus
from kyc_host.web.admin import AdminHandler

API_VERSION = "1.0.0"
_JSON = "application/json"
_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_ref(schema))}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
             409: "Conflict", 413: "PayloadTooLarge", 503: "Unavailable"}
    return {str(code): {"$ref": f"#/components/responses/{names[code]}"} for code in codes}


def _param(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _op(op_id: str, summary: str, scope: str | None, responses: dict[str, Any], *,
        tenant: bool = False, params: tuple[str, ...] = (), body: str | None = None,
        errors: tuple[int, ...] = ()) -> dict[str, Any]:
    """One authenticated operation: 401 and 503 always; 403 with a scope; 404 on a tenant,
    and 400 there too (a path parameter that is not UTF-8, management/base.py)."""
    codes = sorted({401, 503, *errors, *((403,) if scope else ()),
                    *((400, 404) if tenant else ())})
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "x-scope": scope,
        "security": [{"bearer": []}],
        "responses": {**responses, **_errors(*codes)},
    }
    all_params = (("TenantId",) if tenant else ()) + params
    if all_params:
        op["parameters"] = [_param(p) for p in all_params]
    if body:
        op["requestBody"] = {"required": True, "content": _content(_ref(body))}
    return op


# --- schemas -------------------------------------------------------------------------------


def _string_list(**extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "minLength": 1}, **extra}


def _tenant_document() -> dict[str, Any]:
    """The tenant file schema (tenancy/schema.py) as JSON Schema; unknown keys are rejected."""
    customer_type = {
        "type": "object", "additionalProperties": False,
        "properties": {"required": _string_list(), "optional": _string_list()},
    }
    free_table = {"type": "object"}
    return {
        "type": "object",
        "description": "The same document as a tenant TOML file, as JSON.",
        "additionalProperties": False,
        "required": ["id", "hosts", "home_domain", "network", "customer_types"],
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,39}$"},
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "hosts": _string_list(minItems=1, maxItems=50),
            "home_domain": {"type": "string", "maxLength": 59},
            "network": {"type": "string",
                        "description": "testnet, public or a full network passphrase"},
            "horizon_url": {"type": "string"},
            "customer_types": {"type": "object", "minProperties": 1,
                               "additionalProperties": customer_type},
            "default_customer_type": {"type": "string"},
            "status": {"enum": ["active", "suspended"]},
            "plugin": {"type": "string"},
            "plugin_settings": free_table,
            "signing_key_env": {"type": "string"},
            "limits": free_table,
            "sep10": free_table,
            "stellar_toml": free_table,
            "callbacks": free_table,
            "webhooks": {"type": "array", "maxItems": 10, "items": free_table},
        },
    }


def _schemas() -> dict[str, Any]:
    jwk = {"type": "object", "required": ["kty", "kid"],
           "properties": {k: {"type": "string"} for k in ("kty", "crv", "alg", "use", "kid",
                                                          "x")}}
    token_info: dict[str, Any] = {
        "type": "object", "additionalProperties": False,
        "required": ["prefix", "kind", "tenant", "scopes", "note", "created_at", "created_by",
                     "expires_at", "revoked_at"],
        "properties": {
            "prefix": {"type": "string", "pattern": "^[0-9a-f]{10}$"},
            "kind": {"enum": ["operator", "tenant"]},
            "tenant": _NULLABLE_STRING,
            "scopes": {"type": "array", "items": _ref("Scope")},
            "note": {"type": "string"},
            "created_at": _TIME,
            "created_by": {"type": "string"},
            "expires_at": _NULLABLE_TIME,
            "revoked_at": _NULLABLE_TIME,
        },
    }
    audit_entry = {
        "type": "object", "additionalProperties": False,
        "required": ["seq", "time", "actor", "action", "customer_id", "fields", "request_id",
                     "details", "prev_hash", "hash"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "time": _TIME,
            "actor": {"type": "string",
                      "description": "token:<prefix>, cli, wallet or system"},
            "action": {"type": "string"},
            "customer_id": {"type": "string", "description": "empty when not about a customer"},
            "fields": {"type": "array", "items": {"type": "string"},
                       "description": "field names only, never values"},
            "request_id": {"type": "string"},
            "details": {"type": "object"},
            "prev_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    }
    return {
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                  "properties": {"error": {"type": "string"}}},
        "Scope": {"enum": list(ALL_SCOPES)},
        "TenantScope": {"enum": list(TENANT_SCOPES)},
        "TenantDocument": _tenant_document(),
        "Tenant": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "status", "manager", "hosts", "home_domain", "signing_key",
                         "jwks", "document", "rev", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string"},
                "status": {"enum": ["active", "suspended"]},
                "manager": {"type": "string", "description": "api or file:<path>"},
                "hosts": _string_list(),
                "home_domain": {"type": "string"},
                "signing_key": {"type": "string", "pattern": "^G[A-Z2-7]{55}$",
                                "description": "SEP-10 SIGNING_KEY (public)"},
                "jwks": {"type": "object", "required": ["keys"],
                         "properties": {"keys": {"type": "array", "items": jwk}}},
                "document": _ref("TenantDocument"),
                "rev": {"type": "string"},
                "created_at": _TIME,
                "updated_at": _TIME,
            },
        },
        "TenantList": {
            "type": "object", "additionalProperties": False,
            "required": ["tenants", "next_cursor"],
            "properties": {"tenants": {"type": "array", "items": _ref("Tenant")},
                           "next_cursor": _NULLABLE_STRING},
        },
        "TokenInfo": token_info,
        "NewToken": {
            "type": "object", "additionalProperties": False,
            "required": ["token", *token_info["required"]],
            "properties": {"token": {"type": "string",
                                     "pattern": "^kyc_[0-9a-f]{10}_[A-Za-z0-9_-]{43}$",
                                     "description": "shown once; store it now"},
                           **token_info["properties"]},
        },
        "TokenCreate": {
            "type": "object", "additionalProperties": False, "required": ["scopes"],
            "properties": {
                "scopes": {"type": "array", "minItems": 1, "maxItems": 20,
                           "items": _ref("TenantScope")},
                "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                "note": {"type": "string", "minLength": 1, "maxLength": 200},
            },
        },
        "TokenList": {"type": "object", "additionalProperties": False, "required": ["tokens"],
                      "properties": {"tokens": {"type": "array", "items": _ref("TokenInfo")}}},
        "Whoami": {
            "type": "object", "additionalProperties": False,
            "required": ["prefix", "kind", "tenant", "scopes", "expires_at"],
            "properties": {"prefix": {"type": "string"}, "kind": {"enum": ["operator", "tenant"]},
                           "tenant": _NULLABLE_STRING,
                           "scopes": {"type": "array", "items": _ref("Scope")},
                           "expires_at": _NULLABLE_TIME},
        },
        "AuditEntry": audit_entry,
        "AuditPage": {
            "type": "object", "additionalProperties": False,
            "required": ["entries", "next_cursor"],
            "properties": {"entries": {"type": "array", "items": _ref("AuditEntry")},
                           "next_cursor": _NULLABLE_STRING},
        },
        "AuditVerify": {
            "type": "object", "additionalProperties": False,
            "required": ["ok", "entries", "first_bad_seq", "problem"],
            "properties": {"ok": {"type": "boolean"},
                           "entries": {"type": "integer", "minimum": 0},
                           "first_bad_seq": {"type": ["integer", "null"]},
                           "problem": _NULLABLE_STRING},
        },
        "Health": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string"}}},
        **_customer_schemas(),
        **_callback_schemas(),
        **_key_schemas(),
    }


def _object(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    """A closed object: exactly these properties, ``required`` among them."""
    return {"type": "object", "additionalProperties": False, "required": list(required),
            "properties": properties}


def _customer_schemas() -> dict[str, Any]:
    """The review API's bodies (management/customers.py, management/review.py)."""
    nullable_status = {"type": ["string", "null"],
                       "enum": [*(str(s) for s in CustomerStatus), None]}
    verdict = _object(("status", "error"), status={"enum": [str(s) for s in FieldStatus]},
                      error=_NULLABLE_STRING)
    decision = _object(("status", "message", "fields"), status=nullable_status,
                       message=_NULLABLE_STRING,
                       fields={"type": "object", "additionalProperties": verdict})
    type_view = _object(
        ("status", "message", "missing", "provided_fields", "decision"),
        status={**nullable_status,
                "description": "what the wallet sees for this type now (platform rules)"},
        message=_NULLABLE_STRING, missing=_string_list(description="required, not provided"),
        provided_fields={"type": "object", "additionalProperties": verdict},
        decision={"oneOf": [{"type": "null"}, _ref("Decision")]})
    identity = _object(("account", "memo", "memo_type"),
                       account={"type": "string", "pattern": "^G[A-Z2-7]{55}$"},
                       memo=_NULLABLE_STRING,
                       memo_type={"enum": ["id", "text", "hash", None]})
    review_field_status = {"enum": ["ACCEPTED", "REJECTED", "PROCESSING"]}
    return {
        "CustomerStatus": {"enum": [str(s) for s in CustomerStatus]},
        "CustomerSummary": _object(
            ("id", "created_at", "updated_at", "types", "provided_fields"),
            id={"type": "string", "format": "uuid"}, created_at=_TIME, updated_at=_TIME,
            types={"type": "object", "additionalProperties": nullable_status,
                   "description": "customer type -> last computed status"},
            provided_fields=_string_list(description="field names only, never values")),
        "CustomerPage": _object(("customers", "next_cursor"),
                                customers={"type": "array", "items": _ref("CustomerSummary")},
                                next_cursor=_NULLABLE_STRING),
        "Decision": decision,
        "CustomerFile": _object(
            ("file_id", "field", "content_type", "size", "created_at", "expires_at"),
            file_id={"type": "string", "format": "uuid"}, field=_NULLABLE_STRING,
            content_type={"type": "string"}, size={"type": "integer", "minimum": 0},
            created_at=_TIME, expires_at=_NULLABLE_TIME),
        "Identity": identity,
        "Customer": _object(
            ("id", "created_at", "updated_at", "fields", "files", "types", "verifications",
             "identities", "callback_url"),
            id={"type": "string", "format": "uuid"}, created_at=_TIME, updated_at=_TIME,
            fields={"type": "object", "additionalProperties": {"type": "string"},
                    "description": "decrypted SEP-9 text values (this read is audited)"},
            files={"type": "array", "items": _ref("CustomerFile")},
            types={"type": "object", "additionalProperties": type_view},
            verifications={"type": "object", "additionalProperties": _object(
                ("state", "attempts"), state={"enum": ["pending", "verified"]},
                attempts={"type": "integer", "minimum": 0})},
            identities={"type": "array", "items": _ref("Identity")},
            callback_url=_NULLABLE_STRING),
        "DecisionRequest": {
            **_object(("status",),
                      type={"type": "string", "description": "default: the tenant's default"},
                      status=_ref("CustomerStatus"),
                      message={"type": "string", "maxLength": 1000,
                               "description": "shown to the wallet; required with REJECTED"},
                      fields={"type": "object", "maxProperties": 200,
                              "additionalProperties": _object(
                                  ("status",), status=review_field_status,
                                  error={"type": "string", "maxLength": 1000})}),
            "description": "Replaces the previous decision of this type. A REJECTED field "
                           "needs status NEEDS_INFO (resubmit) or REJECTED (final)."},
        "DecisionResult": _object(
            ("id", "type", "status", "previous_status", "decision"),
            id={"type": "string"}, type={"type": "string"}, status=_ref("CustomerStatus"),
            previous_status=nullable_status, decision=_ref("Decision")),
        "IdentityRequest": _object(("account",),
                                   account={"type": "string", "description": "G... or M..."},
                                   memo={"type": "string"},
                                   memo_type={"enum": ["id", "text", "hash"]}),
        "CustomerIdentities": _object(("id", "identities"), id={"type": "string"},
                                      identities={"type": "array",
                                                  "items": _ref("Identity")}),
    }


def _components() -> dict[str, Any]:
    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": _content(_ref("Error"))}

    query = {"in": "query", "required": False}
    return {
        "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "kyc_<prefix>_<secret>",
            "description": "A management token from `kyc-host token create` or the tokens "
                           "routes. SEP-10 JWTs are not accepted here."}},
        "parameters": {
            "TenantId": {"name": "tenant_id", "in": "path", "required": True,
                         "schema": {"type": "string"}},
            "Prefix": {"name": "prefix", "in": "path", "required": True,
                       "schema": {"type": "string"}},
            "Limit": {"name": "limit", **query,
                      "description": "page size; clamped to 1..200 (default 50)",
                      "schema": {"type": "integer"}},
            "Cursor": {"name": "cursor", **query, "description": "next_cursor of the last page",
                       "schema": {"type": "string"}},
            "Action": {"name": "action", **query, "schema": {"type": "string"}},
            "CustomerId": {"name": "customer_id", **query, "schema": {"type": "string"}},
            "Since": {"name": "since", **query,
                      "description": "ISO-8601 time or Unix seconds",
                      "schema": {"type": "string"}},
            **_customer_parameters(),
            "EventIdPath": {"name": "event_id", "in": "path", "required": True,
                            "schema": {"type": "string"}},
            "KeyOperation": {"name": "operation", "in": "path", "required": True,
                             "description": "rotate-kek and reindex run in the background "
                                            "(202); rotate-jwt and rotate-signing inline (200)",
                             "schema": {"enum": list(OPERATIONS)}},
            "EventState": {"name": "state", "in": "query", "required": False,
                           "description": "only events in this delivery state",
                           "schema": {"enum": ["pending", "delivered", "dead", "disabled"]}},
        },
        "responses": {
            "BadRequest": error("Malformed body or parameter; the message names the key."),
            "Unauthorized": error("No token, or a malformed, unknown, expired or revoked one."),
            "Forbidden": error("The token lacks the scope this route needs."),
            "NotFound": error("No such resource, or one of a tenant this token cannot reach."),
            "Conflict": error("The request conflicts with the current state (a file-managed "
                              "or existing tenant, a taken host, a customer whose data does "
                              "not allow the decision, an identity of another customer, "
                              "a key job already running, a signing key managed elsewhere)."),
            "PayloadTooLarge": error("Request body over 1 MiB."),
            "Unavailable": error("The store is unreachable; retry later."),
        },
        "schemas": _schemas(),
    }


def _customer_parameters() -> dict[str, Any]:
    def query(name: str, description: str, schema: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": schema or {"type": "string"}}

    def path(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    return {
        "CustomerIdPath": path("customer_id"),
        "FileIdPath": path("file_id"),
        "Status": query("status", "only customers with a type in this status",
                        _ref("CustomerStatus")),
        "Type": query("type", "only this customer type (with status: that type's status)"),
        "UpdatedSince": query("updated_since", "ISO-8601 time or Unix seconds"),
        "Account": query("account", "G... or M...: customers known by this account "
                         "(blind-index lookup)"),
        "Memo": query("memo", "with account: exactly that identity"),
        "MemoType": query("memo_type", "id (default), text or hash",
                          {"enum": ["id", "text", "hash"]}),
        "Order": query("order", "desc: newest update first (default); asc: oldest first",
                       {"enum": ["desc", "asc"]}),
    }


def _customer_paths() -> dict[str, Any]:
    customer = ("CustomerIdPath",)
    binary = {"schema": {"type": "string", "format": "binary"}}
    download = {
        "description": "The decrypted file as an attachment named <file_id>.<ext>; the type "
                       "is the one detected at upload, anything else application/octet-stream.",
        "headers": {"Content-Disposition": {"schema": {"type": "string"}},
                    "X-Content-Type-Options": {"schema": {"const": "nosniff"}},
                    "Cache-Control": {"schema": {"const": "no-store"}}},
        "content": {media: binary for media in (
            "image/jpeg", "image/png", "application/pdf", "image/webp", "image/heic",
            "video/mp4", "application/octet-stream")},
    }
    base = "/api/v1/tenants/{tenant_id}/customers"
    return {
        base: {"get": _op(
            "listCustomers", "The review queue: ids, per-type status, field names",
            "customers:read", {"200": _ok("A page of customers.", "CustomerPage")},
            tenant=True, params=("Status", "Type", "UpdatedSince", "Account", "Memo",
                                 "MemoType", "Order", "Cursor", "Limit"), errors=(400,))},
        base + "/{customer_id}": {
            "get": _op("getCustomer", "A customer with decrypted values (audited)",
                       "customers:read", {"200": _ok("The customer.", "Customer")},
                       tenant=True, params=customer),
            "delete": _op("deleteCustomer", "Erase the customer, as the wallet's DELETE does",
                          "customers:delete", {"204": {"description": "Erased."}},
                          tenant=True, params=customer, errors=(400,)),
        },
        base + "/{customer_id}/decision": {"post": _op(
            "decideCustomer", "Set status, message and field verdicts of one type (audited)",
            "customers:review", {"200": _ok("Stored; what the wallet now sees.",
                                            "DecisionResult")},
            tenant=True, params=customer, body="DecisionRequest", errors=(400, 409, 413))},
        base + "/{customer_id}/identities": {
            "post": _op("linkIdentity", "Link an account (and memo) to this customer",
                        "customers:review",
                        {"200": _ok("Already linked.", "CustomerIdentities"),
                         "201": _ok("Linked.", "CustomerIdentities")},
                        tenant=True, params=customer, body="IdentityRequest",
                        errors=(400, 409, 413)),
            "delete": _op("unlinkIdentity", "Unlink an identity (never the last one)",
                          "customers:review", {"200": _ok("Unlinked.", "CustomerIdentities")},
                          tenant=True, params=customer, body="IdentityRequest",
                          errors=(400, 409, 413)),
        },
        base + "/{customer_id}/files/{file_id}": {"get": _op(
            "downloadCustomerFile", "Download one of the customer's files (audited)",
            "customers:read", {"200": download}, tenant=True,
            params=("CustomerIdPath", "FileIdPath"))},
    }


def _tenant_paths() -> dict[str, Any]:
    view = _ok("The tenant.", "Tenant")
    return {
        "/api/v1/tenants": {
            "get": _op("listTenants", "List live tenants (id order)", "tenants:read",
                       {"200": _ok("A page of tenants.", "TenantList")},
                       params=("Limit", "Cursor"), errors=(400,)),
            "post": _op("createTenant", "Onboard a tenant (operator token)", "tenants:write",
                        {"201": _ok("Created; served on its hosts within seconds.", "Tenant")},
                        body="TenantDocument", errors=(400, 409, 413)),
        },
        "/api/v1/tenants/{tenant_id}": {
            "get": _op("getTenant", "Read one tenant", "tenants:read", {"200": view},
                       tenant=True),
            "put": _op("replaceTenant", "Replace an API-managed tenant's document",
                       "tenants:write", {"200": view}, tenant=True, body="TenantDocument",
                       errors=(400, 409, 413)),
            "delete": _op("deleteTenant",
                          "Offboard: stop serving, destroy keys, drop data, free hosts",
                          "tenants:write", {"204": {"description": "Offboarded."}},
                          tenant=True, errors=(409,)),
        },
        "/api/v1/tenants/{tenant_id}/suspend": {
            "post": _op("suspendTenant", "Suspend (503 on its hosts)", "tenants:write",
                        {"200": view}, tenant=True)},
        "/api/v1/tenants/{tenant_id}/resume": {
            "post": _op("resumeTenant", "Resume a suspended tenant", "tenants:write",
                        {"200": view}, tenant=True)},
    }


def _token_and_audit_paths() -> dict[str, Any]:
    audit_params = ("Action", "CustomerId", "Since", "Cursor", "Limit")
    return {
        "/api/v1/tenants/{tenant_id}/tokens": {
            "get": _op("listTokens", "List the tenant's tokens (never secrets)", "tokens:write",
                       {"200": _ok("Tokens.", "TokenList")}, tenant=True),
            "post": _op("createToken", "Create a tenant token (within the caller's scopes)",
                        "tokens:write", {"201": _ok("The token, shown once.", "NewToken")},
                        tenant=True, body="TokenCreate", errors=(400, 413)),
        },
        "/api/v1/tenants/{tenant_id}/tokens/{prefix}": {
            "delete": _op("revokeToken", "Revoke a token", "tokens:write",
                          {"200": _ok("The revoked token.", "TokenInfo")}, tenant=True,
                          params=("Prefix",)),
        },
        "/api/v1/tenants/{tenant_id}/audit": {
            "get": _op("listAudit", "Read the tenant's audit log", "audit:read",
                       {"200": _ok("A page of entries.", "AuditPage")}, tenant=True,
                       params=audit_params, errors=(400,)),
        },
        "/api/v1/tenants/{tenant_id}/audit/verify": {
            "get": _op("verifyAudit", "Verify the tenant's hash chain", "audit:read",
                       {"200": _ok("Verification result.", "AuditVerify")}, tenant=True),
        },
        "/api/v1/audit": {
            "get": _op("listPlatformAudit", "Read the platform audit log (operator token)",
                       "audit:read", {"200": _ok("A page of entries.", "AuditPage")},
                       params=audit_params, errors=(400,)),
        },
        "/api/v1/audit/verify": {
            "get": _op("verifyPlatformAudit", "Verify the platform hash chain (operator token)",
                       "audit:read", {"200": _ok("Verification result.", "AuditVerify")}),
        },
        "/api/v1/whoami": {
            "get": _op("whoami", "The calling token", None, {"200": _ok("Token.", "Whoami")}),
        },
    }


def _public_paths() -> dict[str, Any]:
    def public(op_id: str, summary: str, schema: str, *extra: int) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": _ok(summary, schema)}
        responses.update(_errors(*extra))
        return {"get": {"operationId": op_id, "summary": summary, "security": [],
                        "x-scope": None, "responses": responses}}

    openapi = public("openapi", "This document", "Health")
    openapi["get"]["responses"]["200"] = {"description": "This document",
                                          "content": _content({"type": "object"})}
    wallet = public("openapiPublic", "The wallet-facing API document", "Health")
    wallet["get"]["responses"]["200"] = {
        "description": "OpenAPI document of SEP-1/10/12 as every tenant host serves them",
        "content": _content({"type": "object"})}
    metrics = public("metrics", "Prometheus metrics of this process (of all workers)", "Health")
    metrics["get"]["responses"]["200"] = {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/healthz": public("healthz", "Liveness", "Health"),
        "/readyz": public("readyz", "Readiness (store reachable, not draining)", "Health", 503),
        "/metrics": metrics,
        "/api/v1/openapi.json": openapi,
        "/api/v1/openapi-public.json": wallet,
    }


def _key_schemas() -> dict[str, Any]:
    """Key status and rotation answers (management/keys_api.py): public halves only."""
    account = {"type": "string", "pattern": "^G[A-Z2-7]{55}$"}
    count = {"type": "integer", "minimum": 0}
    version = {"type": "integer", "minimum": 1}
    job = _object(
        ("id", "stage", "part", "target_version", "passes", "counters", "running", "done",
         "started_at", "updated_at", "finished_at", "last_error"),
        id={"type": "string", "description": "rotate:<tenant> or reindex:<tenant>"},
        stage={"type": "string", "description": "rotate-kek: add, activate, rewrap, verify, "
               "retire, done; reindex: read, write, customers, files, settle, cleanup, done"},
        part=_NULLABLE_STRING, target_version={"type": ["integer", "null"]}, passes=count,
        counters={"type": "object", "additionalProperties": count,
                  "description": "records handled per pass"},
        running={"type": "boolean", "description": "a live run holds the job's lease"},
        done={"type": "boolean"}, started_at=_NULLABLE_TIME, updated_at=_NULLABLE_TIME,
        finished_at=_NULLABLE_TIME,
        last_error={**_NULLABLE_STRING,
                    "description": "why the last run stopped, until the job moves again"})
    nullable_job = {"oneOf": [{"type": "null"}, _ref("KeyJob")]}
    return {
        "KeyJob": job,
        "KeyStatus": _object(
            ("tenant", "kek_version", "kek_versions", "index_version", "index_next",
             "index_stage", "jwt_algorithm", "jwt_generation", "jwt_previous", "jwt_keys",
             "signing_key", "signing_key_env", "signing_previous", "signing_keys", "jobs"),
            tenant={"type": "string"}, kek_version=version,
            kek_versions={"type": "array", "items": version}, index_version=version,
            index_next={"type": ["integer", "null"]},
            index_stage={"enum": ["read", "write", None]},
            jwt_algorithm={"enum": ["EdDSA", "HS256"]}, jwt_generation=version,
            jwt_previous=count,
            jwt_keys={"type": "array", "items": _object(
                ("kid", "generation", "current", "valid_until"), kid={"type": "string"},
                generation=version, current={"type": "boolean"},
                valid_until=_NULLABLE_TIME)},
            signing_key=account, signing_key_env=_NULLABLE_STRING, signing_previous=count,
            signing_keys={"type": "array", "items": _object(
                ("public_key", "current", "valid_until"), public_key=account,
                current={"type": "boolean"}, valid_until=_NULLABLE_TIME)},
            jobs=_object(JOB_OPERATIONS, **{op: nullable_job for op in JOB_OPERATIONS})),
        "KeyJobStarted": _object(
            ("operation", "tenant", "job", "status_url"),
            operation={"enum": list(JOB_OPERATIONS)}, tenant={"type": "string"},
            job={"type": "string"}, status_url={"type": "string"}),
        "KeyRotated": {"oneOf": [
            _object(("operation", "tenant", "jwt_generation", "kid", "previous_kid",
                     "previous_valid_until"),
                    operation={"const": "rotate-jwt"}, tenant={"type": "string"},
                    jwt_generation=version, kid={"type": "string"},
                    previous_kid={"type": "string"}, previous_valid_until=_TIME),
            _object(("operation", "tenant", "signing_key", "previous_signing_key",
                     "previous_valid_until"),
                    operation={"const": "rotate-signing"}, tenant={"type": "string"},
                    signing_key=account, previous_signing_key=account,
                    previous_valid_until=_TIME)]},
    }


def _key_paths() -> dict[str, Any]:
    started = {"description": "Started in the background; poll the status route.",
               "headers": {"Location": {"description": "the status route",
                                        "schema": {"type": "string"}}},
               "content": _content(_ref("KeyJobStarted"))}
    base = "/api/v1/tenants/{tenant_id}/keys"
    return {
        base: {"get": _op(
            "getKeyStatus", "Key versions, public keys and key jobs (never key material)",
            "tenants:read", {"200": _ok("The tenant's key status.", "KeyStatus")},
            tenant=True)},
        base + "/{operation}": {"post": _op(
            "triggerKeyOperation", "Rotate a key (audited); an unknown operation is a 404",
            "keys:write",
            {"200": _ok("Rotated (rotate-jwt, rotate-signing).", "KeyRotated"),
             "202": started},
            tenant=True, params=("KeyOperation",), errors=(409,))},
    }


def _callback_schemas() -> dict[str, Any]:
    event = _object(
        ("id", "kind", "type", "customer_id", "customer_type", "status", "state", "attempts",
         "created_at", "updated_at", "next_attempt_at", "delivered_at", "last_error",
         "last_status", "endpoint"),
        id={"type": "string"},
        kind={"enum": ["sep12", "webhook"],
              "description": "sep12: the wallet's callback; webhook: the anchor's endpoint"},
        type={"type": "string", "description": "sep12.status or a webhook event type"},
        customer_id={"type": "string"}, customer_type={"type": "string"},
        status={"type": "string", "description": "the customer status the event carries"},
        state={"enum": ["pending", "delivered", "dead", "disabled"]},
        attempts={"type": "integer", "minimum": 0},
        created_at=_TIME, updated_at=_TIME, next_attempt_at=_NULLABLE_TIME,
        delivered_at=_NULLABLE_TIME,
        last_error={"type": "string", "description": "never a response body or URL"},
        last_status={"type": "integer", "description": "HTTP status of the last attempt"},
        endpoint={"type": "string", "description": "webhook URL; empty for SEP-12 callbacks "
                  "(the wallet's URL stays sealed in the customer record)"})
    return {
        "CallbackEvent": event,
        "CallbackEventList": _object(("events", "next_cursor"),
                                     events={"type": "array", "items": _ref("CallbackEvent")},
                                     next_cursor=_NULLABLE_STRING),
    }


def _callback_paths() -> dict[str, Any]:
    base = "/api/v1/tenants/{tenant_id}/callbacks"
    return {
        base: {"get": _op(
            "listCallbacks", "SEP-12 callback and webhook deliveries (newest first)",
            "callbacks:read", {"200": _ok("A page of events.", "CallbackEventList")},
            tenant=True, params=("EventState", "CustomerId", "Cursor", "Limit"),
            errors=(400,))},
        base + "/{event_id}/replay": {"post": _op(
            "replayCallback", "Send a dead-lettered (or disabled) event again (audited)",
            "callbacks:replay", {"200": _ok("The event, pending again.", "CallbackEvent")},
            tenant=True, params=("EventIdPath",), errors=(409,))},
    }


@cache
def management_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kyc-host management API",
            "version": API_VERSION,
            "description": "Admin listener only; never reachable through a tenant host. "
                           "Errors are {\"error\": message}. A tenant token naming another "
                           "tenant gets 404, a missing scope 403, a bad token 401.",
        },
        "paths": {**_tenant_paths(), **_token_and_audit_paths(), **_customer_paths(),
                  **_callback_paths(), **_key_paths(), **_public_paths()},
        "components": _components(),
    }


#: File name under /api/v1/ -> builder.
DOCUMENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "openapi.json": management_document,
    "openapi-public.json": wallet_document,
}


class OpenApiHandler(AdminHandler):
    """Serves a document of :data:`DOCUMENTS` (public: it describes, it does not grant)."""

    def get(self, name: str) -> None:
        build = DOCUMENTS.get(name)
        if build is None:
            raise NotFound("not found")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(json.dumps(build(), separators=(",", ":")))


routes = [(r"/api/v1/(?P<name>[a-z0-9-]*openapi[a-z0-9-]*[.]json)", OpenApiHandler)]
