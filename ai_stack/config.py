"""Typed configuration: a TOML file, overridden by AI_STACK_* environment variables and CLI flags."""

from __future__ import annotations

import contextlib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ai_stack.engines.catalog import ENGINES, ModelKind, engine_names, options_problem

PACKAGE_DIR = Path(__file__).resolve().parent


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?)?b?$", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"


def parse_bytes(value: int | float | str) -> int:
    """A size in bytes from a number or a string such as "12GiB", "512 MB", "1.5g" (k/m/g/t, 1000 or 1024)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("a size must be a number of bytes or a string such as '12GiB'")
    if isinstance(value, int | float):
        size = float(value)
    else:
        match = _SIZE.match(value.strip())
        if match is None:
            raise ValueError(f"{value[:40]!r} is not a size: use bytes or a size such as '12GiB'")
        prefix, base = (match.group(2) or "").lower(), 1024 if match.group(3) else 1000
        size = float(match.group(1)) * (base ** ("kmgt".index(prefix) + 1) if prefix else 1)
    if not math.isfinite(size) or size <= 0:
        raise ValueError("a size must be a finite number of bytes, more than 0")
    return int(size)


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number or a Go-style duration ("5m", "1h30m", "90s"); negative means forever."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("keep_alive must be seconds or a duration such as '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
        if math.isnan(seconds):
            raise ValueError("keep_alive must be a number of seconds, not NaN")
        return seconds
    text = value.strip().lower()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    with contextlib.suppress(ValueError):
        if body.replace(".", "", 1).isdigit():
            return sign * float(body)
    parts = _DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"{value[:40]!r} is not a duration: use seconds or a duration such as '5m' or '1h'")
    return sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def device_key(device: str) -> str:
    """The memory-budget key of a device: `cuda` is `cuda:0`."""
    return "cuda:0" if device == "cuda" else device


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the file, the key and the problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class ModelSpec(BaseModel):
    """One model the server offers."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-/]*$")
    aliases: list[str] = Field(default_factory=list)
    kind: ModelKind = "chat"
    engine: str = "transformers"
    source: str = Field(min_length=1)
    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # auto: NF4 on CPUs where bitsandbytes fuses 4-bit GEMMs, else none (ai_stack/engines/torch_device.py).
    quantization: Literal["none", "auto", "nf4", "fp4", "int8"] = "none"
    autoload: bool = True
    context_length: int | None = Field(default=None, ge=16)
    description: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    # Seconds (or "5m"-style) the model stays loaded once idle; negative or unset: until unloaded. A request's
    # own keep_alive (Ollama's API) overrides it.
    keep_alive: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _remote_source(cls, data: Any) -> Any:
        # A remote model has no weights here: it needs no source (one naming its upstreams is filled in).
        if isinstance(data, dict) and data.get("engine") == "remote" and "source" not in data:
            options = data.get("options")
            upstreams = options.get("upstreams") if isinstance(options, dict) else None
            return {**data, "source": "remote:" + ",".join(map(str, upstreams or []))}
        return data

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive_seconds(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    # Overload control for this model (see ServerConfig): None takes the server's setting.
    max_running: int | None = Field(default=None, ge=1)
    max_queue: int | None = Field(default=None, ge=0)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"unknown engine {value!r}; known engines: {', '.join(ENGINES)}")
        return value

    @model_validator(mode="after")
    def _engine_fits_kind(self) -> ModelSpec:
        kind = ENGINES[self.engine].kind
        if not ENGINES[self.engine].serves(self.kind):
            others = ", ".join(repr(name) for name in engine_names(self.kind))
            raise ValueError(
                f'engine {self.engine!r} serves {kind} models; set kind = "{kind}" or use {others}'
            )
        problem = options_problem(self.engine, self.options)
        if problem is not None:
            raise ValueError(f"model {self.id!r}: {problem}")
        return self

    @property
    def names(self) -> list[str]:
        """The id followed by the aliases."""
        return [self.id, *self.aliases]


class ServerConfig(BaseModel):
    """Server-wide settings."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_key: str | None = None
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    home: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir("ai-stack")))
    load_on_request: bool = True
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(default=64, ge=8, le=512)  # nesting levels of a request body
    allowed_hosts: list[str] = Field(default_factory=lambda: ["*"])  # Host names served (DNS rebinding)
    allow_request_chat_template: bool = False  # chat_template_kwargs.chat_template may replace the model's
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Slow or oversized clients (see ai_stack/http_server.py): seconds for a request line and headers to
    # arrive, seconds for a whole body (then 408), seconds an idle keep-alive connection stays open, and the
    # most bytes a request line plus headers may take.
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    keep_alive_timeout: float = Field(default=5.0, gt=0, le=3600)
    max_header_bytes: int = Field(default=64 * 1024, ge=4096, le=16 * 1024 * 1024)
    # Tool calls one answer may make when tool_choice forces calls with parallel_tool_calls on (small models
    # invent extra calls, or loop, when the grammar allows any number).
    max_parallel_tool_calls: int = Field(default=4, ge=1, le=128)
    # Stored /v1/responses (store: true): deleted after this many days, and the oldest beyond these bounds.
    responses_retention_days: float = Field(default=30.0, gt=0)
    responses_max_stored: int = Field(default=10_000, ge=1)
    responses_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    # Memory budget: bytes of models loaded at once per device ({"cpu": ..., "cuda:0": ...}; one number or
    # size string for every device), and the most models loaded at once. A load that does not fit unloads
    # the least recently used idle models first; requests then load their model on demand and wait for it.
    memory_budget: dict[str, int] | None = None
    max_loaded_models: int | None = Field(default=None, ge=1)
    # Run a native engine's (llama.cpp's) new configuration once in a child process before this one loads it.
    native_probe: bool = True

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget_per_device(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str) and "=" in value:  # from the environment: "cpu=8GiB,cuda:0=10GiB"
            value = dict(part.split("=", 1) for part in value.split(",") if part.strip())
        if not isinstance(value, dict):
            return {"*": parse_bytes(value)}
        budget: dict[str, int] = {}
        for device, size in value.items():
            device = str(device).strip()
            if device != "*" and (device == "auto" or not re.match(DEVICE_PATTERN, device)):
                raise ValueError(f"unknown device {device!r} (use cpu, mps, cuda or cuda:N)")
            budget[device_key(device)] = parse_bytes(size.strip() if isinstance(size, str) else size)
        return budget

    # Overload control, per model (a model's own max_running / max_queue override these): requests generating
    # at once (None: the engine's batch size, transformers max_batch or llama.cpp parallel, else 4) and
    # requests waiting for them (None: 4 x max_running); beyond both, an immediate 429 with Retry-After.
    max_running: int | None = Field(default=None, ge=1, le=4096)
    max_queue: int | None = Field(default=None, ge=0, le=65536)
    # Seconds a request may wait for a generation slot, and seconds it may take in all (0: no deadline).
    queue_timeout: float = Field(default=120.0, ge=0)
    request_timeout: float = Field(default=1800.0, ge=0)
    # The completion's length when a request sets no max_tokens (0: the rest of the context).
    default_max_tokens: int = Field(default=4096, ge=0)
    # Seconds uvicorn waits for connections after SIGTERM/SIGINT (streams are ended with an error first).
    shutdown_timeout: int = Field(default=1, ge=0, le=600)

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: str | None) -> str | None:
        return value or None


class Config(BaseModel):
    """The whole configuration: server settings and the models on offer."""

    model_config = ConfigDict(extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelSpec] = Field(default_factory=list)
    source: str = "<defaults>"
    base_dir: Path = Field(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: dict[str, str] = {}
        for index, spec in enumerate(self.models):
            for name in spec.names:
                if name in seen:
                    raise ValueError(
                        f"models[{index}]: name {name!r} is already used by model {seen[name]!r}"
                    )
                seen[name] = spec.id
        return self


ENV_KEYS: dict[str, str] = {
    "AI_STACK_HOST": "host",
    "AI_STACK_PORT": "port",
    "AI_STACK_API_KEY": "api_key",
    "AI_STACK_HOME": "home",
    "AI_STACK_CORS_ORIGINS": "cors_origins",
    "AI_STACK_ALLOWED_HOSTS": "allowed_hosts",
    "AI_STACK_LOAD_ON_REQUEST": "load_on_request",
    "AI_STACK_LOG_LEVEL": "log_level",
    "AI_STACK_MEMORY_BUDGET": "memory_budget",
    "AI_STACK_MAX_LOADED_MODELS": "max_loaded_models",
}


def default_config_path() -> Path:
    """The config used when none is named: AI_STACK_CONFIG, the checkout's configs/, or the packaged copy."""
    named = os.environ.get("AI_STACK_CONFIG")
    if named:
        return Path(named)
    checkout = PACKAGE_DIR.parent / "configs" / "default.toml"
    return checkout if checkout.exists() else PACKAGE_DIR / "configs" / "default.toml"


def _key_of(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _validation_problem(exc: ValidationError) -> tuple[str, str]:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return _key_of(tuple(error["loc"])), message


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for env, key in ENV_KEYS.items():
        if env in environ:
            value: Any = environ[env]
            if key in ("cors_origins", "allowed_hosts"):
                value = [origin.strip() for origin in value.split(",") if origin.strip()]
            overrides[key] = value
    return overrides


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read a TOML config, then apply environment and explicit (CLI) overrides; raise ConfigError."""
    path = path or default_config_path()
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    server = dict(raw.get("server", {})) if isinstance(raw.get("server", {}), dict) else raw.get("server")
    if isinstance(server, dict):
        env_values = _env_overrides(os.environ if environ is None else environ)
        server.update(env_values)
        server.update({k: v for k, v in (overrides or {}).items() if v is not None})
        raw["server"] = server
    try:
        config = Config.model_validate({**raw, "source": source, "base_dir": path.resolve().parent})
    except ValidationError as exc:
        key, problem = _validation_problem(exc)
        if key in ENV_KEYS.values() or key.startswith("server."):
            env = next((e for e, k in ENV_KEYS.items() if f"server.{k}" == key), None)
            if env and env in (os.environ if environ is None else environ):
                key = f"{key} (from {env})"
        raise ConfigError(source, key, problem) from None
    return config


def resolve_path(config: Config, value: str) -> Path:
    """A path from the config file, relative to the file's folder, with ~ expanded."""
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (config.base_dir / candidate)
