"""steer.sample on every available backend vs the torch eager chain, side by side.

    python -m pytest benchmarks/test_bench_sample.py -s            (add --benchmark-json=out.json to keep them)

Each test times one shape [B, K, V] (float32 logits, top_k = 10, one top_p = 0.9 case) in rounds
that alternate the eager chain (timed here, in pytest-benchmark's untimed setup) and the backend
(timed by pytest-benchmark), so both see the same machine state; it prints the medians and the
ratio eager / backend. On CUDA tensors it also prints the backend's effective bandwidth, bytes of
logits read (B * K * V * itemsize) / time, and its fraction of the device peak, STEER_PEAK_GBPS
(default 3350 GB/s, an H100 SXM). CPU backends run on torch's thread count, as does the eager
chain (torch.set_num_threads governs both).

On glibc the benchmark first tells malloc to keep freed memory in the process (mallopt): the
eager chain allocates tens of MB of temporaries per call, and by default glibc sometimes hands
them back to the kernel and page-faults them in again on the next call (at B=8, K=7, V=128256
that is 26 ms per call instead of 7.6, depending on the allocator's state). The ratios printed
are against the fast, page-fault-free eager chain.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import statistics
import time

import pytest
import torch

import steer
from steer.ops import dispatch
from eager import eager_chain

PEAK_GBPS = float(os.environ.get("STEER_PEAK_GBPS", "3350"))


def keep_freed_memory() -> None:
    """glibc: serve large allocations from the heap and never trim it (see the module docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # (an int: the largest)


keep_freed_memory()


def backend_devices() -> list[tuple[str, str]]:
    """(backend, device) pairs to measure: each available backend on each device it runs on here."""
    pairs = []
    for name in steer.backends("sample"):
        module = importlib.import_module(dispatch.BACKEND_MODULES[name])
        for device in ("cpu", "cuda"):
            if device in module.DEVICE_TYPES and (device == "cpu" or torch.cuda.is_available()):
                pairs.append((name, device))
    return pairs


def rounds_for(batch: int, streams: int, vocab: int, device: str) -> int:
    """Fewer rounds for the big CPU shapes (B = 64, V = 128256 is 230 MB of logits)."""
    if device != "cpu":
        return 50
    return max(3, min(20, int(1.5e8 // (batch * streams * vocab))))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def side_by_side(benchmark, backend_fn, eager_fn, *, rounds: int, device: str) -> tuple[float, float]:
    """Median seconds of (backend, eager), measured in alternating rounds."""
    eager_times = []

    def run_eager():  # pytest-benchmark's setup: runs untimed right before each timed round
        synchronize(device)
        start = time.perf_counter()
        eager_fn()
        synchronize(device)
        eager_times.append(time.perf_counter() - start)

    def run_backend():
        backend_fn()
        synchronize(device)

    for _ in range(2):  # warm-up: first-call allocations, kernel compilation, caches
        eager_fn()
        run_backend()
    benchmark.pedantic(run_backend, setup=run_eager, rounds=rounds, iterations=1)
    return benchmark.stats.stats.median, statistics.median(eager_times)


def report(benchmark, label: str, logits: torch.Tensor, backend_s: float, eager_s: float, device: str) -> None:
    ratio = eager_s / backend_s
    info = {"backend_ms": backend_s * 1e3, "eager_ms": eager_s * 1e3, "eager_over_backend": ratio}
    line = f"{label}: backend {backend_s * 1e3:8.3f} ms, eager {eager_s * 1e3:8.3f} ms, eager / backend = {ratio:6.1f}x"
    if device == "cuda":
        gbps = logits.numel() * logits.element_size() / backend_s / 1e9
        info.update(gbps=gbps, peak_fraction=gbps / PEAK_GBPS)
        line += f", {gbps:7.1f} GB/s = {gbps / PEAK_GBPS:5.1%} of {PEAK_GBPS:.0f} GB/s ({torch.cuda.get_device_name()})"
    else:
        line += f" ({torch.get_num_threads()} threads)"
    benchmark.extra_info.update(info)
    print("\n" + line)


SHAPES = [(b, k, v) for b in (1, 8, 64) for k in (3, 7) for v in (32000, 128256)]
SAMPLERS = [(shape, {"top_k": 10, "top_p": 1.0}) for shape in SHAPES] + [((8, 7, 128256), {"top_k": 0, "top_p": 0.9})]
SAMPLER_IDS = [f"B{b}-K{k}-V{v}-" + ("topk10" if s["top_k"] else "topp0.9") for (b, k, v), s in SAMPLERS]


@pytest.mark.parametrize("backend, device", backend_devices(), ids=lambda x: x)
@pytest.mark.parametrize("shape, sampler", SAMPLERS, ids=SAMPLER_IDS)
def test_sample_vs_eager(benchmark, backend, device, shape, sampler):
    batch, streams, vocab = shape
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=gen) * 3.0).to(device)
    weights = torch.as_tensor(steer.steer_weights(0.2, 0.2, streams - 2), dtype=torch.float32, device=device)
    row_weights = weights.expand(batch, streams)
    params = {"temperature": 1.0, **sampler}

    def backend_fn():
        return steer.sample(logits, weights, seed=0, backend=backend, **params)

    def eager_fn():
        return eager_chain(logits, row_weights, **params)

    backend_s, eager_s = side_by_side(
        benchmark, backend_fn, eager_fn, rounds=rounds_for(batch, streams, vocab, device), device=device
    )
    label = f"sample B={batch} K={streams} V={vocab} top_k={params['top_k']} top_p={params['top_p']} {backend}/{device}"
    report(benchmark, label, logits, backend_s, eager_s, device)
