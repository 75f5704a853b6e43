"""Joined negative contexts assembled from per-example KV (SteerConfig.per_example_kv).

A "concat" negative context is N pool examples joined. Computed exactly, every draw prefills
all of it, since a new combination of examples is a new prefix. Assembled instead, each example's
chunk (its beginning, its tokens, its end: steer.engine.pool.example_chunks) is computed once,
alone, at positions 0.., kept in the paged pool like any cached prefix (a ``whole`` block table
under the model's chunk namespace), and copied into each context that draws it, its keys rotated
from position p to p + the chunk's offset (steer.engine.models.rotary), its values as they are.

No extra forward: the chunks nobody has cached yet are rows of the step's own expert forward
(their hidden states are dropped), and in every layer, once the step's new keys and values are
written, the copies run (``ChunkCopies.apply``) before any query attends. A layer's chunk KV
depends only on the chunk's tokens in the layer below, so it is complete by then, and the tokens
after the chunks attend to all of them. No chunk attends to another: that is the approximation,
exactly the joined stream under a block mask (steer.hf.uncached computes it so, for the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steer.engine.models.rotary import rotate


def joined_streams(groups) -> list:
    """The streams of the step that copy chunks in."""
    return [s for g in groups for s in g.streams if s.chunk_streams]


def chunks_to_compute(joined) -> list:
    """The chunk streams of the step whose KV is not cached yet: rows of its expert forward. Two
    streams asking for one chunk share its blocks (the second found the first's), and only the
    first computes it."""
    return [chunk for s in joined for _, chunk in s.chunk_streams if chunk.num_new > 0]


@dataclass(frozen=True)
class ChunkCopies:
    """One step's copies, the same in every layer: slot ``source[i]`` to slot ``target[i]``, the
    key rotated by layer l's ``rotations[l]`` (cos, sin; None: copied as it is)."""

    source: torch.Tensor  # int64 [C]
    target: torch.Tensor  # int64 [C]
    rotations: list

    def apply(self, layer: int, k_layer: torch.Tensor, v_layer: torch.Tensor) -> None:
        keys, rotation = k_layer[self.source], self.rotations[layer]
        k_layer[self.target] = keys if rotation is None else rotate(keys, *rotation)
        v_layer[self.target] = v_layer[self.source]


def chunk_copies(joined, key_rotation, block_size: int, device) -> ChunkCopies | None:
    """The copies of each joined stream's chunks into its ``copy_range`` of positions (None: none)."""
    sources, targets, offsets = [], [], []
    for stream in joined:
        start, end = stream.copy_range
        for offset, chunk in stream.chunk_streams:
            for position in range(max(start, offset), min(end, offset + len(chunk.tokens))):
                sources.append(chunk.table.slot(position - offset, block_size))
                targets.append(stream.table.slot(position, block_size))
                offsets.append(offset)
    if not sources:
        return None
    source, target, offset = (torch.tensor(v, dtype=torch.int64).to(device, non_blocking=True) for v in (sources, targets, offsets))
    return ChunkCopies(source, target, key_rotation.by(offset))
