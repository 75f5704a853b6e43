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

    @property
    def num_rows(self) -> int:
        return len(self.row_ends)

    def tokens_of_rows(self, num_rows: int) -> int:
        """How many flat tokens the first ``num_rows`` rows hold."""
        return self.row_ends[num_rows - 1] if num_rows > 0 else 0

    @classmethod
    def build(cls, streams: list[Stream], block_size: int, device) -> StepBatch:
        """The batch of these streams (each with a block table holding all its tokens)."""
        input_ids, positions, write_slots, last_token = [], [], [], []
        query_starts, context_lengths, row_ends = [0], [], []
        width = max(len(s.table.block_ids) for s in streams)
        tables = []
        for stream in streams:
            tokens, blocks, new = stream.tokens, stream.table.block_ids, stream.num_new
            length = len(tokens)
            start = length - new
            input_ids += tokens[start:] if new > 1 else (tokens[-1],)
            positions += range(start, length)
            write_slots += [blocks[p // block_size] * block_size + p % block_size for p in range(start, length)]
            query_starts.append(query_starts[-1] + new)
            last_token.append(query_starts[-1] - 1)
            context_lengths.append(length)
            tables += blocks
            tables += [0] * (width - len(blocks))
        row_ends = query_starts[1:]
        tokens, rows = len(input_ids), len(streams)
        flat = torch.tensor(
            input_ids + positions + write_slots + last_token + query_starts + context_lengths + tables, dtype=torch.int32
        ).to(device, non_blocking=True)
        views, offset = [], 0
        for size in (tokens, tokens, tokens, rows, rows + 1, rows, rows * width):
            views.append(flat[offset : offset + size])
            offset += size
        views[-1] = views[-1].view(rows, width)
        return cls(*views, row_ends=tuple(row_ends), max_query_length=max(s.num_new for s in streams))
