"""The engine's attention: write a step's new K and V into the paged pool (and copy the chunks of
joined negative contexts, steer.engine.chunks), then attend every row's queries over its keys in
place (steer.ops.attention: C++ on the CPU, Triton on a GPU).

The one place the model files reach a kernel; the backend is resolved once, when the engine is
built, not per layer and step.
"""

from __future__ import annotations

import torch

from steer.engine.kv_cache import PagedKVCache
from steer.engine.step_batch import StepBatch
from steer.ops.attention import paged_attention, resolve_backend


class PagedAttention:
    def __init__(self, cache: PagedKVCache, backend: str = "auto") -> None:
        self.cache = cache
        self.backend = resolve_backend(backend, cache.k.device, cache.k.dtype)

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        batch: StepBatch,
        scale: float,
        *,
        sliding_window: int | None = None,
        soft_cap: float | None = None,
    ) -> torch.Tensor:
        """q [T, H, D], k and v [T, Hkv, D] of the batch's new tokens -> [T, H, D]."""
        k_layer, v_layer = self.cache.k[layer], self.cache.v[layer]
        k_layer[batch.write_slots] = k.to(k_layer.dtype)
        v_layer[batch.write_slots] = v.to(v_layer.dtype)
        if batch.copies is not None:  # per-example KV: chunks into joined contexts, before anyone attends
            batch.copies.apply(layer, k_layer, v_layer)
        if q.dtype != k_layer.dtype:
            q = q.to(k_layer.dtype)
        return paged_attention(
            q, k_layer, v_layer, batch.block_tables, batch.query_starts, batch.context_lengths,
            block_size=self.cache.block_size, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap,
            max_query_length=batch.max_query_length, backend=self.backend,
        )  # fmt: skip
