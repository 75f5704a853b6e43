"""What one forward of one model computes: the new tokens of every row and where their keys live.

Rows are streams. Row r computes its ``num_new`` newest tokens (its whole uncached context at a
prefill, one token at a decode, the suffix after a cached prefix) at the end of a context of
``len(stream.tokens)`` tokens; tokens are flattened row after row, never padded. Attention reads
every key in place from the paged pool through the rows' block tables (steer.ops.attention).

All the metadata goes to the device in one int32 transfer: one flat host buffer, one copy, then
views into it. The block tables are the block manager's lists, kept incrementally as streams
grow; nothing here copies a stream's context.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from steer.engine.sequence import Stream


@dataclass(frozen=True)
class StepBatch:
    input_ids: torch.Tensor  # int32 [T] the new tokens of every row
    positions: torch.Tensor  # int32 [T]
    write_slots: torch.Tensor  # int32 [T] where each new token's K and V go
    last_token: torch.Tensor  # int32 [R] flat index of each row's last new token
    query_starts: torch.Tensor  # int32 [R + 1] row r's tokens are [query_starts[r], query_starts[r + 1])
    context_lengths: torch.Tensor  # int32 [R] keys of each row, its new tokens included
    block_tables: torch.Tensor  # int32 [R, max blocks] each row's block ids (padding: 0, never read)
    row_ends: tuple[int, ...]  # host copy of query_starts[1:]
    max_query_length: int  # the most new tokens of a row (1: decode only)
    copies: object = None  # steer.engine.chunks.ChunkCopies: run in each layer after its writes

    @property
    def num_rows(self) -> int:
        return len(self.row_ends)

    def tokens_of_rows(self, num_rows):
        """How many flat tokens the first ``num_rows`` rows hold (a [T, 1] row mask, as a CUDA
        graph's static decode batch gives its adapter rows, is per token already)."""
        if isinstance(num_rows, torch.Tensor):
            return num_rows
        return self.row_ends[num_rows - 1] if num_rows > 0 else 0

    @classmethod
    def build(cls, streams: list[Stream], block_size: int, device) -> StepBatch:
        """The batch of these streams (each with a block table holding all its tokens)."""
        width = max(len(s.table.block_ids) for s in streams)
        flat, sizes = _metadata(streams, block_size, len(streams), width, scratch_block=0)
        return cls._views(torch.tensor(flat, dtype=torch.int32).to(device, non_blocking=True), sizes, streams, width)

    @classmethod
    def build_static(cls, streams: list[Stream], block_size: int, rows: int, width: int, scratch_block: int, into: torch.Tensor) -> StepBatch:
        """A decode batch (one new token per stream) padded to ``rows`` rows and ``width`` table
        columns, written into ``into`` (a device buffer of ``static_size(rows, width)`` int32
        that a CUDA graph reads): the same views every time. A padding row attends only its own
        key, in the scratch block, which no stream owns: it is harmless and finite."""
        flat, sizes = _metadata(streams, block_size, rows, width, scratch_block)
        into.copy_(torch.tensor(flat, dtype=torch.int32), non_blocking=True)
        return cls._views(into, sizes, streams, width, padded_rows=rows)

    @staticmethod
    def static_size(rows: int, width: int) -> int:
        return 3 * rows + rows + (rows + 1) + rows + rows * width

    @classmethod
    def _views(cls, flat: torch.Tensor, sizes, streams, width: int, padded_rows: int | None = None) -> StepBatch:
        views, offset = [], 0
        for size in sizes:
            views.append(flat[offset : offset + size])
            offset += size
        rows = padded_rows or len(streams)
        views[-1] = views[-1].view(rows, width)
        news = [s.num_new for s in streams] + [1] * (rows - len(streams))
        ends = list(itertools.accumulate(news))
        return cls(*views, row_ends=tuple(ends), max_query_length=max(news))


def _metadata(streams: list[Stream], block_size: int, rows: int, width: int, scratch_block: int) -> tuple[list[int], tuple]:
    """The flat int32 metadata of a batch: input ids, positions, write slots, last tokens, query
    starts, context lengths, block tables; and the size of each part. Rows past the streams
    (``rows > len(streams)``) are decode padding: token 0 at position 0, written to and reading
    only the first slot of ``scratch_block``."""
    input_ids, positions, write_slots, last_token = [], [], [], []
    query_starts, context_lengths, tables = [0], [], []
    for stream in streams:
        tokens, blocks, new = stream.tokens, stream.table.block_ids, stream.num_new
        length = len(tokens)
        start = length - new
        input_ids += tokens[start:] if new > 1 else (tokens[-1],)
        positions += range(start, length)
        write_slots += [stream.table.slot(p, block_size) for p in range(start, length)]
        query_starts.append(query_starts[-1] + new)
        last_token.append(query_starts[-1] - 1)
        context_lengths.append(length)
        tables += blocks
        tables += [0] * (width - len(blocks))
    for _ in range(rows - len(streams)):
        input_ids.append(0)
        positions.append(0)
        write_slots.append(scratch_block * block_size)
        query_starts.append(query_starts[-1] + 1)
        last_token.append(query_starts[-1] - 1)
        context_lengths.append(1)
        tables += [scratch_block] + [0] * (width - 1)
    tokens = len(input_ids)
    flat = input_ids + positions + write_slots + last_token + query_starts + context_lengths + tables
    return flat, (tokens, tokens, tokens, rows, rows + 1, rows, rows * width)
