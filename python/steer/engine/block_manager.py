"""Paged KV memory for every stream of every model: fixed-size blocks, reference counts, and a
prefix cache keyed by the hash of a block's tokens and everything before it.

Plain Python on purpose (no torch): the block manager decides *which* physical blocks a stream
uses; the model runner owns the tensors. Sharing happens at block granularity:

    * Only full blocks are shared. A full block's key is (namespace, key of the previous block,
      its tokens), so two streams share it exactly when their whole prefixes up to it agree.
      The namespace separates KV that differs for the same tokens (expert vs base model).
    * A stream's last, partial block is always its own, so appending a token never writes into
      a block another stream reads (no copy-on-write needed).
    * A freed block keeps its key until it is handed out again, so a prefix evicted from every
      stream can still be found by the next one that asks for it (least recently freed first
      out).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


class OutOfBlocks(RuntimeError):
    """Raised when an allocation needs more free blocks than there are."""


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: int | None = None  # set once the block is full and registered in the prefix cache


@dataclass
class BlockTable:
    """The physical blocks of one stream, in order, and how many of its tokens they hold."""

    namespace: str
    block_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    num_cached_tokens: int = 0  # tokens whose KV was already in the cache when allocated
    last_full_key: int | None = None  # the key of the last full block, chaining the next one


def block_key(namespace: str, previous_key: int | None, tokens: tuple[int, ...]) -> int:
    return hash((namespace, previous_key, tokens))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}  # key -> block id

    # -- accounting ---------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _plan(self, namespace: str, tokens: list[int]):
        """For each block of a new stream: (tokens of the block, its key if full, the cached block
        that already holds it or None). Sharing stops at the first miss: KV after it differs."""
        key, sharing = None, True
        full = len(tokens) // self.block_size
        for index in range(self.blocks_needed(len(tokens))):
            chunk = tuple(tokens[index * self.block_size : (index + 1) * self.block_size])
            if index >= full:
                yield chunk, None, None
                continue
            key = block_key(namespace, key, chunk)
            cached = self._cached.get(key) if sharing else None
            sharing = cached is not None
            yield chunk, key, cached

    def new_blocks_needed(self, namespace: str, tokens: list[int]) -> int:
        """Blocks an ``allocate(namespace, tokens)`` would take from the free list now."""
        return sum(cached is None or self.blocks[cached].ref_count == 0 for _, _, cached in self._plan(namespace, tokens))

    def cached_prefix_tokens(self, namespace: str, tokens: list[int]) -> int:
        """Leading tokens whose KV an ``allocate(namespace, tokens)`` would find cached now."""
        hits = 0
        for _, _, cached in self._plan(namespace, tokens):
            if cached is None:
                break
            hits += 1
        return hits * self.block_size

    # -- allocation ---------------------------------------------------------------------------------

    def _take_free_block(self) -> Block:
        if not self._free:
            raise OutOfBlocks("no free KV block")
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None and self._cached.get(block.key) == block_id:
            del self._cached[block.key]
        block.key, block.ref_count = None, 1
        return block

    def _reuse(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _register_full(self, table: BlockTable, block: Block, tokens: tuple[int, ...]) -> None:
        key = block_key(table.namespace, table.last_full_key, tokens)
        block.key = key
        self._cached.setdefault(key, block.block_id)
        table.last_full_key = key

    def allocate(self, namespace: str, tokens: list[int]) -> BlockTable:
        """Blocks for a new stream whose context is ``tokens``, sharing every cached full prefix block.

        ``num_cached_tokens`` of the result says how many leading tokens already have their KV
        (a prefix of full blocks): the model runner computes only the rest. Atomic: on
        OutOfBlocks nothing stays allocated.
        """
        if self.new_blocks_needed(namespace, tokens) > self.num_free_blocks:
            raise OutOfBlocks(f"{self.new_blocks_needed(namespace, tokens)} blocks needed, {self.num_free_blocks} free")
        table = BlockTable(namespace)
        for chunk, key, cached in list(self._plan(namespace, tokens)):
            if cached is not None:
                self._reuse(cached)
                table.block_ids.append(cached)
                table.last_full_key = key
                table.num_cached_tokens += self.block_size
                continue
            block = self._take_free_block()
            if key is not None:
                self._register_full(table, block, chunk)
            table.block_ids.append(block.block_id)
        table.num_tokens = len(tokens)
        return table

    def needs_block_to_append(self, table: BlockTable) -> bool:
        return table.num_tokens % self.block_size == 0

    def append(self, table: BlockTable, tokens_so_far: list[int]) -> None:
        """Account for one more token (the last of ``tokens_so_far``, the stream's whole context).

        Takes a new block when the last one is full; registers a block in the prefix cache when
        this token fills it.
        """
        if self.needs_block_to_append(table):
            table.block_ids.append(self._take_free_block().block_id)
        table.num_tokens += 1
        if table.num_tokens % self.block_size == 0:
            last = self.blocks[table.block_ids[-1]]
            self._register_full(table, last, tuple(tokens_so_far[-self.block_size :]))

    def free(self, table: BlockTable, *, computed: bool = True) -> None:
        """Release a stream's blocks; blocks no stream uses go back to the free list, last-used last.

        Blocks are registered in the prefix cache when allocated, on the promise that the step
        computes their KV. ``computed=False`` (an allocation rolled back before any forward)
        withdraws that promise: blocks nobody else holds forget their key, so no later stream
        takes their never-written KV for a cached prefix.
        """
        for block_id in reversed(table.block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if not computed and block.key is not None:
                    if self._cached.get(block.key) == block_id:
                        del self._cached[block.key]
                    block.key = None
                self._free[block_id] = None
        table.block_ids.clear()
        table.num_tokens = 0
