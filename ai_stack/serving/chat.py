"""Chat completions: protocol in, engine calls in a worker thread, protocol out (full or streamed)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ai_stack.engines.base import ChatEngine, Prompt, SamplingParams, TokenLogprob
from ai_stack.errors import ContextLengthExceeded, InvalidRequest, stream_error_body
from ai_stack.fleet.chat import RemoteChat
from ai_stack.fleet.engine import RemoteEngine
from ai_stack.fleet.pool import UpstreamPool, conversation_keys
from ai_stack.metrics import Metrics
from ai_stack.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FunctionCall,
    NamedToolChoice,
    PromptTokensDetails,
    SamplingRequest,
    ToolCallOut,
    Usage,
)
from ai_stack.registry import ModelRegistry
from ai_stack.serving.admission import Admission, Hold, Relay, request_timeout, shutting_down
from ai_stack.serving.constraints import json_grammar, tool_grammar
from ai_stack.serving.generation import ChoiceEvent, PreparedChat, RunResult, run_choices
from ai_stack.serving.parsers import ToolCall, detect_reasoning, detect_tool_format, prompt_opens_reasoning

# apply_chat_template's own arguments: through chat_template_kwargs they would clash or change the render.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "chat_template",
        "conversation",
        "messages",
        "tools",
        "documents",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "return_dict",
        "return_tensors",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "padding",
        "truncation",
        "max_length",
    }
)


# No tokenizer packs more characters than this into a token on average over a long text: a text longer than
# context_length times this is refused before it is tokenized.
CHARS_PER_TOKEN_BOUND = 32
# The context of a remote model whose upstreams do not report theirs: no limit is checked here.
UNKNOWN_CONTEXT = 2**31 - 1
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; the generation was cancelled."""


async def unless_disconnected(
    work: Coroutine[Any, Any, T], wait_disconnect: Callable[[], Awaitable[None]]
) -> T:
    """Run work to its end, or cancel it and raise ClientDisconnected once the client has gone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise ClientDisconnected()
        return task.result()
    finally:
        watcher.cancel()


def _messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        try:
            text = message.text()
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=f"messages[{index}].content") from None
        item: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": text,
        }
        if message.name:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [
                _template_tool_call(call, f"messages[{index}].tool_calls[{number}]")
                for number, call in enumerate(message.tool_calls)
            ]
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        reasoning = message.reasoning_content or message.reasoning
        if reasoning:
            item["reasoning_content"] = reasoning
        messages.append(item)
    return messages


def _template_tool_call(call: dict[str, Any], param: str) -> dict[str, Any]:
    """An earlier tool call as chat templates expect it: a function name and arguments as an object.

    OpenAI sends arguments as a JSON string; templates iterate over them as a mapping: anything else is a 400.
    """
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest("An assistant tool call needs function.name", param=f"{param}.function.name")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError, ValueError):
            arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(
            "A tool call's arguments must be a JSON object (as a string)", param=f"{param}.function.arguments"
        )
    return {**call, "function": {**function, "arguments": arguments}}


def usage_of(chat: PreparedChat, results: list[RunResult]) -> Usage:
    """OpenAI usage of a finished request: prompt (and its cached part), completion and reasoning tokens."""
    prompt_tokens = chat.prompt_tokens(results[0] if results else None)
    completion = sum(r.completion_tokens for r in results)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=sum(r.reasoning_tokens for r in results)
        ),
        # The choices share one prompt: its cached part is counted once.
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=max((r.cached_tokens for r in results), default=0)
        ),
    )


def _tool_call(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


@dataclass
class ChoiceText:
    """One choice of a full response, as it accumulates."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "stop"
    result: RunResult = field(default_factory=RunResult)

    def add(self, event: ChoiceEvent) -> None:
        """Take one event of this choice."""
        self.content.append(event.delta.content)
        self.reasoning.append(event.delta.reasoning)
        self.tool_calls += event.delta.tool_calls
        self.logprobs += event.logprobs
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        if event.result is not None:
            self.result = event.result

    def choice(self, index: int, logprobs: bool) -> Choice:
        """The finished choice."""
        content = "".join(self.content)
        reasoning = "".join(self.reasoning) or None
        message = AssistantMessage(
            content=content if content or not self.tool_calls else None,
            tool_calls=[_tool_call(call) for call in self.tool_calls] or None,
            reasoning_content=reasoning,
            reasoning=reasoning,
        )
        entries = {"content": [e.to_openai() for e in self.logprobs], "refusal": None} if logprobs else None
        return Choice(index=index, message=message, finish_reason=self.finish_reason, logprobs=entries)


def _dump_completion(completion: ChatCompletion) -> dict[str, Any]:
    body = completion.model_dump()
    for choice in body["choices"]:  # optional message fields are left out when unset, as OpenAI does
        message = choice["message"]
        for key in ("tool_calls", "reasoning_content", "reasoning"):
            if message.get(key) is None:
                message.pop(key, None)
    return body


class ChatService:
    """Serves chat completions over the registry's chat models."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        # Overload control: every generating route is admitted in bind() and runs through events().
        self.admission = Admission(registry.config.server, metrics)
        self._relays: set[Relay[ChoiceEvent]] = set()  # generations running now (ended at shutdown)

    def _record(self, chat: PreparedChat, results: list[RunResult], started: float) -> None:
        if self.metrics is not None:
            for result in results:
                self.metrics.record_chat(
                    chat.model_id,
                    result.finish_reason,
                    chat.prompt_tokens(result),
                    result.completion_tokens,
                    time.monotonic() - started,
                    cached_tokens=result.cached_tokens,
                )

    def _check_template_kwargs(self, kwargs: dict[str, Any]) -> None:
        """Template variables only: no rendering switches, and no template of the client's own unless allowed.

        A template is a program: a client's could loop or allocate without bound in the render threads.
        """
        for key in kwargs:
            if key == "chat_template" and self.registry.config.server.allow_request_chat_template:
                continue
            if key in RESERVED_TEMPLATE_KWARGS:
                why = (
                    "a request may not replace the model's chat template (the server's "
                    "allow_request_chat_template is off)"
                    if key == "chat_template"
                    else "it is set by the server"
                )
                raise InvalidRequest(
                    f"chat_template_kwargs.{key} is not accepted: {why}", param=f"chat_template_kwargs.{key}"
                )

    def _check_size(self, engine: ChatEngine, chars: int, param: str) -> None:
        """Refuse text far beyond the context before tokenizing it (tokenizing megabytes takes seconds)."""
        limit = engine.context_length * CHARS_PER_TOKEN_BOUND
        if chars > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {engine.context_length} tokens; the request's "
                f"{chars} characters are far more than that (the limit before tokenizing is {limit}).",
                param=param,
            )

    async def prepare(self, request: ChatCompletionRequest, *, admit: bool = True) -> PreparedChat:
        """Find the model, render the prompt, set up constraints and parsers, and check the context fits.

        admit=False: the prompt is only inspected (token counts), never generated from: it takes no place.
        """
        await self.registry.wait_ready(request.model, "chat")  # a model that loads on demand (budget)
        entry, engine = self.registry.chat_engine(request.model)
        if admit:  # refuse an overloaded model's request before rendering its prompt; bind admits it
            self.admission.check(entry.spec.id, entry.spec, engine, request.n)
        if isinstance(engine, RemoteEngine):
            return self._prepare_remote(entry.spec.id, engine, engine.pool, request, admit)
        template = engine.chat_template
        template_kwargs = dict(request.chat_template_kwargs or {})
        self._check_template_kwargs(template_kwargs)
        if request.continue_final_message:
            template_kwargs["continue_final_message"] = True
        if request.reasoning_effort == "none":
            template_kwargs["enable_thinking"] = False
        choice = request.tool_choice or "auto"
        use_tools = bool(request.tools) and choice != "none"
        tool_format = detect_tool_format(template) if use_tools else None
        if use_tools:
            template_kwargs["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
        grammar: str | None = None
        if use_tools and choice != "auto":
            tools = request.tools or []
            if isinstance(choice, NamedToolChoice):
                tools = [tool for tool in tools if tool.function.name == choice.function.name]
            grammar = await asyncio.to_thread(
                tool_grammar,
                tools,
                tool_format,
                request.parallel_tool_calls and not isinstance(choice, NamedToolChoice),
                engine.token_id,
                max_calls=self.registry.config.server.max_parallel_tool_calls,
            )
        elif request.response_format is not None:
            grammar = await asyncio.to_thread(json_grammar, request.response_format)
        reasoning = detect_reasoning(template)
        if grammar is not None and reasoning:
            # The grammar governs the answer from its first token: a thinking model answers without thinking.
            template_kwargs["enable_thinking"] = False
        messages = _messages(request)
        chars = sum(len(m["content"]) for m in messages) + sum(
            len(json.dumps(tool)) for tool in template_kwargs.get("tools", [])
        )
        self._check_size(engine, chars, "messages")
        try:
            prompt = await asyncio.to_thread(engine.render, messages, template_kwargs)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="messages") from None
        return self.bind(
            entry.spec.id,
            engine,
            prompt,
            request,
            grammar=grammar,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            tool_format=tool_format,
            tool_names={tool.function.name for tool in request.tools or []} if use_tools else None,
            tool_schemas={tool.function.name: tool.function.parameters for tool in request.tools or []},
            parallel_tool_calls=request.parallel_tool_calls,
            # A prompt that already closes the think block (thinking off) leaves no reasoning to parse.
            reasoning=reasoning and not prompt.text.rstrip().endswith("</think>"),
            in_reasoning=reasoning and prompt_opens_reasoning(prompt.text),
            admit=admit,
        )

    async def prepare_raw(
        self,
        request: SamplingRequest,
        prompt: str | list[int],
        *,
        logprobs: int | None = None,
        stops: list[str] | None = None,
        param: str = "prompt",
        suffix: str | None = None,
    ) -> PreparedChat:
        """A prompt used as it is (text or token ids), no chat template: legacy completions, FIM, raw modes.

        The request's sampling fields, stops, n, response_format and limits apply as they do for chat.
        suffix: a remote model's fill-in-the-middle (the upstream writes the FIM prompt); a local model's
        callers render it into the prompt themselves.
        """
        await self.registry.wait_ready(request.model, "chat")  # a model that loads on demand (budget)
        entry, engine = self.registry.chat_engine(request.model)
        self.admission.check(entry.spec.id, entry.spec, engine, request.n)  # before tokenizing
        if isinstance(engine, RemoteEngine):
            if not prompt and not suffix:
                raise InvalidRequest("The prompt is empty", param=param)
            fields: dict[str, Any] = {"prompt": prompt}
            if suffix:
                fields["suffix"] = suffix
            if logprobs is not None:
                fields["logprobs"] = logprobs
            if request.response_format is not None:
                fields["response_format"] = request.response_format.model_dump(
                    by_alias=True, exclude_none=True
                )
            remote = RemoteChat(engine.pool, "completions", fields)
            return self.bind(
                entry.spec.id, engine, Prompt([], ""), request, logprobs=logprobs, stops=stops, remote=remote
            )
        grammar = None
        if request.response_format is not None:
            grammar = await asyncio.to_thread(json_grammar, request.response_format)
        if isinstance(prompt, str):
            self._check_size(engine, len(prompt), param)
            rendered = await asyncio.to_thread(engine.encode, prompt)
        else:
            if len(prompt) > engine.context_length:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {engine.context_length} tokens. However, the "
                    f"prompt has {len(prompt)} tokens.",
                    param=param,
                )
            try:
                text = await asyncio.to_thread(engine.decode, prompt)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param=param) from None
            rendered = Prompt(token_ids=list(prompt), text=text)
        if not rendered.token_ids:
            raise InvalidRequest("The prompt is empty", param=param)
        return self.bind(
            entry.spec.id, engine, rendered, request, grammar=grammar, logprobs=logprobs, stops=stops
        )

    def bind(
        self,
        model_id: str,
        engine: ChatEngine,
        prompt: Prompt,
        request: SamplingRequest,
        *,
        grammar: str | None = None,
        logprobs: int | None = None,
        stops: list[str] | None = None,
        admit: bool = True,
        **parsing: Any,
    ) -> PreparedChat:
        """Check prompt and completion fit the context; bind the sampling parameters (every route).

        A request without a completion limit gets the server's default_max_tokens. Last, the request takes
        its place in the model's queue: Overloaded (429) when there is none.
        """
        bias: dict[int, float] | None = None
        if request.logit_bias:
            vocab = engine.vocab_size
            bias = {int(key): value for key, value in request.logit_bias.items()}
            if vocab is not None and any(key >= vocab for key in bias):
                raise InvalidRequest(
                    f"logit_bias names a token id outside this model's vocabulary (0-{vocab - 1})",
                    param="logit_bias",
                    code="invalid_value",
                )
        # A remote model's prompt is counted upstream (0 here); its context is known when upstreams report it.
        context = engine.context_length or UNKNOWN_CONTEXT
        used = len(prompt.token_ids)
        limit = request.completion_limit()
        if used >= context or (limit is not None and used + limit > context):
            asked = (
                f"{used + limit} tokens ({used} in the messages, {limit} in the completion)"
                if limit
                else (f"{used} tokens in the messages")
            )
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, you requested {asked}. "
                "Please reduce the length of the messages or completion.",
                param="max_tokens" if limit and used < context else "messages",
            )
        params = SamplingParams(
            max_tokens=limit if limit is not None else self._default_limit(context - used),
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            seed=request.seed,
            logit_bias=bias,
            logprobs=logprobs,
            grammar=grammar,
        )
        chat = PreparedChat(
            model_id,
            engine,
            prompt,
            params,
            list(request.stop or []) if stops is None else stops,
            n=request.n,
            logprobs=logprobs is not None,
            admission=self._admit(model_id, engine, request.n) if admit else None,
            **parsing,
        )
        if chat.remote is not None and limit is None:  # no limit asked: the upstream's own default applies
            chat.remote.open_limit = params.max_tokens
        return chat

    def _prepare_remote(
        self,
        model_id: str,
        engine: ChatEngine,
        pool: UpstreamPool,
        request: ChatCompletionRequest,
        admit: bool,
    ) -> PreparedChat:
        """A remote model's chat request: checked here as a local one is, rendered and run by an upstream."""
        self._check_template_kwargs(dict(request.chat_template_kwargs or {}))
        _messages(request)  # the same 400s as a local model's (content parts, tool-call arguments)
        messages = [message.model_dump(exclude_none=True) for message in request.messages]
        if engine.context_length:
            self._check_size(engine, sum(len(json.dumps(m)) for m in messages), "messages")
        fields = request.model_dump(
            include={
                "tools",
                "tool_choice",
                "response_format",
                "reasoning_effort",
                "chat_template_kwargs",
            },
            exclude_none=True,
            by_alias=True,
        )
        if request.tools:
            fields["parallel_tool_calls"] = request.parallel_tool_calls
        if request.continue_final_message:  # vLLM's and ai-stack's extension
            fields["continue_final_message"] = True
            fields["add_generation_prompt"] = False  # vLLM wants both
        if request.logprobs:
            fields["logprobs"] = True
            if request.top_logprobs is not None:
                fields["top_logprobs"] = request.top_logprobs
        remote = RemoteChat(pool, "chat/completions", {"messages": messages, **fields})
        remote.keys = conversation_keys(messages)
        return self.bind(
            model_id,
            engine,
            Prompt([], ""),
            request,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            admit=admit,
            remote=remote,
        )

    def _default_limit(self, room: int) -> int:
        """The completion limit of a request that sets none: default_max_tokens, within the context."""
        cap = self.registry.config.server.default_max_tokens
        return min(room, cap) if cap else room

    def _admit(self, model_id: str, engine: ChatEngine, n: int) -> Hold:
        entry = self.registry.entries.get(model_id)
        return self.admission.admit(model_id, entry.spec if entry is not None else None, engine, n)

    def shutdown(self) -> None:
        """The server is stopping: refuse new requests, end waiting and running ones with an error."""
        self.admission.shutdown()
        for relay in list(self._relays):
            relay.abort("shutdown", shutting_down("; the answer was cut short"))

    async def events(self, chat: PreparedChat) -> AsyncIterator[ChoiceEvent]:
        """Every choice's events as they come; closing the iterator cancels; metrics at the end.

        The request first waits (on the loop, no thread) for a generation slot of its model; a deadline
        (queue_timeout, request_timeout) or a server shutdown ends it with an APIError, raised here.
        """
        hold = chat.admission or self._admit(chat.model_id, chat.engine, chat.n)
        ticket = hold.ticket
        cancels = [threading.Event() for _ in range(chat.n)]
        results: list[RunResult] = [RunResult() for _ in range(chat.n)]
        source = chat.remote.choices(chat) if chat.remote is not None else run_choices(chat, cancels)
        relay: Relay[ChoiceEvent] = Relay(source, cancels)
        ended = False  # the generation ended on its own or with an engine error (not an abort)
        generating = False
        try:
            async with ticket.running():
                generating = True
                started = time.monotonic()
                deadline, loop = ticket.request_deadline, ticket.queue.loop
                timer = None if deadline is None else loop.call_at(deadline, self._expire, relay, chat)
                self._relays.add(relay)
                events = relay.stream()
                # an idle keep-alive never unloads a model mid-answer
                with self.registry.in_use(chat.model_id):
                    try:
                        async for event in events:
                            if event.result is not None:
                                results[event.index] = event.result
                            yield event
                        ended = True
                        self._record(chat, results, started)
                    except Exception:
                        ended = relay.aborted is None
                        raise
                    finally:
                        if timer is not None:
                            timer.cancel()
                        self._relays.discard(relay)
                        for cancel in cancels:
                            cancel.set()
                        await events.aclose()  # type: ignore[attr-defined]
        finally:
            hold.close()
            if generating and not ended and self.metrics is not None:
                self.metrics.record_abort(chat.model_id, relay.aborted or "cancelled")

    def _expire(self, relay: Relay[ChoiceEvent], chat: PreparedChat) -> None:
        """request_timeout passed while the request generated: stop it with a clear error."""
        if relay.aborted is None and not relay.finished and self.metrics is not None:
            self.metrics.record_deadline(chat.model_id, "request")
        relay.abort("deadline", request_timeout(self.registry.config.server))

    async def collect(
        self, chat: PreparedChat, wait_disconnect: Callable[[], Awaitable[None]]
    ) -> list[ChoiceText]:
        """Generate whole answers (n choices); a client that disconnects cancels the generation."""
        texts = [ChoiceText() for _ in range(chat.n)]

        async def collect() -> None:
            events = self.events(chat)
            try:
                async for event in events:
                    texts[event.index].add(event)
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        await unless_disconnected(collect(), wait_disconnect)
        return texts

    async def complete(
        self, chat: PreparedChat, wait_disconnect: Callable[[], Awaitable[None]]
    ) -> dict[str, Any]:
        """Generate whole answers (n choices) as a chat.completion body."""
        texts = await self.collect(chat, wait_disconnect)
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=chat.model_id,
            choices=[text.choice(index, chat.logprobs) for index, text in enumerate(texts)],
            usage=usage_of(chat, [text.result for text in texts]),
        )
        return _dump_completion(completion)

    async def stream(self, chat: PreparedChat, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: role chunks, deltas, finish chunks, optional usage chunk, [DONE]."""
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        results: list[RunResult] = [RunResult() for _ in range(chat.n)]
        call_counts = [0] * chat.n

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(
                id=ident, created=created, model=chat.model_id, choices=choices, usage=usage
            ).model_dump()
            for choice in body["choices"]:  # a delta carries only the fields it sets, as OpenAI's do
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
                if choice["logprobs"] is None:
                    del choice["logprobs"]
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def delta_of(event: ChoiceEvent) -> Delta:
            calls = []
            for call in event.delta.tool_calls:
                calls.append({"index": call_counts[event.index], **_tool_call(call).model_dump()})
                call_counts[event.index] += 1
            return Delta(
                content=event.delta.content or None,
                reasoning_content=event.delta.reasoning or None,
                reasoning=event.delta.reasoning or None,
                tool_calls=calls or None,
            )

        events = self.events(chat)
        try:
            for index in range(chat.n):
                yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
            async for event in events:
                if event.result is not None:
                    results[event.index] = event.result
                delta = delta_of(event)
                logprobs = (
                    {"content": [e.to_openai() for e in event.logprobs], "refusal": None}
                    if chat.logprobs and event.logprobs
                    else None
                )
                if event.finish_reason is not None:
                    yield chunk(
                        [ChunkChoice(index=event.index, delta=delta, finish_reason=event.finish_reason)]
                    )
                elif delta.content or delta.reasoning or delta.tool_calls or logprobs:
                    yield chunk([ChunkChoice(index=event.index, delta=delta, logprobs=logprobs)])
            if include_usage:
                yield chunk([], usage_of(chat, results))
        except Exception as exc:
            yield f"data: {json.dumps(stream_error_body(exc, chat.model_id, 'generating'))}\n\n"
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        yield "data: [DONE]\n\n"
