"""Every JSON body the server sends, held against the wire contract: the model of `emoserve.wire` that
/openapi.json names for the route and status, and that schema itself.

A body passes when its model validates it, and when neither the model's JSON schema nor the route's
OpenAPI schema misses one of its keys (the "no undeclared keys" of issue 19: what the server sends is
what the schema says). `ContractChecker` is installed on every test client of tests/api, so each
API test's answers are checked; `undeclared_keys` is the walk over a schema.
"""

from __future__ import annotations

import hashlib
import re

import httpx
import pydantic_core
from fastapi import FastAPI
from pydantic import TypeAdapter

from emoserve import wire
from emoserve.client.parse import parse_multipart

ADAPTERS = {"AnalyzeResult": wire.ANALYZE_RESULT, "StreamMessage": wire.STREAM_MESSAGE}


def adapter(component: str) -> TypeAdapter:
    """The wire model that an OpenAPI component is generated from."""
    return ADAPTERS.get(component) or TypeAdapter(getattr(wire, component))


def resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root.get("$defs", {}).get(name) or root["components"]["schemas"][name]
    return schema


def undeclared_keys(value: object, schema: dict, root: dict, path: str = "body") -> list[str]:
    """Keys of `value` (recursively) that `schema` does not declare; [] when every key is in the schema.

    Objects with `properties` must only use those; objects without (label → score maps) are data.
    Of lists, the first and last items are walked (rows of a frame result have one shape).
    """
    schema = resolve(schema, root)
    options = schema.get("oneOf") or schema.get("anyOf")
    if options:
        found = [undeclared_keys(value, option, root, path) for option in options]
        return min(found, key=len)
    kind = schema.get("type")
    if isinstance(value, dict):
        if kind not in (None, "object"):
            return [f"{path} (an object where the schema has {kind})"]
        properties = schema.get("properties")
        if properties is None:
            return []
        missing = [f"{path}.{key}" for key in value if key not in properties]
        return missing + [problem for key, item in value.items() if key in properties
                          for problem in undeclared_keys(item, properties[key], root, f"{path}.{key}")]
    if isinstance(value, list) and value:
        items = schema.get("items", {})
        ends = (0, len(value) - 1) if len(value) > 1 else (0,)
        return [problem for i in ends for problem in undeclared_keys(value[i], items, root, f"{path}[{i}]")]
    if value is None and kind not in (None, "null"):
        return [f"{path} (null where the schema has {kind})"]
    return []


def check_body(body: object, component: str, openapi: dict, route_schema: dict | None = None) -> None:
    """The body validates against the component's wire model, whose JSON schema and the route's OpenAPI
    schema (the component itself when not given) declare every key it has."""
    model = adapter(component)
    model.validate_python(body)
    model_schema = model.json_schema()
    assert undeclared_keys(body, model_schema, model_schema) == [], f"keys outside wire.{component}"
    route_schema = route_schema or {"$ref": f"#/components/schemas/{component}"}
    assert undeclared_keys(body, route_schema, openapi) == [], f"keys outside /openapi.json's {component}"


class ContractChecker:
    """An httpx response hook for a test client of `app`: checks each JSON answer, and records what it
    checked as (method, route, status, component) in `seen`."""

    def __init__(self, app: FastAPI):
        self.openapi = app.openapi()
        self.routes = sorted(((re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$"), path, operations)
                              for path, operations in self.openapi["paths"].items()),
                             key=lambda route: route[1].count("{"))  # /v1/upload/init before /v1/upload/{id}
        self.seen: set[tuple[str, str, int, str]] = set()
        self.checked: set[bytes] = set()  # the same answer again (16 clients fetching one result) is checked once

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        content_type = response.headers.get("content-type", "")
        if not response.content or not content_type.startswith(("application/json", "multipart/mixed")):
            return
        data = response.content
        if content_type.startswith("multipart/mixed"):
            data = parse_multipart(content_type, response.content)[0][1]  # the JSON part; the others are binary
        method = response.request.method.lower()
        path, schema = self.declared(method, response.request.url.path, response.status_code)
        if schema is None:
            if response.status_code < 400:
                assert path not in self.openapi["paths"], f"{method} {path} answered {response.status_code} " \
                                                          "with JSON that /openapi.json does not declare"
                return
            schema = {"$ref": "#/components/schemas/ErrorBody"}  # every error is one, declared or not
        component = schema["$ref"].rsplit("/", 1)[-1]
        self.seen.add((method, path, response.status_code, component))
        key = hashlib.sha256(data + component.encode()).digest()
        if key not in self.checked:
            check_body(pydantic_core.from_json(data), component, self.openapi, schema)
            self.checked.add(key)

    def declared(self, method: str, url_path: str, status: int) -> tuple[str, dict | None]:
        """The route template answering `url_path` and the JSON schema it declares for `status`, if any."""
        for pattern, path, operations in self.routes:
            if pattern.match(url_path) and method in operations:
                declared = operations[method]["responses"].get(str(status), {})
                return path, declared.get("content", {}).get("application/json", {}).get("schema")
        return url_path, None
