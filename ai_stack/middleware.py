"""The gateway middleware: request ids, the API key check, the body size limit, a last-resort 500."""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_stack.errors import APIError, AuthenticationFailed, PayloadTooLarge, error_body

log = logging.getLogger(__name__)


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
