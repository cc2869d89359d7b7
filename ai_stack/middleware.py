"""The gateway middleware: request ids, hosts, the API key, cross-origin rules, body limits, a last 500.

A body must arrive whole within `body_timeout` seconds of the app's first read (408 otherwise), so a client
that sends headers and then trickles or withholds the body cannot hold a request open.

Browsers send any page's requests to a local server, so what a page could do unseen is refused: a JSON route
takes only a JSON content type (a cross-origin `text/plain` POST needs no CORS preflight), and loading or
unloading models is refused from another origin unless the server has an API key (which the page must send).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_stack.errors import (
    APIError,
    AuthenticationFailed,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    body_for,
)

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(
    r"[A-Za-z0-9._:\-]{1,128}"
)  # a client's x-request-id is echoed only when it looks like one
_ADMIN = re.compile(r"/v1/models/.+/(load|unload|upstreams/drain|upstreams/undrain)")
_GUARDED = ("/v1/", "/metrics", "/api/", "/infill", "/completion")  # need the API key when one is set
_JSON_ONLY = ("/v1/", "/infill", "/completion")  # POST bodies must say they are JSON


class RequestTimeout(InvalidRequest):
    """408: the request body did not arrive in time."""

    status = 408
    code = "request_timeout"


def _host_name(host: str) -> str:
    """The name part of a Host header: `[::1]:8080` -> `::1`, `localhost:8080` -> `localhost`."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = _json_bytes(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class GatewayMiddleware:
    """Request ids, the API key check, the body size limit, and a last-resort 500 in OpenAI shape."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        max_body_bytes: int,
        allowed_hosts: list[str] | None = None,
        body_timeout: float | None = 30.0,
    ) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes
        self.body_timeout = body_timeout
        self.allowed_hosts = None if not allowed_hosts or "*" in allowed_hosts else set(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        sent_id = headers.get("x-request-id", "")
        request_id = sent_id if _REQUEST_ID.fullmatch(sent_id) else f"req-{uuid.uuid4().hex}"
        extra = {"x-request-id": request_id}
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            self._check(scope, headers)
            await self.app(scope, self._limited(receive), send_with_id)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing went wrong here
            log.debug("client disconnected during %s %s", scope["method"], scope["path"])
        except APIError as exc:
            if started:
                raise
            await _send_json(send, exc.status, body_for(scope["path"], exc), {**exc.headers, **extra})
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            body = body_for(scope["path"], APIError("The server had an error while processing your request"))
            await _send_json(send, 500, body, {"x-should-retry": "false", **extra})

    def _check(self, scope: Scope, headers: dict[str, str]) -> None:
        """Host, API key, content type, cross-origin admin calls and the declared body size."""
        path, method = scope["path"], scope["method"]
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            raise InvalidRequest(f"Host {host[:100]!r} is not allowed here", code="host_not_allowed")
        authenticated = self.api_key is None
        if self.api_key is not None:
            auth = headers.get("authorization", "")
            # Bearer (OpenAI, Ollama clients) or x-api-key (Anthropic's SDK and Claude Code).
            token = (
                auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
            )
            authenticated = hmac.compare_digest(token.encode(), self.api_key.encode())
            if not authenticated and path.startswith(_GUARDED) and method != "OPTIONS":
                raise AuthenticationFailed(
                    "Incorrect or missing API key. Send 'Authorization: Bearer YOUR_KEY' "
                    "(or 'x-api-key: YOUR_KEY')."
                )
        scope.setdefault("state", {})["authenticated"] = authenticated
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            raise PayloadTooLarge(f"The request body is over the limit of {self.max_body_bytes} bytes")
        if method == "POST" and path.startswith((*_JSON_ONLY, "/api/")):
            content_type = headers.get("content-type")
            has_body = (length not in (None, "0")) or "transfer-encoding" in headers
            # Ollama's routes take `curl -d` bodies (form content type) as Ollama does, but never from a
            # browser page: a cross-origin page always sends Origin.
            strict = path.startswith(_JSON_ONLY) or "origin" in headers
            if strict and has_body and content_type is not None and not _is_json(content_type):
                raise UnsupportedMediaType(
                    f"Content-Type {content_type[:100]!r} is not JSON; send 'Content-Type: application/json'"
                )
            origin = headers.get("origin")
            if origin and self.api_key is None and _ADMIN.fullmatch(path) and urlsplit(origin).netloc != host:
                raise Forbidden(
                    f"Loading and unloading models from another origin ({origin[:100]}) needs the server's "
                    "API key; set one (api_key) to allow it"
                )

    def _limited(self, receive: Receive) -> Receive:
        """`receive` with the body size limit and, until the body is complete, the body deadline."""
        seen = 0
        complete = self.body_timeout is None
        deadline: float | None = None

        async def wrapped() -> Message:
            nonlocal seen, complete, deadline
            if complete:  # later reads wait for a disconnect for as long as a response takes
                message = await receive()
            else:
                loop = asyncio.get_running_loop()
                if deadline is None:
                    assert self.body_timeout is not None
                    deadline = loop.time() + self.body_timeout
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeout(
                        f"The request body did not arrive within {self.body_timeout:g} seconds",
                        headers={"connection": "close"},
                    ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise PayloadTooLarge(
                        f"The request body is over the limit of {self.max_body_bytes} bytes"
                    )
                complete = complete or not message.get("more_body", False)
            else:
                complete = True
            return message

        return wrapped
