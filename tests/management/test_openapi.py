"""The served OpenAPI document: valid OpenAPI 3.1, and in step with the admin routes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema import ValidationError
from mgmt_helpers import (  # noqa: F401 - fixtures
    Mgmt,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)
from openapi_spec_validator import validate
from tornado.web import RequestHandler

from kyc_host.management.openapi import management_document
from kyc_host.web.routes import admin_routes

METHODS = ("get", "post", "put", "delete", "patch")


def _sample(template: str) -> str:
    return template.replace("{tenant_id}", "t1").replace("{prefix}", "0123456789")


def _rules() -> list[tuple[re.Pattern[str], type[RequestHandler]]]:
    return [(re.compile(rule[0] + "$"), rule[1]) for rule in admin_routes()]


def _defined(handler: type[RequestHandler]) -> set[str]:
    """Methods the handler class really implements (not RequestHandler's 405 defaults)."""
    return {m for m in METHODS
            if getattr(handler, m, None) is not getattr(RequestHandler, m, None)}


async def test_document_is_valid_openapi_31(mgmt: Mgmt) -> None:
    reply = await mgmt.api.call("GET", "/api/v1/openapi.json")
    assert reply.status == 200
    assert reply.body == json.loads(json.dumps(management_document()))
    assert reply.body["openapi"] == "3.1.0"
    validate(reply.body)
    assert (await mgmt.api.call("GET", "/api/v1/nope-openapi.json", check=False)).status == 404


def test_every_documented_operation_has_a_handler_and_back() -> None:
    doc = management_document()
    rules = _rules()
    documented: set[tuple[str, str]] = set()
    for template, item in doc["paths"].items():
        sample = _sample(template)
        matches = [h for pattern, h in rules if pattern.match(sample)]
        assert matches, f"{template} has no route"
        handler = matches[0]
        methods = {m for m in METHODS if m in item}
        assert methods == _defined(handler), (template, methods, _defined(handler))
        documented.add((template, handler.__name__))
    routed = {handler.__name__ for _, handler in rules}
    assert routed == {name for _, name in documented}, routed ^ {n for _, n in documented}


def test_scopes_in_the_document_match_the_handlers() -> None:
    doc = management_document()
    for template, item in doc["paths"].items():
        handler = next(h for p, h in _rules() if p.match(_sample(template)))
        for method in METHODS:
            op: dict[str, Any] | None = item.get(method)
            if op is None:
                continue
            scope = getattr(getattr(handler, method), "required_scope", None)
            assert scope == op["x-scope"], (template, method, scope)
            if op["security"]:
                assert "401" in op["responses"]
            if "{tenant_id}" in template:
                assert "404" in op["responses"]


async def test_answers_are_checked_against_the_document(mgmt: Mgmt) -> None:
    """The checker itself must be able to fail: a wrong shape or status is caught."""
    with pytest.raises(ValidationError):
        mgmt.api.checker.check("GET", "/api/v1/whoami", 200, {"prefix": 1})
    with pytest.raises(AssertionError):
        mgmt.api.checker.check("GET", "/api/v1/whoami", 418, {"error": "x"})
    with pytest.raises(ValidationError):
        mgmt.api.checker.check("GET", "/api/v1/tenants/t1", 404, {"error": "x", "trace": "y"})
