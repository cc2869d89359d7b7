"""The llama.cpp chat engine: GGUF models through llama-cpp-python's low-level API, with parallel sequences.

One llama.cpp context holds `parallel` sequences (slots), each with its own KV stream of `context_length`
cells. A scheduler thread owns the context: between decode steps it admits waiting requests (their prompts
are prefilled in chunks of up to `n_batch` tokens), then builds one batch with one token per running sequence,
calls `llama_decode` once and samples each sequence from its own row of logits. The context is set up so that
a sequence's logits do not depend on the other sequences in its batch (see `LlamaCppChatEngine.__init__`).
Sampling runs the shared `RowSampler` on torch views of llama.cpp's logits, so temperature,
top-p/top-k/min-p, penalties, seeds, logit bias, logprobs and llguidance grammars behave the same on both
engines. Prompts are rendered and detokenized with the model's Hugging Face tokenizer.

Prefix cache (as llama-server's slots): a sequence keeps its KV cells when its request ends, with the list of
tokens they hold. A new request takes the free sequence whose kept tokens share the longest prefix with its
prompt when that prefix is most of what the sequence keeps (the next turn of its conversation); otherwise the
least recently used free sequence, into which the longest prefix found in any other sequence (kept or still
running) is copied when it is long enough. Only the rest of the prompt is prefilled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer, GenerationConfig

from ai_stack.engines.base import (
    EngineLoadError,
    FinishReason,
    Generation,
    GenerationCancelled,
    Piece,
    Prompt,
    SamplingParams,
)
from ai_stack.engines.catalog import LlamaCppOptions
from ai_stack.engines.hf_text import HFTextMixin, eos_ids_of
from ai_stack.engines.prefix_cache import common_prefix
from ai_stack.engines.sampling import GrammarMask, RowSampler

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec

log = logging.getLogger(__name__)


def physical_cores() -> int:
    """The number of physical CPU cores (llama.cpp's best thread count), or the logical count."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to tell
        count = None
    return int(count or os.cpu_count() or 1)


@dataclass
class _Request:
    """One generate() call, as the scheduler sees it."""

    prompt: list[int]
    params: SamplingParams
    cancel: threading.Event
    emit: Callable[[Piece], None]
    grammar: GrammarMask | None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Generation | BaseException | None = None
    # Set on admission.
    seq: int = -1
    fed: int = 0  # prompt tokens already decoded into the KV cache
    next_token: int | None = None  # the sampled token to feed in the next decode step
    position: int = 0  # the position of next_token in the sequence
    sampler: RowSampler | None = None
    cached: int = 0  # prompt tokens whose KV was reused instead of computed
    decoded: list[int] = field(default_factory=list)  # generated tokens whose KV is in the sequence
    fed_at: int = -1  # the decode step that fed its last prompt chunk: prompts being read take turns

    def kv_tokens(self) -> list[int]:
        """The tokens whose KV the sequence holds now, in position order."""
        return self.prompt[: self.fed] + self.decoded


@dataclass
class _Slot:
    """A sequence between requests: the tokens its kept KV cells hold, and when it was last used."""

    tokens: list[int] = field(default_factory=list)
    used: int = 0  # the admission count when it was last given to a request (0: never)


# A prefix found in another sequence is copied (a copy of that sequence's whole KV stream) only when it saves
# at least this many prompt tokens: below that, computing them costs about as much as the copy.
MIN_COPY_TOKENS = 32


class LlamaCppChatEngine(HFTextMixin):
    """A GGUF model in one llama.cpp context with `parallel` sequences, driven by a scheduler thread."""

    engine_kind = "llamacpp"

    def __init__(
        self,
        gguf_path: str,
        tokenizer: Any,
        generation_config: Any,
        *,
        parallel: int = 4,
        n_threads: int | None = None,
        n_batch: int = 512,
        context_length: int | None = None,
        gpu: bool = False,
        batch_invariant: bool = False,
        prefix_cache: bool = True,
        repack: bool = True,
    ) -> None:
        import llama_cpp

        self._ll = llama_cpp
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.parallel = parallel
        self.n_batch = n_batch
        self.n_threads = n_threads or physical_cores()
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = -1 if gpu else 0
        # Batch invariance (a greedy answer must not depend on what else is decoded beside it): the CPU
        # backend's repacked weight layouts use one kernel for a single row and another for several, and
        # their sums differ in the last bits, enough to flip a near tie. Plain layouts compute each row alike.
        # repack = false is also the safe mode for CPUs whose repack kernels crash (engines/probe.py).
        model_params.use_extra_bufts = repack and not batch_invariant
        self._model = llama_cpp.llama_model_load_from_file(gguf_path.encode(), model_params)
        if not self._model:
            raise EngineLoadError(f"llama.cpp could not load {gguf_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        train = int(llama_cpp.llama_model_n_ctx_train(self._model))
        per_seq = context_length or train or 4096
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = per_seq * parallel
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_seq_max = parallel
        ctx_params.kv_unified = False  # one KV stream per sequence: each can hold a full context
        ctx_params.n_threads = self.n_threads
        ctx_params.n_threads_batch = self.n_threads
        ctx_params.no_perf = True
        # No flash attention either: its CPU kernel's sums depend on the size of the KV view, which depends on
        # the other sequences in the batch.
        if batch_invariant:
            ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.batch_invariant = batch_invariant
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise EngineLoadError(f"llama.cpp could not create a context for {gguf_path}")
        self.context_length = min(per_seq, int(llama_cpp.llama_n_ctx_seq(self._ctx)))
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        # A recurrent state cannot be cut back to a prefix: such models recompute every prompt.
        recurrent = llama_cpp.llama_model_is_recurrent(self._model) or llama_cpp.llama_model_is_hybrid(
            self._model
        )
        self.prefix_cache = prefix_cache and not recurrent
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.device = "cuda" if gpu else "cpu"
        self.eos_ids = eos_ids_of(generation_config, tokenizer)
        self._lltokenizer: Any = None
        self._lltokenizer_lock = threading.Lock()
        # Scheduler state: guarded by _cond; the context is touched only by the scheduler thread.
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._active: dict[int, _Request] = {}
        self._free_seqs = list(range(parallel))
        self._slots = [_Slot() for _ in range(parallel)]
        self._closed = False
        # Counters, for tests and metrics: sequences started / freed, decode calls, batched rows, prompt
        # tokens reused / computed, prefixes copied between sequences.
        self.stats = {
            "admitted": 0,
            "freed": 0,
            "decodes": 0,
            "rows": 0,
            "max_batch_seqs": 0,
            "cached_tokens": 0,
            "computed_tokens": 0,
            "prefix_copies": 0,
        }
        self._thread = threading.Thread(target=self._run, name="llamacpp-scheduler", daemon=True)
        self._thread.start()

    # --- the ChatEngine interface -------------------------------------------------------------------------

    def llama_tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of text (special tokens parsed), to check it agrees with render."""
        raw = text.encode()
        size = len(raw) + 16
        buffer = (self._ll.llama_token * size)()
        count = self._ll.llama_tokenize(self._vocab, raw, len(raw), buffer, size, False, True)
        if count < 0:
            raise ValueError("text too long to tokenize")
        return list(buffer[:count])

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
    ) -> Generation:
        """Queue the request for the scheduler; wait until its sequence ends (EOS, grammar, max, cancel)."""
        if not prompt.token_ids:
            raise ValueError("the prompt is empty")
        grammar = self.request_grammar(params)
        request = _Request(list(prompt.token_ids), params, cancel, emit, grammar)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._waiting.append(request)
            self._cond.notify()
        while not request.done.wait(0.05):
            if cancel.is_set():
                with self._cond:
                    self._cond.notify()  # wake an idle scheduler so it drops the request
        outcome = request.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    def close(self) -> None:
        """Stop the scheduler (ending any running requests) and free the context and model."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self._ll.llama_batch_free(self._batch)
        self._ll.llama_free(self._ctx)
        self._ll.llama_model_free(self._model)

    # --- the scheduler ------------------------------------------------------------------------------------

    def busy_sequences(self) -> int:
        """How many sequences serve a request now (for tests: 0 once every request has ended)."""
        with self._cond:
            return len(self._active)

    def kept_tokens(self) -> list[list[int]]:
        """Each sequence's tokens kept for reuse (empty while it serves a request or after a clear)."""
        with self._cond:
            return [list(slot.tokens) for slot in self._slots]

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._active:
                        self._cond.wait()
                    if self._closed:
                        break
                    self._admit()
                if self._active:
                    self._step()
        except BaseException as exc:  # a llama.cpp failure: end every request with it
            log.exception("llama.cpp scheduler failed")
            self._fail_all(exc)
            return
        self._fail_all(RuntimeError("the model was unloaded"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            self._closed = True
            requests = list(self._active.values()) + list(self._waiting)
            self._waiting.clear()
        for request in requests:
            if request.seq >= 0:
                self._release(request, keep=False)  # a failed decode may have left its cells half written
            request.outcome = exc
            request.done.set()

    def _admit(self) -> None:
        """Called with _cond held: drop cancelled waiting requests, give free sequences to the rest."""
        for request in [r for r in self._waiting if r.cancel.is_set()]:
            self._waiting.remove(request)
            request.outcome = GenerationCancelled()
            request.done.set()
        copying: set[int] = set()  # sources and targets of copies pending until the next decode: no chains
        while self._waiting and self._free_seqs:
            request = self._waiting.popleft()
            request.sampler = self.row_sampler(request.params, request.prompt, request.emit, request.grammar)
            self._place(request, copying)
            self._active[request.seq] = request
            self.stats["admitted"] += 1
            self.stats["cached_tokens"] += request.cached
            self.stats["computed_tokens"] += len(request.prompt) - request.cached

    def _place(self, request: _Request, copying: set[int]) -> None:
        """Give the request a free sequence with the longest cached prefix of its prompt worth taking."""
        prompt, free = request.prompt, self._free_seqs
        use = self.stats["admitted"] + 1
        if not self.prefix_cache:
            self._take(request, free[0], 0, None, use)
            return
        shared = {seq: common_prefix(self._slots[seq].tokens, prompt) for seq in free}
        best = max(free, key=lambda seq: (shared[seq], -self._slots[seq].used))
        if shared[best] > 0 and 2 * shared[best] >= len(self._slots[best].tokens):
            # The prompt continues what this sequence holds (a conversation's next turn, a retry).
            self._take(request, best, shared[best], None, use)
            return
        # Else the least recently used free sequence (empty ones first): the others keep their prefixes.
        seq = min(free, key=lambda s: (bool(self._slots[s].tokens), self._slots[s].used))
        own = shared[seq]
        source, length = None, own
        for other in range(self.parallel if not self.batch_invariant else 0):
            # Batch invariant: no copies (a copied prefix was measured to change the last bits of logits).
            if seq in copying or other == seq or other in copying:
                continue
            running = self._active.get(other)
            held = self._reusable(running) if running is not None else self._slots[other].tokens
            found = common_prefix(held, prompt)
            if found > length and found >= own + MIN_COPY_TOKENS:
                source, length = other, found
        if source is not None:
            copying.update((seq, source))
        self._take(request, seq, length, source, use)

    def _take(self, request: _Request, seq: int, reuse: int, source: int | None, use: int) -> None:
        """Hand `seq` to the request with the KV of its first `reuse` prompt tokens (copied from source)."""
        self._free_seqs.remove(seq)
        slot = self._slots[seq]
        slot.tokens, slot.used = [], use
        memory, ll = self._memory, self._ll
        # At least the last prompt token is decoded: its logits give the first answer token.
        reuse = min(reuse, len(request.prompt) - 1)
        if self.batch_invariant:
            reuse = reuse // self.n_batch * self.n_batch  # whole chunks only (see _reusable)
        if source is not None:
            # Sequences live in separate KV streams: the copy takes the whole stream (done at the next
            # decode), and what lies past the shared prefix is dropped below.
            ll.llama_memory_seq_cp(memory, source, seq, -1, -1)
            self.stats["prefix_copies"] += 1
        if reuse > 0:
            kept = ll.llama_memory_seq_rm(memory, seq, reuse, -1)
            # The cells of positions 0..reuse-1 must all be there (a sliding window may have dropped some).
            if (
                not kept
                or ll.llama_memory_seq_pos_min(memory, seq) != 0
                or ll.llama_memory_seq_pos_max(memory, seq) != reuse - 1
            ):
                reuse = 0
        if reuse == 0:
            ll.llama_memory_seq_rm(memory, seq, -1, -1)
        request.seq, request.fed, request.cached = seq, reuse, reuse

    def _reusable(self, request: _Request) -> list[int]:
        """The tokens of the request's sequence whose KV a later prompt may reuse.

        llama.cpp's numerics depend on where prompt chunks start, and a generated token decoded alone differs
        in the last bits from the same token prefilled in a chunk. Batch invariant: only whole chunks of
        `n_batch` prompt tokens from position 0 are reused, so that every chunk a cached request still feeds
        starts where an uncached one's would, and a greedy answer is the same with the cache as without.
        """
        if self.batch_invariant:
            return request.prompt[: request.fed // self.n_batch * self.n_batch]
        return request.kv_tokens()

    def _release(self, request: _Request, keep: bool = True) -> None:
        """Free the request's sequence; its KV cells stay for reuse when the prefix cache is on and keep."""
        tokens = self._reusable(request) if keep and self.prefix_cache else []
        if not tokens:
            self._ll.llama_memory_seq_rm(self._memory, request.seq, -1, -1)
        elif len(tokens) < request.fed + len(request.decoded):  # cells no prompt may reuse: freed now
            self._ll.llama_memory_seq_rm(self._memory, request.seq, len(tokens), -1)
        with self._cond:
            self._slots[request.seq].tokens = tokens
            self._active.pop(request.seq, None)
            self._free_seqs.append(request.seq)
            self._free_seqs.sort()
            self.stats["freed"] += 1

    def _finish(self, request: _Request, reason: FinishReason) -> None:
        assert request.sampler is not None
        try:
            request.sampler.flush()
        finally:
            self._release(request)
            request.outcome = Generation(reason, request.sampler.produced, cached_tokens=request.cached)
            request.done.set()

    def _step(self) -> None:
        """One llama_decode: a prompt chunk of an admitted request, else a token per running sequence."""
        batch = self._batch
        rows: list[tuple[int, _Request]] = []
        fed: list[tuple[_Request, int]] = []  # generated tokens decoded in this step, for the prefix cache
        n = 0
        for request in list(self._active.values()):
            if request.cancel.is_set():
                self._finish(request, "stop")
        active = sorted(self._active.values(), key=lambda r: r.seq)
        # A step either decodes one token for every running sequence or feeds one prompt chunk, never both:
        # tokens of several sequences that each bring several rows are split by llama.cpp into ubatches whose
        # numerics differ from a prompt fed alone (measured: logits off by 0.3 on the default model).
        # Prompts being read take turns, a chunk each (the one fed longest ago first), so a short prompt
        # that comes while a long one is read waits about one chunk, not the whole long prompt.
        prefill = min(
            (r for r in active if r.next_token is None), key=lambda r: (r.fed_at, r.seq), default=None
        )
        for request in active:
            if request.next_token is None or (prefill is not None and self.batch_invariant):
                continue
            self._put(n, request.next_token, request.position, request.seq, True)
            rows.append((n, request))
            fed.append((request, request.next_token))
            n += 1
        if prefill is not None:
            take = min(len(prefill.prompt) - prefill.fed, self.n_batch - n)
            for i in range(take):
                pos = prefill.fed + i
                last = pos == len(prefill.prompt) - 1
                self._put(n, prefill.prompt[pos], pos, prefill.seq, last)
                if last:
                    rows.append((n, prefill))
                n += 1
            prefill.fed += take
            prefill.fed_at = self.stats["decodes"]
        if n == 0:
            return
        batch.n_tokens = n
        result = self._ll.llama_decode(self._ctx, batch)
        if result != 0:
            raise RuntimeError(f"llama_decode failed with status {result}")
        self.stats["decodes"] += 1
        self.stats["rows"] += len(rows)
        for request, token in fed:
            request.decoded.append(token)
        self.stats["max_batch_seqs"] = max(self.stats["max_batch_seqs"], len(rows))
        for index, request in rows:
            try:
                self._sample(index, request)
            except Exception as exc:  # a failing emit or grammar: end this request only
                request.next_token = None
                self._release(request)
                request.outcome = exc
                request.done.set()

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if logits else 0

    def _sample(self, index: int, request: _Request) -> None:
        """Pick the next token from this row's logits, emit its text, and end the sequence when due."""
        assert request.sampler is not None
        pointer = self._ll.llama_get_logits_ith(self._ctx, index)
        logits = torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(1, self.vocab_size)))
        reason = request.sampler.step(logits)
        if reason is not None:
            self._finish(request, reason)
            return
        # The first sampled token sits right after the prompt, each later one after the one before.
        request.position = len(request.prompt) if request.next_token is None else request.position + 1
        request.next_token = request.sampler.token


def _quiet_llama_logs() -> None:
    """llama-cpp-python prints every llama.cpp log line unless its logger is set; keep errors only."""
    logger = logging.getLogger("llama-cpp-python")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


def load_llamacpp(
    gguf_path: str,
    hf_folder: str | None,
    options: LlamaCppOptions | dict[str, Any] | None = None,
    device: str = "auto",
    context_length: int | None = None,
) -> LlamaCppChatEngine:
    """Load a GGUF file with llama.cpp; the tokenizer comes from hf_folder, else from the GGUF itself."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineLoadError(
            f"engine 'llamacpp' needs llama-cpp-python: make install-llamacpp ({exc})"
        ) from None
    if not isinstance(options, LlamaCppOptions):
        try:
            options = LlamaCppOptions.model_validate(options or {})
        except ValidationError as exc:
            raise EngineLoadError(f"bad llamacpp options: {exc.errors()[0]['msg']}") from None
    parallel, n_batch, batch_invariant = options.parallel, options.n_batch, options.batch_invariant
    n_threads = options.n_threads or physical_cores()
    if device not in ("auto", "cpu") and not llama_cpp.llama_supports_gpu_offload():
        raise EngineLoadError(
            f"device {device!r} was asked for, but this llama-cpp-python build has no GPU support; "
            'reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" (or -DGGML_METAL=on)'
        )
    gpu = device != "cpu" and bool(llama_cpp.llama_supports_gpu_offload())
    _quiet_llama_logs()
    started = time.monotonic()
    path = Path(gguf_path)
    if hf_folder is not None:
        tokenizer = AutoTokenizer.from_pretrained(hf_folder)
        try:
            generation_config = GenerationConfig.from_pretrained(hf_folder)
        except OSError:
            generation_config = GenerationConfig()  # type: ignore[no-untyped-call]
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        generation_config = GenerationConfig()  # type: ignore[no-untyped-call]
        if tokenizer.eos_token_id is not None:
            generation_config.eos_token_id = tokenizer.eos_token_id
    engine = LlamaCppChatEngine(
        str(path),
        tokenizer,
        generation_config,
        parallel=parallel,
        n_threads=n_threads,
        n_batch=n_batch,
        context_length=context_length,
        gpu=gpu,
        batch_invariant=batch_invariant,
        prefix_cache=options.prefix_cache,
        repack=options.repack,
    )
    log.info(
        "loaded %s with llama.cpp on %s in %.1f s: %d slots of %d tokens, %d threads",
        path.name,
        engine.device,
        time.monotonic() - started,
        parallel,
        engine.context_length,
        engine.n_threads,
    )
    return engine


def load(spec: ModelSpec, config: Config, options: LlamaCppOptions) -> LlamaCppChatEngine:
    """The catalog's loader: a GGUF source (embedded or a .gguf file); HF's tokenizer renders prompts."""
    from ai_stack.sources import EMBEDDED, assemble_embedded, converted_dir, is_converted, parse_source

    source = parse_source(spec.source, config.base_dir)
    if source.kind == "embedded":
        gguf = assemble_embedded(EMBEDDED[source.value], config.server.home, progress=False)
    elif source.kind == "gguf":
        gguf = source.path
        if not gguf.exists():
            raise ValueError(f"GGUF file {gguf} does not exist")
    else:
        raise ValueError(
            f"engine 'llamacpp' needs a GGUF source (embedded: or a .gguf file), not {spec.source!r}"
        )
    # The bf16 conversion folder (made by `ai-stack prepare`) holds the tokenizer files; else read the GGUF's.
    folder = converted_dir(source, config.server.home)
    return load_llamacpp(
        str(gguf),
        str(folder) if is_converted(folder) else None,
        options,
        device=spec.device,
        context_length=spec.context_length,
    )
