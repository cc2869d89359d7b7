"""Model states (ai_stack/registry.py): loading, failed, run-time unload/load, load on request."""

from __future__ import annotations

from typing import Any

from tests.conftest import FAKE, assert_error, wait_ready

USER = [{"role": "user", "content": "hi"}]


def test_loading_model_is_503_with_retry_after_and_then_serves(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"load_delay": 1.0}}])
    response = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER})
    assert_error(response, 503, "model_loading", "model")
    assert response.headers["retry-after"] == "5"
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "loading"
    wait_ready(client, "fake-chat")
    assert (
        client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}).status_code == 200
    )
    assert client.get("/health/ready").json()["status"] == "ok"


def test_failed_model_reports_reason_while_others_serve(app_client: Any) -> None:
    broken = {
        "id": "broken",
        "engine": "fake",
        "source": "fake:",
        "options": {"fail_load": "weights are corrupt"},
    }
    client = app_client([broken, FAKE])
    wait_ready(client, "fake-chat")
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["broken"]["state"] == "failed" and cards["broken"]["error"] == "weights are corrupt"
    response = client.post("/v1/chat/completions", json={"model": "broken", "messages": USER})
    error = assert_error(response, 503, "model_load_failed", "model")
    assert "weights are corrupt" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert (
        client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}).status_code == 200
    )
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"


def test_unload_and_load_at_run_time(app_client: Any) -> None:
    client = app_client([FAKE, {**FAKE, "id": "other", "aliases": []}], load_on_request=False)
    wait_ready(client, "fake-chat")
    wait_ready(client, "other")
    response = client.post("/v1/models/fake/unload")
    assert response.status_code == 200 and response.json()["state"] == "unloaded"
    error = assert_error(
        client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}),
        503,
        "model_not_loaded",
    )
    assert "/v1/models/fake-chat/load" in error["message"]
    assert client.post("/v1/chat/completions", json={"model": "other", "messages": USER}).status_code == 200
    response = client.post("/v1/models/fake-chat/load")
    assert response.status_code in (200, 202)
    wait_ready(client, "fake-chat")
    assert client.post("/v1/models/fake-chat/load").status_code == 200
    assert (
        client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}).status_code == 200
    )
    assert_error(client.post("/v1/models/ghost/load"), 404, "model_not_found")


def test_request_for_unloaded_model_starts_loading_when_allowed(app_client: Any) -> None:
    client = app_client([{**FAKE, "autoload": False}])
    assert client.get("/v1/models").json()["data"][0]["state"] == "unloaded"
    assert client.get("/health/ready").json()["status"] == "ok"
    response = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER})
    assert_error(response, 503, "model_loading")
    wait_ready(client, "fake-chat")


def test_unloading_a_loading_model_is_409(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"load_delay": 1.0}}])
    assert_error(client.post("/v1/models/fake-chat/unload"), 409, "conflict")
