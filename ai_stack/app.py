"""create_app(config): one Starlette app whose lifespan owns the model registry."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from ai_stack.config import Config
from ai_stack.engines.catalog import load_engine
from ai_stack.errors import APIError, body_for
from ai_stack.metrics import Metrics, metrics_endpoint
from ai_stack.middleware import GatewayMiddleware
from ai_stack.openapi import openapi_endpoint
from ai_stack.registry import Loader, ModelRegistry
from ai_stack.routes import api_routes, health, readiness
from ai_stack.serving.chat import ChatService
from ai_stack.serving.speech import SpeechService
from ai_stack.surfaces import completions, messages, ollama, responses
from ai_stack.ui import ui_routes

_STATUS_TYPES = {
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(body_for(request.url.path, exc), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, type_ = _STATUS_TYPES.get(exc.status_code, ("http_error", "invalid_request_error"))
    message = {
        404: f"No route for {request.method} {request.url.path}",
        405: f"Method {request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    error = APIError(message, code=code, status=exc.status_code)
    error.type = type_
    return JSONResponse(body_for(request.url.path, error), status_code=exc.status_code, headers=exc.headers)


def create_app(config: Config, loader: Loader = load_engine) -> Starlette:
    """Build the one-process app: /v1 API, health routes, lifespan-owned registry."""
    registry = ModelRegistry(config, loader)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            app.state.chat.shutdown()  # streams still open end with an error, not mid-token
            await registry.close()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/health/ready", readiness, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Mount(
                "/v1",
                routes=[*api_routes(), *completions.v1_routes(), *responses.routes(), *messages.routes()],
            ),
            *completions.llama_routes(),
            Mount("/api", routes=ollama.routes()),
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
                GatewayMiddleware,
                api_key=config.server.api_key,
                max_body_bytes=config.server.max_body_bytes,
                allowed_hosts=config.server.allowed_hosts,
                body_timeout=config.server.body_timeout,
            ),
        ],
        exception_handlers={APIError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.registry = registry
    app.state.metrics = Metrics(registry)
    app.state.chat = ChatService(registry, app.state.metrics)
    app.state.speech = SpeechService(registry, app.state.chat.admission)
    return app
