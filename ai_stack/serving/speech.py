"""Text to speech: voice resolution, synthesis + encoding in a daemon thread, audio or SSE out."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from ai_stack.audio import FORMATS, AudioEncoder
from ai_stack.engines.base import SpeechEngine
from ai_stack.engines.catalog import SpeechOptions
from ai_stack.engines.voices import parse_voice_blend
from ai_stack.errors import InvalidRequest, stream_error_body
from ai_stack.protocol import SpeechRequest
from ai_stack.registry import ModelEntry, ModelRegistry
from ai_stack.threads import ThreadStream

log = logging.getLogger(__name__)

# OpenAI's built-in voice names; each maps to an engine voice (options.voice_map, else the default voice).
OPENAI_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "cedar",
    "coral",
    "echo",
    "fable",
    "marin",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
# usage.output_tokens counts audio in 20 ms frames (OpenAI bills audio in tokens; this is our equivalent).
AUDIO_TOKENS_PER_SECOND = 50
_WORD = re.compile(r"\w+|[^\w\s]")


def input_tokens(text: str) -> int:
    """A tokenizer-free count of the input: words and punctuation marks."""
    return len(_WORD.findall(text))


def speech_options(entry: ModelEntry) -> SpeechOptions:
    """A speech model's options (voice_map, default_voice), read once with the config."""
    assert isinstance(entry.options, SpeechOptions)
    return entry.options


def resolve_voice(entry: ModelEntry, engine: SpeechEngine, requested: str) -> str:
    """The engine voice for a requested name: an engine voice, a configured or OpenAI name, or a blend."""
    valid = [v.id for v in engine.voices()]
    if requested in valid:
        return requested
    options = speech_options(entry)
    mapped = options.voice_map.get(requested)
    if mapped is None and requested.lower() in OPENAI_VOICES:
        mapped = options.default_voice or (valid[0] if valid else None)
    if mapped is not None:
        return mapped
    if engine.blends and ("+" in requested or "(" in requested):
        try:
            names = [name for name, _ in parse_voice_blend(requested)]
        except ValueError as exc:
            message = f"Invalid voice blend: {exc}. Valid voices: {', '.join(valid)}"
            raise InvalidRequest(message, param="voice", code="invalid_value") from None
        missing = [name for name in names if name not in valid]
        if not missing:
            return requested
        requested = missing[0]
    extra = [*options.voice_map, *OPENAI_VOICES]
    raise InvalidRequest(
        f"Unknown voice '{requested}' for model '{entry.spec.id}'. Valid voices: {', '.join(valid)}"
        f" (OpenAI voice names are accepted too: {', '.join(dict.fromkeys(extra))})",
        param="voice",
        code="invalid_value",
    )


@dataclass
class SpeechResult:
    """How a synthesis went: audio seconds produced."""

    samples: int = 0
    sample_rate: int = 1

    @property
    def output_tokens(self) -> int:
        """Audio length in 20 ms frames."""
        return math.ceil(self.samples / self.sample_rate * AUDIO_TOKENS_PER_SECOND)


@dataclass
class PreparedSpeech:
    """A validated speech request bound to its engine and voice."""

    model_id: str
    engine: SpeechEngine
    text: str
    voice: str
    speed: float
    response_format: str
    stream_format: str
    cancel: threading.Event = field(default_factory=threading.Event)
    result: SpeechResult = field(default_factory=SpeechResult)

    @property
    def media_type(self) -> str:
        """The response's Content-Type."""
        return "text/event-stream" if self.stream_format == "sse" else FORMATS[self.response_format]


async def encoded_audio(speech: PreparedSpeech) -> AsyncGenerator[bytes, None]:
    """Synthesize and encode in a daemon thread, yielding one continuous file; closing it cancels."""
    cancel, result = speech.cancel, speech.result
    result.sample_rate = speech.engine.sample_rate

    def work(put: Callable[[bytes], None]) -> None:
        encoder = AudioEncoder(speech.response_format, speech.engine.sample_rate)
        try:
            sentences = speech.engine.synthesize(speech.text, speech.voice, speech.speed, cancel)
            with contextlib.closing(sentences):  # type: ignore[type-var]
                for audio in sentences:
                    if cancel.is_set():
                        break
                    result.samples += int(audio.size)
                    data = encoder.encode(audio)
                    if data:
                        put(data)
            if cancel.is_set():
                encoder.close()
                return
            tail = encoder.finish()
            if tail:
                put(tail)
        except BaseException:
            with contextlib.suppress(Exception):
                encoder.close()
            raise

    chunks: ThreadStream[bytes, None] = ThreadStream(work, name=f"speech-{speech.model_id}")
    try:
        async for data in chunks:
            yield data
    finally:
        cancel.set()


class SpeechService:
    """Serves /v1/audio/speech over the registry's speech models."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def prepare(self, request: SpeechRequest) -> PreparedSpeech:
        """Find the model and resolve the voice; problems here are error responses, not broken streams."""
        entry, engine = self.registry.speech_engine(request.model)
        voice = resolve_voice(entry, engine, request.voice_id)
        return PreparedSpeech(
            model_id=entry.spec.id,
            engine=engine,
            text=request.input,
            voice=voice,
            speed=request.speed,
            response_format=request.response_format,
            stream_format=request.stream_format,
        )

    async def start(self, speech: PreparedSpeech) -> AsyncIterator[bytes]:
        """The response body; waits for the first audio so that early failures are still error responses."""
        chunks = encoded_audio(speech)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        except ValueError as exc:  # the engine refused the request (voice, text)
            await chunks.aclose()
            raise InvalidRequest(str(exc)) from None
        except BaseException:
            await chunks.aclose()
            raise
        if speech.stream_format == "sse":
            return self._sse(speech, first, chunks)
        return self._audio(speech, first, chunks)

    async def _audio(
        self, speech: PreparedSpeech, first: bytes, chunks: AsyncGenerator[bytes, None]
    ) -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for data in chunks:
                yield data
        except Exception:
            log.exception("speech synthesis failed for %s; the audio stream ends early", speech.model_id)
        finally:
            speech.cancel.set()
            await chunks.aclose()

    async def _sse(
        self, speech: PreparedSpeech, first: bytes, chunks: AsyncGenerator[bytes, None]
    ) -> AsyncIterator[bytes]:
        def delta(data: bytes) -> bytes:
            body = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
            return f"data: {json.dumps(body)}\n\n".encode()

        try:
            if first:
                yield delta(first)
            async for data in chunks:
                yield delta(data)
            in_tokens, out_tokens = input_tokens(speech.text), speech.result.output_tokens
            total = in_tokens + out_tokens
            usage = {"input_tokens": in_tokens, "output_tokens": out_tokens, "total_tokens": total}
            yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()
        except Exception as exc:
            yield f"data: {json.dumps(stream_error_body(exc, speech.model_id, 'speaking'))}\n\n".encode()
        finally:
            speech.cancel.set()
            await chunks.aclose()
