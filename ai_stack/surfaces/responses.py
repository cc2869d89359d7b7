"""OpenAI's Responses API at /v1/responses: a translation layer over the one chat pipeline (serving.chat).

A request becomes a ChatCompletionRequest (input items → messages, function tools, text.format → a
response_format grammar, reasoning.effort → thinking on or off); the pipeline's events become output items
(reasoning, message, function_call) and, when streamed, the typed events OpenAI documents. Responses with
`store` (the default) are kept in an SQLite file under the server's home for `previous_response_id` and the
retrieve, input-items, delete and cancel routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ai_stack.config import Config
from ai_stack.errors import APIError, InvalidRequest, NotFound, stream_error_body
from ai_stack.protocol import ChatCompletionRequest
from ai_stack.routes import disconnect_waiter, parse_body
from ai_stack.serving.chat import ChatService, ClientDisconnected, unless_disconnected, usage_of
from ai_stack.serving.generation import ChoiceEvent, PreparedChat, RunResult
from ai_stack.surfaces.response_items import (
    ResponsesRequest,
    chat_response_format,
    chat_tool_choice,
    chat_tools,
    items_to_messages,
    new_id,
    normalize_input,
)
from ai_stack.surfaces.response_store import ResponseStore, StoredResponse

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 10.0  # how long a cancel call waits for the generation to stop before it answers


class ResponseRun:
    """One response as it is generated: its output items, its status, and the stream events that build it."""

    def __init__(self, body: ResponsesRequest, model_id: str, input_items: list[dict[str, Any]]) -> None:
        self.body = body
        self.model_id = model_id
        self.input_items = input_items
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.completed_at: int | None = None
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete_reason: str | None = None
        self.result = RunResult()
        self.cancel_requested = False
        self.done = asyncio.Event()
        self._sequence = 0
        self._open: dict[str, Any] | None = None  # the reasoning or message item being generated
        self._text: list[str] = []
        self._logprobs: list[dict[str, Any]] = []

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A stream event with the next sequence number."""
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def snapshot(self) -> dict[str, Any]:
        """The response object as it stands."""
        body = self.body
        fmt = body.text.format if body.text is not None else None
        text: dict[str, Any] = {
            "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"},
            "verbosity": body.text.verbosity if body.text is not None else None,
        }
        reasoning = (
            body.reasoning.model_dump() if body.reasoning is not None else {"effort": None, "summary": None}
        )
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "status": self.status,
            "background": False,
            "error": self.error,
            "incomplete_details": {"reason": self.incomplete_reason} if self.incomplete_reason else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None,
            "metadata": body.metadata or {},
            "model": self.model_id,
            "output": [*self.output, *([self._open_item()] if self._open is not None else [])],
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": reasoning,
            "store": body.store,
            "temperature": body.temperature,
            "text": text,
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_logprobs": body.top_logprobs,
            "top_p": body.top_p,
            "truncation": body.truncation or "disabled",
            "usage": self.usage,
            "user": body.user,
        }

    def start(self) -> list[dict[str, Any]]:
        """The opening events."""
        return [
            self.event("response.created", response=self.snapshot()),
            self.event("response.in_progress", response=self.snapshot()),
        ]

    def _open_item(self, status: str = "in_progress") -> dict[str, Any]:
        """The open item with what it holds so far."""
        assert self._open is not None
        text = "".join(self._text)
        if self._open["type"] == "reasoning":
            return {**self._open, "content": [{"type": "reasoning_text", "text": text}]}
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": list(self._logprobs)}
        return {**self._open, "status": status, "content": [part]}

    def _begin(self, kind: str) -> list[dict[str, Any]]:
        events = self._close() if self._open is not None and self._open["type"] != kind else []
        if self._open is not None:
            return events
        index = len(self.output)
        if kind == "reasoning":
            self._open = {"id": new_id("rs"), "type": "reasoning", "summary": []}
            added = {**self._open, "content": []}
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        else:
            self._open = {"id": new_id("msg"), "type": "message", "role": "assistant"}
            added = {**self._open, "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._text, self._logprobs = [], []
        ident = self._open["id"]
        return [
            *events,
            self.event("response.output_item.added", output_index=index, item=added),
            self.event(
                "response.content_part.added", item_id=ident, output_index=index, content_index=0, part=part
            ),
        ]

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        """Finish the open item (if any) and its events."""
        if self._open is None:
            return []
        item = self._open_item(status)
        index, ident = len(self.output), item["id"]
        self.output.append(item)
        self._open = None
        [part] = item["content"]
        where = {"item_id": ident, "output_index": index, "content_index": 0}
        if item["type"] == "reasoning":
            done = self.event("response.reasoning_text.done", **where, text=part["text"])
        else:
            done = self.event(
                "response.output_text.done", **where, text=part["text"], logprobs=part["logprobs"]
            )
        return [
            done,
            self.event("response.content_part.done", **where, part=part),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def take(self, event: ChoiceEvent) -> list[dict[str, Any]]:
        """Add one event of the chat pipeline; return the stream events it makes."""
        out: list[dict[str, Any]] = []
        delta = event.delta
        if delta.reasoning:
            out += self._begin("reasoning")
            self._text.append(delta.reasoning)
            out.append(self._delta("response.reasoning_text.delta", delta.reasoning))
        if delta.content:
            out += self._begin("message")
            logprobs = [entry.to_openai() for entry in event.logprobs] if self.body.logprobs else []
            self._text.append(delta.content)
            self._logprobs += logprobs
            out.append(self._delta("response.output_text.delta", delta.content, logprobs=logprobs))
        for call in delta.tool_calls:
            out += self._close()
            index = len(self.output)
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "status": "completed",
            }
            where = {"item_id": item["id"], "output_index": index}
            out += [
                self.event(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"},
                ),
                self.event("response.function_call_arguments.delta", **where, delta=call.arguments),
                self.event(
                    "response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments
                ),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
            self.output.append(item)
        if event.result is not None:
            self.result = event.result
        return out

    def _delta(self, kind: str, text: str, **extra: Any) -> dict[str, Any]:
        assert self._open is not None
        where = {"item_id": self._open["id"], "output_index": len(self.output), "content_index": 0}
        return self.event(kind, **where, delta=text, **extra)

    def finish(self, chat: PreparedChat, failure: Exception | None = None) -> list[dict[str, Any]]:
        """Close the open item, settle the status and usage; return the closing and terminal events."""
        out: list[dict[str, Any]] = []
        self.usage = _usage(chat, self.result)
        self.completed_at = int(time.time())
        if failure is not None:
            message = stream_error_body(failure, chat.model_id, "generating")["error"]["message"]
            self.status = "failed"
            self.error = {"code": "server_error", "message": message}
            out += self._close("incomplete")
            out.append(self.event("error", code="server_error", message=message, param=None))
            out.append(self.event("response.failed", response=self.snapshot()))
        elif self.cancel_requested:
            self.status = "cancelled"
            out += self._close("incomplete")
            out.append(self.event("response.incomplete", response=self.snapshot()))
        elif self.result.finish_reason == "length":
            self.status = "incomplete"
            self.incomplete_reason = "max_output_tokens"
            out += self._close("incomplete")
            out.append(self.event("response.incomplete", response=self.snapshot()))
        else:
            self.status = "completed"
            out += self._close()
            out.append(self.event("response.completed", response=self.snapshot()))
        return out


def _usage(chat: PreparedChat, result: RunResult) -> dict[str, Any]:
    usage = usage_of(chat, [result])
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.total_tokens,
    }


def _store(request: Request) -> ResponseStore:
    """The app's response store, opened on first use."""
    state = request.app.state
    store: ResponseStore | None = getattr(state, "response_store", None)
    if store is None:
        config: Config = state.config
        server = config.server
        store = ResponseStore(
            server.home / "responses.sqlite3",
            server.responses_retention_days,
            server.responses_max_stored,
            server.responses_max_bytes,
        )
        state.response_store = store
    return store


def _runs(request: Request) -> dict[str, ResponseRun]:
    """Responses being generated now, by id (each leaves when it ends: bounded by the requests in flight)."""
    runs: dict[str, ResponseRun] | None = getattr(request.app.state, "response_runs", None)
    if runs is None:
        runs = request.app.state.response_runs = {}
    return runs


def _validation_error(exc: ValidationError) -> InvalidRequest:
    error = exc.errors()[0]
    param = ".".join(str(part) for part in error["loc"]) or None
    message = str(error["msg"]).removeprefix("Value error, ")
    if param is None and "tool_choice" in message:
        param = "tool_choice"
    elif param is not None and param.startswith("messages"):
        param = "input"
    elif param == "max_completion_tokens":
        param = "max_output_tokens"
    return InvalidRequest(f"Invalid value for '{param}': {message}" if param else message, param=param)


def _chat_request(body: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat completions request that generates this response."""
    tools = chat_tools(body.tools)
    choice, tools = chat_tool_choice(body.tool_choice, tools)
    effort = body.reasoning.effort if body.reasoning is not None else None
    data: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "user": body.user,
        "tools": tools,
        "tool_choice": choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": chat_response_format(body.text),
        "reasoning_effort": "high" if effort == "xhigh" else effort,
        "logprobs": body.logprobs,
        "top_logprobs": body.top_logprobs if body.logprobs else None,
        "seed": body.seed,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
    }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def _prepare(service: ChatService, chat_request: ChatCompletionRequest) -> PreparedChat:
    """service.prepare, with errors naming this API's parameters."""
    try:
        return await service.prepare(chat_request)
    except APIError as exc:
        if exc.param is not None and exc.param.startswith("messages"):
            exc.param = "input"
        elif exc.param in ("max_tokens", "max_completion_tokens"):
            exc.param = "max_output_tokens"
        elif exc.param is not None and exc.param.startswith("response_format"):
            exc.param = "text.format"
        raise


async def _save(store: ResponseStore, run: ResponseRun) -> None:
    """Keep a finished response when it asked to be stored; a store failure is logged, not the client's."""
    if not run.body.store:
        return
    try:
        await store.save(run.snapshot(), run.input_items)
    except Exception:
        log.exception("could not store response %s", run.id)


async def _stored(store: ResponseStore, ident: str) -> StoredResponse:
    found = await store.get(ident) if len(ident) <= 256 else None
    if found is None:
        raise NotFound(f"Response with id '{ident[:256]}' not found.", param="response_id")
    return found


async def create_response(request: Request) -> Response:
    """POST /v1/responses, full or streamed."""
    body = await parse_body(request, ResponsesRequest)
    body.refuse_unsupported()
    store = _store(request)
    context: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        ident = body.previous_response_id
        previous = await store.get(ident) if len(ident) <= 256 else None
        if previous is None:
            raise NotFound(
                f"Previous response with id '{ident[:256]}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        context = [*previous.input_items, *previous.response["output"]]
    items = normalize_input(body.input)
    if not items and not context:
        raise InvalidRequest("Missing required parameter: 'input'", param="input")
    context += items
    service: ChatService = request.app.state.chat
    chat = await _prepare(service, _chat_request(body, items_to_messages(body.instructions, context)))
    run = ResponseRun(body, chat.model_id, context)
    runs = _runs(request)
    if body.stream:
        return StreamingResponse(
            _stream(service, chat, run, store, runs),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    runs[run.id] = run
    try:
        await _collect(service, chat, run, disconnect_waiter(request))
        run.finish(chat)
    except ClientDisconnected:
        return Response(status_code=499)
    except Exception as exc:
        run.finish(chat, exc)
        await _save(store, run)
        raise
    finally:
        runs.pop(run.id, None)
        run.done.set()
    await _save(store, run)
    return JSONResponse(run.snapshot())


async def _collect(
    service: ChatService, chat: PreparedChat, run: ResponseRun, wait_disconnect: Callable[[], Awaitable[None]]
) -> None:
    """Generate the whole response into run; a client that disconnects cancels the generation."""

    async def consume() -> None:
        events = service.events(chat)
        try:
            async for event in events:
                run.take(event)
                if run.cancel_requested:
                    break
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    await unless_disconnected(consume(), wait_disconnect)


def _sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


async def _stream(
    service: ChatService,
    chat: PreparedChat,
    run: ResponseRun,
    store: ResponseStore,
    runs: dict[str, ResponseRun],
) -> AsyncIterator[str]:
    """The typed server-sent events of one response, from response.created to its terminal event."""
    runs[run.id] = run  # here, not before: a stream that never starts never reaches the cleanup below
    events = service.events(chat)
    try:
        for event in run.start():
            yield _sse(event)
        failure: Exception | None = None
        try:
            async for choice_event in events:
                for event in run.take(choice_event):
                    yield _sse(event)
                if run.cancel_requested:
                    break
        except Exception as exc:
            failure = exc
        await events.aclose()  # type: ignore[attr-defined]
        closing = run.finish(chat, failure)
        await _save(store, run)  # before the terminal event: a client may continue from it at once
        for event in closing:
            yield _sse(event)
    finally:
        runs.pop(run.id, None)
        run.done.set()
        await events.aclose()  # type: ignore[attr-defined]


async def get_response(request: Request) -> Response:
    """GET /v1/responses/{id}: a response being generated or a stored one."""
    ident = request.path_params["id"]
    if request.query_params.get("stream", "false").lower() == "true":
        raise InvalidRequest(
            "stream=true replays background responses, which this server does not run", param="stream"
        )
    run = _runs(request).get(ident)
    if run is not None:
        return JSONResponse(run.snapshot())
    return JSONResponse((await _stored(_store(request), ident)).response)


async def delete_response(request: Request) -> Response:
    """DELETE /v1/responses/{id}."""
    ident = request.path_params["id"]
    if ident in _runs(request):
        raise InvalidRequest(
            f"Response '{ident}' is still being generated; cancel it first", param="response_id"
        )
    if len(ident) > 256 or not await _store(request).delete(ident):
        raise NotFound(f"Response with id '{ident[:256]}' not found.", param="response_id")
    return JSONResponse({"id": ident, "object": "response.deleted", "deleted": True})


async def cancel_response(request: Request) -> Response:
    """POST /v1/responses/{id}/cancel: stop a response being generated; its partial output is kept."""
    ident = request.path_params["id"]
    run = _runs(request).get(ident)
    if run is not None:
        run.cancel_requested = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.done.wait(), CANCEL_WAIT_S)
        return JSONResponse(run.snapshot())
    stored = (await _stored(_store(request), ident)).response
    if stored.get("status") == "cancelled":
        return JSONResponse(stored)  # cancelling again answers the cancelled response, as OpenAI does
    raise InvalidRequest(
        f"Response '{ident}' is already {stored.get('status')}; only one being generated can be cancelled",
        param="response_id",
    )


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only ("²" is a digit that int() refuses) and few of them (int() refuses 4300+).
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}", param=name)
    return int(raw)


async def list_input_items(request: Request) -> Response:
    """GET /v1/responses/{id}/input_items: the items a response was generated from (earlier turns too)."""
    ident = request.path_params["id"]
    limit = _int_param(request, "limit", 20, 1, 100)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    run = _runs(request).get(ident)
    items = run.input_items if run is not None else (await _stored(_store(request), ident)).input_items
    items = list(reversed(items)) if order == "desc" else list(items)
    for name in ("after", "before"):
        mark = request.query_params.get(name)
        if mark is None:
            continue
        ids = [item.get("id") for item in items]
        if mark not in ids:
            raise InvalidRequest(f"{name} names no input item of this response", param=name)
        at = ids.index(mark)
        items = items[at + 1 :] if name == "after" else items[:at]
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def routes() -> list[BaseRoute]:
    """This API's routes (mounted by the app)."""
    return [
        Route("/responses", create_response, methods=["POST"]),
        Route("/responses/{id}", get_response, methods=["GET"]),
        Route("/responses/{id}", delete_response, methods=["DELETE"]),
        Route("/responses/{id}/input_items", list_input_items, methods=["GET"]),
        Route("/responses/{id}/cancel", cancel_response, methods=["POST"]),
    ]
