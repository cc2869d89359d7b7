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
from typing import cast

from ai_stack.audio import FORMATS, AudioEncoder
from ai_stack.engines.base import SpeechEngine, VoiceInfo
from ai_stack.engines.catalog import SpeechOptions, list_voices
from ai_stack.engines.voices import parse_voice_blend
from ai_stack.errors import InvalidRequest, stream_error_body
from ai_stack.protocol import SpeechRequest
from ai_stack.registry import ModelEntry, ModelRegistry, ModelState
from ai_stack.serving.admission import Admission, Hold
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
# OpenAI's speech model names: a request naming one (as an alias) with a voice of another configured speech
# model is served by that model, so a client that can only send `tts-1` still reaches every voice.
GENERIC_SPEECH_MODELS: frozenset[str] = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
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
    # Its place in the model's queue (overload control), taken when prepared; None without admission.
    hold: Hold | None = None

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

    def __init__(self, registry: ModelRegistry, admission: Admission | None = None) -> None:
        self.registry = registry
        # Overload control shared with chat: a speech model has running and waiting limits too.
        self.admission = admission
        # Voices of models not loaded, read from their files once; one entry per configured model at most.
        self._listed: dict[str, list[VoiceInfo] | None] = {}

    def voices_of(self, entry: ModelEntry) -> list[VoiceInfo] | None:
        """A speech model's voices: the loaded engine's, else read from its files; None when unknown."""
        if entry.state == ModelState.READY and entry.engine is not None:
            return cast(SpeechEngine, entry.engine).voices()
        if entry.spec.id not in self._listed:
            try:
                self._listed[entry.spec.id] = list_voices(entry.spec, self.registry.config)
            except Exception as exc:  # a missing file or package: the load will report it properly
                log.info("voices of %s are unknown until it loads: %s", entry.spec.id, exc)
                self._listed[entry.spec.id] = None
        return self._listed[entry.spec.id]

    def _has_voice(self, entry: ModelEntry, voice: str) -> bool | None:
        """Whether a speech model has a voice (or all voices of a blend); None when its voices are unknown."""
        voices = self.voices_of(entry)
        if voices is None:
            return None
        ids = {v.id for v in voices}
        if voice in ids:
            return True
        try:
            names = [name for name, _ in parse_voice_blend(voice)]
        except ValueError:
            return False
        blends = entry.engine is None or cast(SpeechEngine, entry.engine).blends
        return len(names) > 1 and blends and all(name in ids for name in names)

    def route(self, name: str, voice: str) -> str:
        """The model to speak with: the one named, or for a generic name (tts-1) the one with the voice."""
        if name not in GENERIC_SPEECH_MODELS:
            return name
        entry = self.registry.lookup(name)
        options = entry.options
        if entry.spec.kind != "speech" or not isinstance(options, SpeechOptions):
            return name
        if (
            voice in options.voice_map
            or voice.lower() in OPENAI_VOICES
            or self._has_voice(entry, voice) is not False
        ):
            return name
        for other in self.registry.entries.values():
            if other is not entry and other.spec.kind == "speech" and self._has_voice(other, voice):
                return other.spec.id
        return name

    def prepare(self, request: SpeechRequest) -> PreparedSpeech:
        """Find the model and resolve the voice; problems here are error responses, not broken streams."""
        entry, engine = self.registry.speech_engine(self.route(request.model, request.voice_id))
        voice = resolve_voice(entry, engine, request.voice_id)
        hold = None
        if self.admission is not None:  # 429 now, before any byte of the response
            hold = self.admission.admit(entry.spec.id, entry.spec, engine, 1)
        return PreparedSpeech(
            model_id=entry.spec.id,
            engine=engine,
            text=request.input,
            voice=voice,
            speed=request.speed,
            response_format=request.response_format,
            stream_format=request.stream_format,
            hold=hold,
        )

    async def start(self, speech: PreparedSpeech) -> AsyncIterator[bytes]:
        """The response body; waits for the first audio so that early failures are still error responses."""
        chunks = self._held(speech)
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

    async def _held(self, speech: PreparedSpeech) -> AsyncGenerator[bytes, None]:
        """The encoded audio once the model has a free slot (awaited on the loop), marking the model busy."""
        hold = speech.hold
        try:
            async with hold.ticket.running() if hold is not None else contextlib.nullcontext():
                with self.registry.in_use(speech.model_id):
                    chunks = encoded_audio(speech)
                    try:
                        async for data in chunks:
                            yield data
                    finally:
                        await chunks.aclose()
        finally:
            if hold is not None:
                hold.close()

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
