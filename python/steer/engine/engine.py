"""SteerEngine: STEER decoding of many requests at once over one paged KV cache.

A step: the scheduler picks the groups; the expert runs one forward over every prompt stream and
negative stream of those groups, the base one forward over their base streams; the [G, K, V]
logits go to the fused sampler; the token joins all K streams of its group.

Requests are checked against the model before any of them takes a KV block (ids and EOS in the
vocabulary, every stream within the context length), and a decode loop that stops early (an
exception, a KeyboardInterrupt, a run() generator closed) gives back every block it still holds:
the block manager outlives the calls, so a leak would starve every later one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from steer.config import SteerConfig
from steer.engine.block_manager import BlockManager
from steer.engine.model_runner import PagedKVCache, StepBatch, runner_for
from steer.engine.pool import NegativePool
from steer.engine.scheduler import Scheduler
from steer.engine.sequence import GroupStatus, Request, SampleGroup, StreamRole
from steer.hf.processor import shared_vocabulary_size
from steer.ops import sample, triton_backend

DEFAULT_KV_CACHE_MEMORY = 512 * 2**20


def context_length(model_config) -> int | None:
    """The most positions a model takes, from its Hugging Face config (n_positions or n_ctx for
    GPT-2 style configs); None when the config states no limit."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class Result:
    token_ids: list[int]
    finish_reason: str  # "eos" or "length"
    negative_example_ids: tuple[int, ...] = ()  # pool indices of the negatives it used (run())
    seed: int | None = None


class SteerEngine:
    """Batched STEER decoding of Hugging Face causal LMs (Llama family, GPT-2).

    Args:
        expert: the fine-tuned model: a transformers causal LM, or a PEFT model with LoRA adapters.
        base: the model it was tuned from (same tokenizer and architecture). Leave it None when
            ``expert`` is a PEFT LoRA model: the base is then the same weights with the adapters
            off, and expert and base rows run as one forward (each weight read once per step).
            Also None when ``config.gamma == 0`` (no base stream).
        config: the STEER and sampling hyperparameters (``SteerConfig``).
        device, dtype: where and in what precision to run; the models are moved there in place
            (``model.to``). Default: where the expert's weights are.
        max_batch_tokens: most new tokens in one forward (prefills of newly admitted groups plus one
            per decoding row); None for no limit. A group whose prefill alone exceeds it still runs,
            alone.
        kv_cache_memory: bytes of the paged KV pool shared by every stream of both models.
        block_size: tokens per KV block; prefixes are shared at this granularity.
        max_batch_rows: most streams (rows) in one forward.
        vocab_size: the tokenizer size, when expert and base LM heads are padded differently.
        backend: the sampler backend (``steer.backends("sample")``; "auto" picks the fastest).
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
    ) -> None:
        self.config = config if config is not None else SteerConfig()
        if device is not None or dtype is not None:
            for model in (expert, base):
                if model is not None:
                    model.to(device=device, dtype=dtype)
        self.vocab_size = shared_vocabulary_size(expert, expert if base is None else base, vocab_size)
        self.passes = self._forward_passes(expert, base)
        self.max_context_length = self._max_context_length()
        parameter = next(expert.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        kv_shape = self.passes[0][0].kv_shape
        per_block = PagedKVCache.bytes_per_block(kv_shape, block_size, self.dtype)
        num_blocks = kv_cache_memory // per_block
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory={kv_cache_memory} bytes holds no KV block of {per_block} bytes")
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ValueError(f"max_batch_tokens must be None or an int >= 1, got {max_batch_tokens!r}")
        self.blocks = BlockManager(num_blocks, block_size)
        self.cache = PagedKVCache(kv_shape, num_blocks, block_size, dtype=self.dtype, device=self.device)
        self.max_batch_rows, self.max_batch_tokens = max_batch_rows, max_batch_tokens
        self.backend = backend
        # Decode steps on a GPU attend with the Triton kernel straight from the paged pool.
        self.decode_kernel = self.device.type == "cuda" and triton_backend.is_available()

    def _forward_passes(self, expert, base) -> list[tuple]:
        """(runner, namespaces) of each forward of a step; a runner's adapters apply to the rows of
        its first namespace. One pass when the base is the expert with its adapters off."""
        expert_runner = runner_for(expert)
        if base is None:
            if self.config.gamma == 0:
                return [(expert_runner, ("expert",))]
            if not expert_runner.has_adapters:
                raise ValueError(
                    "base is None but the expert has no active LoRA adapter to switch off: pass the base model, "
                    "or a PEFT LoRA model as the expert (or use gamma=0, which needs no base)"
                )
            return [(expert_runner, ("expert", "base"))]
        base_runner = runner_for(base)
        if expert_runner.kv_shape != base_runner.kv_shape:
            raise ValueError(f"expert and base must share an architecture: KV shapes {expert_runner.kv_shape} vs {base_runner.kv_shape}")
        return [(expert_runner, ("expert",)), (base_runner, ("base",))]

    def _max_context_length(self) -> int | None:
        """The most positions a stream may reach: the shortest context of the models that run."""
        limits = [context_length(runner.model.config) for runner, _ in self.passes]
        return min((limit for limit in limits if limit is not None), default=None)

    # -- public ------------------------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Result]:
        """Decode every request to EOS or its length limit; results in request order.

        Every request is checked before any starts: a ValueError names the first bad field
        (``requests[i].prompt_ids[j]``, ...) and leaves the KV cache as it was.
        """
        requests = list(requests)
        for index, request in enumerate(requests):
            self._check_request(request, f"requests[{index}].")
        groups = [self._group(index, request) for index, request in enumerate(requests)]
        scheduler = self._scheduler()
        for group in groups:
            scheduler.add(group)
        default_seed = self._default_seed()
        try:
            while scheduler.has_work:
                self._step(scheduler, default_seed)
        finally:
            scheduler.release_all(computed=True)  # between steps every held block's KV is written
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
        ``config.num_negatives`` examples from ``pool`` (framed as the pool says), and every finished sample is added to ``pool`` (without its EOS) before the next
        one starts. Sample i is seeded with ``config.seed + seed_offset + i`` when the config has a
        seed, so a run is reproducible, and a resumed run (``seed_offset`` = samples already
        started) does not repeat the seeds it used before.

        The arguments are checked at the call, before any sample starts; a drawn negative context
        that does not fit the model's context stops the run with a ValueError naming it. Closing
        the iterator early gives back the KV blocks of the samples still running.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset < 0:
            raise ValueError(f"seed_offset must be an int >= 0, got {seed_offset!r}")
        template = Request(
            prompt_ids, [], self.config.max_new_tokens, min_new_tokens=min_new_tokens, eos_token_id=eos_token_id
        )
        self._check_request(template)
        return self._samples(template, n, pool, seed_offset)

    def _samples(self, template: Request, n: int, pool: NegativePool, seed_offset: int) -> Iterator[Result]:
        """run()'s generator: ``template`` is the checked request of every sample, less its
        negatives and seed."""
        scheduler = self._scheduler()
        default_seed = self._default_seed()
        drawn: dict[int, list[int]] = {}
        started = 0
        try:
            while started < n or scheduler.has_work:
                while started < n and not scheduler.waiting:  # top up: one group waits for room
                    seed = default_seed + seed_offset + started
                    request, drawn[started] = self._sample_request(template, started, pool, seed)
                    scheduler.add(self._group(started, request))
                    started += 1
                for group in self._step(scheduler, default_seed):
                    tokens = group.generated
                    pool.add(tokens[:-1] if group.finish_reason == "eos" else tokens)
                    yield Result(list(tokens), group.finish_reason, tuple(drawn.pop(group.group_id)), group.request.seed)
        finally:  # also when the consumer stops early: GeneratorExit arrives at the yield
            scheduler.release_all(computed=True)  # between steps every held block's KV is written

    def _sample_request(self, template: Request, index: int, pool: NegativePool, seed: int) -> tuple[Request, list[int]]:
        """Sample ``index``'s request, with negatives drawn from the pool as it stands now, and the
        pool indices drawn."""
        config = self.config
        indices = pool.draw(config.num_negatives) if config.eta != 0 else []
        negatives = pool.negative_streams(indices, config.negative_mode) if indices else []
        request = dataclasses.replace(template, negative_ids=negatives, seed=seed)
        for stream, negative in enumerate(request.negative_ids):
            name = f"sample {index}'s negative_ids[{stream}] (pool examples {indices})"
            self._check_stream(name, negative, request.max_new_tokens)
        return request, indices

    def _default_seed(self) -> int:
        """Requests without a seed share one drawn per call (torch.manual_seed makes it repeatable);
        their noise still differs, since it is keyed by the group as well."""
        return self.config.seed if self.config.seed is not None else int(torch.randint(0, 2**62, ()))

    def _scheduler(self) -> Scheduler:
        """A call's scheduler, over the engine's long-lived KV blocks."""
        return Scheduler(self.blocks, max_rows=self.max_batch_rows, max_tokens=self.max_batch_tokens)

    # -- request checks -----------------------------------------------------------------------------

    def _check_request(self, request: Request, where: str = "") -> None:
        """What only the engine can check (Request has checked the types): every id and the EOS in
        the model's vocabulary, every stream it will run within the model's context. ``where``
        prefixes the field in the message ("requests[3].")."""
        if not isinstance(request, Request):
            raise ValueError(f"{where.rstrip('.')} must be a steer.Request, got {type(request).__name__}")
        self._check_stream(f"{where}prompt_ids", request.prompt_ids, request.max_new_tokens)
        if self.config.eta != 0:  # with eta = 0 the negatives never run
            for index, negative in enumerate(request.negative_ids):
                self._check_stream(f"{where}negative_ids[{index}]", negative, request.max_new_tokens)
        if request.eos_token_id is not None and request.eos_token_id >= self.vocab_size:
            raise ValueError(f"{where}eos_token_id = {request.eos_token_id} {self._not_in_vocabulary()}")

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

    # -- one step ----------------------------------------------------------------------------------

    def _group(self, index: int, request: Request) -> SampleGroup:
        with_negatives = self.config.eta != 0
        return SampleGroup.for_request(index, request, with_base=self.config.gamma != 0, with_negatives=with_negatives)

    def _step(self, scheduler: Scheduler, default_seed: int) -> list[SampleGroup]:
        """Decode one token for every running group (prefilling the newly admitted ones); return
        the groups that finished.

        A step that stops part-way (a forward raising, a KeyboardInterrupt) may have taken blocks
        without writing their KV: it gives back every block of the scheduler's groups, promising
        the prefix cache none of them.
        """
        try:
            return self._decode_one_token(scheduler, default_seed)
        except BaseException:
            scheduler.release_all(computed=False)
            raise

    def _decode_one_token(self, scheduler: Scheduler, default_seed: int) -> list[SampleGroup]:
        decoding = scheduler.reserve_decode_slots()
        prefilling = scheduler.admit()
        groups = decoding + prefilling
        if not groups:
            raise RuntimeError("the scheduler admitted nothing although work is waiting")  # add() forbids it
        new_tokens = {id(g): 1 for g in decoding}
        for group in prefilling:
            new_tokens[id(group)] = None  # everything not already cached
        logits = self._forward(groups, new_tokens)
        tokens = self._sample(groups, logits, default_seed)
        finished = []
        for group, token in zip(groups, tokens.tolist()):
            group.append(token)
            if group.status is GroupStatus.FINISHED:
                scheduler.finish(group)
                finished.append(group)
        return finished

    def _rows(self, groups, new_tokens, namespace: str) -> tuple[list[tuple], list[tuple[int, int]]]:
        """The StepBatch rows of one model and, for each, (group position, stream position)."""
        rows, where = [], []
        for g_index, group in enumerate(groups):
            for s_index, stream in enumerate(group.streams):
                if stream.namespace != namespace:
                    continue
                tokens = group.tokens(stream)
                num_new = new_tokens[id(group)] or max(1, len(tokens) - stream.table.num_cached_tokens)
                rows.append((stream.table.block_ids, tokens, num_new))
                where.append((g_index, s_index))
        return rows, where

    def _forward(self, groups: list[SampleGroup], new_tokens) -> torch.Tensor:
        """Logits [G, K_max, V] of every stream; streams a group lacks are zeros (weight 0)."""
        k_max = max(g.num_streams for g in groups)
        logits = torch.zeros(len(groups), k_max, self.vocab_size, dtype=torch.float32, device=self.device)
        for runner, namespaces in self.passes:
            rows, where = self._rows(groups, new_tokens, namespaces[0])
            adapter_rows = len(rows)  # the runner's adapters apply to its first namespace's rows
            for namespace in namespaces[1:]:
                more_rows, more_where = self._rows(groups, new_tokens, namespace)
                rows, where = rows + more_rows, where + more_where
            if not rows:
                continue
            batch = StepBatch.build(rows, self.blocks.block_size, self.device, decode_kernel=self.decode_kernel)
            out = runner.forward(self.cache, batch, adapter_rows=adapter_rows)
            g_index, s_index = (torch.tensor(i, device=self.device) for i in zip(*where))
            logits[g_index, s_index] = out[:, : self.vocab_size]
        return logits

    def _weights(self, group: SampleGroup, k_max: int) -> list[float]:
        gamma, eta = self.config.gamma, self.config.eta
        negatives = sum(s.role is StreamRole.NEGATIVE for s in group.streams)
        weights = []
        for stream in group.streams:
            if stream.role is StreamRole.PROMPT:
                weights.append(1.0 + gamma)
            elif stream.role is StreamRole.BASE:
                weights.append(-gamma)
            else:
                weights.append(-eta / negatives)
        scale = 1.0 / (1.0 - eta) if self.config.rescale else 1.0
        return [w * scale for w in weights] + [0.0] * (k_max - len(weights))

    def _sample(self, groups: list[SampleGroup], logits: torch.Tensor, default_seed: int) -> torch.Tensor:
        config = self.config
        for g_index, group in enumerate(groups):
            request = group.request
            if request.eos_token_id is not None and len(group.generated) < request.min_new_tokens:
                logits[g_index, 0, request.eos_token_id] = -math.inf  # no EOS before min_new_tokens
        weights = torch.tensor([self._weights(g, logits.shape[1]) for g in groups], device=self.device)
        seeds = torch.tensor([default_seed if g.request.seed is None else g.request.seed for g in groups], device=self.device)
        return sample(
            logits,
            weights,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            seed=seeds,
            row_keys=torch.tensor([self._row_key(g) for g in groups], device=self.device),
            step=torch.tensor([len(g.generated) for g in groups], device=self.device),
            plausibility_alpha=config.plausibility_alpha,
            backend=self.backend,
        )

    @staticmethod
    def _row_key(group: SampleGroup) -> int:
        """A request with its own seed owns its noise outright (key 0), so its tokens are the same
        in any batch; requests sharing the default seed are told apart by their position."""
        return 0 if group.request.seed is not None else group.group_id
