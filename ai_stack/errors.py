"""The project's exceptions and their one mapping to OpenAI's error body."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a client sees: HTTP status plus OpenAI's {"error": {message, type, param, code}}."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error body."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Build {"error": {...}} with a string or null code."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class InvalidRequest(APIError):
    """400: the request is malformed or asks for something impossible."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    """400: the prompt plus the requested completion does not fit the model's context."""

    code = "context_length_exceeded"


class AuthenticationFailed(APIError):
    """401: a missing or wrong API key."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(APIError):
    """403: the request is not allowed from where it comes."""

    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class UnsupportedMediaType(APIError):
    """415: a JSON route was sent another content type."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class NotFound(APIError):
    """404: no such route or resource."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """404: the requested model is not configured."""

    code = "model_not_found"


class Conflict(APIError):
    """409: the resource is in a state that forbids the request."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(APIError):
    """413: the request body is over the server's limit."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class ModelUnavailable(APIError):
    """503: the model exists but cannot serve now (loading, unloaded or failed)."""

    status = 503
    type = "server_error"
    code = "model_not_ready"


class Overloaded(APIError):
    """429: the model's running and waiting requests are at their limit; retry after Retry-After seconds."""

    status = 429
    type = "requests"  # OpenAI's rate-limit errors: type "requests", code "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class QueueTimeout(APIError):
    """503: the request waited longer than the server's queue_timeout for a generation slot."""

    status = 503
    type = "server_error"
    code = "queue_timeout"


class RequestTimeout(APIError):
    """504: the request ran past the server's request_timeout and was stopped."""

    status = 504
    type = "server_error"
    code = "request_timeout"


class ServerShuttingDown(APIError):
    """503: the server is stopping; the request was ended (or never started)."""

    status = 503
    type = "server_error"
    code = "server_shutting_down"


# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_body(exc: APIError) -> dict[str, Any]:
    """Anthropic's error body: {"type": "error", "error": {"type", "message"}}."""
    type_ = _ANTHROPIC_TYPES.get(exc.status, "api_error" if exc.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": type_, "message": exc.message}}


def ollama_body(exc: APIError) -> dict[str, Any]:
    """Ollama's error body: {"error": "message"}."""
    return {"error": exc.message}


# llama.cpp server's error types where they differ from OpenAI's (its format_error_response).
_LLAMA_TYPES = {
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


def llama_body(exc: APIError) -> dict[str, Any]:
    """llama.cpp server's error body: {"error": {"code": HTTP status, "message", "type"}}."""
    type_ = _LLAMA_TYPES.get(exc.status, exc.type)
    return {"error": {"code": exc.status, "message": exc.message, "type": type_}}


def body_for(path: str, exc: APIError) -> dict[str, Any]:
    """The error body in the shape of the path's API: Ollama, Anthropic, llama.cpp, else OpenAI."""
    if path.startswith("/api/"):
        return ollama_body(exc)
    if path in ("/infill", "/completion"):
        return llama_body(exc)
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic_body(exc)
    return exc.body()


def stream_error_body(exc: Exception, model: str, doing: str) -> dict[str, Any]:
    """The error event of a stream that has begun: an APIError as it is, anything else logged and named."""
    if isinstance(exc, APIError):
        return exc.body()
    log.error("%s failed for %s", doing, model, exc_info=exc)
    return APIError(f"The model failed while {doing}: {type(exc).__name__}").body()
