"""Continuous batching of sample groups within a fixed KV budget.

Each step the scheduler (1) makes room for the token every running group decodes next, taking a
new KV block where a stream's last one is full, and preempting the most recently admitted group
when the cache is short (its blocks are freed; it waits and is recomputed later, its generated
tokens kept, mostly from cached prefix blocks); then (2) admits waiting groups, oldest first,
while their blocks and rows fit. A group that could not fit even in an empty cache is refused
when it is added, never left waiting forever. A decode loop that stops early gives every block
of the groups it leaves unfinished back with ``release_all``.
"""

from __future__ import annotations

from collections import deque

from steer.engine.block_manager import BlockManager, OutOfBlocks
from steer.engine.sequence import GroupStatus, SampleGroup


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_rows: int, max_tokens: int | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be None or >= 1, got {max_tokens}")
        self.blocks = block_manager
        self.max_rows, self.max_tokens = max_rows, max_tokens
        self.waiting: deque[SampleGroup] = deque()
        self.running: list[SampleGroup] = []

    def add(self, group: SampleGroup) -> None:
        worst_case = sum(self.blocks.blocks_needed(n) for n in group.longest_context_at_end())
        if worst_case > len(self.blocks.blocks):
            raise ValueError(
                f"request {group.group_id} needs {worst_case} KV blocks at its longest "
                f"({group.num_streams} streams), but the cache has {len(self.blocks.blocks)}: "
                "give the engine more kv_cache_memory or shorten the prompt, negatives or max_new_tokens"
            )
        if group.num_streams > self.max_rows:
            raise ValueError(f"request {group.group_id} has {group.num_streams} streams but a step holds {self.max_rows} rows")
        self.waiting.append(group)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _rows(self) -> int:
        return sum(g.num_streams for g in self.running)

    def _release(self, group: SampleGroup, *, computed: bool = True) -> None:
        for stream in group.streams:
            if stream.table is not None:
                self.blocks.free(stream.table, computed=computed)
                stream.table = None

    def _try_allocate(self, group: SampleGroup) -> bool:
        try:
            for stream in group.streams:
                stream.table = self.blocks.allocate(stream.namespace, group.tokens(stream))
        except OutOfBlocks:
            self._release(group, computed=False)  # no forward ran: their KV was never written
            return False
        return True

    def _preempt_latest(self) -> None:
        victim = self.running.pop()
        self._release(victim)
        victim.status = GroupStatus.WAITING
        self.waiting.appendleft(victim)

    def reserve_decode_slots(self) -> list[SampleGroup]:
        """Give every running group's streams a KV slot for their pending token; return those groups."""
        index = 0
        while index < len(self.running):
            group = self.running[index]
            needed = sum(self.blocks.needs_block_to_append(s.table) for s in group.streams)
            if needed > self.blocks.num_free_blocks:
                self._preempt_latest()  # possibly this very group, if it is the latest
                continue
            for stream in group.streams:
                self.blocks.append(stream.table, group.tokens(stream))
            index += 1
        return list(self.running)

    def _prefill_tokens(self, group: SampleGroup) -> int:
        """New tokens the group's first forward computes (its streams' uncached suffixes)."""
        return sum(
            max(1, len(group.tokens(s)) - self.blocks.cached_prefix_tokens(s.namespace, group.tokens(s)))
            for s in group.streams
        )

    def admit(self) -> list[SampleGroup]:
        """Move waiting groups that fit (blocks, rows and the step's token budget) into the running
        set; return them. A group over the token budget by itself runs alone rather than never."""
        admitted, tokens = [], self._rows()  # each running row decodes one token
        while self.waiting and self._rows() + self.waiting[0].num_streams <= self.max_rows:
            group = self.waiting[0]
            if self.max_tokens is not None:
                tokens += self._prefill_tokens(group)
                if tokens > self.max_tokens and self.running:
                    break
            if not self._try_allocate(group):
                break
            self.waiting.popleft()
            group.status = GroupStatus.RUNNING
            self.running.append(group)
            admitted.append(group)
        return admitted

    def finish(self, group: SampleGroup) -> None:
        self._release(group)
        self.running.remove(group)

    def release_all(self, *, computed: bool) -> None:
        """Give back every block the unfinished groups hold and drop them all, running or waiting:
        the decode loop is over before they finished (an exception, a generator closed early).

        ``computed=False`` when a step may have stopped between taking blocks and writing their
        KV: no block left only to the prefix cache then claims KV it never got.
        """
        for group in [*self.running, *self.waiting]:  # waiting ones hold none; _release skips them
            self._release(group, computed=computed)
        self.running.clear()
        self.waiting.clear()
