"""The transformers + torch chat engine: CUDA (optionally 4-bit NF4 / 8-bit via bitsandbytes), MPS, or CPU."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from ai_stack.engines.base import (
    FinishReason,
    Generation,
    GenerationCancelled,
    GrammarError,
    Piece,
    Prompt,
    SamplingParams,
    TokenLogprob,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8  # concurrent requests decoded together; more wait for a free row
DEFAULT_PREFILL_CHUNK = 256  # prompt tokens prefilled between two decode steps while other requests stream
IDLE_EXIT_S = 5.0  # the scheduler thread ends after this long with nothing to do (a new request restarts it)


class EngineLoadError(Exception):
    """A model that cannot be loaded, with a message meant for the user."""


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 units (AVX512-BF16 or AMX), where bf16 matmuls batch well."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def cpu_packs_fp16() -> bool:
    """Whether fbgemm's fp16-weight GEMM runs here (x86 with AVX2): the fast CPU path for linear layers."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512", "AVX512_BF16", "AMX")


class PackedFP16Linear(torch.nn.Module):
    """A linear layer with its weight packed in fp16 for fbgemm: float32 in and out, half the weight traffic.

    On CPUs without bf16 units, PyTorch's bf16 matmul is fast for one row but nearly linear in the number of
    rows, so a batch of decode steps costs almost as much as running them one by one; fbgemm's fp16 GEMM
    reads the same 2 bytes per weight and batches like float32.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T + b with the packed weight."""
        out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return out

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 packed (fbgemm)"


def pack_fp16_linears(model: torch.nn.Module) -> int:
    """Swap every nn.Linear of model for a PackedFP16Linear, one at a time; the rest goes to float32.

    Only (parent, name) pairs are held, so each original weight is freed as soon as its layer is packed:
    peak memory stays near the model's loaded size.
    """
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear
    ]
    for parent, name in targets:
        setattr(parent, name, PackedFP16Linear(getattr(parent, name)))
    model.float()
    return len(targets)


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
    """Resolve 'auto': bf16 on CUDA (fp16 on old GPUs), fp16 on MPS; on CPU see cpu_dtype."""
    if requested != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return cpu_dtype()


def cpu_dtype() -> torch.dtype:
    """bf16 on CPUs with bf16 units, fp16 (packed for fbgemm) on other x86 CPUs with AVX2, else float32."""
    if cpu_supports_bf16():
        return torch.bfloat16
    return torch.float16 if cpu_packs_fp16() else torch.float32


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


class Detokenizer:
    """Turns generated token ids into text pieces, holding back incomplete characters."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.pending_tokens = 0
        self.pending_logprobs: list[TokenLogprob] = []

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def add(self, token: int, logprob: TokenLogprob | None = None) -> Piece | None:
        """Take the next token; return a piece once it completes some text."""
        self.ids.append(token)
        self.pending_tokens += 1
        if logprob is not None:
            self.pending_logprobs.append(logprob)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            piece = Piece(full[len(prefix) :], self.pending_tokens, tuple(self.pending_logprobs))
            self.pending_tokens, self.pending_logprobs = 0, []
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return piece
        return None

    def flush(self) -> Piece | None:
        """Whatever tokens produced no text yet (so token counts stay right)."""
        if not self.pending_tokens:
            return None
        full = self._decode(self.ids[self.prefix_offset :])
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        piece = Piece(full[len(prefix) :], self.pending_tokens, tuple(self.pending_logprobs))
        self.pending_tokens, self.pending_logprobs = 0, []
        return piece


class TokenTexts:
    """Exact bytes of each token id (llguidance's view of the tokenizer), for logprobs entries."""

    def __init__(self, tokenizer: Any, lltokenizer: Any) -> None:
        self.tokenizer, self.lltokenizer = tokenizer, lltokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token: int) -> tuple[str, list[int]]:
        """The token's text and bytes."""
        hit = self.cache.get(token)
        if hit is None:
            if self.lltokenizer is not None and not self.lltokenizer.is_special_token(token):
                raw = bytes(self.lltokenizer.decode_bytes([token]))
                hit = (raw.decode("utf-8", errors="replace"), list(raw))
            else:
                text = str(self.tokenizer.convert_ids_to_tokens(token))
                hit = (text, list(text.encode()))
            self.cache[token] = hit
        return hit

    def logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        """The chosen token's log-probability under raw `logits` (one row), with its `top` alternatives."""
        logprobs = torch.log_softmax(logits, dim=-1)
        alternatives: list[tuple[str, float, list[int]]] = []
        if top:
            values, indexes = torch.topk(logprobs, top)
            for value, index in zip(values.tolist(), indexes.tolist(), strict=True):
                text, raw = self.get(int(index))
                alternatives.append((text, float(value), raw))
        text, raw = self.get(token)
        return TokenLogprob(text, float(logprobs[token]), raw, alternatives)


def sampling_processors(params: SamplingParams, config: Any) -> tuple[bool, LogitsProcessorList]:
    """Whether to sample, and the warpers (temperature, top-k, top-p, min-p) the request asks for."""
    warpers = LogitsProcessorList()
    if params.temperature == 0.0 or (params.temperature is None and not config.do_sample):
        return False, warpers
    temperature = params.temperature if params.temperature is not None else config.temperature
    top_k = params.top_k if params.top_k is not None else config.top_k
    top_p = params.top_p if params.top_p is not None else config.top_p
    min_p = params.min_p if params.min_p is not None else config.min_p
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(temperature)))
    if top_k:
        warpers.append(TopKLogitsWarper(int(top_k)))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(float(top_p)))
    if min_p:
        warpers.append(MinPLogitsWarper(float(min_p)))
    return True, warpers


class GrammarMask:
    """An llguidance matcher for one request: masks the logits, then follows the chosen tokens."""

    def __init__(self, lltokenizer: Any, grammar: str) -> None:
        import llguidance
        import llguidance.torch

        self.matcher = llguidance.LLMatcher(lltokenizer, grammar)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self._fill = llguidance.torch.fill_next_token_bitmask
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, lltokenizer.vocab_size)
        self.shifts = torch.arange(32, dtype=torch.int32)

    def apply(self, scores: torch.Tensor) -> None:
        """Set every token the grammar forbids to -inf, in place (scores: 1 x vocab)."""
        self._fill(self.matcher, self.bitmask, 0)
        allowed = ((self.bitmask[0].unsqueeze(1) >> self.shifts) & 1).reshape(-1).bool()
        vocab = scores.shape[-1]
        if allowed.shape[0] < vocab:
            allowed = torch.cat([allowed, torch.zeros(vocab - allowed.shape[0], dtype=torch.bool)])
        scores.masked_fill_(~allowed[:vocab].to(scores.device).unsqueeze(0), float("-inf"))

    def advance(self, token: int) -> bool:
        """Consume the chosen token; True when the grammar has finished."""
        self.matcher.consume_token(token)
        return bool(self.matcher.is_stopped() or self.matcher.is_error())


@dataclass
class _Request:
    """One generate() call, handed to the scheduler thread; `done` is set once `result` holds the outcome."""

    prompt: Prompt
    params: SamplingParams
    cancel: threading.Event
    emit: Callable[[Piece], None]
    grammar: GrammarMask | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Generation | BaseException | None = None


@dataclass
class _Prefill:
    """A request whose prompt is fed to the model in chunks: its row, its own cache, tokens fed so far."""

    row: _Row
    cache: Any = None
    fed: int = 0


class _Row:
    """A request's sampling state while it generates: its processors, generator, tokens and detokenizer."""

    def __init__(self, engine: TransformersChatEngine, request: _Request) -> None:
        params, device = request.params, engine.model.device
        self.request, self.params, self.grammar = request, params, request.grammar
        self.do_sample, self.warpers = sampling_processors(params, engine.model.generation_config)
        self.penalties = LogitsProcessorList()
        if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
            self.penalties.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.presence_penalty or params.frequency_penalty:
            self.penalties.append(
                OpenAIPenalties(
                    len(request.prompt.token_ids), params.presence_penalty, params.frequency_penalty
                )
            )
        self.bias: torch.Tensor | None = None
        if params.logit_bias:
            self.bias = torch.zeros(engine.vocab_size, dtype=torch.float32, device=device)
            for token, value in params.logit_bias.items():
                self.bias[token] = value
        self.generator: torch.Generator | None = None
        if self.do_sample:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()
        self.ids = torch.tensor([request.prompt.token_ids], dtype=torch.long, device=device)
        self.detok = Detokenizer(engine.tokenizer)
        self.produced = 0
        self.position = len(request.prompt.token_ids)  # the position of the next token fed to the model
        self.next_token = -1
        self.finish: FinishReason | None = None
        self.error: BaseException | None = None


class HFTextMixin:
    """Chat template, special tokens and llguidance tokenizer from a Hugging Face tokenizer."""

    tokenizer: Any
    vocab_size: int
    eos_ids: set[int]
    _lltokenizer: Any
    _lltokenizer_lock: threading.Lock

    @property
    def chat_template(self) -> str | None:
        """The model's chat template source."""
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

    def token_id(self, text: str) -> int | None:
        """The id of a single (special) token spelled `text`, or None."""
        ids = self.tokenizer.convert_tokens_to_ids([text])
        unk = self.tokenizer.unk_token_id
        return int(ids[0]) if ids and ids[0] is not None and ids[0] != unk else None

    def lltokenizer(self) -> Any:
        """llguidance's tokenizer for this model (built once, ~2 s for a 150k vocabulary)."""
        with self._lltokenizer_lock:
            if self._lltokenizer is None:
                import llguidance.hf

                self._lltokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids)
                )
            return self._lltokenizer

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


class TransformersChatEngine(HFTextMixin):
    """A causal LM and its tokenizer; a scheduler thread batches the decode steps of concurrent requests.

    Each request is prefilled alone, then joins the running batch: its KV cache is left-padded to the batch's
    length and concatenated along the batch axis. While other requests stream, prompts are fed in chunks of at
    most `prefill_chunk` tokens between two decode steps, so a long prompt does not stall them. One forward
    pass per step decodes a token for every row; each row then goes through its own logits processing,
    sampling (its own generator) and stop checks, and leaves the batch when it ends. A batch of one runs the
    single-request path (no mask, no positions).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        context_length: int,
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        self.model, self.tokenizer, self.device, self.context_length = (
            model,
            tokenizer,
            device,
            context_length,
        )
        self.max_batch = max(1, int(max_batch))
        self.prefill_chunk = max(1, int(prefill_chunk))
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos_list if e is not None}
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(tokenizer.eos_token_id))
        self.vocab_size = int(model.get_output_embeddings().out_features)
        self._lltokenizer: Any = None
        self._lltokenizer_lock = threading.Lock()
        self._texts: TokenTexts | None = None
        # _cond guards _waiting, _thread and _closed; the rest belongs to the scheduler thread.
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._rows: list[_Row] = []
        self._prefill: _Prefill | None = None  # the request being prefilled, not yet in the batch
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, cached tokens]: 1 real token, 0 left padding
        self._padded = False
        self._batchable: bool | None = None  # whether the model's cache layers can be padded and merged
        self.peak_batch = 0  # the most rows one decode step has served (for tests and diagnostics)

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
    ) -> Generation:
        """Queue the request and wait for it to end: EOS, the grammar's end, max_tokens or cancel.

        Raises GenerationCancelled when cancel is set before the request is admitted to the batch.
        """
        grammar = GrammarMask(self.lltokenizer(), params.grammar) if params.grammar else None
        if params.logprobs is not None and self._texts is None:
            self._texts = TokenTexts(self.tokenizer, self.lltokenizer())
        request = _Request(prompt, params, cancel, emit, grammar)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._schedule, name="transformers-batch", daemon=True)
                self._thread.start()
            self._cond.notify()
        while not request.done.wait(0.05):
            if cancel.is_set():
                with self._cond:
                    if request in self._waiting:  # not admitted yet: withdraw it
                        self._waiting.remove(request)
                        raise GenerationCancelled()
        if isinstance(request.result, BaseException):
            raise request.result
        assert request.result is not None
        return request.result

    # -- the scheduler thread ------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Prefill waiting requests and decode all active rows together, step by step; exit when idle."""
        with torch.inference_mode():
            while True:
                with self._cond:
                    if self._closed:
                        break
                    if not self._rows and not self._waiting and self._prefill is None:
                        self._cond.wait(IDLE_EXIT_S)
                        if not self._waiting and not self._closed:
                            self._thread = None  # idle: a later generate() starts a fresh thread
                            return
                        continue
                self._fill()
                if self._rows:
                    try:
                        self._decode_step()
                    except Exception as exc:  # a failed forward pass: every active row gets the error
                        log.exception("a batched decode step failed")
                        self._fail_batch(exc)
        closed = RuntimeError("the model was unloaded")
        with self._cond:
            left = list(self._waiting)
            self._waiting.clear()
        for request in left:
            request.result = closed
            request.done.set()
        self._fail_batch(closed)

    def _fail_batch(self, exc: BaseException) -> None:
        rows = self._rows + ([self._prefill.row] if self._prefill is not None else [])
        for row in rows:
            if row.finish is None and row.error is None:
                row.error = exc
            self._finish(row)
        self._rows, self._cache, self._mask, self._padded = [], None, None, False
        self._prefill = None

    def _capacity(self) -> int:
        """max_batch once the first prefill showed the cache can be merged; one row until then or if not."""
        return self.max_batch if self._batchable else 1

    def _fill(self) -> None:
        """Prefill waiting requests into free rows: without limit while nothing is decoding, else at most
        prefill_chunk prompt tokens, so the streaming rows wait one chunk, not a whole long prompt."""
        budget: int | None = None
        while budget is None or budget > 0:
            if budget is None and self._rows:
                budget = self.prefill_chunk  # from now on, rows are waiting for their next token
            if self._prefill is None:
                with self._cond:
                    if not self._waiting or len(self._rows) >= self._capacity():
                        return
                    request = self._waiting.popleft()
                self._start(request)
                continue
            fed = self._prefill_chunk(budget)
            if budget is not None:
                budget -= fed

    def _start(self, request: _Request) -> None:
        """Make the request's row and queue its prompt for prefill (or end it at once)."""
        if request.cancel.is_set():
            request.result = GenerationCancelled()
            request.done.set()
            return
        try:
            row = _Row(self, request)
        except Exception as exc:
            request.result = exc
            request.done.set()
            return
        if request.params.max_tokens <= 0:
            row.finish = "length"
            self._finish(row)
            return
        self._prefill = _Prefill(row)

    def _prefill_chunk(self, budget: int | None) -> int:
        """Feed the next chunk of the prefilling prompt (all the rest when budget is None); once the prompt
        is in, take the first token and merge the row into the batch. Returns the tokens fed."""
        prefill = self._prefill
        assert prefill is not None
        row, request = prefill.row, prefill.row.request
        if request.cancel.is_set():
            self._prefill = None
            row.finish = "stop"
            self._finish(row)
            return 0
        total = int(row.ids.shape[1])
        take = total - prefill.fed if budget is None else min(budget, total - prefill.fed)
        try:
            chunk = row.ids[:, prefill.fed : prefill.fed + take]
            out = self.model(input_ids=chunk, cache=prefill.cache, use_cache=True, logits_to_keep=1)
            prefill.cache, prefill.fed = out.cache, prefill.fed + take
            if prefill.fed < total:
                return take
            self._prefill = None
            if self._batchable is None:
                self._batchable = all(type(layer) is DynamicLayer for layer in out.cache.layers)
                if not self._batchable:
                    log.info("this model's cache layers cannot be merged: one request at a time")
            if request.cancel.is_set():
                row.finish = "stop"
            else:
                self._take(row, out.logits[:, -1, :].float())
        except Exception as exc:
            self._prefill = None
            request.result = exc
            request.done.set()
            return take
        if row.finish is not None or row.error is not None:
            self._finish(row)
            return take
        try:
            self._merge(row, prefill.cache)
        except Exception as exc:  # the batch's cache may be half merged: end the batch
            log.exception("merging a request into the batch failed")
            row.error = exc
            self._finish(row)
            self._fail_batch(exc)
        return take

    def _merge(self, row: _Row, cache: Any) -> None:
        """Add a prefilled row to the batch, left-padding whichever side is shorter."""
        length = row.position
        if self._cache is None or self._mask is None:
            self._rows, self._cache = [row], cache
            self._mask = torch.ones(1, length, dtype=torch.long, device=row.ids.device)
            self._padded = False
            return
        width = int(self._mask.shape[1])
        for into, layer in zip(self._cache.layers, cache.layers, strict=True):
            keys, values = layer.keys, layer.values
            if length < width:
                keys = torch.nn.functional.pad(keys, (0, 0, width - length, 0))
                values = torch.nn.functional.pad(values, (0, 0, width - length, 0))
            elif length > width:
                into.keys = torch.nn.functional.pad(into.keys, (0, 0, length - width, 0))
                into.values = torch.nn.functional.pad(into.values, (0, 0, length - width, 0))
            into.keys = torch.cat([into.keys, keys], dim=0)
            into.values = torch.cat([into.values, values], dim=0)
        new = torch.ones(1, length, dtype=torch.long, device=self._mask.device)
        if length < width:
            new = torch.nn.functional.pad(new, (width - length, 0))
        elif length > width:
            self._mask = torch.nn.functional.pad(self._mask, (length - width, 0))
        self._mask = torch.cat([self._mask, new], dim=0)
        self._padded = bool((self._mask == 0).any())
        self._rows.append(row)

    def _decode_step(self) -> None:
        """Drop cancelled rows, run one forward pass for all rows, then sample each row's next token."""
        for row in self._rows:
            if row.request.cancel.is_set():
                row.finish = "stop"
        self._evict()
        if not self._rows:
            return
        assert self._mask is not None
        rows = self._rows
        self.peak_batch = max(self.peak_batch, len(rows))
        device = self._mask.device
        tokens = torch.tensor([[row.next_token] for row in rows], dtype=torch.long, device=device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        if self._padded:
            positions = torch.tensor([[row.position] for row in rows], dtype=torch.long, device=device)
            out = self.model(
                input_ids=tokens,
                attention_mask=self._mask,
                position_ids=positions,
                cache=self._cache,
                use_cache=True,
            )
        else:  # every row has the same length: the plain path, as for a single request
            out = self.model(input_ids=tokens, cache=self._cache, use_cache=True)
        self._cache = out.cache
        logits = out.logits[:, -1, :].float()
        for index, row in enumerate(rows):
            row.position += 1
            if row.request.cancel.is_set():
                row.finish = "stop"
                continue
            try:
                self._take(row, logits[index : index + 1])
            except Exception as exc:
                row.error = exc
        self._evict()

    def _evict(self) -> None:
        """Finish rows that ended; select the remaining rows of the cache and trim all-padding columns."""
        keep = [i for i, row in enumerate(self._rows) if row.finish is None and row.error is None]
        if len(keep) == len(self._rows):
            return
        for row in self._rows:
            if row.finish is not None or row.error is not None:
                self._finish(row)
        if not keep:
            self._rows, self._cache, self._mask, self._padded = [], None, None, False
            return
        assert self._mask is not None
        indices = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        self._rows = [self._rows[i] for i in keep]
        self._cache.batch_select_indices(indices)
        mask = self._mask[indices]
        start = int(torch.nonzero(mask.any(dim=0))[0, 0])
        if start:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]
            mask = mask[:, start:]
        self._mask = mask
        self._padded = bool((mask == 0).any())

    def _take(self, row: _Row, logits: torch.Tensor) -> None:
        """Process one row's raw logits (1 x vocab): sample, stop checks, emit; row.finish once it ends."""
        params = row.params
        scores = logits if row.bias is None else logits + row.bias
        if row.penalties:
            scores = row.penalties(row.ids, scores)  # type: ignore[arg-type]
        if row.grammar is not None:
            scores = scores.clone() if scores is logits else scores
            row.grammar.apply(scores)
        if row.do_sample:
            scores = row.warpers(row.ids, scores)  # type: ignore[arg-type]
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=row.generator)[0, 0])
        else:
            token = int(torch.argmax(scores, dim=-1)[0])
        if token in self.eos_ids:
            row.finish = "stop"
            return
        row.produced += 1
        logprob = None if params.logprobs is None else self._logprob(logits[0], token, params.logprobs)
        piece = row.detok.add(token, logprob)
        if piece is not None:
            row.request.emit(piece)
        if row.grammar is not None and row.grammar.advance(token):
            row.finish = "stop"
            return
        if row.produced >= params.max_tokens:
            row.finish = "length"
            return
        row.next_token = token
        if row.penalties:
            row.ids = torch.cat([row.ids, row.ids.new_full((1, 1), token)], dim=1)

    def _finish(self, row: _Row) -> None:
        """Emit the row's held-back tail and hand its outcome to the waiting generate() call."""
        request = row.request
        if row.error is None:
            try:
                tail = row.detok.flush()
                if tail is not None:
                    request.emit(tail)
            except Exception as exc:
                row.error = exc
        outcome = Generation(row.finish or "stop", row.produced)
        request.result = row.error if row.error is not None else outcome
        request.done.set()

    def _logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        assert self._texts is not None
        return self._texts.logprob(logits, token, top)

    def close(self) -> None:
        """Stop the scheduler (failing requests queued or running), drop the model and free its memory."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(60)
        self.model = None
        self._cache = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_transformers(
    location: str,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    context_length: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> TransformersChatEngine:
    """Load a chat model from a local folder or hub id onto the chosen device."""
    started = time.monotonic()
    resolved_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, resolved_device)
    quant = quantization_config(quantization, resolved_device, torch_dtype)
    # fp16 on CPU: load the checkpoint as it is stored, then pack each linear layer's weight for fbgemm.
    packed = resolved_device == "cpu" and torch_dtype == torch.float16 and quant is None and cpu_packs_fp16()
    kwargs: dict[str, Any] = {"dtype": "auto" if packed else torch_dtype}
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
    if packed:
        pack_fp16_linears(model)
    model.eval()  # type: ignore[no-untyped-call]
    with torch.inference_mode():  # warm-up: the first forward pass pays one-time kernel set-up costs
        warm = torch.tensor([[tokenizer.eos_token_id or 0]], device=model.device)
        model(input_ids=warm)
    limit = context_length or int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
    log.info(
        "loaded %s on %s (%s%s) in %.1f s, context %d",
        location,
        resolved_device,
        "fp16 packed for fbgemm, fp32 compute" if packed else str(torch_dtype).removeprefix("torch."),
        f", {quantization}" if quant is not None else "",
        time.monotonic() - started,
        limit,
    )
    return TransformersChatEngine(model, tokenizer, resolved_device, limit, max_batch, prefill_chunk)
