"""The HTTP middleware (ai_stack/middleware.py): body size limit, API key, CORS and request ids."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_error


def test_body_over_limit_is_413(app_client: Any) -> None:
    client = app_client(max_body_bytes=2048)
    big = {"model": "fake-chat", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(client.post("/v1/chat/completions", json=big), 413, "payload_too_large")
    assert client.get("/health").status_code == 200


def test_api_key_guards_v1_but_not_health(app_client: Any) -> None:
    client = app_client(api_key="sekrit")
    assert client.get("/health").status_code == 200
    assert_error(client.get("/v1/models"), 401, "invalid_api_key")
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    ok = client.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200


def test_cors_preflight_and_request_id_echo(app_client: Any) -> None:
    client = app_client(cors_origins=["http://example.test"], api_key="k")
    preflight = client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://example.test"
    response = client.get("/health", headers={"Origin": "http://example.test", "x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["access-control-allow-origin"] == "http://example.test"
