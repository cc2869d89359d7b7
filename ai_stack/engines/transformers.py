"""The transformers + torch chat engine: CUDA (optionally 4-bit NF4 / 8-bit via bitsandbytes), MPS, or CPU."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from ai_stack.engines.base import Generation, GenerationCancelled, Piece, Prompt, SamplingParams

log = logging.getLogger(__name__)


class EngineLoadError(Exception):
    """A model that cannot be loaded, with a message meant for the user."""


def cpu_supports_bf16() -> bool:
    """Whether bf16 is the better CPU dtype: native bf16 units, or AVX2+ where bf16 halves memory traffic."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability in ("AVX2", "AVX512", "AVX512_BF16", "AMX")


def pick_device(requested: str) -> str:
    """Resolve 'auto' to cuda, mps or cpu; refuse a device this machine lacks."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EngineLoadError(f"device {requested!r} was asked for, but no CUDA GPU is available here")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise EngineLoadError("device 'mps' was asked for, but Apple's MPS backend is not available here")
    return requested


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """Resolve 'auto' to bf16 on CUDA (fp16 on old GPUs) and capable CPUs, fp16 on MPS, else float32."""
    if requested != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def quantization_config(quantization: str, device: str, dtype: torch.dtype) -> Any:
    """A BitsAndBytesConfig for nf4/int8 on CUDA; a clear error anywhere else."""
    if quantization == "none":
        return None
    if not device.startswith("cuda"):
        raise EngineLoadError(
            f"quantization {quantization!r} uses bitsandbytes and needs an NVIDIA GPU with CUDA; "
            f'this machine would run the model on {device!r}. Set quantization = "none" to load it as is.'
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise EngineLoadError(
            f"quantization {quantization!r} needs bitsandbytes: pip install 'ai-stack[cuda]' ({exc})"
        ) from None
    if quantization == "nf4":
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]


class _CancelCriteria(StoppingCriteria):
    """Stops generate() as soon as the request's cancel event is set."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return torch.full(  # type: ignore[return-value]
            (input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device
        )


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the tokens generated so far."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        penalised = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        return penalised  # type: ignore[return-value]


class _PieceStreamer(BaseStreamer):
    """Receives token ids from generate() and emits text pieces, holding back incomplete characters."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], emit: Callable[[Piece], None]) -> None:
        self.tokenizer, self.eos_ids, self.emit = tokenizer, eos_ids, emit
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.pending_tokens = 0
        self.seen_prompt = False

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def put(self, value: torch.Tensor) -> None:
        """Take the next token (the first call carries the prompt, which is skipped)."""
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for token in value.reshape(-1).tolist():
            if token in self.eos_ids:
                continue
            self.ids.append(token)
            self.pending_tokens += 1
            prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
            full = self._decode(self.ids[self.prefix_offset :])
            if len(full) > len(prefix) and not full.endswith("\ufffd"):
                self.emit(Piece(full[len(prefix) :], self.pending_tokens))
                self.pending_tokens = 0
                self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def end(self) -> None:
        """Flush tokens that produced no text yet (so token counts stay right)."""
        if self.pending_tokens:
            full = self._decode(self.ids[self.prefix_offset :])
            prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
            self.emit(Piece(full[len(prefix) :], self.pending_tokens))
            self.pending_tokens = 0


class TransformersChatEngine:
    """A causal LM and its tokenizer, generating one request at a time."""

    def __init__(self, model: Any, tokenizer: Any, device: str, context_length: int) -> None:
        self.model, self.tokenizer, self.device, self.context_length = (
            model,
            tokenizer,
            device,
            context_length,
        )
        self._lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos_list if e is not None}
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(tokenizer.eos_token_id))

    def render(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> Prompt:
        """Apply the model's own chat template, then tokenize without adding special tokens twice."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template; it cannot serve chat completions")
        kwargs = dict(template_kwargs)
        tools = kwargs.pop("tools", None)
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs
            )
        except Exception as exc:  # jinja2 raises TemplateError (or its own exception) for refused messages
            raise ValueError(f"the model's chat template refused these messages: {exc}") from None
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Prompt(token_ids=list(ids), text=str(text))

    def _acquire(self, cancel: threading.Event) -> None:
        while not self._lock.acquire(timeout=0.05):
            if cancel.is_set():
                raise GenerationCancelled()

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
    ) -> Generation:
        """Run model.generate with a streamer; stops at EOS, max_tokens or cancel."""
        self._acquire(cancel)
        try:
            return self._generate_locked(prompt, params, cancel, emit)
        finally:
            self._lock.release()

    def _generate_locked(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
    ) -> Generation:
        config = self.model.generation_config
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens, "min_new_tokens": 0}
        if params.temperature == 0.0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None)
        elif params.temperature is not None or config.do_sample:
            kwargs["do_sample"] = True
            kwargs["temperature"] = (
                params.temperature if params.temperature is not None else config.temperature
            )
            for name in ("top_p", "top_k", "min_p"):
                value = getattr(params, name)
                kwargs[name] = value if value is not None else getattr(config, name)
        else:
            kwargs["do_sample"] = False
        if params.repetition_penalty is not None:
            kwargs["repetition_penalty"] = params.repetition_penalty
        processors = LogitsProcessorList()
        if params.presence_penalty or params.frequency_penalty:
            processors.append(
                OpenAIPenalties(len(prompt.token_ids), params.presence_penalty, params.frequency_penalty)
            )
        if params.seed is not None:
            torch.manual_seed(params.seed)
        input_ids = torch.tensor([prompt.token_ids], dtype=torch.long, device=self.model.device)
        streamer = _PieceStreamer(self.tokenizer, self.eos_ids, emit)
        pad = config.pad_token_id if config.pad_token_id is not None else next(iter(self.eos_ids), 0)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([_CancelCriteria(cancel)]),
                streamer=streamer,
                pad_token_id=pad,
                **kwargs,
            )
        generated = output[0, len(prompt.token_ids) :].tolist()
        ended_on_eos = bool(generated) and generated[-1] in self.eos_ids
        count = len(generated) - (1 if ended_on_eos else 0)
        if ended_on_eos or cancel.is_set():
            return Generation("stop", count)
        return Generation("length", count)

    def close(self) -> None:
        """Drop the model and free its memory."""
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_transformers(
    location: str,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    context_length: int | None = None,
) -> TransformersChatEngine:
    """Load a chat model from a local folder or hub id onto the chosen device."""
    started = time.monotonic()
    resolved_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, resolved_device)
    quant = quantization_config(quantization, resolved_device, torch_dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = resolved_device
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise EngineLoadError(f"cannot load {location!r}: {exc}") from None
    if quant is None:
        model.to(resolved_device)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    with torch.inference_mode():  # warm-up: the first forward pass pays one-time kernel set-up costs
        warm = torch.tensor([[tokenizer.eos_token_id or 0]], device=model.device)
        model(input_ids=warm)
    limit = context_length or int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
    log.info(
        "loaded %s on %s (%s%s) in %.1f s, context %d",
        location,
        resolved_device,
        str(torch_dtype).removeprefix("torch."),
        f", {quantization}" if quant is not None else "",
        time.monotonic() - started,
        limit,
    )
    return TransformersChatEngine(model, tokenizer, resolved_device, limit)
