"""The engine table: each engine's kind, options and loader, imported only when a model of it loads.

A new engine is one module with a `load(spec, config, options)` function plus one row in `ENGINES` (and an
options model here when it takes options). Config validation, loading and the CLI all read this table.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec
    from ai_stack.engines.base import ChatEngine, SpeechEngine, VoiceInfo

ModelKind = Literal["chat", "speech"]
log = logging.getLogger(__name__)


class EngineOptions(BaseModel):
    """Options of an engine that takes none; every engine's options refuse unknown keys and wrong types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TransformersOptions(EngineOptions):
    """transformers: continuous batching."""

    max_batch: int = Field(default=8, ge=1)  # requests decoded together; more wait for a free row
    prefill_chunk: int = Field(default=256, ge=1)  # prompt tokens fed between two decode steps
    prefix_cache: bool = True  # reuse the KV of earlier prompts' (and answers') prefixes
    prefix_cache_bytes: int = Field(default=1 << 30, ge=0)  # its budget on the model's device; 0 turns it off
    prefix_cache_block: int = Field(default=64, ge=1, le=4096)  # tokens per cached block
    # 4-bit (nf4/fp4) weights: also quantize the blocks' scales; None: on CUDA only (it slows CPU decode).
    double_quant: bool | None = None


class LlamaCppOptions(EngineOptions):
    """llama.cpp: sequences in one context, threads, prompt chunk, batch invariance, prefix cache."""

    parallel: int = Field(default=4, ge=1)
    n_threads: int | None = Field(default=None, ge=1)  # None: the physical cores
    n_batch: int = Field(default=512, ge=8)
    batch_invariant: bool = False
    # Repacked CPU weight layouts (llama.cpp's extra buffer types); false is the safe mode that the native
    # engine check (ai_stack/engines/probe.py) falls back to when they crash.
    repack: bool = True
    prefix_cache: bool = True  # keep a finished sequence's KV and reuse its longest common prefix


class AutoOptions(TransformersOptions, LlamaCppOptions):
    """auto: the options of both engines it may pick."""


class FakeOptions(EngineOptions):
    """fake chat: a scripted reply (else an echo), pacing, and simulated slow or failing loads."""

    reply: str | None = None
    token_delay: float = Field(default=0.0, ge=0)
    context_length: int = Field(default=4096, ge=1)
    chat_template: str | None = None  # only so that tool-call and reasoning formats can be detected
    load_delay: float = Field(default=0.0, ge=0)
    fail_load: str | None = None


class RemoteOptions(EngineOptions):
    """remote: OpenAI-compatible upstream servers (replicas) that serve this model; see ai_stack/fleet/."""

    upstreams: list[str] = Field(min_length=1, max_length=64)  # base URLs ending in /v1
    model: str | None = Field(default=None, min_length=1)  # the id on the upstreams; None: the entry's id
    api_key_env: str | None = Field(default=None, min_length=1)  # environment variable holding their key
    api_key: str | None = None  # the key itself (less safe: it sits in the config file)
    max_concurrency: int = Field(default=8, ge=1, le=4096)  # requests in flight per upstream
    connect_timeout: float = Field(default=5.0, gt=0, le=600)
    read_timeout: float = Field(default=600.0, gt=0, le=86400)  # seconds between two bytes of an answer
    health_interval: float = Field(default=5.0, gt=0, le=3600)  # seconds between health checks
    affinity_entries: int = Field(default=10_000, ge=0, le=1_000_000)  # conversations remembered (LRU)

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        cleaned = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                raise ValueError(f"{url!r} is not an upstream URL: use http(s)://HOST:PORT/v1")
            try:
                parts.port  # noqa: B018 - raises on a port out of range
            except ValueError:
                raise ValueError(f"{url!r} has an invalid port") from None
            cleaned.append(url.rstrip("/"))
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("an upstream is listed twice")
        return cleaned

    @model_validator(mode="after")
    def _key_is_set(self) -> RemoteOptions:
        import os

        if self.api_key_env is not None and self.api_key is not None:
            raise ValueError("set api_key_env or api_key, not both")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is not set")
        return self


class SpeechOptions(EngineOptions):
    """Every speech engine: OpenAI voice names mapped to the engine's voices."""

    voice_map: dict[str, str] = Field(default_factory=dict)
    default_voice: str | None = None


class PiperOptions(SpeechOptions):
    """piper: the voice's JSON config, its name, and the noise scales (0 makes a voice deterministic)."""

    config: str | None = None
    voice_id: str | None = None
    noise_scale: float | None = Field(default=None, ge=0)
    noise_w: float | None = Field(default=None, ge=0)


class KokoroOnnxOptions(SpeechOptions):
    """kokoro-onnx: the voices file and the espeak language of the text."""

    voices: str | None = None
    lang: str = "en-us"


class KokoroOptions(SpeechOptions):
    """kokoro (PyTorch): config.json, the folder of .pt voices, the espeak language of the text."""

    config: str | None = None
    voices_dir: str | None = None
    lang: str = "en-us"


class FakeSpeechOptions(SpeechOptions):
    """fake speech: named voices speaking a tone per character, for API tests without a model."""

    voices: list[str] = Field(default_factory=lambda: ["fake-a", "fake-b"], min_length=1)
    sample_rate: int = Field(default=24000, ge=8000)
    load_delay: float = Field(default=0.0, ge=0)
    fail_load: str | None = None
    sentence_delay: float = Field(default=0.0, ge=0)  # seconds each sentence takes, to hold a stream open


@dataclass(frozen=True)
class EngineInfo:
    """One engine: the kind of model it serves, its options model and its loader ("module:function")."""

    kind: ModelKind
    loader: str
    options: type[EngineOptions] = EngineOptions
    prepared: bool = False  # its weights come from sources that `ai-stack prepare` assembles and converts
    # speech: "module:function(spec, config, options)" listing the voices from files alone, without loading
    voice_lister: str | None = None
    also: tuple[ModelKind, ...] = ()  # other kinds it serves (remote: chat or speech)

    def serves(self, kind: str) -> bool:
        """Whether a model of this kind may use the engine."""
        return kind == self.kind or kind in self.also


ENGINES: dict[str, EngineInfo] = {
    "transformers": EngineInfo("chat", "ai_stack.engines.transformers:load", TransformersOptions, True),
    "llamacpp": EngineInfo("chat", "ai_stack.engines.llamacpp:load", LlamaCppOptions),
    "auto": EngineInfo("chat", "ai_stack.engines.catalog:load_auto", AutoOptions, True),
    "fake": EngineInfo("chat", "ai_stack.engines.fake:load", FakeOptions),
    "piper": EngineInfo(
        "speech",
        "ai_stack.engines.piper:load",
        PiperOptions,
        voice_lister="ai_stack.engines.piper:list_voices",
    ),
    "kokoro-onnx": EngineInfo(
        "speech",
        "ai_stack.engines.kokoro_onnx:load",
        KokoroOnnxOptions,
        voice_lister="ai_stack.engines.kokoro_onnx:list_voices",
    ),
    "kokoro": EngineInfo(
        "speech",
        "ai_stack.engines.kokoro_torch:load",
        KokoroOptions,
        voice_lister="ai_stack.engines.kokoro_torch:list_voices",
    ),
    "fake-speech": EngineInfo(
        "speech",
        "ai_stack.engines.fake_speech:load",
        FakeSpeechOptions,
        voice_lister="ai_stack.engines.fake_speech:list_voices",
    ),
    "remote": EngineInfo("chat", "ai_stack.fleet.engine:load", RemoteOptions, also=("speech",)),
}


def engine_names(kind: ModelKind) -> list[str]:
    """The engines that serve a kind of model."""
    return [name for name, info in ENGINES.items() if info.serves(kind)]


def options_problem(engine: str, options: dict[str, Any]) -> str | None:
    """Why `options` are not valid for `engine` (naming the key), or None when they are."""
    try:
        ENGINES[engine].options.model_validate(options)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            known = ", ".join(ENGINES[engine].options.model_fields) or "none"
            return f"unknown option {key!r} for engine {engine!r} (its options: {known})"
        message = str(error["msg"]).removeprefix("Value error, ")
        return f"option {key!r}: {message}" if key else f"options: {message}"
    return None


def llamacpp_available() -> bool:
    """Whether llama-cpp-python is installed (`make install-llamacpp`)."""
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_engine(spec: ModelSpec, config: Config) -> str:
    """The engine that serves a spec: `auto` is llamacpp for GGUF sources when llama_cpp is installed."""
    if spec.engine != "auto":
        return spec.engine
    from ai_stack.sources import parse_source

    source = parse_source(spec.source, config.base_dir)
    return "llamacpp" if source.kind in ("embedded", "gguf") and llamacpp_available() else "transformers"


def _loader(engine: str) -> Any:
    module, _, function = ENGINES[engine].loader.partition(":")
    return getattr(importlib.import_module(module), function)


def load_engine(spec: ModelSpec, config: Config) -> ChatEngine | SpeechEngine:
    """Load the engine a model spec names (blocking; call from a worker thread).

    A native engine's configuration is first checked in a child process (ai_stack/engines/probe.py).
    """
    info = ENGINES[spec.engine]
    options = info.options.model_validate(spec.options)
    if spec.engine == "llamacpp" and llamacpp_available():
        from ai_stack.engines.probe import checked_llamacpp_options

        options = checked_llamacpp_options(spec, config, cast(LlamaCppOptions, options))
    engine: ChatEngine | SpeechEngine = _loader(spec.engine)(spec, config, options)
    return engine


def list_voices(spec: ModelSpec, config: Config) -> list[VoiceInfo]:
    """A speech model's voices read from its files and options, without loading it (blocking, cheap).

    Raises ValueError or OSError when they cannot be read (a missing file, an engine without a lister).
    """
    info = ENGINES[spec.engine]
    if info.voice_lister is None:
        raise ValueError(f"engine {spec.engine!r} cannot list its voices before it loads")
    module, _, function = info.voice_lister.partition(":")
    lister = getattr(importlib.import_module(module), function)
    voices: list[VoiceInfo] = lister(spec, config, info.options.model_validate(spec.options))
    return voices


def load_auto(spec: ModelSpec, config: Config, options: AutoOptions) -> ChatEngine:
    """`auto`: llama.cpp for a GGUF source when it is installed (and runs on this CPU), else transformers."""
    engine = resolve_engine(spec, config)
    info = ENGINES[engine]
    own = info.options.model_validate(options.model_dump(include=set(info.options.model_fields)))
    if engine == "llamacpp":
        from ai_stack.engines.probe import NativeEngineFault, checked_llamacpp_options

        try:
            own = checked_llamacpp_options(spec, config, cast(LlamaCppOptions, own))
        except NativeEngineFault as exc:
            log.error("model %s: %s; serving it with transformers instead", spec.id, exc)
            engine, info = "transformers", ENGINES["transformers"]
            own = info.options.model_validate(options.model_dump(include=set(info.options.model_fields)))
    loaded: ChatEngine = _loader(engine)(spec, config, own)
    return loaded
