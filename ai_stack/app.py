"""create_app(config): one Starlette app whose lifespan owns the model registry."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_stack.config import Config
from ai_stack.engines.catalog import load_engine
from ai_stack.errors import APIError, AuthenticationFailed, PayloadTooLarge, error_body
from ai_stack.metrics import Metrics, metrics_endpoint
from ai_stack.registry import Loader, ModelRegistry
from ai_stack.routes import api_routes, health, readiness
from ai_stack.serving.chat import ChatService
from ai_stack.serving.speech import SpeechService
from ai_stack.ui import ui_routes

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
}


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

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or f"req-{uuid.uuid4().hex}"
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
            if self.api_key and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
                auth = headers.get("authorization", "")
                token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                    raise AuthenticationFailed(
                        "Incorrect or missing API key. Send 'Authorization: Bearer YOUR_KEY'."
                    )
            length = headers.get("content-length")
            if length and length.isdigit() and int(length) > self.max_body_bytes:
                raise PayloadTooLarge(f"The request body is over the limit of {self.max_body_bytes} bytes")
            await self.app(scope, self._limited(receive), send_with_id)
        except APIError as exc:
            if started:
                raise
            await _send_json(send, exc.status, exc.body(), {**exc.headers, **extra})
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            body = error_body(
                "The server had an error while processing your request",
                "server_error",
                None,
                "internal_error",
            )
            await _send_json(send, 500, body, {"x-should-retry": "false", **extra})

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise PayloadTooLarge(
                        f"The request body is over the limit of {self.max_body_bytes} bytes"
                    )
            return message

        return wrapped


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, type_ = _STATUS_TYPES.get(exc.status_code, ("http_error", "invalid_request_error"))
    message = {
        404: f"No route for {request.method} {request.url.path}",
        405: f"Method {request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return JSONResponse(
        error_body(message, type_, None, code), status_code=exc.status_code, headers=exc.headers
    )


def create_app(config: Config, loader: Loader = load_engine) -> Starlette:
    """Build the one-process app: /v1 API, health routes, lifespan-owned registry."""
    registry = ModelRegistry(config, loader)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.close()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/health/ready", readiness, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Mount("/v1", routes=api_routes()),
            *ui_routes(),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=config.server.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["x-request-id", "retry-after"],
            ),
            Middleware(
                GatewayMiddleware, api_key=config.server.api_key, max_body_bytes=config.server.max_body_bytes
            ),
        ],
        exception_handlers={APIError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.registry = registry
    app.state.metrics = Metrics(registry)
    app.state.chat = ChatService(registry, app.state.metrics)
    app.state.speech = SpeechService(registry)
    return app
