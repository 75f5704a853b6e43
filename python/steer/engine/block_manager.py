"""Paged KV memory for every stream of every model: fixed-size blocks, reference counts, and a
prefix cache of full blocks, found by the hash of their tokens and checked token for token.

Plain Python on purpose (no torch): the block manager decides *which* physical blocks a stream
uses; the model runner owns the tensors. Sharing happens at block granularity:

    * Only full blocks are shared. A full block is cached under (namespace, the block before it,
      its tokens). A lookup hashes that triple to find a candidate, then compares it exactly:
      the namespace, the tokens, and the parent (the very block the lookup matched for the
      previous chunk, in the life it had when this block was cached; every reuse of a block
      starts a new life). By induction a hit holds the KV of exactly the prefix asked for, so a
      hash collision costs a recomputation, never a wrong answer. The namespace separates KV
      that differs for the same tokens (expert vs base model).
    * A stream's last, partial block is always its own, so appending a token never writes into
      a block another stream reads (no copy-on-write needed).
    * A freed block keeps its entry until it is handed out again, so a prefix evicted from every
      stream can still be found by the next one that asks for it (least recently freed first
      out).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


class OutOfBlocks(RuntimeError):
    """Raised when an allocation needs more free blocks than there are."""


@dataclass(frozen=True)
class BlockIdentity:
    """What a cached full block holds: a namespace's KV of ``tokens`` after the prefix whose last
    block was ``parent`` (block id, life), or at the start of the stream (parent None)."""

    namespace: str
    parent: tuple[int, int] | None
    tokens: tuple[int, ...]


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    life: int = 0  # incremented each time the block is handed out afresh
    identity: BlockIdentity | None = None  # set once the block is full and registered in the prefix cache


@dataclass
class BlockTable:
    """The physical blocks of one stream, in order, and how many of its tokens they hold."""

    namespace: str
    block_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    num_cached_tokens: int = 0  # tokens whose KV was already in the cache when allocated

    def slot(self, position: int, block_size: int) -> int:
        """The pool slot of the stream's token at ``position`` (slot = block id * block size + offset)."""
        return self.block_ids[position // block_size] * block_size + position % block_size


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}  # hash(identity) -> block id

    # -- accounting ---------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _lookup(self, identity: BlockIdentity) -> int | None:
        """The cached block holding exactly ``identity``, or None."""
        block_id = self._cached.get(hash(identity))
        if block_id is None or self.blocks[block_id].identity != identity:
            return None  # never cached, or a hash collision
        return block_id

    def _parent(self, block_id: int) -> tuple[int, int]:
        return block_id, self.blocks[block_id].life

    def _plan(self, namespace: str, tokens: list[int], whole: bool = False):
        """For each block of a new stream: (its identity if it is full, or every block's if
        ``whole``; the cached block that already holds it or None). Sharing stops at the first
        miss: KV after it differs."""
        parent, sharing = None, True
        full = self.blocks_needed(len(tokens)) if whole else len(tokens) // self.block_size
        for index in range(self.blocks_needed(len(tokens))):
            if index >= full:
                yield None, None
                continue
            identity = BlockIdentity(namespace, parent, tuple(tokens[index * self.block_size : (index + 1) * self.block_size]))
            cached = self._lookup(identity) if sharing else None
            sharing = cached is not None
            parent = self._parent(cached) if sharing else None  # a miss ends sharing: parent unused after
            yield identity, cached

    def new_blocks_needed(self, namespace: str, tokens: list[int], whole: bool = False) -> int:
        """Blocks an ``allocate(namespace, tokens, whole=whole)`` would take from the free list now."""
        plan = self._plan(namespace, tokens, whole)
        return sum(cached is None or self.blocks[cached].ref_count == 0 for _, cached in plan)

    def cached_prefix_tokens(self, namespace: str, tokens: list[int], whole: bool = False) -> int:
        """Leading tokens whose KV an ``allocate(namespace, tokens, whole=whole)`` would find cached now."""
        hits = 0
        for _, cached in self._plan(namespace, tokens, whole):
            if cached is None:
                break
            hits += 1
        return min(hits * self.block_size, len(tokens))

    # -- allocation ---------------------------------------------------------------------------------

    def _take_free_block(self) -> Block:
        if not self._free:
            raise OutOfBlocks("no free KV block")
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        self._forget(block)
        block.ref_count, block.life = 1, block.life + 1
        return block

    def _forget(self, block: Block) -> None:
        """Drop the block from the prefix cache (its KV is about to change, or was never written)."""
        if block.identity is not None:
            key = hash(block.identity)
            if self._cached.get(key) == block.block_id:
                del self._cached[key]
            block.identity = None

    def _reuse(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _register_full(self, table: BlockTable, index: int, tokens: tuple[int, ...]) -> None:
        """Cache block ``index`` of the table, now full with ``tokens``."""
        block = self.blocks[table.block_ids[index]]
        parent = self._parent(table.block_ids[index - 1]) if index > 0 else None
        block.identity = BlockIdentity(table.namespace, parent, tokens)
        self._cached.setdefault(hash(block.identity), block.block_id)

    def allocate(self, namespace: str, tokens: list[int], *, whole: bool = False) -> BlockTable:
        """Blocks for a new stream whose context is ``tokens``, sharing every cached full prefix block.

        ``num_cached_tokens`` of the result says how many leading tokens already have their KV
        (a prefix of full blocks): the model runner computes only the rest. Atomic: on
        OutOfBlocks nothing stays allocated.

        ``whole``: the last, partial block is cached too (its identity holds fewer tokens than a
        block, so only another ``whole`` allocation of the same tokens finds it). For KV that
        never grows: a negative example's chunk, computed once and copied into joined contexts
        (steer.engine.joined); such a table must never be appended to.
        """
        plan = list(self._plan(namespace, tokens, whole))
        needed = sum(cached is None or self.blocks[cached].ref_count == 0 for _, cached in plan)
        if needed > self.num_free_blocks:
            raise OutOfBlocks(f"{needed} blocks needed, {self.num_free_blocks} free")
        table = BlockTable(namespace)
        for index, (identity, cached) in enumerate(plan):
            if cached is not None:
                self._reuse(cached)
                table.block_ids.append(cached)
                table.num_cached_tokens += self.block_size
                continue
            table.block_ids.append(self._take_free_block().block_id)
            if identity is not None:
                self._register_full(table, index, identity.tokens)
        table.num_tokens = len(tokens)
        table.num_cached_tokens = min(table.num_cached_tokens, len(tokens))
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
            self._register_full(table, len(table.block_ids) - 1, tuple(tokens_so_far[-self.block_size :]))

    def free(self, table: BlockTable, *, computed: bool = True) -> None:
        """Release a stream's blocks; blocks no stream uses go back to the free list, last-used last.

        Blocks are registered in the prefix cache when allocated, on the promise that the step
        computes their KV. ``computed=False`` (an allocation rolled back before any forward)
        withdraws that promise: blocks nobody else holds forget their identity, so no later
        stream takes their never-written KV for a cached prefix.
        """
        for block_id in reversed(table.block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if not computed:
                    self._forget(block)
                self._free[block_id] = None
        table.block_ids.clear()
        table.num_tokens = 0
