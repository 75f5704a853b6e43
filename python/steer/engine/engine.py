"""SteerEngine: STEER decoding of many requests at once over one paged KV cache.

A step: the scheduler picks the groups; the expert runs one forward over every prompt stream and
negative stream of those groups, the base one forward over their base streams; the [G, K, V]
logits go to the fused sampler; the token joins all K streams of its group.
"""

from __future__ import annotations

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

    # -- public ------------------------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Result]:
        """Decode every request to EOS or its length limit; results in request order."""
        scheduler = Scheduler(self.blocks, max_rows=self.max_batch_rows, max_tokens=self.max_batch_tokens)
        groups = [self._group(index, request) for index, request in enumerate(requests)]
        for group in groups:
            scheduler.add(group)
        default_seed = self._default_seed()
        while scheduler.has_work:
            self._step(scheduler, default_seed)
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
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset < 0:
            raise ValueError(f"seed_offset must be an int >= 0, got {seed_offset!r}")
        config = self.config
        scheduler = Scheduler(self.blocks, max_rows=self.max_batch_rows, max_tokens=self.max_batch_tokens)
        default_seed = self._default_seed()
        drawn: dict[int, list[int]] = {}
        started = 0
        while started < n or scheduler.has_work:
            while started < n and not scheduler.waiting:  # top up: one group waits for room
                indices = pool.draw(config.num_negatives) if config.eta != 0 else []
                negatives = pool.negative_streams(indices, config.negative_mode) if indices else []
                request = Request(
                    prompt_ids, negatives, config.max_new_tokens, min_new_tokens=min_new_tokens,
                    seed=default_seed + seed_offset + started, eos_token_id=eos_token_id,
                )
                scheduler.add(self._group(started, request))
                drawn[started] = indices
                started += 1
            for group in self._step(scheduler, default_seed):
                tokens = group.generated
                pool.add(tokens[:-1] if group.finish_reason == "eos" else tokens)
                yield Result(list(tokens), group.finish_reason, tuple(drawn.pop(group.group_id)), group.request.seed)

    def _default_seed(self) -> int:
        """Requests without a seed share one drawn per call (torch.manual_seed makes it repeatable);
        their noise still differs, since it is keyed by the group as well."""
        return self.config.seed if self.config.seed is not None else int(torch.randint(0, 2**62, ()))

    # -- one step ----------------------------------------------------------------------------------

    def _group(self, index: int, request: Request) -> SampleGroup:
        if not isinstance(request, Request):
            raise ValueError(f"requests[{index}] must be a steer.Request, got {type(request).__name__}")
        with_negatives = self.config.eta != 0
        return SampleGroup.for_request(index, request, with_base=self.config.gamma != 0, with_negatives=with_negatives)

    def _step(self, scheduler: Scheduler, default_seed: int) -> list[SampleGroup]:
        """Decode one token for every running group (prefilling the newly admitted ones); return
        the groups that finished."""
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
