"""The Triton kernels on a GPU: time, effective bandwidth, and a sweep of their tiling knobs.

    python -m pytest benchmarks/test_bench_triton.py -s            (GPU only; skips without one)

``test_sampler_vs_torch`` times, per shape [B, K, V], dtype and sampler:
  * triton kernels: ``steer_kernels.launch_sample`` into preallocated buffers (no host sync),
  * triton op: ``steer.sample(backend="triton")`` (validation, error-buffer read back),
  * torch backend: ``steer.sample(backend="torch")``, and the eager chain (K log_softmaxes, ...),
and prints the ratios and the kernels' effective bandwidth, bytes of logits read
(B * K * V * itemsize) / time, as a fraction of STEER_PEAK_GBPS (default 3350 GB/s, H100 SXM).
``test_tuning_sweep`` prints GB/s over block / num_warps / programs_per_sm, to pick the defaults
in steer_kernels/streams.py. Times are medians of CUDA-event timings after warm-up, with the L2
cache flushed before each run (the logits come from HBM, as in a decode step).
"""

from __future__ import annotations

import os
import statistics

import pytest
import torch

import steer

if not torch.cuda.is_available() or "triton" not in steer.backends("sample"):
    pytest.skip("needs a CUDA GPU with triton", allow_module_level=True)

import steer_kernels  # noqa: E402
from eager import eager_chain

PEAK_GBPS = float(os.environ.get("STEER_PEAK_GBPS", "3350"))
_FLUSH = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")  # > the 50 MB L2 of an H100


def gpu_median_ms(fn, reps: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        _FLUSH.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class Case:
    def __init__(self, shape, dtype, sampler):
        batch, streams, vocab = shape
        gen = torch.Generator(device="cuda").manual_seed(0)
        self.logits = (torch.randn(shape, generator=gen, device="cuda") * 3.0).to(dtype)
        self.weights = steer.steer_weights(0.2, 0.2, streams - 2).cuda()
        self.row_weights = self.weights.expand(batch, streams)
        self.keys = torch.arange(batch, device="cuda")
        self.tokens = torch.empty(batch, dtype=torch.int64, device="cuda")
        self.logprobs = torch.empty(batch, device="cuda")
        self.err = torch.empty(3, dtype=torch.int64, device="cuda")
        self.sampler = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **sampler}
        self.gigabytes = self.logits.numel() * self.logits.element_size() / 1e9

    def launch(self, **knobs):
        steer_kernels.launch_sample(
            self.logits, self.row_weights, self.keys, self.keys, self.keys, self.tokens, self.logprobs, self.err,
            vocab_size=self.logits.shape[-1], plausibility_alpha=0.0, **self.sampler, **knobs,
        )

    def op(self, backend):
        return steer.sample(self.logits, self.weights, seed=0, backend=backend, **self.sampler)

    def eager(self):
        return eager_chain(self.logits, self.row_weights, **self.sampler)


SHAPES = [(b, k, v) for b in (1, 8, 64) for k in (3, 7) for v in (32000, 128256)]
SAMPLERS = {"T1": {}, "topk10": {"top_k": 10}, "topp0.9": {"top_p": 0.9}, "greedy": {"temperature": 0.0}}


@pytest.mark.parametrize("sampler", list(SAMPLERS), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-K{}-V{}".format(*s))
def test_sampler_vs_torch(benchmark, shape, dtype, sampler):
    case = Case(shape, dtype, SAMPLERS[sampler])
    kernels_ms = gpu_median_ms(case.launch)
    op_ms = gpu_median_ms(lambda: case.op("triton"))
    torch_ms = gpu_median_ms(lambda: case.op("torch"))
    eager_ms = gpu_median_ms(case.eager)
    gbps = case.gigabytes / (kernels_ms / 1e3)
    benchmark.extra_info.update(kernels_ms=kernels_ms, op_ms=op_ms, torch_ms=torch_ms, eager_ms=eager_ms, gbps=gbps,
                                peak_fraction=gbps / PEAK_GBPS, device=torch.cuda.get_device_name())
    benchmark.pedantic(case.launch, rounds=10, iterations=1, warmup_rounds=1)
    print(f"\n{sampler:8s} B={shape[0]:3d} K={shape[1]} V={shape[2]:6d} {str(dtype)[6:]:8s}: kernels {kernels_ms:7.3f} ms "
          f"({gbps:7.1f} GB/s = {gbps / PEAK_GBPS:5.1%} of peak), op {op_ms:7.3f} ms, "
          f"torch backend {torch_ms:7.3f} ms ({torch_ms / op_ms:5.1f}x), eager {eager_ms:7.3f} ms ({eager_ms / op_ms:5.1f}x)"
          f"  [{torch.cuda.get_device_name()}]")


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(1, 7, 128256), (8, 7, 128256), (64, 7, 128256)], ids=str)
def test_combine_bandwidth(shape, normalize):
    logits = torch.randn(shape, device="cuda")
    weights = steer.steer_weights(0.2, 0.2, shape[1] - 2).cuda().expand(shape[0], shape[1])
    out = torch.empty(shape[0], shape[2], device="cuda")
    err = torch.empty(3, dtype=torch.int64, device="cuda")
    ms = gpu_median_ms(lambda: steer_kernels.launch_combine(logits, weights, out, err, normalize=normalize,
                                                            vocab_size=shape[2], plausibility_alpha=0.0))
    moved = (logits.numel() * 4 + out.numel() * 4 * (3 if normalize else 1)) / 1e9
    print(f"\ncombine {shape} normalize={normalize}: {ms:.3f} ms, {moved / (ms / 1e3):.1f} GB/s moved "
          f"(logits read once, scores written{' + re-read and written' if normalize else ''})")


SWEEP_CASES = [((64, 7, 128256), torch.float32), ((8, 7, 128256), torch.float32), ((8, 3, 128256), torch.bfloat16),
               ((1, 7, 128256), torch.float32)]


@pytest.mark.parametrize("sampler", ["T1", "topk10", "topp0.9"])
@pytest.mark.parametrize("shape, dtype", SWEEP_CASES, ids=lambda x: str(x))
def test_tuning_sweep(shape, dtype, sampler):
    case = Case(shape, dtype, SAMPLERS[sampler])
    rows = []
    for block in (512, 1024, 2048, 4096):
        for num_warps in (4, 8, 16):
            if block // (32 * num_warps) < 2:
                continue
            for programs_per_sm in (2, 4, 8, 16, 32):
                knobs = dict(block=block, num_warps=num_warps, programs_per_sm=programs_per_sm)
                ms = gpu_median_ms(lambda: case.launch(**knobs), reps=10)  # noqa: B023
                rows.append((case.gigabytes / (ms / 1e3), ms, knobs))
    rows.sort(key=lambda r: -r[0])
    print(f"\nsweep {sampler} {shape} {dtype} [{torch.cuda.get_device_name()}], best first:")
    for gbps, ms, knobs in rows[:8]:
        print(f"  {gbps:7.1f} GB/s {ms:7.3f} ms  {knobs}")
    default_ms = gpu_median_ms(case.launch, reps=10)
    print(f"  default: {case.gigabytes / (default_ms / 1e3):7.1f} GB/s {default_ms:7.3f} ms")


@pytest.mark.parametrize("shape", [(8, 7, 128256), (64, 7, 128256)], ids=str)
def test_cuda_graph_replay(shape):
    case = Case(shape, torch.float32, {"top_k": 10})
    case.launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        case.launch()
    eager_ms, graph_ms = gpu_median_ms(case.launch), gpu_median_ms(graph.replay)
    print(f"\ngraph {shape} top_k=10: launches {eager_ms:.3f} ms, graph replay {graph_ms:.3f} ms")
