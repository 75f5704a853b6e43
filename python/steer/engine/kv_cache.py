"""The paged KV pool: K and V of every layer of every stream, in fixed-size blocks of slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int


class PagedKVCache:
    """K and V of every layer in one pool of slots; slot = block_id * block_size + offset.
    Which blocks a stream owns is the block manager's business; this only holds the tensors."""

    def __init__(self, shape: KVShape, num_blocks: int, block_size: int, *, dtype: torch.dtype, device) -> None:
        self.shape, self.block_size = shape, block_size
        size = (shape.num_layers, num_blocks * block_size, shape.num_kv_heads, shape.head_dim)
        # Not zeroed: every attention backend reads only the slots of a row's context, which the
        # step has written (tests/engine/test_engine.py fills a new pool with NaN to hold them to
        # it). Zeroing the CPU's default 512 MiB took 0.13 s of every engine build, and an empty
        # pool's pages are mapped by the OS only as blocks are first written.
        self.k = torch.empty(size, dtype=dtype, device=device)
        self.v = torch.empty(size, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_block(shape: KVShape, block_size: int, dtype: torch.dtype) -> int:
        element = torch.tensor([], dtype=dtype).element_size()
        return 2 * shape.num_layers * block_size * shape.num_kv_heads * shape.head_dim * element
