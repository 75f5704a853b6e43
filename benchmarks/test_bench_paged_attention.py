"""Paged attention on a GPU: the Triton kernels of steer_kernels/paged_attention.py vs torch SDPA
over keys gathered from the pool.

    python -m pytest benchmarks/test_bench_paged_attention.py -s        (GPU only; skips without one)

Every case uses H = 32 query heads, 8 kv heads, D = 128, bfloat16, one layer of a pool of 16-token
blocks in shuffled order. The torch baselines gather each row's keys and values from the pool
(``pool[slots]``), repeat the kv heads and call ``F.scaled_dot_product_attention`` with a mask; the
gather is timed with them, since it is what reading a paged pool costs torch.

``test_decode_kernel_vs_gather_sdpa``, per (rows R, context length), one new token per row:
  * torch path: write the new K / V into the pool, gather every row's keys padded to the longest,
    SDPA with the padding mask,
  * kernel path: the same write, then ``paged_decode_attention`` reading K / V in place,
  * the kernel alone,
and prints the ratio torch / kernel path and the kernel's achieved bandwidth: bytes of K and V
read (sum of context lengths * Hkv * D * 2 * itemsize) / time, and its fraction of STEER_PEAK_GBPS.

``test_extend_kernel_vs_sdpa``, a prefill-heavy mixed batch (8 rows of 512 new tokens after 512
cached + 56 decode rows at context 1024, and a few other mixes):
  * per-row SDPA: one gather + SDPA per prefill / prefix-hit row (a boolean mask: causal within
    the new tokens, full over the cached prefix), one batched gather + SDPA for the decode rows,
  * padded SDPA: every row padded to the longest query and context, one SDPA with the mask,
  * ``paged_extend_attention``,
and prints the ratios and the kernel's TFLOP/s (4 * H * D per (query, attended key), the
causal-and-window count, not the padded one), as a fraction of STEER_PEAK_TFLOPS (default 989,
H100 / H200 dense bf16), and its bandwidth over the bytes it must move (each row's K / V once,
q and out).

``test_window_costs_the_window`` times a long context under a sliding window against the window
alone as the context (they should be close: the tiles before the window are never read).
``test_decode_tuning_sweep`` / ``test_extend_tuning_sweep`` print the best block_n / num_warps /
num_stages / num_splits (decode) and block_m / block_n / num_warps / num_stages (extend), to pick
the defaults in steer_kernels/paged_attention.py. Medians of CUDA-event timings with the L2 cache
flushed before each run (test_bench_triton.gpu_median_ms).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_bench_triton import PEAK_GBPS, gpu_median_ms  # noqa: E402

from steer_kernels.paged_attention import (  # noqa: E402
    paged_decode_attention,
    paged_extend_attention,
    plan_splits,
    window_span,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
GROUP = HEADS // KV_HEADS
PEAK_TFLOPS = float(os.environ.get("STEER_PEAK_TFLOPS", "989"))


class Batch:
    """Rows (n_r new tokens, c_r context) over a one-layer pool [slots, Hkv, D] of shuffled blocks,
    their new queries flat in q [T, H, D], and the host-side index plans of the torch baselines."""

    def __init__(self, rows, dtype=torch.bfloat16, window=0, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.rows, self.window = list(rows), window
        self.new, self.contexts = [n for n, _ in rows], [c for _, c in rows]
        per_row = [math.ceil(c / BLOCK_SIZE) for c in self.contexts]
        ids = torch.randperm(sum(per_row), generator=gen).split(per_row)
        tables = torch.zeros((len(rows), max(per_row)), dtype=torch.int32)
        for row, blocks in enumerate(ids):
            tables[row, : len(blocks)] = blocks.to(torch.int32)
        slots = sum(per_row) * BLOCK_SIZE
        self.k_pool = torch.randn((slots, KV_HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.v_pool = torch.randn((slots, KV_HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.tables = tables.cuda()
        self.lens = torch.tensor(self.contexts, dtype=torch.int32, device="cuda")
        self.starts = torch.tensor([0] + torch.tensor(self.new).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        self.max_query_length = max(self.new)
        self.tokens = sum(self.new)
        self.q = torch.randn((self.tokens, HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.k_new = torch.randn((self.tokens, KV_HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.v_new = torch.randn((self.tokens, KV_HEADS, HEAD_DIM), device="cuda").to(dtype)
        self.out = torch.empty_like(self.q)
        self.scale = HEAD_DIM**-0.5
        self.slot_lists = [self._slots(tables[r], c) for r, c in enumerate(self.contexts)]
        self.write_slots = torch.cat([s[c - n :] for s, (n, c) in zip(self.slot_lists, rows)]).cuda()
        self._plan_baselines()

    @staticmethod
    def _slots(table, length):
        positions = torch.arange(length)
        return table.long()[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE

    def _mask(self, n, c, n_pad=None, c_pad=None):
        """bool [n_pad, c_pad]: query i (position c - n + i) may read key j."""
        positions = torch.arange(c - n, c - n + (n_pad or n)).unsqueeze(1)
        keys = torch.arange(c_pad or c).unsqueeze(0)
        allowed = (keys <= positions) & (keys < c)
        if self.window:
            allowed &= keys > positions - self.window
        allowed[n:] = False
        allowed[n:, 0] = True  # padding queries: one key, no NaN
        return allowed

    def _plan_baselines(self):
        decode = [r for r, n in enumerate(self.new) if n == 1]
        longest = max((self.contexts[r] for r in decode), default=0)
        self.decode_rows = torch.tensor(decode, dtype=torch.long, device="cuda")
        self.decode_tokens = torch.tensor([sum(self.new[:r]) for r in decode], dtype=torch.long, device="cuda")
        if decode:
            padded = [F.pad(self.slot_lists[r], (0, longest - self.contexts[r])) for r in decode]
            self.decode_slots = torch.stack(padded).cuda()
            self.decode_mask = torch.stack([self._mask(1, self.contexts[r], c_pad=longest) for r in decode]).cuda()
            self.decode_mask = self.decode_mask.unsqueeze(1)  # [R_d, 1, 1, L]
        self.extend_plan = []  # (first token, n, slots [c], mask [n, c]) per row with n > 1
        first = 0
        for r, (n, c) in enumerate(self.rows):
            if n > 1:
                self.extend_plan.append((first, n, self.slot_lists[r].cuda(), self._mask(n, c).cuda()))
            first += n
        n_max, c_max = self.max_query_length, max(self.contexts)
        self.padded_slots = torch.stack([F.pad(s, (0, c_max - s.shape[0])) for s in self.slot_lists]).cuda()
        self.padded_mask = torch.stack([self._mask(n, c, n_max, c_max) for n, c in self.rows]).unsqueeze(1).cuda()
        index, valid = [], []
        for r, n in enumerate(self.new):
            index += [sum(self.new[:r]) + i for i in range(n)] + [0] * (n_max - n)
            valid += [True] * n + [False] * (n_max - n)
        self.padded_index = torch.tensor(index, device="cuda").view(len(self.rows), n_max)
        self.padded_valid = torch.tensor(valid, device="cuda").view(len(self.rows), n_max)

    # ---- sizes -------------------------------------------------------------------------------

    def attended(self):
        """Keys attended, summed over the new queries (causal, window)."""
        total = 0
        for n, c in self.rows:
            for p in range(c - n, c):
                total += p + 1 - (max(0, p - self.window + 1) if self.window else 0)
        return total

    @property
    def flops(self):
        return 4 * HEADS * HEAD_DIM * self.attended()

    @property
    def gigabytes(self):
        """What the kernel must move at least: each row's K / V (its window) once, q and out."""
        keys = sum(min(c, self.window + n - 1) if self.window else c for n, c in self.rows)
        element = self.q.element_size()
        return (2 * keys * KV_HEADS + 2 * self.tokens * HEADS) * HEAD_DIM * element / 1e9

    # ---- the paths -----------------------------------------------------------------------------

    def write(self):
        self.k_pool[self.write_slots] = self.k_new
        self.v_pool[self.write_slots] = self.v_new

    def _gather(self, slots):
        """[..., L] slots -> K, V [..., H, L, D] (kv heads repeated), in q's dtype."""
        k, v = self.k_pool[slots], self.v_pool[slots]  # [..., L, Hkv, D]
        k, v = k.transpose(-2, -3), v.transpose(-2, -3)
        return k.repeat_interleave(GROUP, dim=-3), v.repeat_interleave(GROUP, dim=-3)

    def decode_sdpa(self, out):
        """The decode rows, batched: gather padded to the longest context, SDPA with the mask."""
        k, v = self._gather(self.decode_slots)  # [R_d, H, L, D]
        q = self.q[self.decode_tokens].unsqueeze(2)  # [R_d, H, 1, D]
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=self.decode_mask, scale=self.scale)
        out[self.decode_tokens] = got.squeeze(2)
        return out

    def per_row_sdpa(self):
        out = self.out
        for first, n, slots, mask in self.extend_plan:
            k, v = self._gather(slots)  # [H, c, D]
            q = self.q[first : first + n].transpose(0, 1)  # [H, n, D]
            got = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask,
                                                 scale=self.scale)
            out[first : first + n] = got[0].transpose(0, 1)
        if self.decode_rows.numel():
            self.decode_sdpa(out)
        return out

    def padded_sdpa(self):
        k, v = self._gather(self.padded_slots)  # [R, H, C, D]
        q = self.q[self.padded_index].transpose(1, 2)  # [R, H, N, D]
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=self.padded_mask, scale=self.scale)
        out = self.out
        out[self.padded_index[self.padded_valid]] = got.transpose(1, 2)[self.padded_valid]
        return out

    def extend_kernel(self, **knobs):
        return paged_extend_attention(self.q, self.k_pool, self.v_pool, self.tables, self.starts, self.lens,
                                      block_size=BLOCK_SIZE, scale=self.scale, max_query_length=self.max_query_length,
                                      sliding_window=self.window, out=self.out, **knobs)

    def decode_kernel(self, **knobs):
        return paged_decode_attention(self.q, self.k_pool, self.v_pool, self.tables, self.lens, block_size=BLOCK_SIZE,
                                      scale=self.scale, sliding_window=self.window, out=self.out, **knobs)

    def decode_torch_path(self):
        self.write()
        return self.decode_sdpa(self.out)

    def decode_kernel_path(self):
        self.write()
        return self.decode_kernel()


def _close(got, want):
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


# ---- decode --------------------------------------------------------------------------------------


DECODE_CASES = [(rows, context) for context in (512, 4096) for rows in (8, 16, 32, 64)]


@pytest.mark.parametrize("rows, context", DECODE_CASES, ids=lambda x: str(x))
def test_decode_kernel_vs_gather_sdpa(rows, context):
    step = Batch([(1, context)] * rows)
    want = step.decode_torch_path().clone()
    _close(step.decode_kernel_path(), want)
    torch_ms = gpu_median_ms(step.decode_torch_path)
    path_ms = gpu_median_ms(step.decode_kernel_path)
    kernel_ms = gpu_median_ms(step.decode_kernel)
    gbps = step.gigabytes / (kernel_ms / 1e3)
    splits = plan_splits(rows, KV_HEADS, step.tables.shape[1] * BLOCK_SIZE, step.q.device)
    print(f"\nR={rows:3d} context={context:5d} H={HEADS}/{KV_HEADS} D={HEAD_DIM} bf16 splits={splits:2d}: "
          f"gather+SDPA {torch_ms:7.3f} ms, kernel path {path_ms:7.3f} ms ({torch_ms / path_ms:5.1f}x), "
          f"kernel {kernel_ms:7.3f} ms = {gbps:7.1f} GB/s of K/V ({gbps / PEAK_GBPS:5.1%} of peak)"
          f"  [{torch.cuda.get_device_name()}]")


DECODE_SWEEP = [(1, 16384), (8, 4096), (64, 4096), (64, 512)]


@pytest.mark.parametrize("rows, context", DECODE_SWEEP, ids=lambda x: str(x))
def test_decode_tuning_sweep(rows, context):
    step = Batch([(1, context)] * rows)
    want = step.decode_sdpa(torch.empty_like(step.q)).float()
    results = []
    for block_n, num_warps, num_stages, num_splits in itertools.product((32, 64, 128), (4, 8), (1, 2, 3, 4),
                                                                         (None, 1, 2, 4, 8, 16, 32)):
        knobs = dict(block_n=block_n, num_warps=num_warps, num_stages=num_stages, num_splits=num_splits)
        try:
            got = step.decode_kernel(**knobs).float()
        except Exception as error:  # noqa: BLE001 (out of shared memory etc.: report, go on)
            print(f"  {knobs}: {type(error).__name__}")
            continue
        _close(got, want)
        ms = gpu_median_ms(lambda: step.decode_kernel(**knobs), reps=10)  # noqa: B023
        results.append((step.gigabytes / (ms / 1e3), ms, knobs))
    results.sort(key=lambda r: -r[0])
    print(f"\ndecode sweep R={rows} context={context} [{torch.cuda.get_device_name()}], best first:")
    for gbps, ms, knobs in results[:8]:
        print(f"  {gbps:7.1f} GB/s {ms:7.3f} ms  {knobs}")
    default_ms = gpu_median_ms(step.decode_kernel, reps=10)
    print(f"  default: {step.gigabytes / (default_ms / 1e3):7.1f} GB/s {default_ms:7.3f} ms")


# ---- extend --------------------------------------------------------------------------------------


def prefill_heavy():
    """8 rows of 512 new tokens after 512 cached + 56 decode rows at context 1024."""
    return [(512, 1024)] * 8 + [(1, 1024)] * 56


EXTEND_CASES = {
    "prefill-heavy 8x512/1024 + 56 decode@1024": prefill_heavy(),
    "prefill 4x2048": [(2048, 2048)] * 4,
    "prefix hits 16x128/4096": [(128, 4096)] * 16,
    "chunked prefill 2x512/8192 + 120 decode@2048": [(512, 8192)] * 2 + [(1, 2048)] * 120,
}


def _report(name, step, kernel_ms, baselines):
    tflops = step.flops / (kernel_ms / 1e3) / 1e12
    gbps = step.gigabytes / (kernel_ms / 1e3)
    ratios = ", ".join(f"{label} {ms:7.3f} ms ({ms / kernel_ms:5.1f}x)" for label, ms in baselines)
    print(f"\n{name} (T={step.tokens}, H={HEADS}/{KV_HEADS} D={HEAD_DIM} {str(step.q.dtype)[6:]}, W={step.window}): "
          f"{ratios}; "
          f"extend kernel {kernel_ms:7.3f} ms = {tflops:6.1f} TFLOP/s ({tflops / PEAK_TFLOPS:5.1%} of peak), "
          f"{gbps:7.1f} GB/s ({gbps / PEAK_GBPS:5.1%})  [{torch.cuda.get_device_name()}]")


@pytest.mark.parametrize("name", list(EXTEND_CASES))
def test_extend_kernel_vs_sdpa(name):
    step = Batch(EXTEND_CASES[name])
    want = step.per_row_sdpa().clone()
    _close(step.extend_kernel(), want)
    baselines = [("per-row gather+SDPA", gpu_median_ms(step.per_row_sdpa))]
    if len(step.rows) * step.max_query_length * max(step.contexts) <= 64 * 512 * 8192:  # the padded mask fits
        _close(step.padded_sdpa(), want)
        baselines.append(("padded gather+SDPA", gpu_median_ms(step.padded_sdpa, reps=10)))
    _report(name, step, gpu_median_ms(step.extend_kernel), baselines)


def test_extend_prefill_heavy_with_window():
    step = Batch(prefill_heavy(), window=256)
    want = step.per_row_sdpa().clone()
    _close(step.extend_kernel(), want)
    _report("prefill-heavy, window 256", step, gpu_median_ms(step.extend_kernel),
            [("per-row gather+SDPA", gpu_median_ms(step.per_row_sdpa))])


def test_window_costs_the_window():
    """A 32768-key context under a 4096-key window costs about what a 4096-key context does."""
    for label, long_rows, short_rows in (("decode", [(1, 32768)] * 8, [(1, 4096)] * 8),
                                         ("extend", [(256, 32768)] * 4, [(256, 4096)] * 4)):
        windowed, short = Batch(long_rows, window=4096), Batch(short_rows)
        run = (lambda b: b.decode_kernel) if label == "decode" else (lambda b: b.extend_kernel)
        _close(run(windowed)(), windowed.per_row_sdpa().clone())
        windowed_ms, short_ms = gpu_median_ms(run(windowed)), gpu_median_ms(run(short))
        span = window_span(windowed.tables.shape[1] * BLOCK_SIZE, 4096, 64)
        print(f"\n{label}: context 32768 with window 4096 {windowed_ms:7.3f} ms vs context 4096 {short_ms:7.3f} ms "
              f"({windowed_ms / short_ms:4.2f}x; decode split plan over {span} keys)")


EXTEND_SWEEP = ["prefill-heavy 8x512/1024 + 56 decode@1024", "prefix hits 16x128/4096"]


@pytest.mark.parametrize("name", EXTEND_SWEEP)
def test_extend_tuning_sweep(name):
    step = Batch(EXTEND_CASES[name])
    want = step.per_row_sdpa().float()
    results = []
    for block_m, block_n, num_warps, num_stages in itertools.product((8, 16, 32, 64), (32, 64, 128), (4, 8),
                                                                      (1, 2, 3)):
        knobs = dict(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
        try:
            got = step.extend_kernel(**knobs).float()
        except Exception as error:  # noqa: BLE001 (out of shared memory etc.: report, go on)
            print(f"  {knobs}: {type(error).__name__}")
            continue
        _close(got, want)
        ms = gpu_median_ms(lambda: step.extend_kernel(**knobs), reps=10)  # noqa: B023
        results.append((step.flops / (ms / 1e3) / 1e12, ms, knobs))
    results.sort(key=lambda r: -r[0])
    print(f"\nextend sweep {name} [{torch.cuda.get_device_name()}], best first (block_m: query positions, "
          f"x {GROUP} heads = tile rows):")
    for tflops, ms, knobs in results[:8]:
        print(f"  {tflops:6.1f} TFLOP/s {ms:7.3f} ms  {knobs}")
    default_ms = gpu_median_ms(step.extend_kernel, reps=10)
    print(f"  default: {step.flops / (default_ms / 1e3) / 1e12:6.1f} TFLOP/s {default_ms:7.3f} ms")
