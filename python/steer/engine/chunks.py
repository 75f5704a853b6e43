"""Joined negative contexts assembled from per-example KV (SteerConfig.per_example_kv).

A "concat" negative context is N pool examples joined. Computed exactly, every draw prefills
all of it, since a new combination of examples is a new prefix. Assembled instead, each example's
chunk (its beginning, its tokens, its end: steer.engine.pool.example_chunks) is computed once,
alone, at positions 0.., kept in the paged pool like any cached prefix (a ``whole`` block table
under the model's chunk namespace), and copied into each context that draws it, its keys rotated
from position p to p + the chunk's offset (steer.engine.models.rotary), its values as they are.

A step that admits joined streams first runs one forward of the chunks nobody has cached (the
scheduler gave each a table of its own), then copies every chunk into its streams' slots, and
only then runs the step's forward, in which the tokens after the chunks attend to all of them.
No chunk attends to another: that is the approximation, exactly the joined stream under a block
mask (steer.hf.uncached computes it so, for the tests).
"""

from __future__ import annotations

import torch

from steer.engine.step_batch import StepBatch


def joined_streams(groups) -> list:
    """The streams of the step that copy chunks in before its forward."""
    return [s for g in groups for s in g.streams if s.chunk_streams]


def compute_chunks(streams, runner, attention, block_size: int, device, adapters: bool) -> None:
    """One forward over the chunks of ``streams`` whose KV is not cached yet (two streams asking
    for one chunk share its table: the second found the first's blocks). ``adapters``: the
    runner's LoRA adapters apply to them (the chunks are the expert's)."""
    pending = [chunk for s in streams for _, chunk in s.chunk_streams if chunk.num_new > 0]
    if not pending:
        return
    batch = StepBatch.build(pending, block_size, device)
    runner.last_hidden(attention, batch, adapter_rows=len(pending) if adapters else 0)
    for chunk in pending:
        chunk.num_computed = len(chunk.tokens)


def copy_chunks(streams, key_rotation, cache, device) -> None:
    """Copy each stream's chunks into its ``copy_range`` of positions, every layer's keys moved
    to the chunk's offset."""
    sources, targets, offsets = [], [], []
    size = cache.block_size
    for stream in streams:
        start, end = stream.copy_range
        blocks = stream.table.block_ids
        for offset, chunk in stream.chunk_streams:
            first, last = max(start, offset), min(end, offset + len(chunk.tokens))
            own = chunk.table.block_ids
            for position in range(first, last):
                local = position - offset
                sources.append(own[local // size] * size + local % size)
                targets.append(blocks[position // size] * size + position % size)
                offsets.append(offset)
    if not sources:
        return
    source, target, offset = (torch.tensor(v, dtype=torch.int64).to(device, non_blocking=True) for v in (sources, targets, offsets))
    for layer in range(cache.k.shape[0]):
        k_layer, v_layer = cache.k[layer], cache.v[layer]
        k_layer[target] = key_rotation(layer, k_layer[source], offset)
        v_layer[target] = v_layer[source]
