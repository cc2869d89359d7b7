"""One choice's generation: the engine in a worker thread, stop sequences, and the output parsers.

`run_choices` turns a prepared request into a stream of per-choice events (content, reasoning, tool calls,
log-probabilities, finish reason) that the chat service shapes into a response or chunks.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from ai_stack.engines.base import (
    ChatEngine,
    Generation,
    GenerationCancelled,
    Piece,
    Prompt,
    SamplingParams,
    TokenLogprob,
)
from ai_stack.serving.parsers import OutputParser, ParsedDelta
from ai_stack.threads import ThreadStream


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back text that may be a stop's beginning."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return what is safe to emit and whether a stop sequence was reached."""
        self.buffer += text
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out, False
        hits = [i for i in (self.buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:size]):
                    hold = size
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return out, False

    def flush(self) -> str:
        """Whatever is held back once generation has ended without a stop."""
        out, self.buffer = self.buffer, ""
        return out


@dataclass
class RunResult:
    """How a generation ended."""

    finish_reason: str = "stop"
    completion_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class Chunk:
    """Text safe to send, the tokens it took and their log-probabilities (when asked for)."""

    text: str
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


async def generate_text(
    engine: ChatEngine,
    prompt: Prompt,
    params: SamplingParams,
    stops: list[str],
    cancel: threading.Event,
    result: RunResult,
) -> AsyncIterator[Chunk]:
    """Run engine.generate in a daemon thread and yield text chunks; closing the iterator cancels the work."""
    pieces: ThreadStream[Piece, Generation] = ThreadStream(
        lambda put: engine.generate(prompt, params, cancel, put), name="generate"
    )
    matcher = StopMatcher(stops)
    stopped = False
    pending = Chunk("")
    try:
        try:
            async for piece in pieces:
                if stopped:
                    continue  # the engine is winding down after a stop sequence
                pending.tokens += piece.tokens
                pending.logprobs.extend(piece.logprobs)
                pending.text, stopped = matcher.feed(piece.text)
                if pending.text or stopped:
                    yield pending
                    pending = Chunk("")
                if stopped:
                    result.finish_reason = "stop"
                    cancel.set()
        except GenerationCancelled:
            result.finish_reason = "stop"
            return
        generation = pieces.result
        assert generation is not None
        if not stopped:
            pending.text = matcher.flush()
            if pending.text or pending.tokens:
                yield pending
            result.finish_reason = generation.finish_reason
        result.completion_tokens = generation.completion_tokens
    finally:
        cancel.set()


@dataclass
class PreparedChat:
    """A validated request, bound to its model and rendered prompt."""

    model_id: str
    engine: ChatEngine
    prompt: Prompt
    params: SamplingParams
    stops: list[str]
    n: int = 1
    logprobs: bool = False
    tool_format: str | None = None
    tool_names: set[str] | None = None
    parallel_tool_calls: bool = True
    reasoning: bool = False
    in_reasoning: bool = False

    def parser(self) -> OutputParser | None:
        """A fresh output parser for one choice, or None when the text is all content."""
        if self.tool_format is None and not self.reasoning:
            return None
        return OutputParser(
            self.tool_format, self.reasoning, self.in_reasoning, self.tool_names, self.parallel_tool_calls
        )


@dataclass
class ChoiceEvent:
    """Something one choice produced: parsed text, log-probabilities, or (last) its finish reason."""

    index: int
    delta: ParsedDelta
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    result: RunResult | None = None


def _fit_ids(delta: ParsedDelta, tool_format: str | None) -> ParsedDelta:
    """Mistral's templates accept only 9-character alphanumeric tool-call ids; give its calls such ids."""
    if tool_format == "mistral":
        for call in delta.tool_calls:
            call.id = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return delta


async def run_choice(chat: PreparedChat, index: int, cancel: threading.Event) -> AsyncIterator[ChoiceEvent]:
    """Generate one choice and parse it into content, reasoning and tool calls."""
    result = RunResult()
    params = chat.params
    if index and params.seed is not None:  # several choices with one seed must still differ
        seed = params.seed + index
        params = replace(params, seed=seed - 2**64 if seed >= 2**64 else seed)  # stay in torch's range
    parser = chat.parser()
    calls = 0
    seen: set[tuple[str, str]] = set()
    done = False  # enough tool calls: the rest of the generation is cut short and ignored
    texts = generate_text(chat.engine, chat.prompt, params, chat.stops, cancel, result)
    try:
        async for chunk in texts:
            if parser is None:
                yield ChoiceEvent(index, ParsedDelta(content=chunk.text), chunk.logprobs)
                continue
            if done:
                continue
            delta = _fit_ids(parser.feed(chunk.text), chat.tool_format)
            if parser.in_reasoning:
                result.reasoning_tokens += chunk.tokens
            fresh = []
            for call in delta.tool_calls:
                # A small model can repeat one call forever (a grammar that allows several calls lets it):
                # the first repeat ends the answer, as does the first call when parallel calls are off.
                if (call.name, call.arguments) in seen:
                    done = True
                    break
                seen.add((call.name, call.arguments))
                fresh.append(call)
            delta.tool_calls = fresh
            calls += len(fresh)
            if calls and not chat.parallel_tool_calls:
                done = True
            if done:
                cancel.set()
            yield ChoiceEvent(index, delta, chunk.logprobs)
    finally:
        await texts.aclose()  # type: ignore[attr-defined]
    if parser is not None and not done:
        tail = _fit_ids(parser.finish(), chat.tool_format)
        tail.tool_calls = [call for call in tail.tool_calls if (call.name, call.arguments) not in seen]
        calls += len(tail.tool_calls)
        yield ChoiceEvent(index, tail)
    finish = "tool_calls" if calls else result.finish_reason
    yield ChoiceEvent(index, ParsedDelta(), finish_reason=finish, result=result)


async def run_choices(chat: PreparedChat, cancels: list[threading.Event]) -> AsyncIterator[ChoiceEvent]:
    """All n choices of a request, their events interleaved as they come."""
    if chat.n == 1:
        async for event in run_choice(chat, 0, cancels[0]):
            yield event
        return
    queue: asyncio.Queue[ChoiceEvent | BaseException | None] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for event in run_choice(chat, index, cancels[index]):
                await queue.put(event)
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(index)) for index in range(chat.n)]
    try:
        running = chat.n
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for cancel in cancels:
            cancel.set()
        for task in tasks:
            task.cancel()
