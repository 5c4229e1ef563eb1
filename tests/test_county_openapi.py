"""GET /api/v1/openapi.json: the OpenAPI 3.1 description of the county API cannot drift from the app.

Every route the Starlette app mounts is described with the same methods, and every described path is
mounted; the document is structurally valid OpenAPI 3.1 (openapi-spec-validator is not installed in this
project's venv, so the structure is checked here: every operation has responses, every `$ref` resolves,
path parameters are declared, operation ids are unique); real responses of boxes, alarms and a broadcast
(through the real app on SQLite and PostgreSQL) validate against the document's schemas, as do its examples,
which carry the same fields as the real responses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from county.server import openapi
from county.server.app import create_app
from tests.county_api import Env, config_for, env_fixture  # noqa: F401 - the `env` fixture

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# the contract's section 6: the fields a county script may rely on
CONTRACT_FIELDS = {
    "Box": {"id", "name", "village", "township", "state", "last_seen", "backlog", "version"},
    "Alarm": {"id", "box", "kind", "wearer", "ts", "state", "pos"},
    "Broadcast": {"id", "state", "receipts"},
    "BoxReceipt": {"box", "state", "reason", "ts"},
    "BroadcastCreated": {"id", "state"},
    "Session": {"token"},
}


# ---------------------------------------------------------------------------------- a small validator
def resolve(doc: dict[str, Any], pointer: str) -> Any:
    assert pointer.startswith("#/"), pointer
    node: Any = doc
    for part in pointer[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"$ref {pointer} does not resolve (at {part!r})"
        node = node[part]
    return node


TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list,
    "null": type(None)}


def errors(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
    """What is wrong with `value` against `schema` (the subset of JSON Schema the document uses)."""
    if "$ref" in schema:
        return errors(doc, resolve(doc, schema["$ref"]), value, where)
    if "oneOf" in schema:
        ok = [s for s in schema["oneOf"] if not errors(doc, s, value, where)]
        return [] if len(ok) == 1 else [f"{where}: matches {len(ok)} of oneOf"]
    out: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        good = any(isinstance(value, TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in types)
        if not good:
            return [f"{where}: {value!r} is not {types}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            out += [f"{where}: unexpected {k!r}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                out += errors(doc, props[k], v, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += errors(doc, schema["items"], item, f"{where}[{i}]")
    return out


def check(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    problems = errors(doc, schema, value)
    assert not problems, problems


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + [r for v in node.values()
                                                                                 for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


# ------------------------------------------------------------------------------------------ the tests
def mounted(tmp_path: Path) -> dict[str, set[str]]:
    config, _public = config_for(tmp_path, "mqtt://127.0.0.1:1")
    app = create_app(config, db=None)
    out: dict[str, set[str]] = {}
    for route in app.routes:
        if not str(getattr(route, "path", "")).startswith("/api/"):
            continue  # the web console's pages and static files (routes_web) are not the API
        assert isinstance(route, Route), f"{route!r}: only plain routes are described"
        out.setdefault(route.path, set()).update(m.lower() for m in (route.methods or ()))
    return out


def test_every_mounted_route_is_described_and_every_described_path_is_mounted(tmp_path: Path) -> None:
    doc = openapi.document()
    described = {path: {m for m in item if m in METHODS} for path, item in doc["paths"].items()}
    routes = mounted(tmp_path)
    assert set(routes) == set(described), (set(routes) ^ set(described))
    for path, methods in routes.items():
        # Starlette answers HEAD for every GET; the document names HEAD only where the route asks for it
        assert methods - {"head"} == described[path] - {"head"}, path
        assert described[path] <= methods, path
    # the whole /api/v1 surface the issue lists is there
    for path in ("/api/v1/session", "/api/v1/me", "/api/v1/boxes", "/api/v1/messages", "/api/v1/alarms",
                 "/api/v1/alarms/{id}/ack", "/api/v1/alarms/{id}/assign", "/api/v1/alarms/{id}/resolve",
                 "/api/v1/broadcasts", "/api/v1/broadcasts/{id}", "/api/v1/broadcasts/{id}/approve",
                 "/api/v1/broadcasts/{id}/cancel", "/api/v1/broadcasts/{id}/resend", "/api/v1/events",
                 "/api/v1/reports/cameras", "/api/v1/reports/boxes", "/api/v1/reports/alarms"):
        assert path in described
    assert "text/event-stream" in doc["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]


def test_the_document_is_well_formed_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] and doc["info"]["version"]
    for r in refs(doc):
        resolve(doc, r)
    ids: list[str] = []
    schemes = set(doc["components"]["securitySchemes"])
    for req in doc["security"]:
        assert set(req) <= schemes
    for path, item in doc["paths"].items():
        assert path.startswith("/api/v1/")
        declared_path_params = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            assert method in METHODS, (path, method)
            assert operation["responses"], (path, method)
            for code, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", code), (path, method, code)
                response = resolve(doc, response["$ref"]) if "$ref" in response else response
                assert response["description"], (path, method, code)
            params = operation.get("parameters", [])
            assert {p["name"] for p in params if p["in"] == "path"} == declared_path_params, (path, method)
            assert all(p["required"] for p in params if p["in"] == "path")
            ids.append(operation["operationId"])
            public = operation.get("security") == []
            assert public or "401" in operation["responses"], (path, method)
    assert len(ids) == len(set(ids)), "operationId must be unique"
    schemas = doc["components"]["schemas"]
    for name, fields in CONTRACT_FIELDS.items():
        assert fields <= set(schemas[name]["required"]), name
    for schema in schemas.values():
        for example in schema.get("examples", []):
            check(doc, schema, example)
    # the validator can fail: a wrong value is caught
    assert errors(doc, openapi.ref("Box"), {"id": "x"})
    assert errors(doc, openapi.ref("Alarm"), {**openapi.ALARM_EXAMPLE, "state": "gone"})


async def test_the_document_is_served_without_a_session(env: Env) -> None:
    r = await env.client.get(openapi.PATH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == openapi.document()
    assert (await env.client.get("/api/v1/boxes")).status_code == 401  # the rest still needs a session


def same_fields(doc: dict[str, Any], name: str, real: dict[str, Any]) -> None:
    schema = doc["components"]["schemas"][name]
    check(doc, schema, real)
    assert set(schema["properties"]) == set(real), (name, set(schema["properties"]) ^ set(real))
    for example in schema.get("examples", []):
        assert set(example) == set(real), (name, set(example) ^ set(real))


async def test_real_responses_match_the_schemas_and_examples(env: Env) -> None:
    doc = openapi.document()

    def body_schema(path: str, method: str, code: str) -> dict[str, Any]:
        schema: dict[str, Any] = doc["paths"][path][method]["responses"][code]["content"]["application/json"][
            "schema"]
        return schema

    r = await env.get("viewer", "/api/v1/boxes")
    assert r.status_code == 200
    check(doc, body_schema("/api/v1/boxes", "get", "200"), r.json())
    boxes = {b["id"]: b for b in r.json()}
    same_fields(doc, "Box", boxes["a1"])
    check(doc, openapi.ref("Box"), boxes["stray-9"])  # unregistered: nulls where the regions file is silent

    await env.add_alarm("a1:1", "a1")
    await env.add_alarm("b1:1", "b1", state="resolved", pos=None)
    r = await env.get("viewer", "/api/v1/alarms?state=all")
    assert r.status_code == 200 and len(r.json()) == 2
    check(doc, body_schema("/api/v1/alarms", "get", "200"), r.json())
    same_fields(doc, "Alarm", r.json()[0])

    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "开会", "volume": 50})
    assert r.status_code == 201, r.text
    check(doc, body_schema("/api/v1/broadcasts", "post", "201"), r.json())
    bid = r.json()["id"]
    await env.add_receipt(bid, "a1", "scheduled")
    r = await env.get("viewer", f"/api/v1/broadcasts/{bid}")
    assert r.status_code == 200
    check(doc, body_schema("/api/v1/broadcasts/{id}", "get", "200"), r.json())
    same_fields(doc, "Broadcast", r.json())
    states = {row["box"]: row["state"] for row in r.json()["receipts"]}
    assert states == {"a1": "scheduled", "a2": "no_answer"}
    r = await env.get("viewer", "/api/v1/broadcasts")
    check(doc, body_schema("/api/v1/broadcasts", "get", "200"), r.json())
    r = await env.post("operator", f"/api/v1/broadcasts/{bid}/cancel")
    check(doc, body_schema("/api/v1/broadcasts/{id}/cancel", "post", "200"), r.json())
    r = await env.get("viewer", "/api/v1/me")
    check(doc, body_schema("/api/v1/me", "get", "200"), r.json())
    # an error answer has the Error shape
    r = await env.get("viewer", "/api/v1/broadcasts/nope")
    assert r.status_code == 404
    check(doc, openapi.ref("Error"), r.json())


@pytest.mark.parametrize("path", ["/api/v1/openapi.json"])
def test_served_document_over_a_plain_app(tmp_path: Path, path: str) -> None:
    """HEAD and GET without a session, through the ASGI app alone (no database needed)."""
    import asyncio

    config, _public = config_for(tmp_path, "mqtt://127.0.0.1:1")
    app = create_app(config, db=None)

    async def go() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (await c.get(path)).status_code, (await c.head(path)).status_code

    assert asyncio.run(go()) == (200, 200)
