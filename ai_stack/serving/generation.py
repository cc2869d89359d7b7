"""One choice's generation: the engine in a worker thread, stop sequences, and the output parsers.

`run_choices` turns a prepared request into a stream of per-choice events (content, reasoning, tool calls,
log-probabilities, finish reason) that the chat service shapes into a response or chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import string
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ai_stack.fleet.chat import RemoteChat
    from ai_stack.serving.admission import Hold


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back text that may be a stop's beginning.

    Linear in the text: an Aho-Corasick automaton over the stops keeps, across pieces, the longest tail of the
    text that is a stop's beginning (what is held back), so each piece costs O(len(piece) + longest stop),
    whatever was fed before. Outside any partial stop the scan jumps in C to the next character that begins
    a stop. `matched` is the stop sequence that ended the text, once one has.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        # Text held back: as long as the automaton state's depth, shorter than the longest stop.
        self.buffer = ""
        self.matched: str | None = None
        self._state = 0
        # The trie of the stops: goto[state] maps a character to the next state; depth[state] is its length.
        self._goto: list[dict[str, int]] = [{}]
        self._depth = [0]
        self._ends = [False]  # some stop ends here (directly or through the fail links)
        for stop in self.stops:
            state = 0
            for char in stop:
                nxt = self._goto[state].get(char)
                if nxt is None:
                    nxt = len(self._goto)
                    self._goto[state][char] = nxt
                    self._goto.append({})
                    self._depth.append(self._depth[state] + 1)
                    self._ends.append(False)
                state = nxt
            self._ends[state] = True
        self._fail = [0] * len(self._goto)
        queue = list(self._goto[0].values())
        for state in queue:  # breadth first: a state's fail link is shallower, so already final
            for char, nxt in self._goto[state].items():
                queue.append(nxt)
                back = self._fail[state]
                while back and char not in self._goto[back]:
                    back = self._fail[back]
                target = self._goto[back].get(char, 0)
                self._fail[nxt] = target if target != nxt else 0
                self._ends[nxt] = self._ends[nxt] or self._ends[self._fail[nxt]]
        firsts = "".join(re.escape(char) for char in self._goto[0])
        self._first = re.compile(f"[{firsts}]") if firsts else None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return what is safe to emit and whether a stop sequence was reached."""
        if not self.stops:
            out, self.buffer = self.buffer + text, ""
            return out, False
        window = self.buffer + text
        state, goto, fail, ends = self._state, self._goto, self._fail, self._ends
        i, n = 0, len(text)
        found = False
        while i < n:
            if state == 0:
                assert self._first is not None
                hit = self._first.search(text, i)
                if hit is None:
                    break
                i = hit.start()
            char = text[i]
            while state and char not in goto[state]:
                state = fail[state]
            state = goto[state].get(char, 0)
            i += 1
            if ends[state]:
                found = True
                break
        if found:
            # The first stop to end may not be the first to start ("abcd" begins before "bc" ends): cut at
            # the earliest start in the window, as a search of the whole window would. The window is the
            # held-back tail (shorter than the longest stop) plus this piece, so this stays O(piece + stop).
            start, self.matched = min((at, stop) for stop in self.stops if (at := window.find(stop)) >= 0)
            self.buffer, self._state = "", 0
            return window[:start], True
        self._state = state
        hold = self._depth[state]
        cut = len(window) - hold
        out, self.buffer = window[:cut], window[cut:]
        return out, False

    def flush(self) -> str:
        """Whatever is held back once generation has ended without a stop."""
        out, self.buffer, self._state = self.buffer, "", 0
        return out


@dataclass
class RunResult:
    """How a generation ended."""

    finish_reason: str = "stop"
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    stop_sequence: str | None = None  # the stop sequence that ended the text, when one did
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    prompt_tokens: int | None = None  # the prompt's tokens as a remote model's upstream counted them


@dataclass
class Chunk:
    """Text safe to send, the tokens it took and their log-probabilities (when asked for)."""

    text: str
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # The text each engine piece released, with its token count: the parsers read a batch piece by piece.
    parts: list[tuple[str, int]] = field(default_factory=list)


# The most text one generation may have waiting for the event loop; beyond it the engine thread waits.
_PENDING_CHARS = 1 << 20


class _Mailbox:
    """The engine thread's side of one generation: stop matching and batching, off the event loop.

    The thread feeds each piece to the StopMatcher and adds what is safe to send to one pending chunk. The
    event loop is woken once per batch, not once per token, and takes everything pending at once: a flood of
    tokens (an echo of megabytes) costs the loop a few wake-ups, and a streamed answer at model speed still
    goes out token by token. Pending text is bounded: past _PENDING_CHARS the thread waits until the loop
    takes it (a slow reader slows its own generation) or the request is cancelled.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stops: list[str], cancel: threading.Event) -> None:
        self.loop, self.cancel = loop, cancel
        self.matcher = StopMatcher(stops)
        self.wake = asyncio.Event()
        self.stopped = False  # a stop sequence was reached; later pieces are dropped
        self.generation: Generation | None = None
        self.error: BaseException | None = None
        self._lock = threading.Condition()
        self._pending = Chunk("")
        self._texts: list[str] = []
        self._chars = 0
        self._ready = False  # the pending chunk holds text, or the stop, worth sending
        self._scheduled = False  # a wake-up is on its way to the loop
        self._done = False

    def run(self, engine: ChatEngine, prompt: Prompt, params: SamplingParams) -> None:
        """The worker thread: generate, then report the end."""
        try:
            self.generation = engine.generate(prompt, params, self.cancel, self._emit)
        except BaseException as exc:  # delivered to the awaiting task, not lost in the thread
            self.error = exc
        with self._lock:
            self._done = True
            notify, self._scheduled = not self._scheduled, True
        if notify:
            self._notify()

    def _emit(self, piece: Piece) -> None:
        """The engine's callback, in the worker thread."""
        if self.stopped:
            return  # the engine is winding down after a stop sequence
        text, stopped = self.matcher.feed(piece.text)
        with self._lock:
            while self._chars >= _PENDING_CHARS and not self.cancel.is_set():
                self._lock.wait(0.1)
            self._pending.tokens += piece.tokens
            self._pending.logprobs.extend(piece.logprobs)
            self._pending.parts.append((text, piece.tokens))
            if text:
                self._texts.append(text)
                self._chars += len(text)
            self.stopped = stopped
            self._ready = self._ready or bool(text) or stopped
            notify = self._ready and not self._scheduled
            self._scheduled = self._scheduled or notify
        if notify:
            self._notify()
        if stopped:
            self.cancel.set()

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
            self.loop.call_soon_threadsafe(self.wake.set)

    def take(self, final: bool = False) -> tuple[Chunk | None, bool]:
        """On the loop: the pending chunk when it is worth sending (or, final, whatever is left), and done."""
        with self._lock:
            chunk = None
            if self._ready or final:
                pending = self._pending
                chunk = Chunk("".join(self._texts), pending.tokens, pending.logprobs, pending.parts)
                self._pending, self._texts, self._chars, self._ready = Chunk(""), [], 0, False
                self._lock.notify_all()
            self._scheduled = False
            return chunk, self._done


async def generate_text(
    engine: ChatEngine,
    prompt: Prompt,
    params: SamplingParams,
    stops: list[str],
    cancel: threading.Event,
    result: RunResult,
) -> AsyncIterator[Chunk]:
    """Run engine.generate in a daemon thread and yield text chunks; closing the iterator cancels the work."""
    mailbox = _Mailbox(asyncio.get_running_loop(), stops, cancel)
    threading.Thread(target=mailbox.run, args=(engine, prompt, params), name="generate", daemon=True).start()
    matcher = mailbox.matcher
    try:
        done = False
        while not done:
            await mailbox.wake.wait()
            mailbox.wake.clear()
            chunk, done = mailbox.take()
            if chunk is not None:
                if mailbox.stopped:
                    result.finish_reason = "stop"
                    result.stop_sequence = matcher.matched
                yield chunk
        if isinstance(mailbox.error, GenerationCancelled):
            result.finish_reason = "stop"
            return
        if mailbox.error is not None:
            raise mailbox.error
        generation = mailbox.generation
        assert generation is not None
        if not mailbox.stopped:
            tail, _ = mailbox.take(final=True)
            assert tail is not None
            held = matcher.flush()
            tail.text += held
            tail.parts.append((held, 0))
            if tail.text or tail.tokens:
                yield tail
            result.finish_reason = generation.finish_reason
        result.completion_tokens = generation.completion_tokens
        result.cached_tokens = generation.cached_tokens
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
    tool_schemas: dict[str, dict[str, Any] | None] | None = None  # each offered tool's parameters
    # Its place in the model's queue (ai_stack/serving/admission.py), taken when it was prepared.
    admission: Hold | None = field(default=None, repr=False, compare=False)
    # A remote model's request: an upstream runs it (fleet/chat.py); its prompt is not rendered here.
    remote: RemoteChat | None = field(default=None, repr=False, compare=False)

    def prompt_tokens(self, result: RunResult | None = None) -> int:
        """The prompt's tokens: the rendered prompt's, or those a remote model's upstream counted."""
        if result is not None and result.prompt_tokens is not None:
            return result.prompt_tokens
        return len(self.prompt.token_ids)

    def parser(self) -> OutputParser | None:
        """A fresh output parser for one choice, or None when the text is all content."""
        if self.tool_format is None and not self.reasoning:
            return None
        return OutputParser(
            self.tool_format,
            self.reasoning,
            self.in_reasoning,
            self.tool_names,
            self.parallel_tool_calls,
            tool_schemas=self.tool_schemas,
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
            delta = ParsedDelta()
            for text, tokens in chunk.parts or [(chunk.text, chunk.tokens)]:
                part = parser.feed(text)
                if parser.in_reasoning:
                    result.reasoning_tokens += tokens
                delta.content += part.content
                delta.reasoning += part.reasoning
                delta.tool_calls += part.tool_calls
            delta = _fit_ids(delta, chat.tool_format)
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
