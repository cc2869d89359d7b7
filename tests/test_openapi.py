"""GET /openapi.json (ai_stack/openapi.py), and a property test of every route it documents.

The property test draws request bodies from the document's own request schemas (valid-ish values, then
mutations: a dropped key, a value of the wrong type, a body that is not an object or not JSON) and sends them
to an app with the fake chat and speech engines: never a 5xx (but a model reloading after an unload), every
4xx an error in the documented shape, every JSON success in the documented response shape.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Match
from starlette.testclient import TestClient

from ai_stack.openapi import OPENAPI_ROUTES, ApiRoute, openapi_document
from tests.conftest import FAKE, wait_ready

FAKE_SPEECH: dict[str, Any] = {
    "id": "fake-voice",
    "aliases": ["tts-1"],
    "kind": "speech",
    "engine": "fake-speech",
    "source": "fake:",
}
NAMES = ["fake-chat", "fake", "fake-voice", "tts-1", "gpt-4o", ""]
CHAT_NAMES, SPEECH_NAMES = ["fake-chat", "fake"], ["fake-voice", "tts-1"]
VOICES = ["fake-a", "fake-b", "alloy", "fake-a(2)+fake-b(1)", "nobody", "fake-a+"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture
def client(app_client: Callable[..., TestClient]) -> TestClient:
    c = app_client([FAKE, FAKE_SPEECH])
    wait_ready(c, "fake-chat")
    wait_ready(c, "fake-voice")
    return c


def test_the_document_is_openapi_31_from_the_models(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document == json.loads(json.dumps(openapi_document()))
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    # Generated from the pydantic models: their fields and limits, not a hand-written copy.
    request = schemas["ChatCompletionRequest"]
    assert {"model", "messages", "stop", "tools", "n"} <= set(request["properties"])
    assert set(request["required"]) == {"model", "messages"}
    speech = schemas["SpeechRequest"]["properties"]
    assert speech["input"]["maxLength"] == 4096 and speech["speed"]["maximum"] == 4.0
    assert set(document["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]) >= {
        "audio/flac",
        "audio/mpeg",
        "text/event-stream",
    }


def test_every_documented_route_exists(client: TestClient) -> None:
    app = client.app
    for route in OPENAPI_ROUTES:
        path = route.path.replace("{model_id}", "fake-chat")
        scope = {"type": "http", "method": route.method, "path": path, "root_path": ""}
        matches = [r.matches(scope)[0] for r in app.router.routes]  # type: ignore[attr-defined]
        assert Match.FULL in matches, (route.method, route.path)


def test_extra_routes_are_one_entry_each() -> None:
    from ai_stack.protocol import ChatCompletionRequest

    extra = ApiRoute("POST", "/v1/extra", ChatCompletionRequest, None, "An extra route", ("text/plain",))
    document = openapi_document([extra])
    assert document["paths"]["/v1/extra"]["post"]["summary"] == "An extra route"
    assert set(document["paths"]) == {*(r.path for r in OPENAPI_ROUTES), "/v1/extra"}


class SchemaStrategies:
    """Hypothesis strategies for the JSON Schema subset pydantic writes, with hints for known fields."""

    def __init__(self, schemas: dict[str, Any], names: list[str]) -> None:
        self.schemas = schemas
        # Mostly a model of the route's kind (so that validation goes deeper than the model), sometimes not.
        self.hints: dict[str, st.SearchStrategy[Any]] = {
            "model": st.one_of(*[st.sampled_from(names)] * 4, st.sampled_from(NAMES), st.text(max_size=10)),
            "voice": st.sampled_from(VOICES) | st.builds(lambda v: {"id": v}, st.sampled_from(VOICES)),
        }

    def of(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        if depth > 6:
            return st.none()
        if "$ref" in schema:
            return self.of(self.schemas[schema["$ref"].rsplit("/", 1)[-1]], depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self.of(option, depth + 1) for option in schema[key]])
        if "allOf" in schema:
            return self.of(schema["allOf"][0], depth + 1)
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self.of({**schema, "type": k}, depth) for k in kind])
        if kind == "string":
            low = schema.get("minLength", 0)
            return st.text(min_size=low, max_size=max(low, min(schema.get("maxLength", 40), 40)))
        if kind == "integer":
            bounded = st.integers(schema.get("minimum", -5), schema.get("maximum", 10_000))
            return st.one_of(*[bounded] * 4, st.integers(-(2**70), 2**70))
        if kind == "number":
            low, high = schema.get("minimum"), schema.get("maximum")
            return st.one_of(*[st.floats(low, high, allow_nan=False)] * 4, st.floats(-1e300, 1e300))
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            items = self.of(schema.get("items", {}), depth + 1)
            low = schema.get("minItems", 0)
            return st.lists(items, min_size=low, max_size=max(low, min(schema.get("maxItems", 3), 3)))
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            required = set(schema.get("required", []))
            strategies = {name: self.hints.get(name, self.of(sub, depth + 1)) for name, sub in props.items()}
            extra = schema.get("additionalProperties")
            base = st.fixed_dictionaries(
                {k: v for k, v in strategies.items() if k in required},
                optional={k: v for k, v in strategies.items() if k not in required},
            )
            if isinstance(extra, dict):
                more = st.dictionaries(st.text(max_size=6), self.of(extra, depth + 1), max_size=2)
                return st.builds(lambda a, b: {**b, **a}, base, more)
            return base
        return JSON_VALUES


@functools.cache
def document_and_strategies() -> tuple[dict[str, Any], dict[bool, SchemaStrategies]]:
    """The document (built once per run: its schemas take a moment) and strategies by speech or not."""
    document = openapi_document()
    schemas = document["components"]["schemas"]
    return document, {
        True: SchemaStrategies(schemas, SPEECH_NAMES),
        False: SchemaStrategies(schemas, CHAT_NAMES),
    }


def mutate(body: Any, data: st.DataObject) -> Any:
    """A dropped key, a value of the wrong type, or an unknown key, chosen by hypothesis."""
    if not isinstance(body, dict) or not body:
        return body
    key = data.draw(st.sampled_from(sorted(body)))
    how = data.draw(st.sampled_from(["drop", "replace", "add"]))
    if how == "drop":
        return {k: v for k, v in body.items() if k != key}
    if how == "replace":
        return {**body, key: data.draw(JSON_VALUES)}
    return {**body, data.draw(st.text(max_size=8)): data.draw(JSON_VALUES)}


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def check_response(document: dict[str, Any], route: ApiRoute, response: Any) -> None:
    """No 5xx (but 503 while a model reloads), errors and JSON successes in their documented shapes."""
    responses = document["paths"][route.path][route.method.lower()]["responses"]
    status = response.status_code
    media = response.headers.get("content-type", "").split(";")[0]
    if status >= 400:
        shape = responses.get(str(status)) or responses["4XX" if status < 500 else "5XX"]
        body = response.json()
        validator(document, shape["content"]["application/json"]["schema"]).validate(body)
        if status >= 500:
            assert status == 503 and (
                route.path == "/health/ready" or body["error"]["code"] == "model_loading"
            )
        return
    declared = responses[str(route.status)]["content"] if str(status) == str(route.status) else None
    if status != route.status:
        assert route.path.endswith("/load") and status == 200  # already loaded
        declared = responses["202"]["content"]
    assert declared is not None and media in declared, (route.path, status, media)
    if media == "application/json":
        validator(document, declared[media]["schema"]).validate(response.json())


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_documented_route_answers_in_its_documented_shapes(
    client: TestClient, data: st.DataObject
) -> None:
    document, strategies = document_and_strategies()
    route = data.draw(st.sampled_from(OPENAPI_ROUTES))
    path = route.path
    if "{model_id}" in path:
        name = data.draw(st.sampled_from(NAMES[:-1]) | st.text(min_size=1, max_size=12))
        path = path.replace("{model_id}", quote(name, safe=""))
    params = {q: data.draw(st.sampled_from(NAMES[:-1]) | st.text(max_size=8)) for q in route.query}
    if route.request is None:
        response = client.request(route.method, path, params=params)
    else:
        schema = document["paths"][route.path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        kind = data.draw(st.sampled_from(["valid-ish", "valid-ish", "mutated", "json", "bytes"]))
        if kind == "bytes":
            content = data.draw(st.binary(max_size=40))
        elif kind == "json":
            content = json.dumps(data.draw(JSON_VALUES)).encode()
        else:
            body = data.draw(strategies["/audio/" in route.path].of(schema))
            content = json.dumps(mutate(body, data) if kind == "mutated" else body).encode()
        headers = {"content-type": "application/json"}
        response = client.request(route.method, path, content=content, headers=headers, params=params)
    check_response(document, route, response)
