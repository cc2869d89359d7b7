"""One exchange with a remote model's upstreams: the request sent to one that has room, retried on another
before any byte of the answer is used, and an upstream's error answer in OpenAI's shape.

Shared by the byte-for-byte forwarding of fleet/proxy.py and the chat pipeline's remote requests
(fleet/chat.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ai_stack.errors import APIError, ModelUnavailable
from ai_stack.fleet.pool import Upstream, UpstreamPool

PASSED_HEADERS = ("retry-after", "x-should-retry")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "requests"}


class UpstreamError(APIError):
    """An upstream's error answer, with its status and (OpenAI-shaped) message."""

    type = "upstream_error"
    code = "upstream_error"


def upstream_error(upstream: Upstream, status: int, body: bytes, headers: httpx.Headers) -> APIError:
    """An upstream's error response as an APIError of the same status, in OpenAI's shape."""
    message: Any = ""
    type_: Any = None
    param: Any = None
    code: Any = None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):  # OpenAI, vLLM, llama-server, ai-stack
        message, type_, param, code = (error.get(k) for k in ("message", "type", "param", "code"))
    elif isinstance(error, str):  # Ollama-style
        message = error
    elif isinstance(data, dict) and isinstance(data.get("message"), str):  # vLLM's older ErrorResponse
        message, type_, code = data["message"], data.get("type"), data.get("code")
    elif isinstance(data, dict) and isinstance(data.get("detail"), str):  # FastAPI's HTTPException
        message = data["detail"]
    if not message:
        message = body[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
    passed = {k: v for k in PASSED_HEADERS if (v := headers.get(k)) is not None}
    result = UpstreamError(
        f"{message} (upstream {upstream.url})" if status >= 500 else str(message),
        param=param if isinstance(param, str) else None,
        code=code if isinstance(code, str) else ("upstream_error" if status >= 500 else "invalid_request"),
        status=status if 400 <= status <= 599 else 502,
        headers=passed,
    )
    result.type = type_ if isinstance(type_, str) else _ERROR_TYPES.get(status, "server_error")
    if status < 500 and not isinstance(type_, str):
        result.type = _ERROR_TYPES.get(status, "invalid_request_error")
    return result


async def open_upstream(
    pool: UpstreamPool, path: str, body: dict[str, Any], keys: Sequence[str] = ()
) -> tuple[Upstream, httpx.Response]:
    """Send the request to an upstream and return its 2xx response, headers read, body not yet.

    A connection error, a dropped keep-alive connection or a 5xx moves to another upstream (none of the
    answer has reached the client yet); an upstream 4xx is raised as it is. The caller releases the upstream
    and closes the response.
    """
    tried: set[Upstream] = set()
    last: APIError | None = None
    for attempt in range(len(pool.upstreams) + 1):
        try:
            upstream = await pool.acquire(tried, keys)
        except ModelUnavailable:
            if last is not None:
                raise last from None
            raise
        started = time.monotonic()
        try:
            request = upstream.client.build_request("POST", path, json=body)
            response = await upstream.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            pool.release(upstream)
            upstream.stats.error("connect")
            pool.mark_down(upstream, f"cannot connect: {exc or type(exc).__name__}")
            tried.add(upstream)
            last = pool.unavailable()
            continue
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # A keep-alive connection the upstream had closed, or the upstream died: once more elsewhere.
            pool.release(upstream)
            upstream.stats.error("connection")
            if attempt > 0:
                tried.add(upstream)
                pool.mark_down(upstream, f"connection failed: {exc or type(exc).__name__}")
            last = UpstreamError(f"The upstream {upstream.url} dropped the connection", status=502)
            continue
        except httpx.TimeoutException as exc:
            pool.release(upstream)
            upstream.stats.error("timeout")
            raise UpstreamError(
                f"The upstream {upstream.url} did not answer in time ({type(exc).__name__})",
                code="upstream_timeout",
                status=504,
            ) from None
        except BaseException:
            pool.release(upstream)
            raise
        upstream.stats.latency(time.monotonic() - started)
        if response.status_code < 400:
            return upstream, response
        try:
            content = await response.aread()
        except httpx.HTTPError:
            content = b""
        finally:
            await response.aclose()
            pool.release(upstream)
        error = upstream_error(upstream, response.status_code, content, response.headers)
        upstream.stats.error(f"status_{response.status_code // 100}xx")
        if response.status_code < 500:
            raise error
        if response.status_code in (502, 503, 504):  # down, loading or overloaded: out until it checks well
            pool.mark_down(upstream, f"answered {response.status_code}: {error.message[:200]}")
        tried.add(upstream)
        last = error
    assert last is not None
    raise last
