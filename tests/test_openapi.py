"""GET /openapi.json (ai_stack/openapi.py), and a property test of every route it documents.

The property test draws request bodies from the document's own request schemas (valid-ish values, then
mutations: a dropped key, a value of the wrong type, a body that is not an object or not JSON) and sends them
to an app with the fake chat and speech engines, one API at a time (OpenAI, Responses, Anthropic, Ollama,
llama.cpp): never a 5xx (but a model reloading after an unload), every 4xx an error in its API's documented
shape, every JSON success and every event or line of a stream in the documented shape, with no field the
document does not name.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute, Match, Mount, Route
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
# A chat model whose template shows thinking and tool-call formats, and whose reply thinks and calls a tool:
# the reasoning, thinking, tool_use and function_call shapes of every API come from it.
FAKE_THINK: dict[str, Any] = {
    "id": "fake-think",
    "engine": "fake",
    "source": "fake:",
    "options": {
        "reply": '<think>Hmm.</think>Sure. <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
        "chat_template": "{{ '<think>' }} {{ '<tool_call>' }}",
    },
}
NAMES = ["fake-chat", "fake", "fake-think", "fake-voice", "tts-1", "gpt-4o", "fake:latest", ""]
CHAT_NAMES, SPEECH_NAMES = ["fake-chat", "fake", "fake-think", "fake-chat:latest"], ["fake-voice", "tts-1"]
VOICES = ["fake-a", "fake-b", "alloy", "fake-a(2)+fake-b(1)", "nobody", "fake-a+"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
QUERY_HINTS: dict[str, st.SearchStrategy[str]] = {
    "limit": st.sampled_from(["1", "2", "20", "100", "0", "101", "-1", "²", "9" * 5000]),
    "order": st.sampled_from(["asc", "desc", "up"]),
    "stream": st.sampled_from(["true", "false"]),
}
HI = [{"role": "user", "content": "hi"}]
TOOL_F = {"type": "object", "properties": {"a": {"type": "integer"}}}
# Requests each route should answer 200 (but /infill: the fake models have no FIM tokens, so a 400), the seeds
# of the property test's "good" kind; each runs streamed too where its route streams.
GOOD: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [
        {"model": "fake-chat", "messages": HI, "max_tokens": 8},
        {"model": "fake-think", "messages": HI, "logprobs": True, "top_logprobs": 2},
    ],
    "/v1/audio/speech": [
        {"model": "fake-voice", "voice": "fake-a", "input": "Hello.", "response_format": "wav"}
    ],
    "/v1/completions": [
        {"model": "fake-chat", "prompt": "hello", "max_tokens": 8},
        {"model": "fake", "prompt": ["a b", "c"], "echo": True, "logprobs": 2, "n": 2, "best_of": 2},
    ],
    "/completion": [
        {"prompt": "hello", "n_predict": 8},
        {"model": "fake-think", "prompt": "hi", "n_probs": 2, "repeat_penalty": 1.1},
    ],
    "/infill": [{"input_prefix": "def f(", "input_suffix": "):", "n_predict": 8}],
    "/v1/responses": [
        {"model": "fake-chat", "input": "hello", "max_output_tokens": 2},
        {
            "model": "fake-think",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "tools": [{"type": "function", "name": "f", "parameters": TOOL_F}],
            "include": ["message.output_text.logprobs"],
            "text": {"format": {"type": "text"}},
        },
    ],
    "/v1/messages": [
        {"model": "fake-chat", "max_tokens": 16, "messages": HI, "system": "Be brief."},
        {
            "model": "fake-think",
            "max_tokens": 64,
            "messages": HI,
            "tools": [{"name": "f", "input_schema": TOOL_F}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ],
    "/v1/messages/count_tokens": [{"model": "fake-chat", "messages": HI}],
    "/api/chat": [
        {"model": "fake-chat:latest", "messages": HI, "options": {"num_predict": 3}},
        {
            "model": "fake-think",
            "messages": HI,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": TOOL_F}}],
            "think": True,
            "logprobs": True,
        },
        {"model": "fake", "messages": []},
    ],
    "/api/generate": [
        {"model": "fake-chat", "prompt": "hi", "system": "Be brief."},
        {"model": "fake-think", "prompt": "hi", "think": True},
        {"model": "fake-chat", "prompt": "hi", "raw": True, "logprobs": True, "top_logprobs": 1},
    ],
    "/api/show": [{"model": "fake-think"}, {"name": "fake-chat:latest"}],
    "/api/pull": [{"model": "fake-chat:latest"}],
}
# Each API's routes by path, and how many examples its property test draws (about 400 in all).
APIS: dict[str, tuple[Callable[[str], bool], int]] = {
    "openai": (
        lambda path: (
            not path.startswith(("/v1/responses", "/v1/messages", "/api/", "/infill", "/completion"))
        ),
        130,
    ),
    "responses": (lambda path: path.startswith("/v1/responses"), 80),
    "anthropic": (lambda path: path.startswith("/v1/messages"), 60),
    "ollama": (lambda path: path.startswith("/api/"), 80),
    "llama.cpp": (lambda path: path in ("/infill", "/completion"), 50),
}


@pytest.fixture
def client(app_client: Callable[..., TestClient]) -> TestClient:
    c = app_client([FAKE, FAKE_THINK, FAKE_SPEECH])
    wait_ready(c, "fake-chat")
    wait_ready(c, "fake-think")
    wait_ready(c, "fake-voice")
    return c


def stored_responses(client: TestClient) -> list[str]:
    """Ids of responses stored now (a plain one and one from the thinking, tool-calling model)."""
    ids = []
    for model in ("fake-chat", "fake-think"):
        response = client.post(
            "/v1/responses", json={"model": model, "input": "hi", "instructions": "Be brief."}
        )
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


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
        path = re.sub(r"\{[a-z_]+\}", "fake-chat", route.path)
        scope = {"type": "http", "method": route.method, "path": path, "root_path": ""}
        matches = [r.matches(scope)[0] for r in app.router.routes]  # type: ignore[attr-defined]
        assert Match.FULL in matches, (route.method, route.path)


def app_operations(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route of the app, mounts included, path parameters as {name}."""
    for route in routes:
        if isinstance(route, Mount):
            yield from app_operations(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            path = re.sub(r"\{([a-z_]+)(:[a-z]+)?\}", r"{\1}", prefix + route.path)
            yield from ((method, path) for method in route.methods or () if method != "HEAD")


def test_every_api_route_of_the_app_is_documented(client: TestClient) -> None:
    """Every JSON API route is in the document (path parameters may be named differently)."""
    undocumented = {("GET", "/"), ("GET", "/openapi.json")}  # the browser page and the document itself
    documented = {(r.method, re.sub(r"\{[a-z_]+\}", "{}", r.path)) for r in OPENAPI_ROUTES}
    for method, path in app_operations(client.app.router.routes):  # type: ignore[attr-defined]
        if (method, path) in undocumented:
            continue
        assert (method, re.sub(r"\{[a-z_]+\}", "{}", path)) in documented, (method, path)


def test_each_api_documents_its_own_error_shape() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    shapes = {
        "/v1/completions": "ErrorResponse",
        "/v1/responses/{response_id}": "ErrorResponse",
        "/v1/messages": "AnthropicError",
        "/v1/messages/count_tokens": "AnthropicError",
        "/api/chat": "OllamaError",
        "/api/tags": "OllamaError",
        "/infill": "LlamaError",
        "/completion": "LlamaError",
    }
    for path, shape in shapes.items():
        for operation in document["paths"][path].values():
            error = operation["responses"]["4XX"]["content"]["application/json"]["schema"]
            assert error == {"$ref": f"#/components/schemas/{shape}"}, path
    assert set(schemas["OllamaError"]["properties"]) == {"error"}
    assert set(schemas["AnthropicError"]["properties"]) == {"type", "error"}
    chat = document["paths"]["/api/chat"]["post"]["responses"]["200"]["content"]
    assert chat["application/x-ndjson"]["schema"] == {"$ref": "#/components/schemas/OllamaChatResponse"}
    messages = document["paths"]["/v1/messages"]["post"]["responses"]["200"]["content"]
    assert messages["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/MessageStreamEvent"}
    # A route that always refuses documents no success.
    assert set(document["paths"]["/api/push"]["post"]["responses"]) == {"4XX", "5XX"}


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
            # Free-form fields (`input` of a response, a tool_use block): text or any JSON, not only JSON.
            "input": st.text(max_size=20) | JSON_VALUES,
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


def vary(body: dict[str, Any], document: dict[str, Any], schema: dict[str, Any], data: st.DataObject) -> Any:
    """A good body with `stream` drawn and one field (maybe a new one) drawn from the request's schema."""
    schemas = document["components"]["schemas"]
    properties = schemas[schema["$ref"].rsplit("/", 1)[-1]].get("properties", {})
    _, strategies = document_and_strategies()
    body = dict(body)
    if "stream" in properties:
        body["stream"] = data.draw(st.booleans())
    key = data.draw(st.sampled_from(sorted(properties)))
    if data.draw(st.booleans()):
        body[key] = data.draw(strategies[False].of(properties[key]))
    return body


def minimal(body: Any, document: dict[str, Any], schema: dict[str, Any], data: st.DataObject) -> Any:
    """The body's required fields and at most two of its others, chosen by hypothesis."""
    if not isinstance(body, dict):
        return body
    name = schema["$ref"].rsplit("/", 1)[-1]
    required = set(document["components"]["schemas"][name].get("required", []))
    others = sorted(set(body) - required)
    keep = data.draw(st.lists(st.sampled_from(others), max_size=2, unique=True)) if others else []
    return {key: value for key, value in body.items() if key in required or key in keep}


def closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others (what the check asks)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@functools.cache
def closed_components() -> dict[str, Any]:
    """The document's components, closed: an answer may not carry a field the document does not name."""
    document, _ = document_and_strategies()
    return closed(copy.deepcopy(document["components"]))  # type: ignore[no-any-return]


def validate(schema: dict[str, Any], value: Any) -> None:
    """Check a value against a schema of the document (closed), naming where it fails."""
    jsonschema.Draft202012Validator({**schema, "components": closed_components()}).validate(value)


def error_message(body: dict[str, Any]) -> str:
    """The message of an error body of any of the APIs."""
    error = body["error"]
    return error if isinstance(error, str) else str(error["message"])


def stream_items(media: str, text: str) -> list[Any]:
    """The JSON values of a stream: SSE data events (an `event:` name must equal `type`) or NDJSON lines."""
    if media == "application/x-ndjson":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    items = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line]
        if not lines:
            continue
        data = "\n".join(line.removeprefix("data:").strip() for line in lines if line.startswith("data:"))
        if data == "[DONE]":
            continue
        value = json.loads(data)
        names = [line.removeprefix("event:").strip() for line in lines if line.startswith("event:")]
        if names:
            assert names == [value["type"]], block
        items.append(value)
    return items


def check_response(document: dict[str, Any], route: ApiRoute, response: Any) -> None:
    """No 5xx (but 503 while a model reloads), errors, JSON and streams in their documented shapes."""
    responses = document["paths"][route.path][route.method.lower()]["responses"]
    status = response.status_code
    media = response.headers.get("content-type", "").split(";")[0]
    if status >= 400:
        shape = responses.get(str(status)) or responses["4XX" if status < 500 else "5XX"]
        body = response.json()
        validate(shape["content"]["application/json"]["schema"], body)
        if status >= 500:
            assert status == 503 and (route.path == "/health/ready" or "is loading" in error_message(body))
        return
    if status != route.status:
        assert route.path.endswith("/load") and status == 200  # already loaded
    declared = responses.get("202" if route.path.endswith("/load") else str(status), {}).get("content", {})
    assert media in declared, (route.method, route.path, status, media, response.text[:300])
    if media == "application/json":
        validate(declared[media]["schema"], response.json())
    elif route.stream is not None and media in ("text/event-stream", "application/x-ndjson"):
        # An error after the stream began is an event or line in the API's error shape.
        error = responses["4XX"]["content"]["application/json"]["schema"]
        items = stream_items(media, response.text)
        assert items, (route.path, response.text[:300])
        for item in items:
            validate({"anyOf": [declared[media]["schema"], error]}, item)


def path_for(route: ApiRoute, data: st.DataObject, response_ids: list[str]) -> str:
    """The route's path with its parameters drawn: known names and ids mostly, any text sometimes."""
    path = route.path
    if "{model_id}" in path:
        name = data.draw(st.sampled_from(NAMES[:-1]) | st.text(min_size=1, max_size=12))
        path = path.replace("{model_id}", quote(name, safe=""))
    if "{response_id}" in path:
        ident = data.draw(st.sampled_from(response_ids) | st.text(min_size=1, max_size=12))
        path = path.replace("{response_id}", quote(ident, safe=""))
    return path


def test_good_requests_answer_in_their_documented_shapes(client: TestClient) -> None:
    """Every good request, whole and streamed: 200 (a 400 from /infill) in the documented shapes."""
    document, _ = document_and_strategies()
    routes = {(route.method, route.path): route for route in OPENAPI_ROUTES}
    seen: set[str] = set()
    for path, bodies in GOOD.items():
        route = routes["POST", path]
        for body in bodies:
            for stream in (False, True) if route.stream is not None else (None,):
                sent = body if stream is None else {**body, "stream": stream}
                response = client.post(path, json=sent)
                check_response(document, route, response)
                assert response.status_code == (400 if path == "/infill" else 200), (path, response.text)
                seen.update(
                    kind for kind in ("tool_use", "function_call", "thinking") if kind in response.text
                )
    assert seen == {"tool_use", "function_call", "thinking"}  # the fake-think model's shapes were checked


def test_paging_parameters_int_cannot_read_are_400(client: TestClient) -> None:
    """What the property test found: a 5000-digit or a superscript `limit` was a 500 (int() refused it)."""
    document, _ = document_and_strategies()
    route = next(r for r in OPENAPI_ROUTES if r.path.endswith("/input_items"))
    [ident, _] = stored_responses(client)
    for limit in ("9" * 5000, "²", "1"):
        response = client.get(f"/v1/responses/{ident}/input_items", params={"limit": limit})
        check_response(document, route, response)
        assert response.status_code == (200 if limit == "1" else 400), response.text


def answer(status: int, media: str, body: Any) -> httpx.Response:
    """A made-up answer for check_response."""
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.Response(status, headers={"content-type": media}, content=content.encode())


def test_the_checks_catch_wrong_shapes() -> None:
    document, _ = document_and_strategies()
    routes = {(route.method, route.path): route for route in OPENAPI_ROUTES}
    version, chat, messages = (
        routes["GET", "/api/version"],
        routes["POST", "/api/chat"],
        routes["POST", "/v1/messages"],
    )
    check_response(document, version, answer(200, "application/json", {"version": "0.12.0"}))
    with pytest.raises(jsonschema.ValidationError):  # a field the document does not name
        check_response(document, version, answer(200, "application/json", {"version": "0.12.0", "x": 1}))
    line = {"model": "m", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": True}
    check_response(document, chat, answer(200, "application/x-ndjson", json.dumps(line) + "\n"))
    with pytest.raises(jsonschema.ValidationError):  # a line without `done`
        check_response(
            document, chat, answer(200, "application/x-ndjson", json.dumps({**line, "done": None}))
        )
    with pytest.raises(AssertionError):  # a 5xx that is not a model loading
        check_response(document, chat, answer(500, "application/json", {"error": "boom"}))
    with pytest.raises(jsonschema.ValidationError):  # OpenAI's error shape on an Anthropic route
        openai_error = {"error": {"message": "m", "type": "t", "param": None, "code": None}}
        check_response(document, messages, answer(400, "application/json", openai_error))
    with pytest.raises(AssertionError):  # an event name that is not the data's type
        event = 'event: ping\ndata: {"type": "message_stop"}\n\n'
        check_response(document, messages, answer(200, "text/event-stream", event))


@pytest.mark.parametrize("api", list(APIS))
def test_every_documented_route_answers_in_its_documented_shapes(client: TestClient, api: str) -> None:
    belongs, examples = APIS[api]
    routes = [route for route in OPENAPI_ROUTES if belongs(route.path)]
    assert routes
    # Known response ids: a fixed number of slots (hypothesis needs the same choices on every replay), the
    # first two stored now, the others filled by the responses the examples create, the oldest replaced.
    response_ids = [*stored_responses(client), *["resp_" + "0" * 32] * 6] if api == "responses" else []
    created = 2

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        document, strategies = document_and_strategies()
        route = data.draw(st.sampled_from(routes))
        path = path_for(route, data, response_ids)
        params = {
            q: data.draw(QUERY_HINTS.get(q, st.nothing()) | st.sampled_from(NAMES[:-1]) | st.text(max_size=8))
            for q in route.query
        }
        if route.request is None:
            response = client.request(route.method, path, params=params)
        else:
            operation = document["paths"][route.path][route.method.lower()]
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            kinds = ["good", "good", "minimal", "valid-ish", "mutated", "json", "bytes"]
            kind = data.draw(st.sampled_from(kinds if route.path in GOOD else kinds[2:]))
            if kind == "good":  # a good request with one field drawn from its schema, streamed or not
                body = vary(data.draw(st.sampled_from(GOOD[route.path])), document, schema, data)
                content = json.dumps(body).encode()
            elif kind == "bytes":
                content = data.draw(st.binary(max_size=40))
            elif kind == "json":
                content = json.dumps(data.draw(JSON_VALUES)).encode()
            else:
                body = data.draw(strategies["/audio/" in route.path].of(schema))
                if kind == "minimal":  # the required fields and at most two others: mostly a valid request
                    body = minimal(body, document, schema, data)
                content = json.dumps(mutate(body, data) if kind == "mutated" else body).encode()
            headers = {"content-type": "application/json"}
            response = client.request(route.method, path, content=content, headers=headers, params=params)
        check_response(document, route, response)
        json_answer = response.headers.get("content-type") == "application/json"
        if route.path == "/v1/responses" and response.status_code == 200 and json_answer:
            nonlocal created
            response_ids[created % len(response_ids)] = response.json()["id"]  # later examples use it
            created += 1

    check()
