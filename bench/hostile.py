"""A hostile-input corpus against an in-process ai-stack with fake engines: what answers does each case get?

    .venv/bin/python -m bench.hostile [--json FILE] [--only TEXT] [--workers N]

The app runs under uvicorn in a thread of this process, with the options `ai-stack serve` uses (header and
body deadlines, header size limit) on a loopback port. Each case is raw bytes written to a socket (or a
scripted slow client); the answer must arrive whole within 10 s. Cases are counted as 2xx, 4xx, 5xx, closed
(the server closed the connection without an answer: refused at the HTTP level) and hang (no whole answer in
10 s). A prober asks GET /health every 50 ms meanwhile, so a case that blocks the event loop shows up as
/health latency. A good run has no 5xx and no hang.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIMIT_S = 10.0
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
SPEECH = {"model": "fake-voice", "voice": "fake-a", "input": "Hello there.", "response_format": "wav"}
HI = [{"role": "user", "content": "hi"}]
# The JSON routes and a body each accepts.
JSON_ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/audio/speech": SPEECH,
    "/v1/completions": {"model": "fake-chat", "prompt": "hello", "max_tokens": 8},
    "/v1/responses": {"model": "fake-chat", "input": "hello", "max_output_tokens": 16},
    "/v1/messages": {"model": "fake-chat", "max_tokens": 8, "messages": HI},
    "/v1/messages/count_tokens": {"model": "fake-chat", "messages": HI},
    "/api/chat": {"model": "fake-chat", "messages": HI, "stream": False},
    "/api/generate": {"model": "fake-chat", "prompt": "hi", "stream": False},
    "/api/show": {"model": "fake-chat"},
    "/api/pull": {"model": "fake-chat:latest"},
    "/completion": {"prompt": "hello", "n_predict": 8},
    "/infill": {"input_prefix": "def f(", "input_suffix": "):", "n_predict": 8},
    "/v1/models/spare/load": {},
}


@dataclass
class Case:
    """One hostile request: raw bytes, or a function that talks to the socket itself."""

    group: str
    name: str
    raw: bytes = b""
    script: Callable[[socket.socket], None] | None = None


@dataclass
class Outcome:
    """What a case got: a status class and how long it took."""

    case: Case
    kind: str
    status: int | None
    seconds: float
    detail: str = ""


@dataclass
class Probe:
    """GET /health latencies sampled while the corpus runs."""

    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    content_type: str | None = "application/json",
) -> bytes:
    """A raw HTTP/1.1 request that asks the server to close the connection after answering."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type is not None and body is not None:
        lines.append(f"Content-Type: {content_type}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b"")


def post(path: str, body: Any, **kwargs: Any) -> bytes:
    """POST a JSON value (bytes are sent as they are)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request("POST", path, data, **kwargs)


def _deep(levels: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * levels + closer * levels).encode()


def raw_bodies() -> dict[str, bytes]:
    """Bodies that are not a well-formed JSON object, or are one of absurd size or shape."""
    return {
        "empty": b"",
        "open brace": b"{",
        "array": b"[]",
        "null": b"null",
        "number": b"1",
        "string": b'"s"',
        "empty object": b"{}",
        "truncated": b'{"model":',
        "invalid utf-8": b"\xff\xfe\xfd",
        "bom": b"\xef\xbb\xbf{}",
        "utf-16": '{"model": "x"}'.encode("utf-16"),
        "nan": b'{"model": NaN}',
        "infinity": b'{"model": "fake-chat", "temperature": Infinity}',
        "-infinity": b'{"model": "fake-chat", "temperature": -Infinity}',
        "deep array 100": b'{"x": ' + _deep(100) + b"}",
        "deep array 100k": b'{"x": ' + _deep(100_000) + b"}",
        "deep object 10k": b'{"x": ' + (b'{"a": ' * 10_000) + b"1" + b"}" * 10_000 + b"}",
        "5000-digit int": b'{"model": "fake-chat", "max_tokens": ' + b"9" * 5000 + b"}",
        "1e400": b'{"model": "fake-chat", "temperature": 1e400}',
        "-0": b'{"model": "fake-chat", "temperature": -0.0}',
        "duplicate keys": b'{"model": "a", "model": "fake-chat"}',
        "lone surrogate": b'{"model": "\\ud800"}',
        "nul in string": b'{"model": "fake\\u0000chat"}',
        "100k keys": json.dumps({f"k{i}": i for i in range(100_000)}).encode(),
        "trailing garbage": b"{} x",
        "two documents": b"{}{}",
        "comment": b"/* hi */ {}",
        "single quotes": b"{'model': 'x'}",
        "unquoted keys": b"{model: 1}",
        "hex number": b'{"max_tokens": 0x10}',
        "7 MB string": b'{"model": "fake-chat", "junk": "' + b"a" * (7 << 20) + b'"}',
        "9 MB body": b'{"junk": "' + b"a" * (9 << 20) + b'"}',
        "1M-element array": b'{"x": [' + b"0," * 999_999 + b"0]}",
    }


HOSTILE_VALUES: dict[str, Any] = {
    "null": None,
    "empty list": [],
    "empty object": {},
    "empty string": "",
    "1 MB string": "a" * (1 << 20),
    "-1": -1,
    "1e30 int": 10**30,
    "1e308": 1e308,
    "true": True,
    "nested list": [[[[[[[[[[1]]]]]]]]]],
}


def json_route_cases() -> Iterator[Case]:
    """Every raw body, and every field of a good body replaced by every hostile value, on every JSON route."""
    for path, good in JSON_ROUTES.items():
        yield Case(path, "good body", post(path, good))
        for name, body in raw_bodies().items():
            yield Case(path, f"raw: {name}", post(path, body))
        for key in good:
            for name, value in HOSTILE_VALUES.items():
                yield Case(path, f"{key} = {name}", post(path, {**good, key: value}))
        yield Case(path, "text/plain", post(path, good, content_type="text/plain"))
        yield Case(path, "no content type", post(path, good, content_type=None))
        yield Case(
            path, "form", post(path, b"model=fake-chat", content_type="application/x-www-form-urlencoded")
        )
        yield Case(path, "GET", request("GET", path))
        yield Case(path, "PUT", post(path, good).replace(b"POST", b"PUT", 1))


def _user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def chat_cases() -> Iterator[Case]:
    """Chat semantics: limits on counts and sizes, odd parameters, and generation that could run away."""
    path = "/v1/chat/completions"
    big = {**CHAT, "model": "fake-big"}
    echo = "a " * 1_350_000  # 2.7 MB: the echo that froze every route for 12.6 s with stops
    stops = [f"{'b' * 500}{i}" for i in range(8)] + ["a " * 200 + "!", "\n\nUser:"]
    cases: dict[str, dict[str, Any]] = {
        "2.7 MB echo with stops": {**big, "messages": _user(echo), "stop": stops, "max_tokens": 2_000_000},
        "2.7 MB echo with stops, streamed": {
            **big,
            "messages": _user(echo),
            "stop": stops,
            "max_tokens": 2_000_000,
            "stream": True,
        },
        "2.7 MB echo, context exceeded": {**CHAT, "messages": _user(echo), "max_tokens": None},
        "n 16 x 2000 tokens": {**big, "messages": _user("w " * 2000), "n": 16, "max_tokens": 2000},
        "n 17": {**CHAT, "n": 17},
        "logprobs 16 x 20": {**CHAT, "n": 16, "logprobs": True, "top_logprobs": 20},
        "top_logprobs 21": {**CHAT, "logprobs": True, "top_logprobs": 21},
        "top_logprobs without logprobs": {**CHAT, "top_logprobs": 3},
        "17 stops": {**CHAT, "stop": [str(i) for i in range(17)]},
        "stop 513 chars": {**CHAT, "stop": "x" * 513},
        "empty stop": {**CHAT, "stop": [""]},
        "no messages": {**CHAT, "messages": []},
        "100k messages": {**CHAT, "messages": _user("x") * 100_000},
        "bad role": {**CHAT, "messages": [{"role": "wizard", "content": "x"}]},
        "image part": {**CHAT, "messages": _user([{"type": "image_url", "image_url": {"url": "data:,"}}])},
        "content number": {**CHAT, "messages": _user(5)},
        "tool message without id": {**CHAT, "messages": [{"role": "tool", "content": "x"}]},
        "bad tool_calls": {**CHAT, "messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}]},
        "10k tools": {
            **CHAT,
            "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)],
        },
        "tool schema depth 200": {
            **CHAT,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": json.loads(
                            '{"type": "object", "properties": {"a": ' * 200 + "{}" + "}}" * 200
                        ),
                    },
                }
            ],
        },
        "bad tool name": {**CHAT, "tools": [{"type": "function", "function": {"name": "a b;"}}]},
        "tool_choice unknown": {
            **CHAT,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice required, no tools": {**CHAT, "tool_choice": "required"},
        "json_schema enum 100k": {
            **CHAT,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"enum": list(range(100_000))}},
            },
        },
        "json_schema bad": {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": 5}}},
        "response_format xml": {**CHAT, "response_format": {"type": "xml"}},
        "max_tokens 0": {**CHAT, "max_tokens": 0},
        "max_tokens 2^63": {**CHAT, "max_tokens": 2**63},
        "max_tokens string": {**CHAT, "max_tokens": "10"},
        "temperature -1": {**CHAT, "temperature": -1},
        "temperature 1e308": {**CHAT, "temperature": 1e308},
        "top_p 2": {**CHAT, "top_p": 2},
        "seed 2^64": {**CHAT, "seed": 2**64},
        "seed -2^63": {**CHAT, "seed": -(2**63)},
        "logit_bias word": {**CHAT, "logit_bias": {"abc": 1}},
        "logit_bias 1e10": {**CHAT, "logit_bias": {"1": 1e10}},
        "logit_bias 100k": {**CHAT, "logit_bias": {str(i): 1 for i in range(100_000)}},
        "request chat template": {**CHAT, "chat_template_kwargs": {"chat_template": "{{ 7 * 7 }}"}},
        "template loop bomb": {
            **CHAT,
            "chat_template_kwargs": {"chat_template": "{% for i in range(10**9) %}x{% endfor %}"},
        },
        "stream_options without stream": {**CHAT, "stream_options": {"include_usage": True}},
        "stream usage": {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        "unknown model": {**CHAT, "model": "gpt-9"},
        "speech model": {**CHAT, "model": "fake-voice"},
        "model 100k chars": {**CHAT, "model": "m" * 100_000},
        "reasoning_effort odd": {**CHAT, "reasoning_effort": "maximal"},
        "penalty 1e9": {**CHAT, "presence_penalty": 1e9},
        "repetition_penalty 0": {**CHAT, "repetition_penalty": 0},
        "min_p -1": {**CHAT, "min_p": -1},
        "top_k -5": {**CHAT, "top_k": -5},
    }
    for name, body in cases.items():
        yield Case("chat semantics", name, post(path, body))


def speech_cases() -> Iterator[Case]:
    """Speech: every format with the longest input, odd voices, odd text."""
    path = "/v1/audio/speech"
    long = "This is a sentence of some length. " * 117  # 4095 characters
    for fmt in ("wav", "pcm", "flac", "mp3", "opus", "aac"):
        yield Case(
            "speech semantics",
            f"4095 chars as {fmt}",
            post(path, {**SPEECH, "input": long, "response_format": fmt}),
        )
        yield Case(
            "speech semantics",
            f"sse {fmt}",
            post(path, {**SPEECH, "response_format": fmt, "stream_format": "sse"}),
        )
    voices: dict[str, Any] = {
        "blend 1e309": "fake-a(1e309)+fake-b",
        "1000 pluses": "+" * 1000,
        "1000 parens": "(" * 1000,
        "blend of 1000": "+".join(["fake-a(1)"] * 1000),
        "voice object null id": {"id": None},
        "voice object": {"id": "fake-b"},
        "openai name": "alloy",
        "another model's voice via tts-1": "deep",
        "empty voice": "",
        "voice 100k": "v" * 100_000,
    }
    for name, voice in voices.items():
        model = "tts-1" if "tts-1" in name else SPEECH["model"]
        yield Case("speech semantics", name, post(path, {**SPEECH, "model": model, "voice": voice}))
    inputs = {
        "4097 chars": "a" * 4097,
        "punctuation only": "...!?",
        "emoji": "🙂" * 500,
        "rtl and combining": "שלום" + "\u0301" * 500,
        "nul bytes": "a\u0000b. c\u0000",
        "newlines": "\n" * 4000,
        "one long word": "a" * 4096,
    }
    for name, text in inputs.items():
        yield Case("speech semantics", name, post(path, {**SPEECH, "input": text}))
    yield Case("speech semantics", "speed 0", post(path, {**SPEECH, "speed": 0}))
    yield Case(
        "speech semantics",
        "speed 0.25 long",
        post(path, {**SPEECH, "speed": 0.25, "input": long, "response_format": "mp3"}),
    )
    yield Case("speech semantics", "format ogg", post(path, {**SPEECH, "response_format": "ogg"}))
    yield Case("speech semantics", "chat model", post(path, {**SPEECH, "model": "fake-chat"}))


def _slow(parts: list[bytes], pause: float) -> Callable[[socket.socket], None]:
    def run(sock: socket.socket) -> None:
        for part in parts:
            sock.sendall(part)
            time.sleep(pause)

    return run


def http_cases() -> Iterator[Case]:
    """The HTTP layer: malformed requests, huge or slow headers and bodies, smuggling, odd methods."""
    group = "http"
    good = post("/v1/chat/completions", CHAT)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
    )
    raw = {
        "garbage": b"GARBAGE\r\n\r\n",
        "binary": bytes(range(256)),
        "http/9.9": b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        "http/1.0 no host": b"GET /health HTTP/1.0\r\n\r\n",
        "http/0.9": b"GET /health\r\n\r\n",
        "absolute form": (
            b"GET http://evil.example/health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        ),
        "dot segments": request("GET", "/v1/../../../etc/passwd"),
        "encoded dots": request("GET", "/v1/models/..%2f..%2fetc%2fpasswd"),
        "nul in path": request("GET", "/v1/models/%00"),
        "100k path": request("GET", "/v1/models/" + "a" * 100_000),
        "100k query": request("GET", "/v1/models?" + "a=b&" * 25_000),
        "1 MB header": good.replace(
            b"Connection: close", b"Connection: close\r\nX-Big: " + b"a" * (1 << 20), 1
        ),
        "10k headers": good.replace(b"Connection: close", b"Connection: close" + b"\r\nX-H: v" * 10_000, 1),
        "header without colon": good.replace(b"Connection: close", b"Connection: close\r\nBroken", 1),
        "obs-fold header": good.replace(b"Connection: close", b"Connection: close\r\nX-A: a\r\n b", 1),
        "bare LF": b"GET /health HTTP/1.1\nHost: x\nConnection: close\n\n",
        "te and cl": head + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "bad chunk size": head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "huge chunk size": head + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        "chunked body": head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "negative length": head + b"Content-Length: -5\r\n\r\n{}",
        "length not a number": head + b"Content-Length: abc\r\n\r\n{}",
        "two lengths": head + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "length 10^30": head + b"Content-Length: " + b"9" * 30 + b"\r\n\r\n{}",
        "gzip garbage": head + b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8bxx",
        "expect 100-continue": head + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
        "http2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "tls hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        "evil host": good.replace(b"Host: 127.0.0.1", b"Host: evil.example", 1),
        "hostile request id": good.replace(
            b"Connection: close", b"Connection: close\r\nX-Request-Id: " + b"\x7f" * 5000, 1
        ),
        "pipelined 100": request("GET", "/health").replace(b"Connection: close\r\n", b"") * 99
        + request("GET", "/health"),
        "trace": request("TRACE", "/health"),
        "connect": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        "delete model": request("DELETE", "/v1/models/fake-chat"),
        "options preflight": request(
            "OPTIONS",
            "/v1/chat/completions",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        ),
        "cross-origin load": post("/v1/models/spare/load", {}, headers={"Origin": "http://evil.example"}),
        "declared body never sent": head + b"Content-Length: 1000\r\n\r\n{",
    }
    for name, data in raw.items():
        yield Case(group, name, data)
    yield Case(group, "idle connection", script=lambda sock: None)
    yield Case(
        group, "slowloris headers", script=_slow([b"GET /health HTTP/1.1\r\n"] + [b"X-A: b\r\n"] * 60, 0.2)
    )
    body = json.dumps(CHAT).encode()
    start = head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    yield Case(group, "slow body", script=_slow([start] + [body[i : i + 1] for i in range(len(body))], 0.1))
    yield Case(
        group, "half request then silence", script=_slow([b"POST /v1/chat/completions HTTP/1.1\r\nHo"], 0)
    )


def get_cases() -> Iterator[Case]:
    """GET routes with odd names and parameters."""
    names = [
        "fake-chat",
        "fake",
        "spare",
        "nope",
        "%00",
        "%ff",
        "a" * 5000,
        "..",
        "fake-chat/extra",
        "%2e%2e",
    ]
    for name in names:
        yield Case("get", f"model {name[:20]}", request("GET", f"/v1/models/{name}"))
        yield Case("get", f"voices of {name[:20]}", request("GET", f"/v1/audio/voices?model={name}"))
        yield Case("get", f"unload {name[:20]}", request("POST", f"/v1/models/{name}/unload", b""))
    for path in [
        "/health",
        "/health/ready",
        "/metrics",
        "/v1/models",
        "/v1/audio/models",
        "/openapi.json",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/",
        "/nope",
    ]:
        yield Case("get", path, request("GET", path))
        yield Case("get", f"HEAD {path}", request("HEAD", path))


def stored_cases() -> Iterator[Case]:
    """The Responses API's routes by id (odd ids and paging parameters) and Ollama's refused model routes."""
    group = "responses by id"
    ids = [
        "resp_" + "0" * 32,
        "%00",
        "%ff",
        "a" * 5000,
        "..",
        "%2e%2e",
        "x/input_items/y",
        "%27%20OR%201%3D1--",
    ]
    for ident in ids:
        yield Case(group, f"get {ident[:20]}", request("GET", f"/v1/responses/{ident}"))
        yield Case(group, f"items of {ident[:20]}", request("GET", f"/v1/responses/{ident}/input_items"))
        yield Case(group, f"delete {ident[:20]}", request("DELETE", f"/v1/responses/{ident}"))
        yield Case(group, f"cancel {ident[:20]}", request("POST", f"/v1/responses/{ident}/cancel", b""))
    some = "/v1/responses/resp_" + "0" * 32
    for query in ["stream=true", "stream=" + "t" * 5000, "&".join(["include[]=x"] * 2000)]:
        yield Case(group, f"get ?{query[:20]}", request("GET", f"{some}?{query}"))
    for query in [
        "limit=0",
        "limit=" + "9" * 5000,
        "limit=-1",
        "order=up",
        "after=%00",
        "before=" + "b" * 5000,
    ]:
        yield Case(group, f"items ?{query[:20]}", request("GET", f"{some}/input_items?{query}"))
    group = "ollama refused"
    for method, path in [
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
    ]:
        for name, body in {
            "model": {"model": "fake-chat"},
            "empty": b"",
            "garbage": b"\xff{",
            "array": [],
        }.items():
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            yield Case(group, f"{method} {path} {name}", request(method, path, data))


def corpus() -> list[Case]:
    """Every case."""
    return [
        *json_route_cases(),
        *chat_cases(),
        *speech_cases(),
        *http_cases(),
        *get_cases(),
        *stored_cases(),
    ]


def run_case(port: int, case: Case) -> Outcome:
    """Send one case and read the whole answer (the connection closes after it) within LIMIT_S."""
    started = time.monotonic()
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S) as sock:
            deadline = started + LIMIT_S
            try:
                if case.script is not None:
                    case.script(sock)
                else:
                    sock.sendall(case.raw)
            except OSError:
                pass  # the server stopped reading: what it answered (if anything) is below
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                try:
                    chunk = sock.recv(1 << 20)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        return Outcome(case, "hang", _status(data), time.monotonic() - started, data[:200].decode("latin-1"))
    took = time.monotonic() - started
    status = _status(data)
    if status is None:
        return Outcome(case, "closed", None, took)
    kind = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}.get(status // 100, "other")
    detail = data.split(b"\r\n\r\n", 1)[-1][:300].decode("utf-8", "replace") if kind == "5xx" else ""
    return Outcome(case, kind, status, took, detail)


def _status(data: bytes) -> int | None:
    line = data.split(b"\r\n", 1)[0].split(b" ")
    if len(line) < 2 or not line[0].startswith(b"HTTP/") or not line[1].isdigit():
        return None
    # A 100 Continue comes before the real answer.
    if line[1] == b"100" and b"\r\n\r\n" in data:
        return _status(data.split(b"\r\n\r\n", 1)[1])
    return int(line[1])


def _probe(port: int, probe: Probe) -> None:
    while not probe.stop.is_set():
        started = time.monotonic()
        outcome = run_case(port, Case("probe", "health", request("GET", "/health")))
        if outcome.kind == "2xx":
            probe.latencies.append(time.monotonic() - started)
        probe.stop.wait(0.05)


@contextlib.contextmanager
def serve() -> Iterator[int]:
    """The app with fake chat and speech models under uvicorn, as `ai-stack serve` configures it."""
    import uvicorn
    from ai_stack.app import create_app
    from ai_stack.config import Config
    from ai_stack.http_server import uvicorn_options

    home = Path(tempfile.mkdtemp(prefix="ai-stack-hostile-"))
    fake = {"engine": "fake", "source": "fake:"}
    config = Config.model_validate(
        {
            "server": {"home": str(home), "header_timeout": 2, "body_timeout": 2, "keep_alive_timeout": 2},
            "models": [
                {**fake, "id": "fake-chat", "aliases": ["fake"]},
                {**fake, "id": "fake-big", "options": {"context_length": 4_000_000}},
                {**fake, "id": "spare", "autoload": False},
                {
                    "id": "fake-voice",
                    "aliases": ["tts-1"],
                    "kind": "speech",
                    "engine": "fake-speech",
                    "source": "fake:",
                },
                {
                    "id": "other-voice",
                    "kind": "speech",
                    "engine": "fake-speech",
                    "source": "fake:",
                    "options": {"voices": ["deep"]},
                },
            ],
            "base_dir": str(home),
        }
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config), host="127.0.0.1", port=port, log_level="critical", **uvicorn_options(config)
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        outcome = (
            run_case(port, Case("start", "ready", request("GET", "/health/ready")))
            if server.started
            else None
        )
        if outcome is not None and outcome.status == 200:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("the server did not become ready")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def main(argv: list[str] | None = None) -> int:
    """Run the corpus, print the counts per group and every 5xx and hang; exit 1 when there are any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write every outcome here")
    parser.add_argument("--only", default="", help="run only cases whose group or name contains this")
    parser.add_argument("--workers", type=int, default=6)
    args = parser.parse_args(argv)
    cases = [c for c in corpus() if args.only in c.group or args.only in c.name]
    with serve() as port:
        probe = Probe()
        prober = threading.Thread(target=_probe, args=(port, probe), daemon=True)
        prober.start()
        started = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            outcomes = list(pool.map(lambda case: run_case(port, case), cases))
        wall = time.monotonic() - started
        probe.stop.set()
        prober.join(LIMIT_S + 1)
    groups: dict[str, Counter[str]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.case.group, Counter())[outcome.kind] += 1
    kinds = ["2xx", "4xx", "5xx", "closed", "hang", "3xx", "other"]
    print(f"{'group':<24}" + "".join(f"{k:>8}" for k in kinds) + f"{'cases':>8}")
    total: Counter[str] = Counter()
    for group, counts in groups.items():
        total.update(counts)
        print(f"{group:<24}" + "".join(f"{counts[k]:>8}" for k in kinds) + f"{sum(counts.values()):>8}")
    print(f"{'total':<24}" + "".join(f"{total[k]:>8}" for k in kinds) + f"{sum(total.values()):>8}")
    latencies = sorted(probe.latencies)
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        worst = latencies[-1]
        count = len(latencies)
        print(f"GET /health meanwhile: {count} probes, p99 {p99 * 1e3:.0f} ms, max {worst * 1e3:.0f} ms")
    print(f"{len(cases)} cases in {wall:.1f} s")
    bad = [o for o in outcomes if o.kind in ("5xx", "hang")]
    for outcome in bad:
        case = outcome.case
        print(f"{outcome.kind}: [{case.group}] {case.name} ({outcome.seconds:.1f} s) {outcome.detail!r}")
    if args.json:
        rows = [
            {
                "group": o.case.group,
                "name": o.case.name,
                "kind": o.kind,
                "status": o.status,
                "seconds": round(o.seconds, 3),
            }
            for o in outcomes
        ]
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
