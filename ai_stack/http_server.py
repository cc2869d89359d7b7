"""How uvicorn serves the app: h11 with bounded header sizes and deadlines for slow clients.

uvicorn arms no timer on a fresh connection and none while a request's headers trickle in, so a client that
opens connections and sends a byte now and then holds them forever; its default HTTP parser (httptools)
accepts headers of any size. Here a connection must deliver its request line and headers within
`header_timeout` seconds (else it gets a 408 and is closed), headers are limited to `max_header_bytes` (h11
answers 400 beyond), idle keep-alive connections close after `keep_alive_timeout`, and the body deadline
(`body_timeout`) is enforced by the gateway middleware, which answers 408 in the API's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ai_stack.config import Config
from ai_stack.errors import error_body

_TIMEOUT_BODY = json.dumps(
    error_body(
        "The request line and headers did not arrive in time",
        "invalid_request_error",
        None,
        "request_timeout",
    )
).encode()
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request's line and headers."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: a connection that never sends a request is closed too."""
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        """Feed h11, then keep the deadline while a request's headers are still incomplete."""
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._stop_clock()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Arm the deadline while h11 waits for a request (its clock keeps running); stop it once one came."""
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            self._stop_clock()
        elif self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        """The deadline passed with no complete request: answer 408 and close."""
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.timeout_keep_alive_task is not None:
            return  # idle between requests: uvicorn's keep-alive timer closes it
        self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()


def uvicorn_options(config: Config) -> dict[str, Any]:
    """The uvicorn.run keyword arguments for the server's limits on slow and oversized clients."""
    server = config.server
    protocol = type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"header_timeout": server.header_timeout})
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": server.max_header_bytes,
        "timeout_keep_alive": server.keep_alive_timeout,
    }


class GracefulServer(uvicorn.Server):
    """uvicorn's server that, on SIGTERM or SIGINT, first tells the app to end its streams, then exits 0.

    uvicorn alone waits for open streams until timeout_graceful_shutdown, then cancels them mid-token (no
    error event, no [DONE], a traceback) and re-raises the signal (exit status 143). Here `on_exit` runs on
    the event loop at once (the chat service ends each stream with an error event), the open connections
    close as their responses end, and the process exits with status 0. A second Ctrl+C forces the exit.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Note the event loop, for the signal handler."""
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: begin a graceful stop (not kept for re-raising: the exit status is 0)."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self.on_exit)


def serve(app: Any, config: Config, on_exit: Callable[[], None]) -> None:
    """Run the app under uvicorn (one worker) until SIGTERM/SIGINT; exit status 3 when it cannot start."""
    server = config.server
    uv_config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        workers=1,
        timeout_graceful_shutdown=server.shutdown_timeout,
        **uvicorn_options(config),
    )
    runner = GracefulServer(uv_config, on_exit)
    runner.run()
    if not runner.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE
