"""Decode steps replayed from CUDA graphs: a decode step of a small batch on a GPU is bound by
launching its few hundred kernels, not by running them, and a graph launches them all at once.

A graph replays fixed shapes reading fixed buffers, so a decode step is bucketed: its rows are
padded up to the next bucket size (1, 2, 4, 8, 16, 24, 32, 48, 64, ...), its block tables to the
most blocks a stream can ever hold, and its metadata copied into the bucket's static buffer
(``StepBatch.build_static``). A padding row decodes token 0 at position 0 into the scratch block,
which the block manager never hands out, and attends only that key: finite, and read by no one.
A LoRA pass's adapter rows are a static [rows, 1] mask rather than a row count, since the split
between expert and base rows changes from step to step.

One graph per (forward pass, bucket), captured at the bucket's first step (after a warm-up on a
side stream, which writes the same KV the replay does) and replayed after. Only the decoder's
forward is captured; the LM heads and the sampler run eagerly after it. Prefill and mixed steps
always run eagerly.

``mode="static"`` runs the same padded static batches without capturing (any device): the tests
check the bucketing on the CPU that way, and the capture itself wherever a GPU is present.
"""

from __future__ import annotations

import bisect

import torch

from steer.engine.step_batch import StepBatch

BASE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)


def buckets_up_to(max_rows: int) -> tuple[int, ...]:
    """The bucket sizes for at most ``max_rows`` rows: the base ones, then steps of 32 (vLLM's
    capture sizes grow the same way), the last one ``max_rows`` itself."""
    sizes = [b for b in BASE_BUCKETS if b < max_rows]
    while sizes and sizes[-1] + 32 < max_rows:
        sizes.append(sizes[-1] + 32)
    return tuple(sizes + [max_rows])


class _Bucket:
    def __init__(self, rows: int, width: int, device, dtype) -> None:
        self.rows = rows
        self.metadata = torch.zeros(StepBatch.static_size(rows, width), dtype=torch.int32, device=device)
        self.adapter_mask = torch.zeros((rows, 1), dtype=dtype, device=device)
        self.graph = None
        self.hidden = None


class DecodeGraphs:
    def __init__(self, block_size: int, max_rows: int, table_width: int, scratch_block: int, device, dtype, *, mode: str) -> None:
        if mode not in ("capture", "static"):
            raise ValueError(f"mode must be 'capture' or 'static', got {mode!r}")
        self.block_size, self.width, self.scratch_block = block_size, table_width, scratch_block
        self.device, self.dtype, self.mode = device, dtype, mode
        self.buckets = buckets_up_to(max_rows)
        self._captured: dict[tuple[int, int], _Bucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if mode == "capture" else None

    def applies(self, streams) -> bool:
        """A decode batch (one new token per row) that fits the largest bucket."""
        return len(streams) <= self.buckets[-1] and all(s.num_new == 1 for s in streams)

    def last_hidden(self, pass_index: int, runner, attention, streams, adapter_rows: int) -> torch.Tensor:
        """runner.last_hidden of this decode batch, through its bucket's graph: [len(streams), hidden]."""
        rows = self.buckets[bisect.bisect_left(self.buckets, len(streams))]
        bucket = self._captured.get((pass_index, rows))
        if bucket is None:
            bucket = self._captured[(pass_index, rows)] = _Bucket(rows, self.width, self.device, self.dtype)
        batch = StepBatch.build_static(streams, self.block_size, rows, self.width, self.scratch_block, bucket.metadata)
        mask = torch.zeros((rows, 1), dtype=self.dtype)
        mask[:adapter_rows] = 1
        bucket.adapter_mask.copy_(mask, non_blocking=True)

        def forward():
            return runner.last_hidden(attention, batch, adapter_rows=bucket.adapter_mask if runner.has_adapters else 0)

        if self.mode == "static":
            return forward()[: len(streams)]
        if bucket.graph is None:
            self._capture(bucket, forward)
        else:
            bucket.graph.replay()
        return bucket.hidden[: len(streams)]

    def _capture(self, bucket: _Bucket, forward) -> None:
        """Warm up on a side stream (lazy initialisations, Triton's compilation), then capture."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            forward()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            bucket.hidden = forward()
        bucket.graph = graph
        graph.replay()  # capturing records the kernels without running them
