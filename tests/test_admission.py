"""Overload control (ai_stack/serving/admission.py): bounded running + waiting requests, 429, deadlines."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import re
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from ai_stack.config import ModelSpec, ServerConfig
from ai_stack.errors import Overloaded
from ai_stack.serving.admission import Admission, Hold, Limits, engine_slots, limits_for
from tests.conftest import FAKE, LiveServer, assert_error, wait_for, wait_ready

SLOW = {**FAKE, "options": {"reply": " ".join(f"w{i}" for i in range(400)), "token_delay": 0.02}}
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "talk"}]}
LIMITED = {"max_running": 1, "max_queue": 1}


def metric(client: httpx.Client | TestClient, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    text = client.get("/metrics").text
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == want:
            return float(match.group(2))
    return 0.0


@contextmanager
def running_stream(url: str, body: dict[str, Any] | None = None) -> Iterator[Iterator[str]]:
    """A chat stream that has begun generating (a content chunk came); closing it cancels it."""
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json={**(body or BODY), "stream": True}) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
        yield lines


@contextmanager
def waiting_stream(url: str, body: dict[str, Any] | None = None) -> Iterator[Iterator[str]]:
    """A chat stream admitted to the queue: its 200 came, its generation has not begun."""
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json={**(body or BODY), "stream": True}) as response,
    ):
        assert response.status_code == 200
        yield response.iter_lines()


def sse_data(lines: Iterator[str]) -> list[str]:
    """The data of the remaining server-sent events, up to the end of the stream."""
    return [line[6:] for line in lines if line.startswith("data: ")]


def ready(live: LiveServer) -> httpx.Client:
    """A client of the live server once its model is ready."""
    client = httpx.Client(base_url=live.url, timeout=30)
    wait_ready(client, "fake-chat")
    return client


# ---------------------------------------------------------------------------------------------- limits


def test_limits_come_from_the_model_then_the_server_then_the_engine() -> None:
    class Batched:
        max_batch = 6

    class Slots:
        parallel = 3

    spec = ModelSpec(id="m", engine="fake", source="fake:")
    assert engine_slots(Batched()) == 6 and engine_slots(Slots()) == 3 and engine_slots(object()) is None
    assert limits_for(ServerConfig(), spec, Batched()) == Limits(6, 24)  # 4 waiting per running by default
    assert limits_for(ServerConfig(), spec, object()) == Limits(4, 16)
    assert limits_for(ServerConfig(max_running=2, max_queue=0), spec, Batched()) == Limits(2, 0)
    own = ModelSpec(id="m", engine="fake", source="fake:", max_running=5, max_queue=1)
    assert limits_for(ServerConfig(max_running=2, max_queue=0), own, Batched()) == Limits(5, 1)


# ------------------------------------------------------------------------------------------------- 429


def test_burst_beyond_running_and_waiting_gets_429_with_retry_after(live_server: Any) -> None:
    live = live_server([SLOW], **LIMITED)
    client = ready(live)
    with running_stream(live.url), waiting_stream(live.url):
        assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="fake-chat") == 1)
        refused = client.post("/v1/chat/completions", json=BODY)
        error = assert_error(refused, 429, "rate_limit_exceeded")
        assert error["type"] == "requests"
        assert int(refused.headers["retry-after"]) >= 1
        # OpenAI's client sees its own RateLimitError (and would retry after Retry-After).
        sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
        # Every generating route is admitted the same way, each answering in its own error shape.
        anthropic = client.post(
            "/v1/messages",
            json={"model": "fake-chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert anthropic.status_code == 429
        assert anthropic.json()["error"]["type"] == "rate_limit_error"
        ollama = client.post("/api/chat", json={**BODY, "stream": False})
        assert ollama.status_code == 429 and set(ollama.json()) == {"error"}
        legacy = client.post("/v1/completions", json={"model": "fake-chat", "prompt": "hi"})
        assert_error(legacy, 429, "rate_limit_exceeded")
        assert metric(client, "ai_stack_requests_rejected_total", model="fake-chat") == 5
        assert metric(client, "ai_stack_requests_running", model="fake-chat") == 1
        # Counting tokens generates nothing: it takes no place and is never refused.
        count = client.post(
            "/v1/messages/count_tokens",
            json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert count.status_code == 200
    # The running stream was closed: the waiting one ran (or was cancelled), and every place is free again.
    assert wait_for(lambda: metric(client, "ai_stack_requests_running", model="fake-chat") == 0)
    assert metric(client, "ai_stack_requests_waiting", model="fake-chat") == 0
    assert metric(client, "ai_stack_generations_aborted_total", model="fake-chat", reason="cancelled") >= 1
    ok = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    client.close()


def test_a_waiting_request_runs_when_a_slot_frees(live_server: Any) -> None:
    live = live_server([SLOW], **LIMITED)
    client = ready(live)
    with ExitStack() as first:
        first.enter_context(running_stream(live.url))
        with waiting_stream(live.url, {**BODY, "max_tokens": 3}) as waiting:
            assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="fake-chat") == 1)
            first.close()  # the running stream's client leaves: its slot goes to the waiting one
            data = sse_data(waiting)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert all("error" not in chunk for chunk in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "w0 w1 w2"
    client.close()


def test_waiting_requests_hold_no_thread(live_server: Any) -> None:
    live = live_server([SLOW], max_running=1, max_queue=4)
    client = ready(live)

    def generating() -> int:
        return sum(1 for thread in threading.enumerate() if thread.name == "generate")

    with running_stream(live.url):
        streams = [waiting_stream(live.url) for _ in range(4)]
        for stream in streams:
            stream.__enter__()
        try:
            assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="fake-chat") == 4)
            assert generating() == 1  # four waiting, one generating: one engine thread
            refused = client.post("/v1/chat/completions", json=BODY)
            assert_error(refused, 429, "rate_limit_exceeded")
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    client.close()


def test_places_of_requests_that_never_generate_are_released(live_server: Any) -> None:
    live = live_server([SLOW], max_running=1, max_queue=0)
    client = ready(live)
    for _ in range(3):  # max_tokens 0 with echo: prepared, admitted, never generated
        echo = client.post(
            "/v1/completions", json={"model": "fake-chat", "prompt": "a b", "max_tokens": 0, "echo": True}
        )
        assert echo.status_code == 200
        bad = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 10_000})
        assert_error(bad, 400, "context_length_exceeded")  # refused before it takes a place
    # Several prompts of one legacy request run one after another on one place.
    several = client.post(
        "/v1/completions", json={"model": "fake-chat", "prompt": ["a", "b", "c"], "max_tokens": 2}
    )
    assert several.status_code == 200, several.text
    assert [c["text"] for c in several.json()["choices"]] == ["w0 w1"] * 3
    assert metric(client, "ai_stack_requests_waiting", model="fake-chat") == 0
    ok = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 2})
    assert ok.status_code == 200
    client.close()


def test_a_client_leaving_the_queue_frees_its_place(live_server: Any) -> None:
    live = live_server([SLOW], **LIMITED)
    client = ready(live)
    with running_stream(live.url):
        with waiting_stream(live.url):
            assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="fake-chat") == 1)
        assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="fake-chat") == 0)
        with waiting_stream(live.url):  # the freed place takes a new request
            assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="fake-chat") == 1)
    client.close()


def test_speech_has_running_and_waiting_limits_too(live_server: Any) -> None:
    voice = {
        "id": "voice",
        "kind": "speech",
        "engine": "fake-speech",
        "source": "fake:",
        "options": {"sentence_delay": 0.1},
        **LIMITED,
    }
    live = live_server([voice])
    client = httpx.Client(base_url=live.url, timeout=30)
    wait_ready(client, "voice")
    long_text = " ".join(f"Sentence {i}." for i in range(200))  # ~20 s of synthesis
    speak = {"model": "voice", "voice": "fake-a", "response_format": "pcm"}
    with client.stream("POST", "/v1/audio/speech", json={**speak, "input": long_text}) as running:
        assert running.status_code == 200
        audio = running.iter_bytes()  # kept: a dropped iterator would close the connection
        assert next(audio)  # audio is flowing: the one slot is taken
        waited: dict[str, httpx.Response] = {}
        waiter = threading.Thread(
            target=lambda: waited.update(r=client.post("/v1/audio/speech", json={**speak, "input": "Hi."}))
        )
        waiter.start()
        assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="voice") == 1)
        refused = client.post("/v1/audio/speech", json={**speak, "input": "Hello."})
        assert_error(refused, 429, "rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) >= 1
    # The running stream's client left: its synthesis stops and the waiting request gets the slot.
    waiter.join(30)
    assert waited["r"].status_code == 200 and len(waited["r"].content) > 0
    assert wait_for(lambda: metric(client, "ai_stack_requests_running", model="voice") == 0)
    assert metric(client, "ai_stack_requests_waiting", model="voice") == 0
    client.close()


# ------------------------------------------------------------------------------------------- deadlines


def test_queue_deadline_ends_a_waiting_request_with_a_clear_error(live_server: Any) -> None:
    live = live_server([SLOW], **LIMITED, queue_timeout=0.3)
    client = ready(live)
    with running_stream(live.url):
        late = client.post("/v1/chat/completions", json=BODY)
        error = assert_error(late, 503, "queue_timeout")
        assert "queue_timeout" in error["message"] and int(late.headers["retry-after"]) >= 1
        with waiting_stream(live.url) as waiting:  # streamed: an error event, then [DONE]
            data = sse_data(waiting)
        assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["code"] == "queue_timeout"
    assert metric(client, "ai_stack_deadlines_expired_total", model="fake-chat", deadline="queue") == 2
    client.close()


def test_request_deadline_stops_a_long_generation(live_server: Any) -> None:
    live = live_server([SLOW], request_timeout=0.3)
    client = ready(live)
    engine = live.app.state.registry.entries["fake-chat"].engine
    whole = client.post("/v1/chat/completions", json=BODY)
    error = assert_error(whole, 504, "request_timeout")
    assert "request_timeout" in error["message"] and whole.headers["x-should-retry"] == "false"
    with running_stream(live.url) as lines:
        data = sse_data(lines)
    assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["code"] == "request_timeout"
    # The generations were cancelled, not left running for nobody.
    assert wait_for(lambda: engine.active == 0 and engine.cancelled == 2)
    assert metric(client, "ai_stack_deadlines_expired_total", model="fake-chat", deadline="request") == 2
    assert metric(client, "ai_stack_generations_aborted_total", model="fake-chat", reason="deadline") == 2
    client.close()


# ----------------------------------------------------------------------------------- default max_tokens


def test_default_max_tokens_caps_requests_that_set_none(app_client: Any) -> None:
    reply = {**FAKE, "options": {"reply": "one two three four five six"}}
    client = app_client([reply], default_max_tokens=4)
    wait_ready(client, "fake-chat")
    capped = client.post("/v1/chat/completions", json=BODY).json()
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 4
    asked = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 6}).json()
    assert asked["choices"][0]["finish_reason"] == "stop"
    ollama = client.post("/api/chat", json={**BODY, "stream": False, "options": {"num_predict": 6}}).json()
    assert ollama["eval_count"] == 6  # an explicit num_predict replaces the server's cap
    uncapped = app_client([reply], default_max_tokens=0)
    wait_ready(uncapped, "fake-chat")
    whole = uncapped.post("/v1/chat/completions", json=BODY).json()
    assert whole["choices"][0]["finish_reason"] == "stop" and whole["usage"]["completion_tokens"] == 6


# -------------------------------------------------------------------------------------------- shutdown


def test_shutdown_ends_running_and_waiting_streams_with_an_error(live_server: Any) -> None:
    live = live_server([SLOW], **LIMITED)
    client = ready(live)
    with running_stream(live.url) as running, waiting_stream(live.url) as waiting:
        assert wait_for(lambda: metric(client, "ai_stack_requests_waiting", model="fake-chat") == 1)
        live.app.state.chat.shutdown()  # as a SIGTERM does (tests/test_shutdown.py)
        for lines in (running, waiting):
            data = sse_data(lines)
            assert data[-1] == "[DONE]"
            assert json.loads(data[-2])["error"]["code"] == "server_shutting_down"
    refused = client.post("/v1/chat/completions", json=BODY)
    assert_error(refused, 503, "server_shutting_down")
    assert metric(client, "ai_stack_generations_aborted_total", model="fake-chat", reason="shutdown") == 1
    client.close()


# ------------------------------------------------------------------------------------------- the queue


async def test_queue_counts_slots_shares_a_request_place_and_releases_dropped_holds() -> None:
    admission = Admission(ServerConfig(max_running=2, max_queue=1))

    async def admit(weight: int) -> Hold:  # each call is its own request (its own context)
        async def take() -> Hold:
            return admission.admit("m", None, object(), weight)

        return await asyncio.create_task(take(), context=contextvars.Context())

    wide = await admit(2)  # n = 2: both slots
    narrow = await admit(1)  # waits: the queue's one place
    with pytest.raises(Overloaded) as refused:
        await admit(1)
    assert int(refused.value.headers["Retry-After"]) >= 1
    queue = admission.queues["m"]
    order: list[str] = []

    async def run(hold: Hold, name: str, release: asyncio.Event) -> None:
        async with hold.ticket.running():
            order.append(name)
            await release.wait()
        hold.close()

    go_wide, go_narrow = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(run(wide, "wide", go_wide))
    second = asyncio.create_task(run(narrow, "narrow", go_narrow))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["wide"] and (queue.running, queue.waiting) == (1, 1)
    go_wide.set()
    await first
    go_narrow.set()
    await second
    assert order == ["wide", "narrow"] and (queue.running, queue.waiting, queue.held) == (0, 0, 0)

    # One request's prompts share one place; a hold nobody references any more gives its place back.
    async def several() -> list[Hold]:
        return [admission.admit("m", None, object(), 1) for _ in range(3)]

    holds = await asyncio.create_task(several(), context=contextvars.Context())
    assert len({id(hold.ticket) for hold in holds}) == 1 and queue.held == 1
    del holds
    await asyncio.sleep(0)  # the finished task's wake-up lets go of its result
    gc.collect()
    assert queue.held == 0 and not queue.tickets
