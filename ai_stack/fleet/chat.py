"""A remote model inside the chat pipeline: a prepared request run on an upstream, its answer as ChoiceEvents.

The surfaces that translate into the chat pipeline (Responses, Messages, Ollama, llama.cpp's routes) consume
`ChatService.events`; for a remote model those events come from here instead of a local engine. The request
goes to the upstream's `/chat/completions` (or `/completions` for a raw prompt) streamed, with usage; its
chunks become the events a local engine yields: content, reasoning, whole tool calls, log-probabilities,
and per choice a finish reason with the usage the upstream counted. Nothing is tokenized or rendered here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from ai_stack.engines.base import TokenLogprob
from ai_stack.fleet.pool import Upstream, UpstreamPool
from ai_stack.fleet.upstream import UpstreamError, open_upstream, upstream_error
from ai_stack.serving.generation import ChoiceEvent, RunResult
from ai_stack.serving.parsers import ParsedDelta, ToolCall, new_tool_call_id

if TYPE_CHECKING:
    from ai_stack.serving.generation import PreparedChat

log = logging.getLogger(__name__)


@dataclass
class RemoteChat:
    """What a prepared request of a remote model sends upstream, besides its sampling parameters.

    `fields` holds the body's own part (messages, tools, response_format, ... or prompt and suffix); the
    PreparedChat's params and stops supply the sampling fields when it runs, so a surface that changes them
    after prepare (a Messages or Ollama limit) changes what is sent. `open_limit` is the max_tokens that bind
    set for a request with no limit: such a request sends none, and the upstream's own default applies.
    """

    pool: UpstreamPool
    path: str  # "chat/completions" or "completions"
    fields: dict[str, Any]
    open_limit: int | None = None
    keys: list[str] = field(default_factory=list)  # conversation affinity

    def body(self, chat: PreparedChat) -> dict[str, Any]:
        """The upstream request's JSON body."""
        params = chat.params
        sampling: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty,
            "presence_penalty": params.presence_penalty or None,
            "frequency_penalty": params.frequency_penalty or None,
            "seed": params.seed,
            "logit_bias": {str(k): v for k, v in params.logit_bias.items()} if params.logit_bias else None,
            "stop": chat.stops or None,
            "max_tokens": None if params.max_tokens == self.open_limit else params.max_tokens,
        }
        return {
            **self.fields,
            **{key: value for key, value in sampling.items() if value is not None},
            "model": self.pool.upstream_model,
            "n": chat.n,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def choices(self, chat: PreparedChat) -> AsyncIterator[ChoiceEvent]:
        """Run the request on an upstream; closing this iterator closes the upstream request."""
        pool = self.pool
        upstream, response = await open_upstream(pool, self.path, self.body(chat), self.keys)
        reader = ChunkReader(chat.n)
        finished = False
        try:
            if "text/event-stream" in response.headers.get("content-type", ""):
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    for event in reader.feed(_event(upstream, data)):
                        yield event
                else:
                    if any(choice.finish_reason is None for choice in reader.choices):
                        raise UpstreamError(
                            f"The upstream {upstream.url} ended its answer before it finished", status=502
                        )
            else:  # an upstream that answers whole even when asked to stream
                for event in reader.feed(_event(upstream, (await response.aread()).decode())):
                    yield event
            for event in reader.finish():
                yield event
            finished = True
        except httpx.HTTPError as exc:
            upstream.stats.error("broken_stream")
            log.warning("upstream %s of %s broke off an answer: %s", upstream.url, pool.model_id, exc)
            if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException):
                pool.mark_down(upstream, f"broke off an answer: {type(exc).__name__}")
            raise UpstreamError(
                f"The upstream {upstream.url} stopped mid-answer ({type(exc).__name__})", status=502
            ) from None
        finally:
            await response.aclose()
            pool.release(upstream)
            if finished:
                pool.remember(self.keys, upstream)


def _event(upstream: Upstream, data: str) -> dict[str, Any]:
    """One SSE event's JSON; an error event (or a broken one) raises the upstream's error."""
    try:
        event = json.loads(data)
    except ValueError:
        raise UpstreamError(f"The upstream {upstream.url} sent a broken event", status=502) from None
    if not isinstance(event, dict):
        raise UpstreamError(f"The upstream {upstream.url} sent an event that is not an object", status=502)
    if "error" in event:
        error = event["error"]
        status = error.get("code") if isinstance(error, dict) else None
        status = status if isinstance(status, int) and 400 <= status <= 599 else 502
        raise upstream_error(upstream, status, data.encode(), httpx.Headers())
    return event


def _logprobs(value: Any) -> list[TokenLogprob]:
    """Chat log-probabilities (`{"content": [...]}`) or legacy ones (`tokens`, `token_logprobs`, ...)."""
    if not isinstance(value, dict):
        return []
    entries: list[TokenLogprob] = []
    content = value.get("content")
    if isinstance(content, list):
        for item in content:
            if not isinstance(item, dict) or not isinstance(item.get("token"), str):
                continue
            top = [
                (str(t.get("token", "")), float(t.get("logprob") or 0.0), _bytes(t))
                for t in item.get("top_logprobs") or []
                if isinstance(t, dict)
            ]
            entries.append(TokenLogprob(item["token"], float(item.get("logprob") or 0.0), _bytes(item), top))
        return entries
    tokens, logprobs = value.get("tokens"), value.get("token_logprobs")
    tops = value.get("top_logprobs") or []
    if isinstance(tokens, list) and isinstance(logprobs, list):
        for index, (token, logprob) in enumerate(zip(tokens, logprobs, strict=False)):
            alternatives = tops[index] if index < len(tops) and isinstance(tops[index], dict) else {}
            top = [(str(t), float(lp), list(str(t).encode())) for t, lp in alternatives.items()]
            entries.append(TokenLogprob(str(token), float(logprob or 0.0), list(str(token).encode()), top))
    return entries


def _bytes(item: dict[str, Any]) -> list[int]:
    value = item.get("bytes")
    return list(value) if isinstance(value, list) else list(str(item.get("token", "")).encode())


@dataclass
class _Choice:
    """One choice's state across chunks: tool calls being assembled, and how it ended."""

    calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> id, name, arguments
    finish_reason: str | None = None
    stop_sequence: str | None = None
    pieces: int = 0  # chunks that carried text: the token count of an upstream that sends no usage


class ChunkReader:
    """Turns an upstream's chat (or legacy completion) chunks into the pipeline's ChoiceEvents.

    Content, reasoning and log-probabilities go on as they come; a tool call goes on whole, once the next
    one starts or its choice finishes (the pipeline's events carry whole calls). Finish events wait for the
    end of the stream, where the usage chunk comes: their results carry the upstream's counts (without one,
    a choice's completion tokens are its text chunks, and the prompt's are unknown: 0).
    """

    def __init__(self, n: int) -> None:
        self.choices = [_Choice() for _ in range(n)]
        self.usage: dict[str, Any] = {}

    def feed(self, event: dict[str, Any]) -> list[ChoiceEvent]:
        """The events of one chunk (or of a whole answer)."""
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        out: list[ChoiceEvent] = []
        for item in event.get("choices") or []:
            if not isinstance(item, dict):
                continue
            index = item.get("index", 0)
            if not isinstance(index, int) or not 0 <= index < len(self.choices):
                continue
            state = self.choices[index]
            delta = item.get("delta") or item.get("message") or {}
            parsed = ParsedDelta(
                content=str(delta.get("content") or item.get("text") or ""),
                # ai-stack sends both names with the same text; others send one of them
                reasoning=str(delta.get("reasoning_content") or delta.get("reasoning") or ""),
            )
            for number, call in enumerate(delta.get("tool_calls") or []):
                parsed.tool_calls += self._call(state, call, number)
            if item.get("finish_reason"):
                state.finish_reason = str(item["finish_reason"])
            if isinstance(item.get("stop_reason"), str):  # vLLM names the stop sequence that matched
                state.stop_sequence = item["stop_reason"]
            logprobs = _logprobs(item.get("logprobs"))
            state.pieces += bool(parsed.content or parsed.reasoning)
            if parsed.content or parsed.reasoning or parsed.tool_calls or logprobs:
                out.append(ChoiceEvent(index, parsed, logprobs))
        return out

    def _call(self, state: _Choice, call: Any, number: int) -> list[ToolCall]:
        """Add a tool-call delta; the calls complete by it (those before a new index)."""
        if not isinstance(call, dict):
            return []
        index = call.get("index", number)
        index = index if isinstance(index, int) else number
        done = [i for i in state.calls if i < index]
        whole = [self._whole(state.calls.pop(i)) for i in sorted(done)]
        entry = state.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        function = call.get("function") or {}
        if call.get("id"):
            entry["id"] = str(call["id"])
        if function.get("name"):
            entry["name"] += str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a whole answer from a server that sends an object
            arguments = json.dumps(arguments, ensure_ascii=False)
        if arguments:
            entry["arguments"] += str(arguments)
        return whole

    @staticmethod
    def _whole(entry: dict[str, str]) -> ToolCall:
        return ToolCall(entry["id"] or new_tool_call_id(), entry["name"], entry["arguments"] or "{}")

    def finish(self) -> list[ChoiceEvent]:
        """The last events: calls still open, then each choice's finish reason and result."""
        usage = self.usage
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens") or 0
        details = usage.get("completion_tokens_details") or {}
        reasoning = (details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0
        cached_details = usage.get("prompt_tokens_details") or {}
        cached = (cached_details.get("cached_tokens") or 0) if isinstance(cached_details, dict) else 0
        n = len(self.choices)
        counted = bool(usage.get("completion_tokens"))
        out: list[ChoiceEvent] = []
        for index, state in enumerate(self.choices):
            calls = [self._whole(state.calls[i]) for i in sorted(state.calls)]
            if calls:
                out.append(ChoiceEvent(index, ParsedDelta(tool_calls=calls)))
            # The usage counts all choices together: each gets its share (exact for one choice).
            result = RunResult(
                finish_reason=state.finish_reason or "stop",
                # No usage (llama-cpp-python's server sends none when streaming): one token per text chunk.
                completion_tokens=completion // n + (index < completion % n) if counted else state.pieces,
                reasoning_tokens=reasoning // n + (index < reasoning % n),
                stop_sequence=state.stop_sequence,
                cached_tokens=cached,
                prompt_tokens=prompt if isinstance(prompt, int) else None,
            )
            out.append(ChoiceEvent(index, ParsedDelta(), finish_reason=result.finish_reason, result=result))
        return out
