"""The real default models through a real `ai-stack serve` subprocess, driven by the official openai SDK."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import av
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from ai_stack.config import default_config_path, load_config
from ai_stack.sources import converted_dir, parse_source

pytestmark = pytest.mark.slow
MODEL = "qwen2.5-coder-0.5b-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def server(default_server: str) -> str:
    return default_server


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=600)


def test_capital_of_france(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL


def test_streamed_answer_equals_full_answer_and_usage_is_right(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name three primary colours, comma separated."}]
    full = client.chat.completions.create(
        model="default",
        messages=messages,
        temperature=0,  # type: ignore[arg-type]
        max_tokens=40,
    )
    stream = client.chat.completions.create(
        model="default",
        messages=messages,
        temperature=0,  # type: ignore[arg-type]
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and full.usage is not None
    assert chunks[-1].usage.model_dump() == full.usage.model_dump()
    folder = converted_dir(
        parse_source(f"embedded:{MODEL}", Path.cwd()), load_config(default_config_path()).server.home
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert full.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    content_tokens = len(
        tokenizer(full.choices[0].message.content or "", add_special_tokens=False)["input_ids"]
    )
    assert abs(full.usage.completion_tokens - content_tokens) <= 1
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens


def test_continue_final_message_goes_on_from_a_cut_answer(client: openai.OpenAI) -> None:
    cut = "The capital of France is"
    messages = [*FRANCE, {"role": "assistant", "content": cut}]
    completion = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=8,
        extra_body={"continue_final_message": True},
    )
    text = completion.choices[0].message.content or ""
    assert "Paris" in text and not text.lstrip().startswith(cut), text  # it goes on, it does not start over
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            extra_body={"continue_final_message": True},  # type: ignore[arg-type]
        )


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write a long poem about the sea."}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)  # type: ignore[arg-type]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_sdk_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "x"}])  # type: ignore[list-item,misc]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=10**6)  # type: ignore[arg-type]
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.post("/chat/completions", body={"model": MODEL, "messages": "not a list"}, cast_to=object)
    completion = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)  # type: ignore[arg-type]
    assert "Paris" in (completion.choices[0].message.content or "")


def _decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = sum(frame.samples for frame in container.decode(stream))
        return frames / float(stream.rate)


def test_speech_through_the_sdk(client: openai.OpenAI) -> None:
    text = "Hello from ai-stack. This is the default voice speaking."
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav")
    assert audio.content[:4] == b"RIFF"
    assert _decoded_seconds(audio.content) > 1.0
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="mp3"
    ) as response:
        streamed = b"".join(response.iter_bytes())
    assert _decoded_seconds(streamed) > 1.0
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model=MODEL, voice="alloy", input=text)


# --- API parity on the real default model (issue 6) ---------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What's the weather like in Paris right now?"}]


def test_weather_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        temperature=0,
        max_tokens=60,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    history = [
        *WEATHER_QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 18 degrees Celsius."},
    ]
    final = client.chat.completions.create(
        model=MODEL,
        messages=history,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_tokens=60,
    )
    answer = final.choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    # The tool's result reached the model: its answer uses facts only the tool message held.
    assert "Sunny" in (answer.message.content or "") or "18" in (answer.message.content or "")


def test_forced_tool_call_streams_with_an_index(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],  # type: ignore[list-item]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert [call.index for call in calls] == [0]
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments or ""), dict)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_schema_answer_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["city", "country", "landmarks"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris."}],  # type: ignore[list-item]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        temperature=0,
        max_tokens=200,
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), schema)
    anything = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about cats."}],  # type: ignore[list-item]
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}},
        )
    assert bad.value.code == "invalid_schema"


def test_logprobs_sum_sensibly(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=FRANCE,
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=5,  # type: ignore[arg-type]
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0.0
        tops = entry.top_logprobs
        assert len(tops) == 5
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert sum(math.exp(t.logprob) for t in tops) <= 1.0 + 1e-3
        assert tops[0].token == entry.token and abs(tops[0].logprob - entry.logprob) < 1e-4  # greedy
        assert bytes(entry.bytes or []).decode() == entry.token
    assert math.exp(entries[0].logprob) > 0.3  # "Paris" is the likely first word


def test_n_three_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],  # type: ignore[list-item]
        n=3,
        temperature=1.0,
        seed=1,
        max_tokens=10,
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 30
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],  # type: ignore[list-item]
        n=2,
        temperature=1.0,
        seed=1,
        max_tokens=10,
        stream=True,
    )
    texts: dict[int, str] = {}
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished.add(c.index)
    assert sorted(texts) == [0, 1] and finished == {0, 1}
    # The same seed gives the same first choice, streamed or not.
    assert texts[0] == completion.choices[0].message.content


def test_transformers_engine_on_the_default_model_with_the_cpu_default_dtype() -> None:
    """The transformers engine on the real model with `dtype = "auto"` (fp16 packed on AVX2-only CPUs):
    a right answer alone, and four greedy requests decoded together that all answer sensibly."""
    import threading

    from ai_stack.engines.base import SamplingParams
    from ai_stack.engines.transformers import load_transformers

    default = load_config(default_config_path())
    folder = converted_dir(parse_source(f"embedded:{MODEL}", Path.cwd()), default.server.home)
    if not (folder / "config.json").exists():
        pytest.skip(f"the converted model is not cached at {folder}: run `make install` (ai-stack prepare)")
    engine = load_transformers(str(folder), dtype="auto")
    try:
        questions = [
            "What is the capital of France? Answer in one word.",
            "What is 12 times 12? Answer with the number only.",
            "What is the capital of Italy? Answer in one word.",
            "Write a Python function named add that adds two numbers.",
        ]
        answers = [""] * len(questions)
        start = threading.Barrier(len(questions))

        def ask(index: int) -> None:
            prompt = engine.render([{"role": "user", "content": questions[index]}], {})
            pieces: list[str] = []
            start.wait()
            params = SamplingParams(max_tokens=40, temperature=0.0)
            engine.generate(prompt, params, threading.Event(), lambda piece: pieces.append(piece.text))
            answers[index] = "".join(pieces)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert "Paris" in answers[0] and "144" in answers[1] and "Rome" in answers[2], answers
        assert "def add" in answers[3], answers
        assert engine.peak_batch >= 2
    finally:
        engine.close()
