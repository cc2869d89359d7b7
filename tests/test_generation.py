"""Chat generation (ai_stack/serving/generation.py): stop sequences; a client that leaves stops it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ai_stack.serving.generation import StopMatcher
from tests.conftest import FAKE, wait_for

SLOW = {**FAKE, "options": {"reply": "word " * 500, "token_delay": 0.05}}
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "talk"}]}


def test_streaming_client_disconnect_stops_generation(live_server: Any) -> None:
    live = live_server([SLOW])
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert wait_for(lambda: client.get("/health/ready").status_code == 200)
        engine = live.app.state.registry.entries["fake-chat"].engine
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            events = [json.loads(line[6:]) for line in received if line.startswith("data: {")]
            deltas = [event["choices"][0]["delta"] for event in events]
            assert any("word" in (delta.get("content") or "") for delta in deltas)
        # The response is closed: the generation must notice and stop, not run 500 tokens for nobody.
        assert wait_for(lambda: engine.cancelled == 1 and engine.active == 0, timeout=10)
        assert engine.finished == 1
        ok = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_non_streamed_client_disconnect_stops_generation(live_server: Any) -> None:
    live = live_server([SLOW])
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert wait_for(lambda: client.get("/health/ready").status_code == 200)
    engine = live.app.state.registry.entries["fake-chat"].engine
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=live.url, timeout=0.5) as impatient:
        impatient.post("/v1/chat/completions", json=BODY)
    assert wait_for(lambda: engine.cancelled == 1 and engine.active == 0, timeout=10)


def test_stop_matcher_holds_back_possible_stop_prefixes() -> None:
    matcher = StopMatcher(["END", "</s>"])
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("X more <") == ("ENX more ", False)
    assert matcher.feed("/s> tail") == ("", True)
    assert StopMatcher([]).feed("abc") == ("abc", False)
