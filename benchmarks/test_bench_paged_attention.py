"""Decode attention on a GPU: the Triton paged kernel vs the gather + SDPA path of the engine.

    python -m pytest benchmarks/test_bench_paged_attention.py -s        (GPU only; skips without one)

``test_kernel_vs_gather_sdpa`` times, per (rows R, context length), with H = 32 query heads, 8 kv
heads, D = 128, bfloat16, 16-token blocks in shuffled order:
  * torch path: ``steer.engine.model_runner.paged_attention`` (write the new K / V into the pool,
    gather every row's keys and values, repeat the kv heads, torch SDPA with the padding mask),
  * kernel path: the same write, then ``steer_kernels.paged_attention.paged_decode_attention``
    reading K / V in place (split-K planned by ``plan_splits``),
  * the kernel alone,
and prints the ratio torch / kernel path and the kernel's achieved bandwidth: bytes of K and V
read (sum of context lengths * Hkv * D * 2 * itemsize) / time, and its fraction of
STEER_PEAK_GBPS. ``test_tuning_sweep`` prints the best block_n / num_warps / num_stages /
num_splits, to pick the defaults in steer_kernels/paged_attention.py. Medians of CUDA-event
timings with the L2 cache flushed before each run (test_bench_triton.gpu_median_ms).
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("triton")

sys.path.insert(0, str(Path(__file__).parent))
from test_bench_triton import PEAK_GBPS, gpu_median_ms  # noqa: E402

from steer.engine.model_runner import KVShape, PagedKVCache, StepBatch, paged_attention  # noqa: E402
from steer_kernels.paged_attention import paged_decode_attention, plan_splits  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16


class Decode:
    """One decode step of R rows over a one-layer pool, in both forms the engine can run."""

    def __init__(self, rows: int, context: int, dtype=torch.bfloat16, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        per_row = math.ceil(context / BLOCK_SIZE)
        shape = KVShape(1, KV_HEADS, HEAD_DIM)
        self.cache = PagedKVCache(shape, rows * per_row, BLOCK_SIZE, dtype=dtype, device="cuda")
        self.cache.k.normal_()
        self.cache.v.normal_()
        ids = torch.randperm(rows * per_row, generator=gen).view(rows, per_row)
        self.batch = StepBatch.build([(ids[r].tolist(), [0] * context, 1) for r in range(rows)], BLOCK_SIZE, "cuda")
        self.tables = ids.to(device="cuda", dtype=torch.int32)
        self.lens = torch.full((rows,), context, dtype=torch.int32, device="cuda")
        self.q = torch.randn((rows, HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.k = torch.randn((rows, KV_HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.v = torch.randn((rows, KV_HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.out = torch.empty_like(self.q)
        self.scale = HEAD_DIM**-0.5
        self.gigabytes = 2 * rows * context * KV_HEADS * HEAD_DIM * self.q.element_size() / 1e9

    def torch_path(self):
        return paged_attention(self.q, self.k, self.v, self.cache, 0, self.batch, self.scale)

    def kernel(self, **knobs):
        return paged_decode_attention(self.q, self.cache.k[0], self.cache.v[0], self.tables, self.lens,
                                      block_size=BLOCK_SIZE, scale=self.scale, out=self.out, **knobs)

    def kernel_path(self):
        self.cache.k[0, self.batch.write_slots] = self.k
        self.cache.v[0, self.batch.write_slots] = self.v
        return self.kernel()


CASES = [(rows, context) for context in (512, 4096) for rows in (8, 16, 32, 64)]


@pytest.mark.parametrize("rows, context", CASES, ids=lambda x: str(x))
def test_kernel_vs_gather_sdpa(rows, context):
    step = Decode(rows, context)
    want, got = step.torch_path(), step.kernel_path()
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    torch_ms = gpu_median_ms(step.torch_path)
    path_ms = gpu_median_ms(step.kernel_path)
    kernel_ms = gpu_median_ms(step.kernel)
    gbps = step.gigabytes / (kernel_ms / 1e3)
    splits = plan_splits(rows, KV_HEADS, step.tables.shape[1] * BLOCK_SIZE, step.q.device)
    print(f"\nR={rows:3d} context={context:5d} H={HEADS}/{KV_HEADS} D={HEAD_DIM} bf16 splits={splits:2d}: "
          f"gather+SDPA {torch_ms:7.3f} ms, kernel path {path_ms:7.3f} ms ({torch_ms / path_ms:5.1f}x), "
          f"kernel {kernel_ms:7.3f} ms = {gbps:7.1f} GB/s of K/V ({gbps / PEAK_GBPS:5.1%} of peak)"
          f"  [{torch.cuda.get_device_name()}]")


SWEEP = [(1, 16384), (8, 4096), (64, 4096), (64, 512)]


@pytest.mark.parametrize("rows, context", SWEEP, ids=lambda x: str(x))
def test_tuning_sweep(rows, context):
    step = Decode(rows, context)
    want = step.torch_path().float()
    results = []
    for block_n, num_warps, num_stages, num_splits in itertools.product((32, 64, 128), (4, 8), (1, 2, 3, 4),
                                                                         (None, 1, 2, 4, 8, 16, 32)):
        knobs = dict(block_n=block_n, num_warps=num_warps, num_stages=num_stages, num_splits=num_splits)
        try:
            got = step.kernel(**knobs).float()
        except Exception as error:  # noqa: BLE001 (out of shared memory etc.: report, go on)
            print(f"  {knobs}: {type(error).__name__}")
            continue
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
        ms = gpu_median_ms(lambda: step.kernel(**knobs), reps=10)  # noqa: B023
        results.append((step.gigabytes / (ms / 1e3), ms, knobs))
    results.sort(key=lambda r: -r[0])
    print(f"\nsweep R={rows} context={context} [{torch.cuda.get_device_name()}], best first:")
    for gbps, ms, knobs in results[:8]:
        print(f"  {gbps:7.1f} GB/s {ms:7.3f} ms  {knobs}")
    default_ms = gpu_median_ms(step.kernel, reps=10)
    print(f"  default: {step.gigabytes / (default_ms / 1e3):7.1f} GB/s {default_ms:7.3f} ms")
