"""The transformers + torch chat engine (CUDA, MPS, CPU); 4-bit NF4/FP4 or 8-bit weights via bitsandbytes."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache, DynamicLayer

from ai_stack.engines.base import (
    EngineLoadError,
    FinishReason,
    Generation,
    GenerationCancelled,
    Piece,
    Prompt,
    SamplingParams,
)
from ai_stack.engines.catalog import TransformersOptions
from ai_stack.engines.hf_text import HFTextMixin, eos_ids_of
from ai_stack.engines.kv_batch import BatchKV
from ai_stack.engines.prefix_cache import PrefixCache
from ai_stack.engines.sampling import GrammarMask
from ai_stack.engines.torch_device import (
    FOUR_BIT,
    cpu_packs_fp16,
    pack_fp16_linears,
    pick_device,
    pick_dtype,
    quantization_config,
    resolve_quantization,
    unfuse_odd_4bit_linears,
)

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec

log = logging.getLogger(__name__)

DEFAULTS = TransformersOptions()
IDLE_EXIT_S = 5.0  # the scheduler thread ends after this long with nothing to do (a new request restarts it)

# One cached block of tokens: each layer's (keys, values), [1, kv heads, block tokens, head dim], owned.
KVBlock = tuple[tuple[torch.Tensor, torch.Tensor], ...]


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
    """A request while it generates: its prompt ids, its sampler, and where it stands in the batch."""

    def __init__(self, engine: TransformersChatEngine, request: _Request) -> None:
        device = engine.model.device
        self.request = request
        self.sampler = engine.row_sampler(
            request.params, request.prompt.token_ids, request.emit, request.grammar, device
        )
        self.ids = torch.tensor([request.prompt.token_ids], dtype=torch.long, device=device)
        self.position = len(request.prompt.token_ids)  # the position of the next token fed to the model
        self.next_token = -1
        self.fed: list[int] = []  # tokens fed by decode steps after the prompt: the KV holds prompt + fed
        self.cached = 0  # prompt tokens whose KV came from the prefix cache
        self.finish: FinishReason | None = None
        self.error: BaseException | None = None


class TransformersChatEngine(HFTextMixin):
    """A causal LM and its tokenizer; a scheduler thread batches the decode steps of concurrent requests.

    Each request is prefilled apart, then joins the running batch: its KV cache is left-padded to the batch's
    length and concatenated along the batch axis. Prompts are fed in chunks of at most `prefill_chunk` tokens
    between two decode steps, the prompts being prefilled taking turns, so a long prompt stalls neither the
    streaming requests nor a short prompt that arrives while it is read, and a cancelled one stops at once.
    One forward pass per step decodes a token for every row; each row then goes through its own logits
    processing, sampling (its own generator) and stop checks, and leaves the batch when it ends. A batch of
    one runs the single-request path (no mask, no positions).

    With a prefix cache, a prompt's KV is stored in blocks once its prefill ends (so requests admitted after
    it, such as the other choices of `n` or concurrent requests with the same system prompt, reuse it), and
    the KV of prompt and answer once the request ends (so the next turn of a chat reuses it). A request then
    starts from the longest cached chain of blocks and prefills only the rest.
    """

    engine_kind = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        context_length: int,
        max_batch: int = DEFAULTS.max_batch,
        prefill_chunk: int = DEFAULTS.prefill_chunk,
        prefix_cache: bool = DEFAULTS.prefix_cache,
        prefix_cache_bytes: int = DEFAULTS.prefix_cache_bytes,
        prefix_cache_block: int = DEFAULTS.prefix_cache_block,
    ) -> None:
        self.model, self.tokenizer, self.device, self.context_length = (
            model,
            tokenizer,
            device,
            context_length,
        )
        self.max_batch = max(1, int(max_batch))
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.generation_config = model.generation_config
        self.eos_ids = eos_ids_of(model.generation_config, tokenizer)
        self.vocab_size = int(model.get_output_embeddings().out_features)
        self._lltokenizer: Any = None
        self._lltokenizer_lock = threading.Lock()
        # _cond guards _waiting, _thread and _closed; the rest belongs to the scheduler thread.
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._rows: list[_Row] = []
        # Requests being prefilled, not yet in the batch; they take turns, a chunk each.
        self._prefills: deque[_Prefill] = deque()
        self._kv = BatchKV()  # the rows' merged KV cache, in the order of _rows
        self._batchable: bool | None = None  # whether the model's cache layers can be padded and merged
        self.peak_batch = 0  # the most rows one decode step has served (for tests and diagnostics)
        # Prompt (and answer) KV by token blocks, on the model's device; None when off. Scheduler thread only.
        self.prefix_cache: PrefixCache[KVBlock] | None = None
        if prefix_cache and prefix_cache_bytes > 0:
            self.prefix_cache = PrefixCache(prefix_cache_block, prefix_cache_bytes)

    @property
    def reserved_bytes(self) -> int:
        """Memory the engine may use after its load: its prefix cache budget (the memory budget counts it)."""
        return self.prefix_cache.max_bytes if self.prefix_cache is not None else 0

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
        grammar = self.request_grammar(params)
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
                    if not self._rows and not self._waiting and not self._prefills:
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
        rows = self._rows + [prefill.row for prefill in self._prefills]
        for row in rows:
            if row.finish is None and row.error is None:
                row.error = exc
            self._finish(row)
        self._rows = []
        self._kv.clear()
        self._prefills.clear()

    def _capacity(self) -> int:
        """max_batch once the first prefill showed the cache can be merged; one row until then or if not."""
        return self.max_batch if self._batchable else 1

    def _fill(self) -> None:
        """Start waiting requests in free rows, then feed at most prefill_chunk prompt tokens, the prefilling
        requests taking turns: streaming rows wait one chunk between two tokens, a short prompt that comes
        while a long one is read waits about one chunk (not the whole long prompt), and a cancelled prefill
        stops at the next chunk."""
        self._admit()
        budget = self.prefill_chunk
        while budget > 0 and self._prefills:
            prefill = self._prefills[0]
            fed, ended = self._prefill_chunk(prefill, budget)
            if ended:
                if self._prefills and self._prefills[0] is prefill:  # (a failed merge clears them all)
                    self._prefills.popleft()
            else:
                self._prefills.rotate(-1)  # its next chunk comes after the others' turns
            budget -= fed

    def _admit(self) -> None:
        """Start waiting requests (in order) while rows are free."""
        while True:
            with self._cond:
                if len(self._rows) + len(self._prefills) >= self._capacity():
                    return
                request = self._next_waiting()
                if request is None:
                    return
            self._start(request)

    def _next_waiting(self) -> _Request | None:
        """The first waiting request to start; one whose prompt shares a cache block with a prompt being
        prefilled waits for that prefill to end, to reuse its KV instead of computing it again."""
        cache = self.prefix_cache
        if cache is None or not self._batchable:
            return self._waiting.popleft() if self._waiting else None
        size = cache.block_size
        # A shared first block is what a shared cache block means (blocks chain from the start).
        reading = {tuple(p.row.request.prompt.token_ids[:size]) for p in self._prefills}
        for request in self._waiting:
            head = request.prompt.token_ids[:size]
            if len(head) < size or tuple(head) not in reading:
                self._waiting.remove(request)
                return request
        return None

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
        prefill = _Prefill(row)
        self._reuse_prefix(prefill)
        self._prefills.append(prefill)

    def _reuse_prefix(self, prefill: _Prefill) -> None:
        """Start the prefill from the longest cached prefix of its prompt (all but its last token at most:
        that one's logits give the first answer token)."""
        if self.prefix_cache is None or not self._batchable:
            return
        prompt = prefill.row.request.prompt.token_ids
        blocks = self.prefix_cache.match(prompt, len(prompt) - 1)
        if not blocks:
            return
        try:
            cache = DynamicCache(config=self.model.config)
            layer: Any
            for index, layer in enumerate(cache.layers):
                keys = torch.cat([block[index][0] for block in blocks], dim=-2)
                values = torch.cat([block[index][1] for block in blocks], dim=-2)
                layer.lazy_initialization(keys, values)
                layer.keys, layer.values = keys, values
        except Exception:  # e.g. out of memory: compute the prompt instead
            log.warning("a cached prefix could not be restored; prefilling the whole prompt", exc_info=True)
            return
        prefill.cache = cache
        prefill.fed = prefill.row.cached = len(blocks) * self.prefix_cache.block_size

    def _remember(self, tokens: list[int], cache: Any, row: int) -> None:
        """Store the full blocks of `tokens` whose KV is row `row` of `cache` (right-aligned: a batch's rows
        are left-padded), copying each block's slices so the batch's tensors can be freed."""
        if self.prefix_cache is None or not self._batchable:
            return
        layers = cache.layers
        offset = int(layers[0].keys.shape[-2]) - len(tokens)  # this row's left padding
        if offset < 0:  # cannot happen while the KV holds prompt + fed; never store a wrong slice
            log.warning("a row's KV is shorter than its tokens; not cached")
            return

        def make(start: int, end: int) -> tuple[KVBlock, int]:
            cut = slice(offset + start, offset + end)
            block = tuple(
                (layer.keys[row : row + 1, :, cut, :].clone(), layer.values[row : row + 1, :, cut, :].clone())
                for layer in layers
            )
            return block, sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in block)

        try:
            self.prefix_cache.store(tokens, make)
        except Exception:  # e.g. out of memory while copying: the request itself is not affected
            log.warning("storing a prefix in the cache failed", exc_info=True)

    def _prefill_chunk(self, prefill: _Prefill, budget: int) -> tuple[int, bool]:
        """Feed the next chunk (at most budget tokens) of a prefilling prompt; once the prompt is in, take
        the first token and merge the row into the batch. Returns the tokens fed and whether it ended."""
        row, request = prefill.row, prefill.row.request
        if request.cancel.is_set():
            row.finish = "stop"
            self._finish(row)
            return 0, True
        total = int(row.ids.shape[1])
        take = min(budget, total - prefill.fed)
        try:
            chunk = row.ids[:, prefill.fed : prefill.fed + take]
            out = self.model(input_ids=chunk, cache=prefill.cache, use_cache=True, logits_to_keep=1)
            prefill.cache, prefill.fed = out.cache, prefill.fed + take
            if prefill.fed < total:
                return take, False
            if self._batchable is None:
                self._batchable = all(type(layer) is DynamicLayer for layer in out.cache.layers)
                if not self._batchable:
                    log.info("this model's cache layers cannot be merged: one request at a time")
            self._remember(request.prompt.token_ids, prefill.cache, 0)
            if request.cancel.is_set():
                row.finish = "stop"
            else:
                self._take(row, out.logits[:, -1, :].float())
        except Exception as exc:
            request.result = exc
            request.done.set()
            return take, True
        if row.finish is not None or row.error is not None:
            self._finish(row)
            return take, True
        try:
            self._merge(row, prefill.cache)
        except Exception as exc:  # the batch's cache may be half merged: end the batch
            log.exception("merging a request into the batch failed")
            row.error = exc
            self._finish(row)
            self._fail_batch(exc)
        return take, True

    def _merge(self, row: _Row, cache: Any) -> None:
        """Add a prefilled row to the batch."""
        self._kv.add(cache, row.position, row.ids.device)
        self._rows.append(row)

    def _decode_step(self) -> None:
        """Drop cancelled rows, run one forward pass for all rows, then sample each row's next token."""
        for row in self._rows:
            if row.request.cancel.is_set():
                row.finish = "stop"
        self._evict()
        if not self._rows:
            return
        rows, kv = self._rows, self._kv
        self.peak_batch = max(self.peak_batch, len(rows))
        mask = kv.step_mask()
        tokens = torch.tensor([[row.next_token] for row in rows], dtype=torch.long, device=mask.device)
        if kv.padded:
            positions = torch.tensor([[row.position] for row in rows], dtype=torch.long, device=mask.device)
            out = self.model(
                input_ids=tokens, attention_mask=mask, position_ids=positions, cache=kv.cache, use_cache=True
            )
        else:  # every row has the same length: the plain path, as for a single request
            out = self.model(input_ids=tokens, cache=kv.cache, use_cache=True)
        kv.cache = out.cache
        logits = out.logits[:, -1, :].float()
        for index, row in enumerate(rows):
            row.position += 1
            row.fed.append(row.next_token)
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
        for index, row in enumerate(self._rows):
            if row.finish is not None or row.error is not None:
                if row.error is None:
                    self._remember(row.request.prompt.token_ids + row.fed, self._kv.cache, index)
                self._finish(row)
        self._rows = [self._rows[i] for i in keep]
        self._kv.keep(keep)

    def _take(self, row: _Row, logits: torch.Tensor) -> None:
        """Process one row's raw logits (1 x vocab): sample, stop checks, emit; row.finish once it ends."""
        row.finish = row.sampler.step(logits)
        row.next_token = row.sampler.token

    def _finish(self, row: _Row) -> None:
        """Emit the row's held-back tail and hand its outcome to the waiting generate() call."""
        request = row.request
        if row.error is None:
            try:
                row.sampler.flush()
            except Exception as exc:
                row.error = exc
        outcome = Generation(row.finish or "stop", row.sampler.produced, row.cached)
        request.result = row.error if row.error is not None else outcome
        request.done.set()

    def close(self) -> None:
        """Stop the scheduler (failing requests queued or running), drop the model and free its memory."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(60)
        self.model = None
        self._kv.clear()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _UnreadableWeights(EngineLoadError):
    """The model's files cannot be read: no number format would load them."""


def _load_weights(
    location: str, device: str, dtype: torch.dtype, quantization: str, double_quant: bool | None, warm_id: int
) -> tuple[Any, str]:
    """The model on `device` in its number format, warmed up, and that format in words (for the log)."""
    quant = quantization_config(quantization, device, dtype, double_quant)
    # fp16 on CPU: load the checkpoint as it is stored, then pack each linear layer's weight for fbgemm
    # (under 4-bit, the layers bitsandbytes leaves unquantized: the LM head, the largest of them).
    packed = device == "cpu" and dtype == torch.float16 and cpu_packs_fp16()
    kwargs: dict[str, Any] = {"dtype": "auto" if packed else dtype}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise _UnreadableWeights(f"cannot load {location!r}: {exc}") from None
    if quant is None:
        model.to(device)  # type: ignore[arg-type]
    elif device == "cpu":
        unfuse_odd_4bit_linears(model)
    if packed:
        pack_fp16_linears(model)
    model.eval()  # type: ignore[no-untyped-call]
    with torch.inference_mode():  # warm-up: the first forward pass pays one-time kernel set-up costs
        model(input_ids=torch.tensor([[warm_id]], device=model.device))
    form = "fp16 packed for fbgemm, fp32 compute" if packed else str(dtype).removeprefix("torch.")
    if quant is None:
        return model, form
    if quantization not in FOUR_BIT:
        return model, f"{form}, {quantization}"
    compute = "bf16" if device == "cpu" else str(dtype).removeprefix("torch.")
    rest = f"; other layers {form}" if device == "cpu" else ""
    scales = ", double-quantized scales" if quant.bnb_4bit_use_double_quant else ""
    return model, f"{quantization} 4-bit (bitsandbytes{scales}), {compute} compute{rest}"


def load_transformers(
    location: str,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    context_length: int | None = None,
    max_batch: int = DEFAULTS.max_batch,
    prefill_chunk: int = DEFAULTS.prefill_chunk,
    prefix_cache: bool = DEFAULTS.prefix_cache,
    prefix_cache_bytes: int = DEFAULTS.prefix_cache_bytes,
    prefix_cache_block: int = DEFAULTS.prefix_cache_block,
    double_quant: bool | None = DEFAULTS.double_quant,
) -> TransformersChatEngine:
    """Load a chat model from a local folder or hub id onto the chosen device.

    4-bit weights (bitsandbytes) that fail off CUDA (no bitsandbytes, a CPU its kernels do not run on) are
    logged as an error and the model loads without quantization instead.
    """
    started = time.monotonic()
    resolved_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, resolved_device)
    quant_name = resolve_quantization(quantization, resolved_device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except OSError as exc:
        raise EngineLoadError(f"cannot load {location!r}: {exc}") from None
    warm_id = tokenizer.eos_token_id or 0
    try:
        model, form = _load_weights(location, resolved_device, torch_dtype, quant_name, double_quant, warm_id)
    except _UnreadableWeights:
        raise
    except Exception as exc:
        if quant_name not in FOUR_BIT or resolved_device.startswith("cuda"):
            raise
        log.error(
            "%s: %s 4-bit weights failed on %s (%s: %s); loading it without quantization",
            location,
            quant_name,
            resolved_device,
            type(exc).__name__,
            exc,
        )
        gc.collect()
        model, form = _load_weights(location, resolved_device, torch_dtype, "none", None, warm_id)
    limit = context_length or int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
    log.info(
        "loaded %s on %s (%s) in %.1f s, context %d",
        location,
        resolved_device,
        form,
        time.monotonic() - started,
        limit,
    )
    return TransformersChatEngine(
        model,
        tokenizer,
        resolved_device,
        limit,
        max_batch,
        prefill_chunk,
        prefix_cache=prefix_cache,
        prefix_cache_bytes=prefix_cache_bytes,
        prefix_cache_block=prefix_cache_block,
    )


def load(spec: ModelSpec, config: Config, options: TransformersOptions) -> TransformersChatEngine:
    """The catalog's loader: prepare the spec's source (convert a GGUF once), then load it."""
    from ai_stack.sources import parse_source, prepare_source

    source = parse_source(spec.source, config.base_dir)
    location = prepare_source(source, config.server.home)
    quantization = spec.quantization
    if quantization == "auto" and source.kind in ("embedded", "gguf"):
        # Weights de-quantized from a 4-bit GGUF lose too much when quantized again to NF4 (88% top-1
        # agreement on the default model, below the 95% bound: bench/results/2026-12-01-nf4-cpu.md).
        quantization = "none"
    return load_transformers(
        location,
        device=spec.device,
        dtype=spec.dtype,
        quantization=quantization,
        context_length=spec.context_length,
        max_batch=options.max_batch,
        prefill_chunk=options.prefill_chunk,
        prefix_cache=options.prefix_cache,
        prefix_cache_bytes=options.prefix_cache_bytes,
        prefix_cache_block=options.prefix_cache_block,
        double_quant=options.double_quant,
    )
