"""Times the CUDA sampler on a GPU (run from the repository root after `pip install -e .`):

    python benchmarks/cuda_bench.py            # the issue's grid: B in {1, 8, 64}, K in {3, 7}, V in {32000, 128256}
    python benchmarks/cuda_bench.py --quick    # a few shapes

For each shape, dtype and sampler it prints the median time of cuda_backend.sample (CUDA events,
inputs rotated so the logits never sit in L2), the effective bandwidth (bytes of logits read /
time) and its fraction of the device's measured copy bandwidth, and the speed-up over the torch
eager chain (K log_softmaxes, weighted sum, top-k or sort-based top-p, softmax, multinomial).
Correctness is tests/ops/test_cuda.py's job; run it first.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from steer import steer_weights
from steer.ops import cuda_backend
from eager import eager_chain


def copy_bandwidth(device, nbytes=1 << 30, repeats=20) -> float:
    """Bytes read + written per second by a large device-to-device copy (the practical peak)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(times)


def median_time(fn, inputs, repeats=50) -> float:
    for x in inputs[:2]:
        fn(x)
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not cuda_backend.is_available():
        raise SystemExit("needs a CUDA GPU and steer._C_cuda")
    device = torch.device("cuda")
    peak = copy_bandwidth(device)
    print(f"# {torch.cuda.get_device_name(device)}; device-to-device copy: {peak / 1e9:.0f} GB/s")
    batches, streams, vocabs = ([1, 64], [7], [128256]) if args.quick else ([1, 8, 64], [3, 7], [32000, 128256])
    samplers = {
        "T=1": (1.0, 0, 1.0),
        "top_k=10": (1.0, 10, 1.0),
        "top_p=0.9": (1.0, 0, 0.9),
        "k=50,p=0.9": (1.0, 50, 0.9),
    }
    print(f"{'B':>3} {'K':>2} {'V':>6} {'dtype':>8} {'sampler':>11} {'us':>8} {'GB/s':>6} {'%peak':>5} {'x eager':>7}")
    for batch, k, vocab, dtype in itertools.product(batches, streams, vocabs, [torch.float32, torch.bfloat16]):
        weights = steer_weights(0.2, 0.6, k - 2).to(device)
        nbytes = batch * k * vocab * torch.finfo(dtype).bits // 8
        sets = max(2, min(8, (400 << 20) // nbytes))  # rotate > L2
        inputs = [(torch.randn(batch, k, vocab, device=device) * 3).to(dtype) for _ in range(sets)]
        keys = [torch.full((batch,), 7, device=device), torch.arange(batch, device=device), torch.zeros(batch, dtype=torch.long, device=device)]
        w = weights.expand(batch, -1).contiguous()
        for name, (temperature, top_k, top_p) in samplers.items():
            def fused(x):
                return cuda_backend.sample(x, w, temperature=temperature, top_k=top_k, top_p=top_p, seeds=keys[0],
                                           row_keys=keys[1], steps=keys[2], vocab_size=vocab, plausibility_alpha=0.0)  # fmt: skip

            t = median_time(fused, inputs)
            t_eager = median_time(lambda x: eager_chain(x, weights, temperature=temperature, top_k=top_k, top_p=top_p), inputs, repeats=10)
            print(
                f"{batch:>3} {k:>2} {vocab:>6} {str(dtype)[6:]:>8} {name:>11} {t * 1e6:8.1f} {nbytes / t / 1e9:6.0f} "
                f"{100 * nbytes / t / peak:5.1f} {t_eager / t:7.1f}"
            )


if __name__ == "__main__":
    main()
