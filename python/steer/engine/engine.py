"""SteerEngine: STEER decoding of many requests at once over one paged KV cache.

The request-level API, in vLLM's words::

    request_id = engine.add_request(Request(prompt_ids, negative_ids, max_new_tokens=64))
    while engine.has_unfinished_requests():
        for output in engine.step():          # one RequestOutput per request that advanced
            ...output.new_token_ids, output.finished, output.finish_reason
    engine.abort_request(request_id)          # its KV blocks are free when this returns

One step is schedule, run, sample, postprocess: the scheduler plans which groups run and what
each stream computes; the model runner runs the expert's forward over every prompt and negative
stream of the plan and the base's over its base streams (one forward for a LoRA expert), writing
the [G, K, V] logits; the fused sampler draws one token per group; the scheduler appends it to
all K streams and frees the finished groups. ``generate()`` and ``run()`` are short loops over
``step()``.

Requests are checked against the model before they take a KV block (ids and EOS in the
vocabulary, every stream within the context length). A step that raises frees the blocks of
every request the engine holds (their KV may be half written) and drops them; a ``generate()``
or ``run()`` that stops early (an exception, a KeyboardInterrupt, a generator closed) aborts the
requests it added. The block manager outlives every call, so a leak would starve every later one.

With ``SteerConfig(per_example_kv=True)`` (or a request's ``negative_chunks``) a joined negative
context is assembled from each example's own cached KV, re-rotated to its offset, instead of
prefilled (steer.engine.chunks): an approximation, no example attending to the others.

``engine.step_stats`` (steer.engine.scheduler.StepStats) counts the steps by kind (prefill,
eager decode, CUDA-graph decode) with their wall time, and ``engine.prefix_cache_stats`` the
context tokens found cached: where a run's time went, without a profiler.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from steer.config import SteerConfig
from steer.engine.attention import PagedAttention
from steer.engine.block_manager import BlockManager
from steer.engine.cuda_graph import DecodeGraphs
from steer.engine.kv_cache import PagedKVCache
from steer.engine.model_runner import ModelRunner, expert_slots, slot_weights
from steer.engine.models import per_example_kv_unsupported, runner_for
from steer.engine.projection import adapted_weight_bytes
from steer.engine.pool import NegativePool
from steer.engine.scheduler import Scheduler, StepStats
from steer.engine.sequence import Request, SampleGroup
from steer.model_info import context_length, shared_vocabulary_size
from steer.ops import dispatch, exempt_from_negatives, read_tokens, sample_deferred
from steer.ops.errors import LogitsError

DEFAULT_KV_CACHE_MEMORY = 512 * 2**20
# merge_adapters="auto" merges up to this many bytes of adapted weights (see _should_merge).
MERGE_ADAPTERS_MAX_BYTES = 256 * 2**20
FUSE_PROJECTIONS_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Result:
    token_ids: list[int]
    finish_reason: str  # "eos" or "length"
    negative_example_ids: tuple[int, ...] = ()  # pool indices of the negatives it used (run())
    seed: int | None = None


@dataclass(frozen=True)
class RequestOutput:
    """What one step did for one request: the token(s) it added, all its tokens so far, and
    whether it is done ("eos", "length", "abort", or "error": the sampler refused its logits,
    ``error`` saying why)."""

    request_id: object
    new_token_ids: list[int]
    token_ids: list[int]
    finished: bool
    finish_reason: str | None = None
    error: str | None = None

    def checked(self, what: str) -> RequestOutput:
        """This output, or a ValueError naming ``what`` (the caller's name for the request) when
        the sampler refused its logits: a loop that takes every finished output for a result must
        not take a failed request's partial tokens for one."""
        if self.error is not None:
            raise ValueError(f"{what}: {self.error}")
        return self


class SteerEngine:
    """Batched STEER decoding of Hugging Face causal LMs: Llama 2 / 3.x, Mistral, Qwen2, Qwen3,
    Gemma 2, Gemma 3 (text), Phi-3, OLMo 2, SmolLM3 and GPT-2 (``steer.engine.models``).

    Args:
        expert: the fine-tuned model: a transformers causal LM, or a PEFT model with LoRA adapters.
        base: the model it was tuned from (same tokenizer and architecture). Leave it None when
            ``expert`` is a PEFT LoRA model: the base is then the same weights with the adapters
            off, and expert and base rows run as one forward (each weight read once per step).
            Also None when no request uses gamma > 0 (no base stream).
        config: the STEER and sampling hyperparameters (``SteerConfig``): every request's
            defaults; a request may override gamma, eta, temperature, top_k and top_p.
        device, dtype: where and in what precision to run; the models are moved there in place
            (``model.to``). Default: where the expert's weights are.
        max_batch_tokens: most new tokens in one forward (prefills of newly admitted groups plus one
            per decoding row); None for no limit. A group whose prefill alone exceeds it still runs,
            alone.
        kv_cache_memory: bytes of the paged KV pool shared by every stream of both models.
        block_size: tokens per KV block (a power of two); prefixes are shared at this granularity.
        max_batch_rows: most streams (rows) in one forward.
        vocab_size: the tokenizer size, when expert and base LM heads are padded differently.
        backend: the sampler backend (``steer.backends("sample")``; "auto" picks the fastest).
        attention_backend: "auto" (C++ on the CPU, Triton on a GPU), "cpp", "triton" or "torch".
        decode_graphs: "auto" replays decode steps from CUDA graphs on a GPU with Triton
            attention (steer.engine.cuda_graph) and runs eagerly elsewhere; "capture" insists;
            "off" never; "static" runs the graphs' padded static batches without capturing (tests).
            With graphs one KV block is kept back as the padding rows' scratch block.
        merge_adapters: how a LoRA expert's adapters run (steer.engine.projection): "auto" keeps a
            merged copy of each adapted weight on the CPU for a float32 / float64 model whose
            adapted weights take at most MERGE_ADAPTERS_MAX_BYTES (there a step is bound by its
            number of matmul calls, not by reading weights; the copy costs that much memory), for
            the calls whose rows are all the expert's, and applies the low-rank deltas everywhere
            else; True or False insist. Merging a half-precision model is refused: its
            rounding would erase most of a small delta.
        fuse_projections: whether the Llama family's q, k and v projections run as one matmul, and
            gate and up as another (steer.engine.projection.fuse_projections; their LoRA adapters
            as one delta). "auto" fuses on the CPU for a model of at most
            FUSE_PROJECTIONS_MAX_BYTES of parameters (a small model's step costs its number of
            calls; the fused weights are copies); True or False insist. Other families run their
            own layout (GPT-2's attention is fused already).
    """

    def __init__(
        self,
        expert,
        base=None,
        *,
        config: SteerConfig | None = None,
        device=None,
        dtype: torch.dtype | None = None,
        max_batch_tokens: int | None = None,
        kv_cache_memory: int = DEFAULT_KV_CACHE_MEMORY,
        block_size: int = 16,
        max_batch_rows: int = 64,
        vocab_size: int | None = None,
        backend: str = "auto",
        attention_backend: str = "auto",
        decode_graphs: str = "auto",
        merge_adapters: str | bool = "auto",
        fuse_projections: str | bool = "auto",
    ) -> None:
        self.config = config if config is not None else SteerConfig()
        if device is not None or dtype is not None:
            for model in (expert, base):
                if model is not None:
                    model.to(device=device, dtype=dtype)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size!r}")
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ValueError(f"max_batch_tokens must be None or an int >= 1, got {max_batch_tokens!r}")
        self.vocab_size = shared_vocabulary_size(expert, expert if base is None else base, vocab_size)
        self.passes = self._forward_passes(expert, base, self._should_merge(merge_adapters, expert), fuse_projections)
        self.has_base = any("base" in namespaces for _, namespaces in self.passes)
        # why joined negative contexts cannot be assembled from per-example KV here, or None
        self.per_example_kv_unsupported = per_example_kv_unsupported(expert)
        if self.config.per_example_kv and self.per_example_kv_unsupported:
            raise ValueError(f"per_example_kv: {self.per_example_kv_unsupported}")
        self.max_context_length = self._max_context_length()
        parameter = next(expert.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        kv_shape = self.passes[0][0].kv_shape
        per_block = PagedKVCache.bytes_per_block(kv_shape, block_size, self.dtype)
        num_blocks = kv_cache_memory // per_block
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory={kv_cache_memory} bytes holds no KV block of {per_block} bytes")
        cache = PagedKVCache(kv_shape, num_blocks, block_size, dtype=self.dtype, device=self.device)
        attention = PagedAttention(cache, attention_backend)
        graphs = self._decode_graphs(decode_graphs, attention, num_blocks, block_size, max_batch_rows)
        if graphs is not None:
            num_blocks -= 1  # the last block is the padding rows' scratch
            if num_blocks < 1:
                raise ValueError(f"kv_cache_memory={kv_cache_memory} bytes holds no KV block besides the CUDA graphs' scratch block")
        self.scheduler = Scheduler(BlockManager(num_blocks, block_size), max_rows=max_batch_rows, max_tokens=max_batch_tokens)
        self.runner = ModelRunner(self.passes, attention, self.device, graphs)
        self.max_batch_rows, self.max_batch_tokens = max_batch_rows, max_batch_tokens
        self.backend = dispatch.resolve_name(backend, "sample", self.device)  # once, not per step
        self._groups: dict[object, SampleGroup] = {}  # request id -> its group, until it finishes
        self.step_stats = StepStats()
        self._request_numbers = itertools.count()
        self._seed = self._draw_seed()

    def _decode_graphs(self, mode: str, attention: PagedAttention, num_blocks: int, block_size: int, max_rows: int):
        """The DecodeGraphs of this engine, or None (every step eager)."""
        modes = ("auto", "capture", "off", "static")
        if mode not in modes:
            raise ValueError(f"decode_graphs must be one of {modes}, got {mode!r}")
        if mode == "auto":
            mode = "capture" if self.device.type == "cuda" and attention.backend == "triton" else "off"
        if mode == "off":
            return None
        if mode == "capture" and (self.device.type != "cuda" or attention.backend != "triton"):
            raise ValueError(f"decode_graphs='capture' needs a CUDA device and Triton attention, got {self.device} and {attention.backend!r}")
        width = -(-(self.max_context_length or num_blocks * block_size) // block_size)
        return DecodeGraphs(block_size, max_rows, min(width, num_blocks), num_blocks - 1, self.device, self.dtype, mode=mode)

    @staticmethod
    def _should_merge(mode, expert) -> bool:
        """Whether the expert's LoRA projections run through merged copies (``merge_adapters``)."""
        if mode not in ("auto", True, False):
            raise ValueError(f"merge_adapters must be 'auto', True or False, got {mode!r}")
        parameter = next(expert.parameters())
        full_precision = parameter.dtype in (torch.float32, torch.float64)
        if mode is True and not full_precision:
            raise ValueError(f"merge_adapters=True: merging LoRA adapters into {parameter.dtype} weights would round most of the deltas away; use a float32 model")
        if mode == "auto":
            return full_precision and parameter.device.type == "cpu" and adapted_weight_bytes(expert) <= MERGE_ADAPTERS_MAX_BYTES
        return bool(mode)

    @staticmethod
    def _should_fuse(mode, model) -> bool:
        """Whether ``model``'s runner fuses its projections (``fuse_projections``)."""
        if mode not in ("auto", True, False):
            raise ValueError(f"fuse_projections must be 'auto', True or False, got {mode!r}")
        if mode != "auto":
            return bool(mode)
        parameters = list(model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in parameters)
        return parameters[0].device.type == "cpu" and weight_bytes <= FUSE_PROJECTIONS_MAX_BYTES

    def _forward_passes(self, expert, base, merge_adapters: bool, fuse_projections) -> list[tuple]:
        """(runner, namespaces) of each forward of a step; a runner's adapters apply to the rows of
        its first namespace. One pass when the base is the expert with its adapters off."""
        expert_runner = runner_for(expert, merge_adapters=merge_adapters, fuse_projections=self._should_fuse(fuse_projections, expert))
        if base is None:
            if expert_runner.has_adapters:
                return [(expert_runner, ("expert", "base"))]
            if self.config.gamma == 0:
                return [(expert_runner, ("expert",))]
            raise ValueError(
                "base is None but the expert has no active LoRA adapter to switch off: pass the base model, "
                "or a PEFT LoRA model as the expert (or use gamma=0, which needs no base)"
            )
        base_runner = runner_for(base, fuse_projections=self._should_fuse(fuse_projections, base))
        if expert_runner.kv_shape != base_runner.kv_shape:
            raise ValueError(f"expert and base must share an architecture: KV shapes {expert_runner.kv_shape} vs {base_runner.kv_shape}")
        return [(expert_runner, ("expert",)), (base_runner, ("base",))]

    def _max_context_length(self) -> int | None:
        """The most positions a stream may reach: the shortest context of the models that run."""
        limits = [context_length(runner.model.config) for runner, _ in self.passes]
        return min((limit for limit in limits if limit is not None), default=None)

    @property
    def blocks(self) -> BlockManager:
        """The paged KV blocks of every stream (the scheduler's, for the engine's lifetime)."""
        return self.scheduler.blocks

    # -- the request-level API ---------------------------------------------------------------------

    def add_request(self, request: Request, request_id=None) -> object:
        """Queue a request; it joins the batch at the next step with room for it. Returns its id
        (``request_id``, any hashable not in use, or a fresh int).

        A ValueError names the first bad field (the request's ids against this model's
        vocabulary and context, a gamma > 0 without a base model) and queues nothing."""
        if request_id is not None and self._in_use(request_id):
            raise ValueError(f"request_id {request_id!r} is already in use by an unfinished request")
        # The group id keys the noise of a request without its own seed: the engine's sequence
        # number, never a hash of the caller's id (a str's hash changes from process to process).
        group_id = next(self._request_numbers)
        while request_id is None and group_id in self._groups:  # an int id the caller chose
            group_id = next(self._request_numbers)
        group = self._group(request, group_id if request_id is None else request_id, group_id=group_id, seed=self._seed)
        self._enqueue(group)
        return group.request_id

    def abort_request(self, request_id) -> bool:
        """Stop a request now, wherever it is; its KV blocks are free when this returns. False
        when no unfinished request has this id (it finished, or never was)."""
        if not self._in_use(request_id):
            return False
        group = self._groups.pop(request_id)
        self.scheduler.abort(group)
        return True

    def _in_use(self, request_id) -> bool:
        """Whether an unfinished request has this id; a ValueError for an id that cannot be one."""
        try:
            return request_id in self._groups
        except TypeError:  # unhashable
            raise ValueError(f"request_id must be hashable (a str or an int, say), got {type(request_id).__name__}") from None

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work

    def num_unfinished_requests(self) -> int:
        return len(self._groups)

    @property
    def prefix_cache_stats(self):
        """steer.engine.scheduler.PrefixCacheStats: per stream role, the context tokens admitted
        and those found in the prefix cache, since the engine was made."""
        return self.scheduler.cache_stats

    def step(self) -> list[RequestOutput]:
        """Decode one token for every running request (prefilling the newly admitted ones); one
        RequestOutput per request that advanced. [] when there is nothing to do.

        A request whose logits the sampler refuses (NaN, +inf, or no token with a finite score)
        finishes alone, with finish_reason "error" and the sampler's message in ``error``; its
        blocks are freed and none of them stays a cached prefix; the others go on. If the forward
        or the sampler raises anything else, every request the engine holds is dropped with its
        blocks (their KV may be half written: no block of theirs stays a cached prefix) and the
        error propagates; later requests run normally."""
        if not self.scheduler.has_work:
            return []
        start, graphed = time.perf_counter(), self.runner.graph_forwards
        try:
            plan = self.scheduler.schedule()
            tokens_computed, rows, assembles = plan.size()
            drawn, tokens, refused = self._sample(plan.groups, self.runner.run(plan))
        except BaseException:
            for group in self.scheduler.release_all(computed=False):
                self._groups.pop(group.request_id, None)
            raise
        failed = {}
        for row, error in refused:
            group = plan.groups[row]
            self.scheduler.fail(group)
            self._groups.pop(group.request_id, None)
            failed[id(group)] = str(error)
        finished = set(map(id, self.scheduler.postprocess([plan.groups[r] for r in drawn], tokens)))
        # every stream computes at least one token: more tokens than rows means some stream prefilled
        kind = "prefill" if tokens_computed > rows or assembles else "graph" if self.runner.graph_forwards > graphed else "decode"
        self.step_stats.add(kind, time.perf_counter() - start, tokens_computed, rows)
        outputs = []
        for group in plan.groups:
            if id(group) in finished:
                self._groups.pop(group.request_id, None)
            done = id(group) in finished or id(group) in failed
            outputs.append(self._output(group, done, failed.get(id(group))))
        return outputs

    @staticmethod
    def _output(group: SampleGroup, finished: bool, error: str | None = None) -> RequestOutput:
        new = group.generated[group.num_emitted :]
        group.num_emitted = len(group.generated)
        return RequestOutput(group.request_id, new, list(group.generated), finished, group.finish_reason if finished else None, error)

    # -- loops over step() -------------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Result]:
        """Decode every request to EOS or its length limit; results in request order.

        Every request is checked before any starts: a ValueError names the first bad field
        (``requests[i].prompt_ids[j]``, ...) and leaves the KV cache as it was.
        """
        self._check_idle("generate()")
        requests = list(requests)
        seed = self._draw_seed()
        groups = [self._group(r, ("generate", i), group_id=i, seed=seed, where=f"requests[{i}].") for i, r in enumerate(requests)]
        try:
            for group in groups:
                self._enqueue(group)
            while self.scheduler.has_work:
                for output in self.step():
                    output.checked(f"requests[{output.request_id[1]}]")
        finally:
            self._abort_all()
        return [Result(list(g.generated), g.finish_reason) for g in groups]

    def run(
        self,
        prompt_ids: list[int],
        n: int,
        pool: NegativePool,
        *,
        min_new_tokens: int = 0,
        eos_token_id: int | None = None,
        seed_offset: int = 0,
    ) -> Iterator[Result]:
        """Generate ``n`` samples of one prompt, yielding each as it finishes.

        The batch is kept full: a new sample starts as soon as there is room, drawing
        ``config.num_negatives`` examples from ``pool`` (framed as the pool says), and every
        finished sample is added to ``pool`` (without its EOS) before the next one starts. Sample i
        is seeded with ``config.seed + seed_offset + i`` when the config has a seed, so a run is
        reproducible, and a resumed run (``seed_offset`` = samples already started) does not
        repeat the seeds it used before.

        The arguments are checked at the call, before any sample starts; a drawn negative context
        that does not fit the model's context stops the run with a ValueError naming it. Closing
        the iterator early gives back the KV blocks of the samples still running.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset < 0:
            raise ValueError(f"seed_offset must be an int >= 0, got {seed_offset!r}")
        template = Request(
            prompt_ids, [], self.config.max_new_tokens, min_new_tokens=min_new_tokens, eos_token_id=eos_token_id, eta=0.0
        )
        self._check_request(template)
        self._check_idle("run()")
        return self._samples(dataclasses.replace(template, eta=None), n, pool, seed_offset)

    def _samples(self, template: Request, n: int, pool: NegativePool, seed_offset: int) -> Iterator[Result]:
        """run()'s generator: ``template`` is the checked request of every sample, less its
        negatives and seed."""
        default_seed = self._draw_seed()
        drawn: dict[int, list[int]] = {}
        share, shared = self.config.share_negatives, None  # shared: the current share group's draw
        started = 0
        try:
            while started < n or self.scheduler.has_work:
                while started < n and not self.scheduler.waiting:  # top up: one group waits for room
                    if started % share == 0:
                        shared = None
                    request, drawn[started] = self._sample_request(template, started, pool, default_seed + seed_offset + started, shared)
                    shared = drawn[started]
                    group = self._group(request, ("run", started), group_id=started, seed=default_seed, checked=True)
                    self._enqueue(group)
                    started += 1
                for output in self.step():
                    if not output.finished:
                        continue
                    tokens, reason = output.token_ids, output.finish_reason
                    index = output.request_id[1]
                    output.checked(f"sample {index}")  # the samples yielded so far stand
                    pool.add(tokens[:-1] if reason == "eos" else tokens)
                    yield Result(list(tokens), reason, tuple(drawn.pop(index)), default_seed + seed_offset + index)
        finally:  # also when the consumer stops early: GeneratorExit arrives at the yield
            self._abort_all()

    def _sample_request(self, template: Request, index: int, pool: NegativePool, seed: int,
                        indices: list[int] | None = None) -> tuple[Request, list[int]]:  # fmt: skip
        """Sample ``index``'s request, with negatives drawn from the pool as it stands now (or the
        pool examples ``indices``: its share group's draw), and the pool indices used."""
        config = self.config
        if indices is None:
            indices = pool.draw(config.num_negatives) if config.eta != 0 else []
        negatives = pool.negative_streams(indices, config.negative_mode) if indices else []
        chunks = [pool.negative_chunks(indices)] if indices and config.per_example_kv else []
        request = dataclasses.replace(template, negative_ids=negatives, negative_chunks=chunks, seed=seed)
        for stream, negative in enumerate(request.negative_ids):
            name = f"sample {index}'s negative_ids[{stream}] (pool examples {indices})"
            self._check_stream(name, negative, request.max_new_tokens)
        return request, indices

    def _enqueue(self, group: SampleGroup) -> None:
        self.scheduler.add(group)
        self._groups[group.request_id] = group

    def _check_idle(self, call: str) -> None:
        if self._groups:
            raise RuntimeError(
                f"{call} drives the engine's steps itself, but {len(self._groups)} request(s) added with add_request() "
                "are unfinished: step() them to the end or abort_request() them first"
            )

    def _abort_all(self) -> None:
        for request_id in list(self._groups):
            self.abort_request(request_id)

    def _draw_seed(self) -> int:
        """Requests without a seed share one, drawn per call (torch.manual_seed makes it
        repeatable) unless the config has one; their noise still differs, since it is keyed by
        the group as well."""
        return self.config.seed if self.config.seed is not None else int(torch.randint(0, 2**62, ()))

    # -- request checks -----------------------------------------------------------------------------

    def _group(self, request: Request, request_id, *, group_id: int, seed: int, where: str = "", checked: bool = False) -> SampleGroup:
        """The checked request's sample group, defaults from the engine's config."""
        if not checked:
            self._check_request(request, where)
        group = SampleGroup.for_request(
            group_id, request, self.config, rescale=self.config.rescale, request_id=request_id,
            seed=request.seed if request.seed is not None else seed,
        )  # fmt: skip
        self.scheduler.check_fits(group)
        return group

    def check_request(self, request: Request) -> None:
        """The checks of ``add_request`` (a ValueError naming the first bad field) without queueing
        anything. They read only what the engine was built with, so a server's handler thread may
        call this while the engine's own thread steps it."""
        self._group(request, None, group_id=0, seed=0)

    def _check_request(self, request: Request, where: str = "") -> None:
        """What only the engine can check (Request has checked the types): every id and the EOS in
        the model's vocabulary, every stream it will run within the model's context, a base for
        gamma > 0. ``where`` prefixes the field in the message ("requests[3].")."""
        if not isinstance(request, Request):
            raise ValueError(f"{where.rstrip('.') or 'request'} must be a steer.Request, got {type(request).__name__}")
        gamma, eta = request.setting("gamma", self.config), request.setting("eta", self.config)
        if gamma != 0 and not self.has_base:
            raise ValueError(f"{where}gamma = {gamma} needs a base model, and this engine has none (give it one, or a LoRA expert)")
        if self.config.rescale and eta >= 1:
            raise ValueError(f"{where}eta = {eta}: the engine's config rescales by 1 / (1 - eta), so eta must be < 1")
        self._check_stream(f"{where}prompt_ids", request.prompt_ids, request.max_new_tokens)
        if eta != 0:  # with eta = 0 the negatives never run
            if not request.negative_ids:
                raise ValueError(f"{where}negative_ids is empty, but eta = {eta} needs at least one negative stream")
            for index, negative in enumerate(request.negative_ids):
                self._check_stream(f"{where}negative_ids[{index}]", negative, request.max_new_tokens)
            if any(request.negative_chunks) and self.per_example_kv_unsupported:
                raise ValueError(f"{where}negative_chunks: {self.per_example_kv_unsupported}")
        if request.eos_token_id is not None and request.eos_token_id >= self.vocab_size:
            raise ValueError(f"{where}eos_token_id = {request.eos_token_id} {self._not_in_vocabulary()}")
        if request.setting("eos_exempt", self.config) and eta != 0 and request.eos_token_id is None:
            raise ValueError(f"{where}eos_token_id is None, but eos_exempt needs the EOS token to exempt it from the negatives")

    def _check_stream(self, name: str, tokens: list[int], max_new_tokens: int) -> None:
        """Ids below the vocabulary size (the embedding would raise an IndexError mid-forward) and
        room in the context for the stream's tokens and all it may generate."""
        if max(tokens) >= self.vocab_size:
            position = next(i for i, token in enumerate(tokens) if token >= self.vocab_size)
            raise ValueError(f"{name}[{position}] = {tokens[position]} {self._not_in_vocabulary()}")
        limit, positions = self.max_context_length, len(tokens) + max_new_tokens
        if limit is not None and positions > limit:
            raise ValueError(
                f"{name}: {len(tokens)} tokens + max_new_tokens {max_new_tokens} = {positions} positions, "
                f"{positions - limit} over the model's context length of {limit}"
            )

    def _not_in_vocabulary(self) -> str:
        return f"is not a token id of this model's vocabulary [0, {self.vocab_size})"

    # -- sampling ----------------------------------------------------------------------------------

    def _sample(self, groups: list[SampleGroup], logits: torch.Tensor) -> tuple[list[int], list[int], list[tuple[int, LogitsError]]]:
        """One token per group, drawn by the fused sampler from the [G, K, V] logits: (the rows
        drawn, their tokens, and (row, error) for each row the sampler refused).

        A row's NaN, +inf or lack of any finite score comes from its own request's numbers (a
        half-precision overflow on its prompt, say), so it fails that request alone: the rows
        left are drawn again without it, and since a row's noise is keyed by its seed, key and
        step, never by its place in the batch, they draw the tokens they would have drawn."""
        weights, keys = self._prepare_rows(groups, logits)
        rows: list[int] = list(range(len(groups)))
        failed: list[tuple[int, LogitsError]] = []
        while rows:
            try:
                if len(rows) == len(groups):
                    return rows, self._draw_rows(groups, logits, weights, keys), failed
                _, *prepared = self._rows_of(rows, logits, weights, keys)
                return rows, self._draw_rows([groups[r] for r in rows], *prepared), failed
            except LogitsError as error:
                failed.append((rows.pop(error.row), error))
        return rows, [], failed

    def _prepare_rows(self, groups: list[SampleGroup], logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What every group's row needs before its draw, once per step: EOS banned before
        min_new_tokens and exempted from the negatives (both in ``logits``, in place), and the
        rows' weights (host) and noise keys (device)."""
        banned = [(g_index, g.request.eos_token_id) for g_index, g in enumerate(groups)
                  if g.request.eos_token_id is not None and len(g.generated) < g.request.min_new_tokens]  # fmt: skip
        if banned:  # no EOS before min_new_tokens
            rows, columns = (self._on_device(values) for values in zip(*banned))
            logits[rows, 0, columns] = -math.inf
        weights = torch.tensor(slot_weights(groups, logits.shape[1]), dtype=torch.float32)
        exempt = [g.exempt_token for g in groups]
        if any(token >= 0 for token in exempt):  # eos_exempt: the contrast decides EOS, not the negative slots
            negative_slots = range(1, expert_slots(groups))
            exempt_from_negatives(logits, weights, self._on_device(exempt), negative_slots, vocab_size=self.vocab_size, in_place=True)
        keys = self._on_device(
            [[g.seed for g in groups], [self._row_key(g) for g in groups], [len(g.generated) for g in groups]]
        )
        return weights, keys

    def _draw_rows(self, groups: list[SampleGroup], logits: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> list[int]:
        """The groups' tokens from their prepared rows: one sampler call per distinct (temperature,
        top_k, top_p). Every host-to-device copy here is asynchronous, and the sampler's errors
        are read with the tokens: that one read-back is the step's one host synchronisation."""
        # The weights stay on the host: the sampler checks them there and moves them (no sync).
        by_sampling: dict = {}
        for g_index, group in enumerate(groups):
            by_sampling.setdefault(group.sampling, []).append(g_index)
        if len(by_sampling) == 1:
            drawn = self._draw(next(iter(by_sampling)), logits, weights, keys)
            return read_tokens(drawn.tokens, [drawn.errors])
        tokens = torch.empty(len(groups), dtype=torch.long, device=self.device)
        recorded = []
        for sampling, rows in by_sampling.items():  # requests with different filters in one step
            index, *prepared = self._rows_of(rows, logits, weights, keys)
            drawn = self._draw(sampling, *prepared, rows=rows)
            tokens[index] = drawn.tokens
            recorded.append(drawn.errors)
        return read_tokens(tokens, recorded)

    def _rows_of(self, rows: list[int], logits: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> tuple:
        """(the rows' index on the device, and their logits, host weights and keys): a sub-batch."""
        index = self._on_device(rows)
        return index, logits.index_select(0, index), weights.index_select(0, torch.tensor(rows)), keys[:, index]

    def _on_device(self, values) -> torch.Tensor:
        """An int64 tensor of ``values`` on the engine's device, copied without waiting for it."""
        return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)

    def _draw(self, sampling, logits: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, rows=None):
        return sample_deferred(
            logits, weights, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            seed=keys[0], row_keys=keys[1], step=keys[2], plausibility_alpha=self.config.plausibility_alpha,
            vocab_size=self.vocab_size, backend=self.backend, rows=rows,
        )  # fmt: skip

    @staticmethod
    def _row_key(group: SampleGroup) -> int:
        """A request with its own seed owns its noise outright (key 0), so its tokens are the same
        in any batch; requests sharing the default seed are told apart by their group id."""
        return 0 if group.request.seed is not None else group.group_id
