"""Continuous batching of sample groups within a fixed KV budget.

The scheduler owns the engine's block manager for the engine's lifetime. Each step is

    plan = scheduler.schedule()          which groups run, and what each stream computes
    ... the model runner runs the plan, the sampler draws one token per group ...
    finished = scheduler.postprocess(plan.groups, tokens)

``schedule`` (1) makes room for the token every running group decodes next, taking a new KV
block where a stream's last one is full, and preempts the most recently admitted group when
the cache is short (its blocks are freed; it waits and is recomputed later, its generated tokens
kept, mostly from cached prefix blocks); then (2) admits waiting groups, oldest first, while
their blocks, rows and the step's token budget fit. A group that could not fit even in an empty
cache is refused when it is added, never left waiting forever.

``postprocess`` appends each group's token to its streams, marks their KV computed, and frees
the blocks of the groups that finished. ``abort`` frees one group's blocks at once, whatever
its state; ``fail`` frees those of a running group whose logits could not be sampled (none of
its blocks is left to the prefix cache); ``release_all`` frees everything (a step that raised).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from steer.engine.block_manager import BlockManager, OutOfBlocks
from steer.engine.sequence import GroupStatus, SampleGroup, Stream, StreamRole


@dataclass
class PrefixCacheStats:
    """Per stream role ("prompt", "base", "negative", and "chunk": the per-example chunks a joined
    negative context copies, SteerConfig.per_example_kv): context tokens the admitted streams
    asked for, and how many of them were found cached (their KV shared, not computed; the chunks
    a joined stream copies count under "chunk", not as its own). A preempted group counts again
    when it is admitted again."""

    context_tokens: dict[str, int] = field(default_factory=dict)
    cached_tokens: dict[str, int] = field(default_factory=dict)

    def add(self, role: str, context: int, cached: int) -> None:
        self.context_tokens[role] = self.context_tokens.get(role, 0) + context
        self.cached_tokens[role] = self.cached_tokens.get(role, 0) + cached

    def hit_rate(self, role: str) -> float | None:
        """The fraction of the role's context tokens found cached (None: no such stream yet)."""
        asked = self.context_tokens.get(role, 0)
        return self.cached_tokens.get(role, 0) / asked if asked else None


@dataclass
class StepStats:
    """Engine steps since the engine was made, by kind: "prefill" (some stream computes more than
    one token: a prefill, or the suffix after a prefix hit, mixed with the decoding rows; or a
    joined negative context is assembled from per-example chunks),
    "decode" (one token per stream, eager) and "graph" (a decode step replayed from CUDA graphs,
    or run as their static batch with decode_graphs="static"); per kind the steps, the wall time
    of step() (it ends when the tokens are read back, so on a GPU it includes the device's
    time), the tokens computed and the rows (streams)."""

    steps: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, seconds: float, tokens: int, rows: int) -> None:
        for table, value in ((self.steps, 1), (self.seconds, seconds), (self.tokens, tokens), (self.rows, rows)):
            table[kind] = table.get(kind, 0) + value

    def as_dict(self) -> dict:
        """JSON-ready: per kind, steps, seconds, tokens, rows and the mean milliseconds a step."""
        return {kind: {"steps": count, "seconds": self.seconds[kind], "tokens": self.tokens[kind], "rows": self.rows[kind],
                       "ms_per_step": 1000 * self.seconds[kind] / count} for kind, count in self.steps.items()}  # fmt: skip


def describe_steps(steps: dict) -> str:
    """One line of a ``StepStats.as_dict()``: each kind's count and milliseconds a step."""
    return ", ".join(f"{kind} {k['steps']} x {k['ms_per_step']:.2f} ms" for kind, k in steps.items())


@dataclass(frozen=True)
class StepPlan:
    """One step's work: the groups in the sampler's row order (decoding ones first, then the
    ones admitted now, which prefill), each stream computing ``stream.num_new`` tokens."""

    groups: list[SampleGroup]
    num_prefilling: int

    @property
    def max_new_tokens(self) -> int:
        """The most tokens any stream computes (1: a decode-only step)."""
        return max(s.num_new for g in self.groups for s in g.streams)

    def size(self) -> tuple[int, int, bool]:
        """(tokens computed, rows, assembles): over every stream of every group, the chunks a
        joined stream has computed before the forward included; ``assembles``: some stream
        copies chunks in (SteerConfig.per_example_kv)."""
        streams = [s for g in self.groups for s in g.streams]
        chunks = [chunk for s in streams for _, chunk in s.chunk_streams]
        tokens = sum(s.num_new for s in streams) + sum(c.num_new for c in chunks)
        return tokens, len(streams), any(s.chunk_streams for s in streams)


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
        self.cache_stats = PrefixCacheStats()

    # -- requests in and out -----------------------------------------------------------------------

    def check_fits(self, group: SampleGroup) -> None:
        """A ValueError if the group could never run: more blocks at its longest than the cache
        has, or more streams than a step holds."""
        worst_case = sum(self.blocks.blocks_needed(n) for n in group.longest_context_at_end())
        # a joined stream's chunks hold their own blocks during the step that copies them
        worst_case += sum(self.blocks.blocks_needed(len(c)) for s in group.streams for c in s.chunks)
        if worst_case > self.blocks.num_blocks:
            raise ValueError(
                f"request {group.request_id!r} needs {worst_case} KV blocks at its longest "
                f"({group.num_streams} streams), but the cache has {self.blocks.num_blocks}: "
                "give the engine more kv_cache_memory or shorten the prompt, negatives or max_new_tokens"
            )
        if group.num_streams > self.max_rows:
            raise ValueError(
                f"request {group.request_id!r} has {group.num_streams} streams but a step holds {self.max_rows} rows"
            )

    def add(self, group: SampleGroup) -> None:
        self.check_fits(group)
        self.waiting.append(group)

    def abort(self, group: SampleGroup) -> None:
        """Stop a group now, running or waiting: its blocks are free when this returns (their KV
        was written by the steps that ran, so cached prefixes stay usable)."""
        self._stop(group, computed=True, reason=group.finish_reason or "abort")

    def fail(self, group: SampleGroup) -> None:
        """Stop a running group whose logits the sampler refused (NaN, +inf, nothing finite): its
        blocks are free when this returns, and those only it held leave the prefix cache (their
        KV may be what went wrong)."""
        self._stop(group, computed=False, reason="error")

    def _stop(self, group: SampleGroup, *, computed: bool, reason: str) -> None:
        self._release(group, computed=computed)
        if group in self.running:
            self.running.remove(group)
        elif group in self.waiting:
            self.waiting.remove(group)
        group.status = GroupStatus.FINISHED
        group.finish_reason = reason

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ------------------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        """Reserve a slot for every running group's next token, admit what fits; the step's plan."""
        decoding = self._reserve_decode_slots()
        prefilling = self._admit()
        groups = decoding + prefilling
        if not groups and self.has_work:
            raise RuntimeError("the scheduler admitted nothing although work is waiting")  # add() forbids it
        return StepPlan(groups, len(prefilling))

    def postprocess(self, groups: list[SampleGroup], tokens: list[int]) -> list[SampleGroup]:
        """After the forward and the sampler, for the plan's groups that drew a token (all of
        them unless some ``fail``-ed): every stream's KV is written up to its tokens so far; append
        each group's token, free the finished groups; return them."""
        finished = []
        for group, token in zip(groups, tokens, strict=True):
            for stream in group.streams:
                stream.num_computed = len(stream.tokens)
                self._release_chunks(stream, computed=True)
            group.append(token)
            if group.status is GroupStatus.FINISHED:
                self._release(group)
                self.running.remove(group)
                finished.append(group)
        return finished

    def release_all(self, *, computed: bool) -> list[SampleGroup]:
        """Give back every block the unfinished groups hold and drop them all, running or waiting;
        return them.

        ``computed=False`` when a step may have stopped between taking blocks and writing their
        KV: no block left only to the prefix cache then claims KV it never got.
        """
        dropped = [*self.running, *self.waiting]
        for group in dropped:  # waiting ones hold none; _release skips them
            self._release(group, computed=computed)
        self.running.clear()
        self.waiting.clear()
        return dropped

    # -- internals -----------------------------------------------------------------------------------

    def _rows(self) -> int:
        return sum(g.num_streams for g in self.running)

    def _release(self, group: SampleGroup, *, computed: bool = True) -> None:
        for stream in group.streams:
            self._release_chunks(stream, computed=computed)
            if stream.table is not None:
                self.blocks.free(stream.table, computed=computed)
                stream.table = None
            stream.num_computed = 0

    def _release_chunks(self, stream: Stream, *, computed: bool) -> None:
        """Give back the chunk tables a joined stream held for the step that copied them (their
        blocks stay in the prefix cache, for the next draw of the same examples)."""
        for _, chunk in stream.chunk_streams:
            self.blocks.free(chunk.table, computed=computed)
        stream.chunk_streams, stream.copy_range = [], (0, 0)

    def _try_allocate(self, group: SampleGroup) -> bool:
        try:
            for stream in group.streams:
                stream.table = self.blocks.allocate(stream.cache_namespace, stream.tokens)
                # The last token always runs, for its logits, even when its KV is cached.
                stream.num_computed = min(stream.table.num_cached_tokens, len(stream.tokens) - 1)
                if stream.chunks:
                    self._allocate_chunks(stream)
        except OutOfBlocks:
            self._release(group, computed=False)  # no forward ran: their KV was never written
            return False
        for stream in group.streams:
            for _, chunk in stream.chunk_streams:
                self.cache_stats.add(StreamRole.CHUNK.value, len(chunk.tokens), chunk.num_computed)
            cached = min(stream.table.num_cached_tokens, len(stream.tokens) - 1)  # copied chunks are not cached
            self.cache_stats.add(stream.role.value, len(stream.tokens), cached)
        return True

    def _allocate_chunks(self, stream: Stream) -> None:
        """Plan the copy of a joined stream's chunks into its positions past its cached prefix
        (up to its last token, which always runs): each chunk it needs gets a ``whole`` table of
        its own, found cached or computed as rows of the step's forward (steer.engine.chunks). The
        copied positions count as computed: the step writes them in each layer before any query
        attends."""
        start, end = stream.num_computed, min(stream.chunks_length, len(stream.tokens) - 1)
        if start >= end:
            return
        offset = 0
        for chunk in stream.chunks:
            if offset < end and offset + len(chunk) > start:
                table = self.blocks.allocate(chunk_namespace(stream.namespace), list(chunk), whole=True)
                own = Stream(StreamRole.CHUNK, stream.namespace, list(chunk), len(chunk), table, table.num_cached_tokens)
                stream.chunk_streams.append((offset, own))
            offset += len(chunk)
        stream.copy_range, stream.num_computed = (start, end), end

    def _preempt_latest(self) -> None:
        victim = self.running.pop()
        self._release(victim)
        victim.status = GroupStatus.WAITING
        self.waiting.appendleft(victim)

    def _reserve_decode_slots(self) -> list[SampleGroup]:
        """Give every running group's streams a KV slot for their pending token; return those groups."""
        index = 0
        while index < len(self.running):
            group = self.running[index]
            needed = sum(self.blocks.needs_block_to_append(s.table) for s in group.streams)
            if needed > self.blocks.num_free_blocks:
                self._preempt_latest()  # possibly this very group, if it is the latest
                continue
            for stream in group.streams:
                self.blocks.append(stream.table, stream.tokens)
            index += 1
        return list(self.running)

    def _prefill_tokens(self, group: SampleGroup) -> int:
        """New tokens the group's first forward computes (its streams' uncached suffixes, and the
        chunks a joined stream would compute rather than find cached)."""
        total = 0
        for stream in group.streams:
            cached = self.blocks.cached_prefix_tokens(stream.cache_namespace, stream.tokens)
            if stream.chunks and cached < stream.chunks_length:
                namespace = chunk_namespace(stream.namespace)
                total += sum(len(c) - self.blocks.cached_prefix_tokens(namespace, list(c), whole=True) for c in stream.chunks)
                cached = stream.chunks_length
            total += max(1, len(stream.tokens) - cached)
        return total

    def _admit(self) -> list[SampleGroup]:
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


def chunk_namespace(namespace: str) -> str:
    """Where the prefix cache files the per-example chunks of a model's joined negative contexts."""
    return f"{namespace}:chunk"
