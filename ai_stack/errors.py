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


def stream_error_body(exc: Exception, model: str, doing: str) -> dict[str, Any]:
    """The error event of a stream that has begun: an APIError as it is, anything else logged and named."""
    if isinstance(exc, APIError):
        return exc.body()
    log.error("%s failed for %s", doing, model, exc_info=exc)
    return APIError(f"The model failed while {doing}: {type(exc).__name__}").body()
