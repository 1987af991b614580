"""Helpers and fixtures of the management-API tests (import the fixtures by name). Index:

- ``OpenApiChecker``: validates an answer (status + JSON body) against the served OpenAPI
  document; every ``Api.call`` runs it, so an undocumented status or shape fails the test.
- ``mgmt``: a running server (both backends) with tenants t1 (a.test) and t2 (b.test), an
  operator token, a t1 admin token and a t2 admin token holding every tenant scope, and an
  ``Api`` client bound to the admin listener.
- ``make_token``: create a token directly in the store (``tenant=None`` for an operator token).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.management.auth import TENANT_SCOPES, create_token
from kyc_host.management.openapi import management_document

DOC_URI = "urn:kyc-host:management"


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@dataclass
class OpenApiChecker:
    doc: Mapping[str, Any]
    _registry: Registry = field(init=False)

    def __post_init__(self) -> None:
        resource = Resource.from_contents(dict(self.doc), default_specification=DRAFT202012)
        self._registry = Registry().with_resource(DOC_URI, resource)

    def template_for(self, path: str) -> str | None:
        for template in self.doc["paths"]:
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
            if re.fullmatch(pattern, path):
                return str(template)
        return None

    def check(self, method: str, path: str, status: int, body: Any,
              media: str = "application/json") -> None:
        """Fail unless ``status`` is documented for the operation and ``body`` fits it
        (a non-JSON answer: its media type must be one the operation documents)."""
        template = self.template_for(path.split("?", 1)[0])
        assert template is not None, f"{path} is not in the OpenAPI document"
        operation = self.doc["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not documented"
        response = operation["responses"].get(str(status))
        assert response is not None, f"{method} {template}: status {status} not documented"
        pointer = f"/paths/{_escape(template)}/{method.lower()}/responses/{status}"
        if "$ref" in response:
            pointer = response["$ref"].removeprefix("#")
            response = self.doc["components"]["responses"][pointer.rsplit("/", 1)[1]]
        content = response.get("content")
        if content is None:
            assert body is None, f"{method} {template} {status}: expected no body"
            return
        if media != "application/json":
            assert media in content, f"{method} {template} {status}: {media} not documented"
            return
        assert "application/json" in content
        schema = {"$ref": f"{DOC_URI}#{pointer}/content/application~1json/schema"}
        Draft202012Validator(schema, registry=self._registry).validate(body)


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def error(self) -> str:
        assert isinstance(self.body, dict), self.body
        assert set(self.body) == {"error"}, self.body
        return str(self.body["error"])


@dataclass
class Api:
    srv: RunningServer
    checker: OpenApiChecker

    async def call(self, method: str, path: str, *, token: str | None = None,
                   body: Any = None, raw: bytes | None = None,
                   headers: Mapping[str, str] | None = None, check: bool = True) -> Reply:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        response = await self.srv.fetch("127.0.0.1", path, method=method, body=data,
                                        headers=all_headers, admin=True)
        media = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        parsed: Any
        if response.body and media != "application/json":
            parsed = response.body  # a download: raw bytes
        else:
            text = response.body.decode() if response.body else ""
            parsed = json.loads(text) if text else None
            assert "Traceback" not in text
        if check:
            self.checker.check(method, path, response.code, parsed, media or "application/json")
        return Reply(response.code, parsed, response.headers)


MakeToken = Callable[..., Awaitable[str]]


@pytest.fixture(name="checker")
def checker_fixture() -> OpenApiChecker:
    return OpenApiChecker(management_document())


@dataclass
class Mgmt:
    srv: RunningServer
    api: Api
    operator: str
    t1: str
    t2: str
    make_token: MakeToken


@pytest.fixture(name="make_token_for")
def make_token_for_fixture() -> Callable[[RunningServer], MakeToken]:
    def bind(srv: RunningServer) -> MakeToken:
        async def make(tenant: str | None, scopes: Sequence[str] = TENANT_SCOPES,
                       expires_at: float | None = None) -> str:
            issued = await create_token(srv.services.store, tenant_id=tenant, scopes=scopes,
                                        created_by="test", expires_at=expires_at)
            return issued.token

        return make

    return bind


@pytest.fixture(name="mgmt")
async def mgmt_fixture(make_server: MakeServer, checker: OpenApiChecker,
               make_token_for: Callable[[RunningServer], MakeToken]) -> Mgmt:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))
    make = make_token_for(srv)
    return Mgmt(srv, Api(srv, checker), await make(None, ["operator"]), await make("t1"),
                await make("t2"), make)
