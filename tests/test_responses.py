"""OpenAI's Responses API (/v1/responses) through the official openai SDK and the OpenAI Agents SDK.

Most tests use the fake engine (a scripted engine where a tool round trip needs one); the tests marked slow
drive the real default model through `ai-stack serve`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from ai_stack.app import create_app
from ai_stack.config import Config, ModelSpec
from ai_stack.engines.base import Generation, Piece, Prompt, SamplingParams
from ai_stack.engines.catalog import FakeOptions
from ai_stack.engines.fake import FakeChatEngine, fake_tokens
from ai_stack.surfaces.response_store import ResponseStore
from tests.conftest import FAKE, LiveServer, assert_error, make_config, wait_for, wait_ready

HERMES = "{{ messages }} <tool_call> (hermes-style tools)"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class WeatherEngine(FakeChatEngine):
    """A fake engine that calls get_weather for a question and reports a tool's result once it has one."""

    def render(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> Prompt:
        """The fake rendering, with the scripted reply for this conversation."""
        prompt = super().render(messages, template_kwargs)
        last = messages[-1]
        reply = f"The weather in Paris: {last['content']}" if last["role"] == "tool" else CALL
        return Prompt(prompt.token_ids, prompt.text, {**prompt.extra, "reply": reply})

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event, emit: Callable[[Piece], None]
    ) -> Generation:
        """Emit the scripted reply."""
        scripted = copy.copy(self)
        scripted.reply = prompt.extra["reply"]
        return FakeChatEngine.generate(scripted, prompt, params, cancel, emit)


def weather_loader(spec: ModelSpec, config: Config) -> WeatherEngine:
    """Loads every model as the weather script."""
    return WeatherEngine(FakeOptions(chat_template=HERMES))


@pytest.fixture
def weather_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A live server whose model `fake-chat` follows the weather script."""
    with LiveServer(create_app(make_config(tmp_path, [FAKE]), loader=weather_loader)) as live:
        wait_ready(httpx.Client(base_url=live.url), "fake-chat")
        yield live


def sdk(live: LiveServer) -> openai.OpenAI:
    """The official client pointed at a live server."""
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=30)


def started(live_server: Callable[..., LiveServer], models: list[dict[str, Any]] | None = None) -> LiveServer:
    """A live server with its chat model ready."""
    live = live_server(models)
    wait_ready(httpx.Client(base_url=live.url), "fake-chat")
    return live


# --- the official openai SDK over the fake engine -----------------------------------------------------------


def test_plain_response(live_server: Callable[..., LiveServer]) -> None:
    client = sdk(started(live_server))
    response = client.responses.create(model="fake", input="hello there", instructions="Be brief.")
    assert response.id.startswith("resp_")
    assert response.object == "response" and response.status == "completed"
    assert response.model == "fake-chat"
    assert response.output_text == "You said: hello there"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert response.instructions == "Be brief."
    prompt = "system: Be brief.\nuser: hello there\nassistant:"
    assert response.usage is not None
    assert response.usage.input_tokens == len(fake_tokens(prompt))
    assert response.usage.output_tokens == 4
    assert response.usage.total_tokens == response.usage.input_tokens + 4


def test_streamed_response_events_in_order(live_server: Callable[..., LiveServer]) -> None:
    client = sdk(started(live_server))
    with client.responses.stream(model="fake", input="hello there") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    # Tokens that come faster than the client reads are sent together: one delta or more, one a token at most.
    deltas = kinds.count("response.output_text.delta")
    assert 1 <= deltas <= 4
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == "You said: hello there"
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == 4
    ids = {e.response.id for e in events if e.type in ("response.created", "response.completed")}
    assert ids == {final.id}


def test_streamed_incomplete_at_max_output_tokens(live_server: Callable[..., LiveServer]) -> None:
    client = sdk(started(live_server))
    response = client.responses.create(model="fake", input="one two three four five", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "You said:"
    events = list(client.responses.create(model="fake", input="a b c", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "incomplete"


def test_function_tool_round_trip(weather_server: LiveServer) -> None:
    client = sdk(weather_server)
    question: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.responses.create(model="fake", input=question, tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and call.id and call.id.startswith("fc_")
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    second = client.responses.create(
        model="fake",
        input=[
            *question,
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        tools=[WEATHER],
    )
    assert second.output_text == "The weather in Paris: sunny, 21 C"
    # The same turn continued from the stored first response instead of re-sending it.
    third = client.responses.create(
        model="fake",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
        tools=[WEATHER],
    )
    assert third.output_text == "The weather in Paris: rain"
    assert third.previous_response_id == first.id


def test_streamed_function_call_events(weather_server: LiveServer) -> None:
    client = sdk(weather_server)
    with client.responses.stream(model="fake", input="Weather in Paris?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[4]
    assert done.type == "response.function_call_arguments.done"
    assert json.loads(done.arguments) == {"city": "Paris"}
    [call] = final.output
    assert call.type == "function_call" and call.id == done.item_id
    allowed: Any = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "get_weather"}],
    }
    narrowed = client.responses.create(model="fake", input="Weather?", tools=[WEATHER], tool_choice=allowed)
    assert [item.type for item in narrowed.output] == ["function_call"]


def test_json_schema_text_format(live_server: Callable[..., LiveServer]) -> None:
    reply = '{"city": "Paris", "country": "France"}'
    client = sdk(started(live_server, [{**FAKE, "options": {"reply": reply}}]))

    class City(BaseModel):
        city: str
        country: str

    parsed = client.responses.parse(model="fake", input="Describe Paris.", text_format=City)
    assert parsed.output_parsed == City(city="Paris", country="France")
    assert parsed.text is not None and parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(
            model="fake",
            input="x",
            text={"format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}},
        )
    assert bad.value.code == "invalid_schema" and bad.value.param == "text.format"


def test_reasoning_becomes_a_reasoning_item(live_server: Callable[..., LiveServer]) -> None:
    options = {"reply": "<think>Paris is the capital.</think>Paris.", "chat_template": "<think>"}
    client = sdk(started(live_server, [{**FAKE, "options": options}]))
    response = client.responses.create(model="fake", input="Capital of France?")
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "Paris is the capital."
    assert message.type == "message" and response.output_text == "Paris."
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens > 0
    with client.responses.stream(model="fake", input="Capital of France?") as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert thought == "Paris is the capital."
    # Reasoning sent back as input goes to the assistant turn it belongs to and does not break the request.
    again = client.responses.create(
        model="fake",
        input=[
            {"role": "user", "content": "Capital of France?"},
            *[item.model_dump(exclude_none=True) for item in response.output],  # type: ignore[list-item]
            {"role": "user", "content": "And of Italy?"},
        ],
    )
    assert again.status == "completed"


def test_previous_response_id_survives_a_restart(live_server: Callable[..., LiveServer]) -> None:
    first_server = started(live_server)
    first = sdk(first_server).responses.create(model="fake", input="my name is Ada", metadata={"k": "v"})
    first_server.__exit__()
    client = sdk(started(live_server))  # a new app over the same home
    second = client.responses.create(model="fake", input="what is my name?", previous_response_id=first.id)
    history = "user: my name is Ada\nassistant: You said: my name is Ada\nuser: what is my name?\nassistant:"
    assert second.usage is not None and second.usage.input_tokens == len(fake_tokens(history))
    assert second.previous_response_id == first.id
    stored = client.responses.retrieve(first.id)
    assert stored.output_text == "You said: my name is Ada" and stored.metadata == {"k": "v"}
    items = client.responses.input_items.list(second.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert items.data[1].id == first.output[0].id
    newest = client.responses.input_items.list(second.id, limit=1)
    assert newest.has_more and newest.data[0].content[0].text == "what is my name?"  # type: ignore[union-attr,index]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)
    # The continuation holds its own copy of the history: deleting the first response does not break it.
    third = client.responses.create(model="fake", input="again", previous_response_id=second.id)
    assert third.status == "completed"


def test_store_false_keeps_nothing(live_server: Callable[..., LiveServer]) -> None:
    client = sdk(started(live_server))
    response = client.responses.create(model="fake", input="secret", store=False)
    assert response.status == "completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="fake", input="more", previous_response_id=response.id)
    assert missing.value.code == "previous_response_not_found"
    assert missing.value.param == "previous_response_id"


def test_cancel_a_streamed_response(live_server: Callable[..., LiveServer]) -> None:
    reply = " ".join(f"w{i}" for i in range(400))
    live = started(live_server, [{**FAKE, "options": {"reply": reply, "token_delay": 0.02}}])
    client = sdk(live)
    kinds: list[str] = []
    with client.responses.create(model="fake", input="go", stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta" and kinds.count(event.type) == 3:
                ident = next(iter(live.app.state.response_runs))
                cancelled = httpx.post(f"{live.url}/v1/responses/{ident}/cancel", timeout=30)
        last = event
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert last.type == "response.incomplete" and last.response.status == "cancelled"
    assert kinds.count("response.output_text.delta") < 100
    stored = client.responses.retrieve(ident)
    assert stored.status == "cancelled" and stored.output_text.startswith("w0 w1 w2")
    assert httpx.post(f"{live.url}/v1/responses/{ident}/cancel").json()["status"] == "cancelled"
    done = client.responses.create(model="fake", input="x", max_output_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(done.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nope")


def test_logprobs_through_include(live_server: Callable[..., LiveServer]) -> None:
    client = sdk(started(live_server))
    response = client.responses.create(
        model="fake", input="hello there", include=["message.output_text.logprobs"], top_logprobs=1
    )
    [part] = response.output[0].content  # type: ignore[union-attr,misc]
    assert [entry.token for entry in part.logprobs or []] == fake_tokens("You said: hello there")  # type: ignore[union-attr]
    plain = client.responses.create(model="fake", input="hello there")
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr,index]


class TemplateRecorder(FakeChatEngine):
    """A fake engine that remembers the template variables of each render."""

    def __init__(self, options: FakeOptions) -> None:
        super().__init__(options)
        self.renders: list[dict[str, Any]] = []

    def render(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> Prompt:
        """Record the variables, then render as the fake does."""
        self.renders.append(dict(template_kwargs))
        return super().render(messages, template_kwargs)


def test_reasoning_effort_turns_thinking_off_or_on(tmp_path: Path) -> None:
    engine = TemplateRecorder(FakeOptions(chat_template="<think>"))
    app = create_app(make_config(tmp_path, [FAKE]), loader=lambda spec, config: engine)
    with LiveServer(app) as live:
        wait_ready(httpx.Client(base_url=live.url), "fake-chat")
        client = sdk(live)
        client.responses.create(model="fake", input="x", reasoning={"effort": "none"})
        client.responses.create(model="fake", input="x", reasoning={"effort": "high"})
        client.responses.create(model="fake", input="x")
    assert [render.get("enable_thinking") for render in engine.renders] == [False, None, None]


def test_client_leaving_a_stream_stops_the_generation(live_server: Callable[..., LiveServer]) -> None:
    reply = " ".join(f"w{i}" for i in range(400))
    live = started(live_server, [{**FAKE, "options": {"reply": reply, "token_delay": 0.02}}])
    engine = live.app.state.registry.entries["fake-chat"].engine
    with httpx.stream(
        "POST", f"{live.url}/v1/responses", json={"model": "fake", "input": "go", "stream": True}
    ) as r:
        for line in r.iter_lines():
            if "output_text.delta" in line:
                break
    assert wait_for(lambda: engine.cancelled == 1 and engine.active == 0)
    assert wait_for(lambda: not live.app.state.response_runs)


class BreakingEngine(FakeChatEngine):
    """A fake engine that fails after its first word."""

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event, emit: Callable[[Piece], None]
    ) -> Generation:
        """Emit one word, then fail as a broken model would."""
        emit(Piece("Hello", 1))
        raise RuntimeError("the model broke")


def test_a_failure_mid_stream_ends_with_error_and_response_failed(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, [FAKE]), loader=lambda spec, config: BreakingEngine(FakeOptions()))
    with LiveServer(app) as live:
        wait_ready(httpx.Client(base_url=live.url), "fake-chat")
        client = sdk(live)
        events = list(client.responses.create(model="fake", input="x", stream=True))
        kinds = [event.type for event in events]
        assert kinds[-3:] == ["response.output_item.done", "error", "response.failed"]
        assert [event.sequence_number for event in events] == list(range(len(events)))
        failed = events[-1].response  # type: ignore[union-attr]
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.code == "server_error" and "RuntimeError" in failed.error.message
        assert failed.output[0].status == "incomplete"  # type: ignore[union-attr]
        assert client.responses.retrieve(failed.id).status == "failed"
        with pytest.raises(openai.InternalServerError):
            client.responses.create(model="fake", input="x")


# --- the OpenAI Agents SDK ----------------------------------------------------------------------------------


def test_agents_sdk_default_responses_model_with_a_function_tool(weather_server: LiveServer) -> None:
    agents = pytest.importorskip("agents")
    seen: list[str] = []

    @agents.function_tool  # type: ignore[untyped-decorator]
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        seen.append(city)
        return "sunny, 21 C"

    provider = agents.OpenAIProvider(
        openai_client=openai.AsyncOpenAI(base_url=f"{weather_server.url}/v1", api_key="unused", max_retries=0)
    )
    config = agents.RunConfig(model_provider=provider, tracing_disabled=True)
    agent = agents.Agent(
        name="weather", instructions="Answer with the tool.", model="fake", tools=[get_weather]
    )

    async def both() -> tuple[Any, Any]:
        full = await agents.Runner.run(agent, "What is the weather in Paris?", run_config=config)
        streamed = agents.Runner.run_streamed(agent, "Weather in Paris?", run_config=config)
        async for _ in streamed.stream_events():
            pass
        return full, streamed

    full, streamed = asyncio.run(both())
    assert seen == ["Paris", "Paris"]
    assert full.final_output == "The weather in Paris: sunny, 21 C"
    assert streamed.final_output == "The weather in Paris: sunny, 21 C"


# --- hostile input: OpenAI's error shape, never a 500 -------------------------------------------------------

BAD_BODIES: list[tuple[dict[str, Any], int, str, str | None]] = [
    ({"input": "x"}, 400, "invalid_value", "model"),
    ({"model": "fake"}, 400, "invalid_request", "input"),
    ({"model": "nope", "input": "x"}, 404, "model_not_found", None),
    ({"model": "fake", "input": 5}, 400, "invalid_request", "input"),
    ({"model": "fake", "input": [1]}, 400, "invalid_request", "input[0]"),
    ({"model": "fake", "input": [{"type": "computer_call_output"}]}, 400, "invalid_request", "input[0].type"),
    (
        {"model": "fake", "input": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_request",
        "input[0].role",
    ),
    (
        {
            "model": "fake",
            "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
        },
        400,
        "invalid_request",
        "input[0].content[0].type",
    ),
    (
        {
            "model": "fake",
            "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}],
        },
        400,
        "invalid_request",
        "input[0].arguments",
    ),
    (
        {"model": "fake", "input": [{"type": "function_call_output", "output": "x"}]},
        400,
        "invalid_request",
        None,
    ),
    (
        {"model": "fake", "input": "x", "tools": [{"type": "web_search"}]},
        400,
        "invalid_request",
        "tools[0].type",
    ),
    (
        {"model": "fake", "input": "x", "tools": [{"type": "function", "name": "a b"}]},
        400,
        "invalid_request",
        None,
    ),
    (
        {"model": "fake", "input": "x", "tool_choice": {"type": "file_search"}},
        400,
        "invalid_request",
        "tool_choice",
    ),
    (
        {
            "model": "fake",
            "input": "x",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "nope"},
        },
        400,
        "invalid_request",
        "tool_choice",
    ),
    (
        {"model": "fake", "input": "x", "tool_choice": {"type": "function", "name": "get_weather"}},
        400,
        "invalid_request",
        "tool_choice",
    ),
    (
        {
            "model": "fake",
            "input": "x",
            "tools": [WEATHER],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "o"}],
            },
        },
        400,
        "invalid_request",
        "tool_choice",
    ),
    (
        {"model": "fake", "input": "x", "text": {"format": {"type": "json_schema"}}},
        400,
        "invalid_request",
        None,
    ),
    ({"model": "fake", "input": "x", "text": {"format": {"type": "xml"}}}, 400, "invalid_value", None),
    ({"model": "fake", "input": "x", "reasoning": {"effort": "extreme"}}, 400, "invalid_value", None),
    ({"model": "fake", "input": "x", "max_output_tokens": 0}, 400, "invalid_value", "max_output_tokens"),
    ({"model": "fake", "input": "x", "max_output_tokens": 10**9}, 400, "context_length_exceeded", None),
    ({"model": "fake", "input": "x", "temperature": 9}, 400, "invalid_value", "temperature"),
    (
        {"model": "fake", "input": "x", "metadata": {str(i): "v" for i in range(17)}},
        400,
        "invalid_value",
        None,
    ),
    ({"model": "fake", "input": "x", "background": True}, 400, "invalid_request", "background"),
    ({"model": "fake", "input": "x", "conversation": "conv_1"}, 400, "invalid_request", "conversation"),
    (
        {"model": "fake", "input": "x", "previous_response_id": "resp_x" * 100},
        404,
        "previous_response_not_found",
        None,
    ),
    ({"model": "fake", "input": "x", "stream": {"on": 1}}, 400, "invalid_value", "stream"),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_BODIES)
def test_bad_requests_get_openai_errors(
    app_client: Callable[..., Any], body: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    client = app_client()
    wait_ready(client, "fake-chat")
    error = assert_error(client.post("/v1/responses", json=body), status, code, param)
    assert "Traceback" not in error["message"]


def test_bad_bodies_and_ids_are_4xx(app_client: Callable[..., Any]) -> None:
    client = app_client()
    wait_ready(client, "fake-chat")
    headers = {"content-type": "application/json"}
    assert_error(client.post("/v1/responses", content=b"[1, 2]", headers=headers), 400, "invalid_request")
    assert_error(client.post("/v1/responses", content=b"{nope", headers=headers), 400, "invalid_request")
    deep = b'{"model": "fake", "input": ' + b"[" * 200 + b"]" * 200 + b"}"
    assert client.post("/v1/responses", content=deep, headers=headers).status_code == 400
    for path in ("/v1/responses/x", "/v1/responses/" + "y" * 5000, "/v1/responses/x/input_items"):
        assert_error(client.get(path), 404, "not_found")
    assert_error(client.delete("/v1/responses/resp_missing"), 404, "not_found")
    assert_error(client.post("/v1/responses/'; DROP TABLE responses;--/cancel"), 404, "not_found")
    made = client.post("/v1/responses", json={"model": "fake", "input": "hi"}).json()
    for query, param in (
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("order=up", "order"),
        ("after=zz", "after"),
    ):
        assert_error(
            client.get(f"/v1/responses/{made['id']}/input_items?{query}"), 400, "invalid_request", param
        )
    assert_error(client.get(f"/v1/responses/{made['id']}?stream=true"), 400, "invalid_request", "stream")
    assert client.get(f"/v1/responses/{made['id']}").json()["id"] == made["id"]


# --- the store's bounds -------------------------------------------------------------------------------------


def _response(ident: str, created_at: float, text: str = "x") -> dict[str, Any]:
    return {"id": ident, "created_at": created_at, "output": [{"type": "message", "text": text}]}


def test_store_keeps_the_newest_within_its_bounds(tmp_path: Path) -> None:
    async def scenario() -> None:
        now = time.time()
        store = ResponseStore(tmp_path / "db" / "r.sqlite3", retention_days=1, max_stored=2, max_bytes=2000)
        for number in range(3):
            assert await store.save(_response(f"r{number}", now + number), [])
        assert await store.get("r0") is None  # over the count: the oldest went
        assert (await store.get("r2")) is not None
        assert not await store.save(_response("huge", now, "x" * 5000), [])  # alone over the size bound
        assert await store.save(_response("big", now + 5, "x" * 1880), [])
        assert await store.get("r1") is None and await store.get("r2") is None  # over the size: oldest went
        assert await store.save(_response("old", now - 2 * 86400), [])
        assert await store.get("old") is None  # past retention: never answered
        reopened = ResponseStore(
            tmp_path / "db" / "r.sqlite3", retention_days=1, max_stored=2, max_bytes=2000
        )
        found = await reopened.get("big")
        assert found is not None and found.response["output"][0]["text"] == "x" * 1880
        assert await reopened.delete("big") and not await reopened.delete("big")

    asyncio.run(scenario())


def test_retention_is_configured(app_client: Callable[..., Any]) -> None:
    client = app_client(responses_max_stored=1)
    wait_ready(client, "fake-chat")
    first = client.post("/v1/responses", json={"model": "fake", "input": "one"}).json()
    second = client.post("/v1/responses", json={"model": "fake", "input": "two"}).json()
    assert_error(client.get(f"/v1/responses/{first['id']}"), 404, "not_found")
    assert client.get(f"/v1/responses/{second['id']}").status_code == 200


# --- the real default model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(default_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{default_server}/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.mark.slow
def test_real_model_plain_and_streamed(real: openai.OpenAI) -> None:
    question = "What is the capital of France? Answer in one word."
    full = real.responses.create(model="default", input=question, temperature=0, max_output_tokens=10)
    assert "Paris" in full.output_text
    with real.responses.stream(
        model="default", input=question, temperature=0, max_output_tokens=10
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == full.output_text
    assert final.usage is not None and full.usage is not None
    assert final.usage.output_tokens == full.usage.output_tokens


@pytest.mark.slow
def test_real_model_tool_round_trip_and_json_schema(real: openai.OpenAI) -> None:
    question: Any = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    first = real.responses.create(
        model="default",
        input=question,
        tools=[WEATHER],
        temperature=0,
        max_output_tokens=60,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", first.output
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    final = real.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": "Sunny, 18 degrees Celsius.",
            }
        ],
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_output_tokens=60,
    )
    assert "Sunny" in final.output_text or "18" in final.output_text
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    described = real.responses.create(
        model="default",
        input="Describe Paris.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        temperature=0,
        max_output_tokens=60,
    )
    assert described.status == "completed"
    jsonschema.validate(json.loads(described.output_text), schema)
