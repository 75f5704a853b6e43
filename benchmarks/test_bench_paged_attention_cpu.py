"""Paged attention on the CPU: the C++ varlen kernel vs the padded gather + SDPA path it replaces.

    python -m pytest benchmarks/test_bench_paged_attention_cpu.py -s

``test_kernel_vs_padded_sdpa`` times one attention layer of one engine step, per shape:
  * kernel: ``steer.ops.attention.paged_attention(..., backend="cpp")``, which reads K / V in place
    from the paged pool (csrc/cpu/paged_attention.cpp), Python-side checks included;
  * padded SDPA (``padded_sdpa`` below, a compact copy of the engine's former CPU path): gather
    every row's key slots padded to the longest context, gather its queries padded to the longest
    new-token count, repeat the kv heads (repeat_interleave), torch SDPA under the dense
    [R, 1, Q, L] mask, then drop the padded queries. Its index tensors and mask are built once per
    step in the engine (shared by every layer), so they are built untimed here too.
The torch reference (``paged_attention_reference``, a per-row loop) is far slower than either and
is not timed. Shapes: the demo model's mixed step (H = 4, Hkv = 2, D = 56: 40 decode rows of
context ~150 and 4 prefill rows of 130 tokens), a demo decode-only step of 64 rows (contexts
10..250), and a Llama-size decode step (H = 32, Hkv = 8, D = 128, 8 rows of context 1024), in
float32 (the CPU engine's dtype) and the Llama step also in bfloat16. 16-token blocks in shuffled
order. Rounds alternate the two paths (test_bench_sample.side_by_side); the line printed gives
both medians and padded / kernel. Both run on torch's thread count.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from steer.ops import attention as ops
from steer.ops import compiled

sys.path.insert(0, str(Path(__file__).parent))
from test_bench_sample import side_by_side  # noqa: E402

if not hasattr(compiled.extension("steer._C"), "paged_attention"):
    pytest.skip("steer._C has no paged_attention (rebuild the extension)", allow_module_level=True)

BLOCK_SIZE = 16


class Step:
    """One layer's pool and one step's rows ((new tokens, context) each), in both layouts."""

    def __init__(self, rows, heads, kv_heads, head_dim, dtype=torch.float32, seed=0):
        gen = torch.Generator().manual_seed(seed)
        per_row = [math.ceil(c / BLOCK_SIZE) for _, c in rows]
        ids = torch.randperm(sum(per_row), generator=gen).to(torch.int32)
        self.tables = torch.zeros((len(rows), max(per_row)), dtype=torch.int32)
        for row, start in enumerate(torch.tensor([0] + per_row).cumsum(0)[:-1].tolist()):
            self.tables[row, : per_row[row]] = ids[start : start + per_row[row]]
        shape = (sum(per_row) * BLOCK_SIZE, kv_heads, head_dim)
        self.k_cache = torch.randn(shape, generator=gen).to(dtype)
        self.v_cache = torch.randn(shape, generator=gen).to(dtype)
        news, lengths = [n for n, _ in rows], [c for _, c in rows]
        self.starts = torch.tensor([0] + news).cumsum(0).to(torch.int32)
        self.lengths = torch.tensor(lengths, dtype=torch.int32)
        self.q = torch.randn((sum(news), heads, head_dim), generator=gen).to(dtype)
        self.out = torch.empty_like(self.q)
        self.scale = head_dim**-0.5
        # The padded path's per-step inputs (the engine's former StepBatch gather inputs).
        q_max, l_max = max(news), max(lengths)
        offsets = torch.arange(q_max)
        news_t, lengths_t = torch.tensor(news).unsqueeze(1), self.lengths.long().unsqueeze(1)
        self.query_valid = offsets < news_t  # [R, Q]
        self.query_index = torch.where(self.query_valid, self.starts[:-1].long().unsqueeze(1) + offsets, 0)
        query_position = lengths_t - news_t + offsets  # [R, Q]
        key_position = torch.arange(l_max)
        mask = (key_position <= query_position.unsqueeze(-1)) & (key_position < lengths_t.unsqueeze(-1))
        self.mask = mask.unsqueeze(1)  # [R, 1, Q, L]
        j = torch.arange(l_max)
        slots = self.tables[:, j // BLOCK_SIZE].long() * BLOCK_SIZE + j % BLOCK_SIZE
        self.key_slots = torch.where(key_position < lengths_t, slots, 0)  # [R, L], padding: slot 0

    def kernel(self) -> torch.Tensor:
        return ops.paged_attention(
            self.q, self.k_cache, self.v_cache, self.tables, self.starts, self.lengths,
            block_size=BLOCK_SIZE, scale=self.scale, backend="cpp", out=self.out,
        )  # fmt: skip

    def padded(self) -> torch.Tensor:
        return padded_sdpa(self.q, self.k_cache, self.v_cache, self.key_slots, self.query_index, self.query_valid,
                           self.mask, self.scale)  # fmt: skip


def padded_sdpa(q, k_cache, v_cache, key_slots, query_index, query_valid, mask, scale) -> torch.Tensor:
    """The former CPU path: padded gather of keys and queries, GQA by repeat, SDPA, unpad."""
    keys = k_cache[key_slots].transpose(1, 2).to(q.dtype)  # [R, Hkv, L, D]
    values = v_cache[key_slots].transpose(1, 2).to(q.dtype)
    queries = q[query_index].transpose(1, 2)  # [R, H, Q, D]
    groups = queries.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)[query_valid]  # [T, H, D]


def demo_mixed() -> list[tuple[int, int]]:
    gen = torch.Generator().manual_seed(1)
    decode = [(1, c) for c in torch.randint(140, 161, (40,), generator=gen).tolist()]
    return decode + [(130, 130)] * 4


def demo_decode() -> list[tuple[int, int]]:
    gen = torch.Generator().manual_seed(2)
    return [(1, c) for c in torch.randint(10, 251, (64,), generator=gen).tolist()]


SHAPES = {
    "demo-mixed-40x1+4x130": (demo_mixed, 4, 2, 56, torch.float32),
    "demo-decode-64": (demo_decode, 4, 2, 56, torch.float32),
    "llama-decode-8x1024": (lambda: [(1, 1024)] * 8, 32, 8, 128, torch.float32),
    "llama-decode-8x1024-bf16": (lambda: [(1, 1024)] * 8, 32, 8, 128, torch.bfloat16),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_kernel_vs_padded_sdpa(benchmark, name):
    rows, heads, kv_heads, head_dim, dtype = SHAPES[name]
    step = Step(rows(), heads, kv_heads, head_dim, dtype)
    with torch.inference_mode():
        tol = 2e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(step.kernel().float(), step.padded().float(), atol=tol, rtol=tol)
        kernel_s, padded_s = side_by_side(benchmark, step.kernel, step.padded, rounds=30, device="cpu")
    ratio = padded_s / kernel_s
    benchmark.extra_info.update(kernel_ms=kernel_s * 1e3, padded_ms=padded_s * 1e3, padded_over_kernel=ratio)
    print(
        f"\npaged attention {name:26s} T={step.q.shape[0]:4d}: kernel {kernel_s * 1e3:7.3f} ms, "
        f"padded gather + SDPA {padded_s * 1e3:7.3f} ms, padded / kernel = {ratio:5.1f}x "
        f"({torch.get_num_threads()} threads)"
    )
