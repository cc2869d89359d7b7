"""Prometheus metrics at /metrics (ai_stack/metrics.py): completion counts and model states."""

from __future__ import annotations

from starlette.testclient import TestClient

USER = [{"role": "user", "content": "hi"}]


def test_metrics_count_completions_and_model_states(client: TestClient) -> None:
    client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "max_tokens": 2})
    text = client.get("/metrics").text
    assert 'ai_stack_chat_completions_total{finish_reason="length",model="fake-chat"} 1.0' in text
    assert 'ai_stack_completion_tokens_total{model="fake-chat"} 2.0' in text
    assert 'ai_stack_model_state{model="fake-chat",state="ready"} 1.0' in text
