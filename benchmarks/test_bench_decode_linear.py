"""decode_linear (the C++ multi-row decode matmul) vs F.linear on the CPU, side by side.

    python -m pytest benchmarks/test_bench_decode_linear.py -s        (-k alternation: the torch-pool check)

test_decode_linear_vs_torch times y = x @ W^T for T = 1..16 rows of float32 x, as one decode step
of a small LM runs its projections: a 32000x512 LM head, a 4096x4096 projection (nn.Linear layout)
and GPT-2 small's 768x3072 MLP (Conv1D layout, weight [in, out]); float32 weights and bfloat16
weights. Each round alternates torch (timed in pytest-benchmark's untimed setup) and the kernel
(timed by pytest-benchmark), the helper of test_bench_sample.py, and cycles through enough copies
of the weight (>= 256 MB) that every call reads its weight from memory, as in a real step. The
line printed gives both medians, F.linear / kernel and the kernel's weight bandwidth. torch runs
F.linear(x, W) on float32 weights and, on bfloat16 weights, F.linear in bfloat16 (x rounded to
bfloat16: torch has no float32 x bfloat16 GEMM; oneDNN's bfloat16 GEMM on CPUs with AVX512-BF16
is the strongest baseline). Both run on torch's thread count.

test_alternation_with_torch_ops checks that the kernel's OpenMP threads and torch's get along: a
decode-step-like loop of small torch ops (RMSNorm, a 512x512 F.linear, SiLU, a softmax over
[16, 128256] big enough for torch to thread) alternating with decode_linear, against each alone.
The torch wheel ships its own libgomp.so.1 and steer._C links the system one under the same
soname, so the process loads one OpenMP runtime (whichever comes first) and both share its thread
pool: no second pool spinning against the kernel. The measured alternation is the evidence.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from steer.ops.decode_linear import decode_linear, uses_kernel

sys.path.insert(0, str(Path(__file__).parent))
from test_bench_sample import side_by_side  # noqa: E402

COLD_BYTES = 256 << 20  # weight copies cycled through: well beyond the 32 MB L3 of the dev box
LAYERS = [(32000, 512, "out_in"), (4096, 4096, "out_in"), (768, 3072, "in_out")]  # (out, in, layout)
ROWS = (1, 2, 3, 4, 8, 16)


def weight_copies(n_out: int, n_in: int, layout: str, dtype: torch.dtype) -> list[torch.Tensor]:
    shape = (n_out, n_in) if layout == "out_in" else (n_in, n_out)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return [weight] + [weight.clone() for _ in range(COLD_BYTES // (weight.numel() * weight.element_size()))]


def torch_linear(x: torch.Tensor, weight: torch.Tensor, layout: str) -> torch.Tensor:
    return F.linear(x, weight) if layout == "out_in" else x @ weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda s: f"{s[0]}x{s[1]}-{s[2]}")
@pytest.mark.parametrize("rows", ROWS)
def test_decode_linear_vs_torch(benchmark, rows, layer, dtype):
    n_out, n_in, layout = layer
    weights = weight_copies(n_out, n_in, layout, dtype)
    x = torch.randn(rows, n_in)
    x_torch = x.to(dtype)
    turn = {"kernel": 0, "torch": 0}

    def next_weight(who: str) -> torch.Tensor:
        turn[who] += 1
        return weights[turn[who] % len(weights)]

    with torch.inference_mode():
        assert uses_kernel(x, weights[0], layout=layout)
        kernel_s, torch_s = side_by_side(
            benchmark,
            lambda: decode_linear(x, next_weight("kernel"), layout=layout),
            lambda: torch_linear(x_torch, next_weight("torch"), layout),
            rounds=20,
            device="cpu",
        )
    gbps = weights[0].numel() * weights[0].element_size() / kernel_s / 1e9
    ratio = torch_s / kernel_s
    benchmark.extra_info.update(kernel_ms=kernel_s * 1e3, torch_ms=torch_s * 1e3, torch_over_kernel=ratio, gbps=gbps)
    print(
        f"\ndecode_linear {n_out}x{n_in} {layout} {str(dtype)[6:]:8s} T={rows:2d}: kernel {kernel_s * 1e3:7.3f} ms "
        f"({gbps:5.1f} GB/s), F.linear {torch_s * 1e3:7.3f} ms, F.linear / kernel = {ratio:5.2f}x "
        f"({torch.get_num_threads()} threads)"
    )


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def test_alternation_with_torch_ops(benchmark):
    weights = weight_copies(32000, 512, "out_in", torch.float32)
    x = torch.randn(4, 512)
    hidden, gain, small = torch.randn(4, 512), torch.randn(512), torch.randn(512, 512)
    logits = torch.randn(16, 128256)

    def torch_ops():
        h = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6) * gain
        h = F.linear(h, small)
        return F.silu(h) * h, torch.softmax(logits, dim=-1)

    def loop(kernel: bool, ops: bool, steps: int = 40) -> tuple[list[float], list[float]]:
        kernel_s, ops_s = [], []
        for step in range(steps):
            if ops:
                start = time.perf_counter()
                torch_ops()
                ops_s.append(time.perf_counter() - start)
            if kernel:
                start = time.perf_counter()
                decode_linear(x, weights[step % len(weights)])
                kernel_s.append(time.perf_counter() - start)
        return kernel_s, ops_s

    with torch.inference_mode():
        loop(True, True, 5)  # warm-up
        alone, _ = loop(True, False)
        _, ops_alone = loop(False, True)
        kernel_alt, ops_alt = benchmark.pedantic(loop, args=(True, True), rounds=1, iterations=1)
    info = {
        "kernel_alone_ms": median_ms(alone),
        "kernel_alternating_ms": median_ms(kernel_alt),
        "torch_ops_alone_ms": median_ms(ops_alone),
        "torch_ops_alternating_ms": median_ms(ops_alt),
    }
    benchmark.extra_info.update(info)
    print(
        "\ndecode_linear 32000x512 T=4 alternating with torch ops ({} threads): kernel {kernel_alone_ms:.3f} ms alone, "
        "{kernel_alternating_ms:.3f} ms alternating; torch ops {torch_ops_alone_ms:.3f} ms alone, "
        "{torch_ops_alternating_ms:.3f} ms alternating".format(torch.get_num_threads(), **info)
    )
