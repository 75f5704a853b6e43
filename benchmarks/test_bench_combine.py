"""steer.combine on every available backend vs the torch eager chain, side by side.

    python -m pytest benchmarks/test_bench_combine.py -s

Like test_bench_sample.py (whose timing helpers this file uses): each test alternates the eager
chain and the backend round by round on one shape [B, K, V] (float32; one bfloat16 case, read
natively by the compiled backends) and prints the medians, the ratio eager / backend and, on CUDA
tensors, the effective bandwidth and its fraction of STEER_PEAK_GBPS. The op measured is the
normalised combine: log_softmax(sum_k w_k log_softmax(z_k)).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import steer
from steer.ops import dispatch

sys.path.insert(0, str(Path(__file__).parent))
from test_bench_sample import report, rounds_for, side_by_side  # noqa: E402


def backend_devices() -> list[tuple[str, str]]:
    pairs = []
    for name in steer.backends("combine"):
        module = importlib.import_module(dispatch.BACKEND_MODULES[name])
        for device in ("cpu", "cuda"):
            if device in module.DEVICE_TYPES and (device == "cpu" or torch.cuda.is_available()):
                pairs.append((name, device))
    return pairs


def eager_chain(logits, weights):
    """The formula as plain torch eager code: K log_softmaxes, a weighted sum, a log_softmax."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    scores = (weights.unsqueeze(-1) * logprobs).sum(dim=1)
    return torch.log_softmax(scores, dim=-1)


SHAPES = [((b, k, v), torch.float32) for b in (1, 8, 64) for k in (3, 7) for v in (32000, 128256)]
SHAPES.append(((8, 7, 128256), torch.bfloat16))


@pytest.mark.parametrize("backend, device", backend_devices(), ids=lambda x: x)
@pytest.mark.parametrize("shape, dtype", SHAPES, ids=[f"B{b}-K{k}-V{v}-{str(d)[6:]}" for (b, k, v), d in SHAPES])
def test_combine_vs_eager(benchmark, backend, device, shape, dtype):
    batch, streams, vocab = shape
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=gen) * 3.0).to(device=device, dtype=dtype)
    weights = torch.as_tensor(steer.steer_weights(0.2, 0.2, streams - 2), dtype=torch.float32, device=device)
    row_weights = weights.expand(batch, streams)

    backend_s, eager_s = side_by_side(
        benchmark,
        lambda: steer.combine(logits, weights, backend=backend),
        lambda: eager_chain(logits, row_weights),
        rounds=rounds_for(batch, streams, vocab, device),
        device=device,
    )
    label = f"combine B={batch} K={streams} V={vocab} {str(dtype)[6:]} {backend}/{device}"
    report(benchmark, label, logits, backend_s, eager_s, device)
