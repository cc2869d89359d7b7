"""The HTTP middleware (ai_stack/middleware.py): body size limit, API key, CORS and request ids."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import httpx
import pytest

from tests.conftest import FAKE, assert_error, wait_for, wait_ready


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


CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


def test_json_routes_refuse_other_content_types(app_client: Any) -> None:
    """A page's `text/plain` POST needs no CORS preflight: JSON routes take only JSON (or no content type)."""
    client = app_client()
    wait_ready(client, "fake-chat")
    body = json.dumps(CHAT)
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": content_type})
        assert_error(response, 415, "unsupported_media_type")
    for content_type in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": content_type})
        assert response.status_code == 200, (content_type, response.text)
    assert client.post("/v1/chat/completions", content=body.encode()).status_code == 200  # no content type


def test_cross_origin_load_and_unload_need_the_key(app_client: Any) -> None:
    """Without an API key, another origin cannot unload a model; the same origin (the UI) can."""
    client = app_client()
    wait_ready(client, "fake-chat")
    evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    assert_error(client.post("/v1/models/fake-chat/unload", headers=evil), 403, "forbidden")
    no_type = client.post("/v1/models/fake-chat/unload", headers={"Origin": "https://evil.example"})
    assert_error(no_type, 403, "forbidden")
    assert client.get("/v1/models/fake-chat").json()["state"] == "ready"
    same = client.post("/v1/models/fake-chat/unload", headers={"Origin": "http://testserver"})
    assert same.status_code == 200 and same.json()["state"] == "unloaded"
    keyed = app_client(api_key="k")
    wait_ready_with_key(keyed)
    headers = {"Origin": "https://other.example", "Authorization": "Bearer k"}
    assert keyed.post("/v1/models/fake-chat/unload", headers=headers).status_code == 200


def wait_ready_with_key(client: Any) -> None:
    assert wait_for(
        lambda: (
            client.get("/v1/models/fake-chat", headers={"Authorization": "Bearer k"}).json()["state"]
            == "ready"
        )
    )


def test_allowed_hosts_refuse_other_host_names(app_client: Any) -> None:
    """With allowed_hosts set, a rebound DNS name reaching 127.0.0.1 gets a 400, not the API."""
    client = app_client(allowed_hosts=["localhost", "127.0.0.1", "::1"])
    assert_error(client.get("/v1/models", headers={"Host": "evil.example"}), 400, "host_not_allowed")
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080"):
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host


def test_request_ids_are_echoed_only_when_sane(app_client: Any) -> None:
    client = app_client()
    assert client.get("/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    for bad in ("x" * 200, "a b", "id\u00e9"):
        echoed = client.get("/health", headers={"x-request-id": bad.encode()}).headers
        assert echoed["x-request-id"].startswith("req-") and len(echoed["x-request-id"]) < 64


def test_metrics_and_readiness_details_follow_the_key(app_client: Any) -> None:
    """Liveness and the readiness status stay open; metrics and each model's state need the key."""
    failing = {
        **FAKE,
        "id": "broken",
        "aliases": [],
        "options": {"fail_load": "cannot read /srv/models/secret/w.gguf"},
    }
    client = app_client([FAKE, failing], api_key="k")
    key = {"Authorization": "Bearer k"}
    assert wait_for(lambda: client.get("/health/ready").json()["status"] == "degraded")
    assert client.get("/health").status_code == 200
    assert "models" not in client.get("/health/ready").json()
    detailed = client.get("/health/ready", headers=key).json()["models"]
    broken = next(m for m in detailed if m["id"] == "broken")
    assert broken["error"] == "cannot read .../w.gguf"  # no file paths
    assert_error(client.get("/metrics"), 401, "invalid_api_key")
    assert "ai_stack_model_state" in client.get("/metrics", headers=key).text


def test_a_client_leaving_mid_body_is_not_an_error(
    live_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = live_server()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall((head + "Content-Length: 1000\r\n\r\n" + '{"model": "fake').encode())
    with caplog.at_level(logging.ERROR):
        assert wait_for(lambda: httpx.get(f"{server.url}/health").status_code == 200)
        time.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("ai_stack")]
