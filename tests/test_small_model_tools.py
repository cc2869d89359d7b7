"""Tools and structured output with the real default model (Qwen2.5-Coder-0.5B) through the openai SDK.

The cases of issue 22, where real clients broke on how the server read and constrained a small model: a tool
call written in a Markdown fence, a float field that ran to max_tokens, and `tool_choice: "required"` with
parallel calls that invented calls without end. Greedy decoding and short limits keep them few and quick.
"""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from ai_stack.config import ServerConfig

pytestmark = pytest.mark.slow
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(default_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{default_server}/v1", api_key="unused", max_retries=0, timeout=600)


def test_natural_prompt_fenced_call_streams_as_a_tool_call(client: openai.OpenAI) -> None:
    """The model answers in a ```json fence; the stream carries a tool call and no fence as content."""
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        temperature=0,
        max_tokens=80,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert content == "", content
    assert [call.function.name for call in calls if call.function] == ["get_weather"]
    assert json.loads(calls[0].function.arguments or "") == {"city": "Paris"}  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


class Country(BaseModel):
    name: str
    population_millions: float


def test_parse_with_a_float_field_closes(client: openai.OpenAI) -> None:
    """chat.completions.parse with a float field: the number is bounded, so the JSON ends and parses."""
    completion = client.chat.completions.parse(
        model="default",
        messages=[{"role": "user", "content": "Give the name and population in millions of France."}],
        response_format=Country,
        temperature=0,
        max_tokens=120,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.parsed is not None and choice.message.parsed.name == "France"
    integer_part = str(int(abs(choice.message.parsed.population_millions)))
    assert len(integer_part) <= 15


def test_required_with_parallel_calls_ends_within_the_bound(client: openai.OpenAI) -> None:
    """tool_choice required with parallel calls: the model may add calls, but at most the configured bound."""
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What is the weather in Tokyo?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=True,
        temperature=0,
        max_tokens=300,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert 1 <= len(calls) <= ServerConfig().max_parallel_tool_calls
    assert completion.usage is not None and completion.usage.completion_tokens < 300
    cities = [json.loads(call.function.arguments)["city"] for call in calls]  # type: ignore[union-attr]
    assert cities[0] == "Tokyo"
