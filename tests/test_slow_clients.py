"""Slow and oversized clients against a real uvicorn, run as `ai-stack serve` runs it.

Raw sockets: a client that sends nothing, trickles its headers, withholds its body or sends huge headers is
answered (408 / 400) and disconnected within the configured seconds; slow answers are not cut short.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from ai_stack import cli
from ai_stack.app import create_app
from ai_stack.http_server import DeadlineH11Protocol, uvicorn_options
from tests.conftest import FAKE, free_port, make_config, wait_for, wait_ready

LIMITS = {"header_timeout": 1.0, "body_timeout": 1.0, "keep_alive_timeout": 1.0, "max_header_bytes": 8192}
SLOW_REPLY = {**FAKE, "options": {"reply": "word " * 30, "token_delay": 0.1}}  # 3 s, longer than any limit


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real uvicorn with the CLI's options and 1-second limits, serving the fake chat model."""
    config = make_config(tmp_path, [SLOW_REPLY], **LIMITS)
    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(
            create_app(config), host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(config)
        )
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    assert wait_for(lambda: uv.started, 10)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        wait_ready(client, "fake-chat")
    yield "127.0.0.1", port
    uv.should_exit = True
    thread.join(10)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket, limit_s: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit_s)
    with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread: a reset, still closed
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_a_connection_that_sends_nothing_is_closed_with_408(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        data, took = read_until_closed(sock)
    assert status_of(data) == 408 and took < 5
    assert json_body(data)["error"]["code"] == "request_timeout"


def test_trickled_headers_do_not_keep_a_connection_open(server: tuple[str, int]) -> None:
    """A byte every 0.2 s keeps the connection busy, but the headers' deadline counts from the start."""
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):  # closed by the server: what this test wants
            for _ in range(40):
                sock.sendall(b"X")
                time.sleep(0.2)
        data, _ = read_until_closed(sock)
        took = time.monotonic() - started
    assert status_of(data) == 408 and took < 5


def test_a_withheld_body_gets_an_openai_shaped_408(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            b'content-length: 200\r\n\r\n{"model": "fake"'
        )
        data, took = read_until_closed(sock)
    assert status_of(data) == 408 and took < 5
    error = json_body(data)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"


def test_huge_headers_are_refused(server: tuple[str, int]) -> None:
    """Headers over max_header_bytes: 400 (or a reset while they are still arriving), never served."""
    with connect(server) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close while we are still sending
            sock.sendall(
                b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
            )
        data, _ = read_until_closed(sock)
        took = time.monotonic() - started
    assert data == b"" or status_of(data) == 400
    assert took < 5


def test_an_idle_keep_alive_connection_is_closed(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data, took = read_until_closed(sock)
    assert status_of(data) == 200 and b'{"status":"ok"}' in data
    assert 0.5 < took < 5  # kept alive a moment, then closed


def test_a_slow_but_timely_body_and_slow_answers_are_served(server: tuple[str, int]) -> None:
    """A body in two parts within the deadline is read; answers that take 3 s (3x every limit) complete."""
    body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
        time.sleep(0.3)
        sock.sendall(body[10:])
        data, took = read_until_closed(sock)
    assert status_of(data) == 200, data
    assert json_body(data)["choices"][0]["message"]["content"].count("word") == 30 and took > 2.5
    with (
        httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=20) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ) as response,
    ):
        text = "".join(response.iter_text())
    assert text.count("word") == 30 and text.rstrip().endswith("data: [DONE]")


def test_slow_clients_do_not_block_others(server: tuple[str, int]) -> None:
    socks = [connect(server) for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        response = httpx.get(f"http://{server[0]}:{server[1]}/health", timeout=5)
        assert response.status_code == 200 and time.monotonic() - started < 1
        closed = 0
        for sock in socks:
            data, _ = read_until_closed(sock)
            closed += status_of(data) == 408
        assert closed == 50
    finally:
        for sock in socks:
            sock.close()


def test_serve_runs_uvicorn_with_the_configured_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(
        f'[server]\nhome = "{tmp_path / "home"}"\nheader_timeout = 3\nbody_timeout = 4\n'
        "keep_alive_timeout = 2\nmax_header_bytes = 16384\n"
        '[[models]]\nid = "f"\nengine = "fake"\nsource = "fake:"\n'
    )
    calls: list[dict[str, Any]] = []

    def run(server: Any) -> None:  # the CLI's GracefulServer.run: record the uvicorn config it was given
        config = server.config
        calls.append({"app": config.app, "http": config.http})
        calls[-1]["timeout_keep_alive"] = config.timeout_keep_alive
        calls[-1]["h11_max_incomplete_event_size"] = config.h11_max_incomplete_event_size
        server.started = True

    monkeypatch.setattr("ai_stack.http_server.GracefulServer.run", run)
    result = CliRunner().invoke(cli.main, ["serve", "--config", str(path)])
    assert result.exit_code == 0, result.output
    [call] = calls
    assert issubclass(call["http"], DeadlineH11Protocol) and call["http"].header_timeout == 3
    assert (call["h11_max_incomplete_event_size"], call["timeout_keep_alive"]) == (16384, 2)
    assert call["app"].state.config.server.body_timeout == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nbody_timeout = 0\n")
    result = CliRunner().invoke(cli.main, ["serve", "--config", str(bad)])
    assert result.exit_code != 0 and "server.body_timeout" in result.output
