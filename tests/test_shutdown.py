"""Clean shutdown (ai_stack/http_server.py GracefulServer): SIGTERM ends streams with an error and [DONE]."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import serve_process, wait_for

REPLY = " ".join(f"w{i}" for i in range(2000))
BODY = {"model": "slow", "messages": [{"role": "user", "content": "talk"}]}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`ai-stack serve` in a subprocess with one fake model that answers a token every 20 ms."""
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[server]\nhome = "{tmp_path / "home"}"\n\n'
        '[[models]]\nid = "slow"\nengine = "fake"\nsource = "fake:"\n'
        f'options = {{ reply = "{REPLY}", token_delay = 0.02 }}\n'
    )
    with serve_process(config, timeout=60) as (proc, url):
        yield proc, url, tmp_path / "serve.log"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_streams_with_an_error_and_exits_cleanly(
    server: tuple[subprocess.Popen[bytes], str, Path], sig: signal.Signals
) -> None:
    proc, url, log = server
    whole: list[httpx.Response] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        # A non-streamed answer in progress too: it gets a 503 in OpenAI's shape.
        waiter = threading.Thread(target=lambda: whole.append(client.post("/v1/chat/completions", json=BODY)))
        waiter.start()
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
            both = 'ai_stack_requests_running{model="slow"} 2.0'  # the stream and the whole answer
            assert wait_for(lambda: both in client.get("/metrics").text)
            signalled = time.monotonic()
            proc.send_signal(sig)
            rest = [line[6:] for line in lines if line.startswith("data: ")]
        waiter.join(30)
    code = proc.wait(30)
    took = time.monotonic() - signalled
    assert rest[-1] == "[DONE]", rest[-3:]
    error = json.loads(rest[-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    [answer] = whole
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "server_shutting_down"
    assert code == 0, log.read_text()
    assert took < 10, took  # the answers would have run for 40 s; the server stops at once, not after them
    text = log.read_text()
    assert "Traceback" not in text and "Cancel" not in text, text
