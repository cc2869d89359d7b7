"""The real default models through a real `ai-stack serve` subprocess, driven by the official openai SDK."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import openai
import pytest
from transformers import AutoTokenizer

from ai_stack.config import default_config_path, load_config
from ai_stack.sources import converted_dir, parse_source
from tests.conftest import free_port

pytestmark = pytest.mark.slow
MODEL = "qwen2.5-coder-0.5b-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ai-stack serve` on a free port with the default chat model only (cached by `make install`)."""
    default = load_config(default_config_path())
    spec = next(s for s in default.models if s.id == MODEL)
    config = tmp_path_factory.mktemp("serve") / "chat.toml"
    config.write_text(
        f'[server]\nhome = "{default.server.home}"\n\n[[models]]\nid = "{spec.id}"\naliases = ["default"]\n'
        f'source = "{spec.source}"\n\n'
        '[[models]]\nid = "piper-joe"\naliases = ["tts-1"]\nkind = "speech"\nengine = "piper"\n'
        'source = "embedded:en_US-joe-medium"\n'
    )
    port = free_port()
    log = (config.parent / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai_stack", "serve", "--config", str(config), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900  # a first start converts the GGUF (about a minute here)
        while time.monotonic() < deadline:
            assert proc.poll() is None, (config.parent / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert all(m["state"] == "ready" for m in models), models
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


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
