"""The CUDA backend (csrc/cuda, steer.ops.cuda_backend) against steer.reference.

Two layers:

* Emulated (run everywhere a C++ compiler is): csrc/cuda/emulate/driver.cpp compiles the very
  kernel source of csrc/cuda/kernels.cuh for the CPU, with a fiber emulator for blocks, barriers,
  warp shuffles and shared memory (csrc/cuda/portable.cuh), and runs the whole pipeline (chunk
  partials, candidate selection, radix selects, the exact fallbacks, the workspace layout). So the
  algorithm is checked token for token before a GPU runs it, every path is shown to be taken, and
  running the fibers in other orders checks for missing barriers.
* GPU (skipped without one): the compiled kernels through cuda_backend, over full-size shapes,
  dtypes, weights, the -inf rules, errors, CUDA graphs and batch composition.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from steer import reference, steer_weights
from steer.ops import cuda_backend

ROOT = Path(__file__).resolve().parents[2]
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
NO_ERROR = 2**64 - 1
INVALID_ARGUMENT = 4


def random_logits(shape, dtype=torch.float32, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def row_keys_for(batch, seed=99, step=4):
    return torch.full((batch,), seed), torch.arange(batch) * 7 + 1, torch.full((batch,), step)


def weights_for(num_streams, per_row_batch=None, seed=0):
    if num_streams == 1:
        weights = torch.tensor([1.0])
    else:
        weights = steer_weights(0.3, 0.4, num_streams - 2) if num_streams > 2 else torch.tensor([1.3, -0.3])
    if per_row_batch is not None:
        gen = torch.Generator().manual_seed(seed)
        weights = weights * (1 + 0.5 * torch.rand(per_row_batch, num_streams, generator=gen))
    return weights


def reference_draw(logits, weights, seeds, keys, steps, sampler):
    sampler = dict(sampler)
    alpha = sampler.pop("plausibility_alpha", 0.0)
    return reference.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, plausibility_alpha=alpha, **sampler)


# ------------------------------------------------------------------------------------- emulator


class Emulator:
    """Runs csrc/cuda/emulate/driver.cpp on tensors laid out as the CUDA kernels take them."""

    def __init__(self, path: Path, workdir: Path):
        self.path, self.workdir, self.runs = path, workdir, 0

    def _write_inputs(self, d: Path, logits, weights, pad_bytes, keys):
        raw = torch.empty(0, dtype=torch.uint8).set_(logits.untyped_storage())
        raw.numpy().tofile(d / "logits.bin")
        weights = torch.as_tensor(weights, dtype=torch.float32)
        weights.contiguous().numpy().tofile(d / "weights.bin")
        for name, values in zip(("seeds", "row_keys", "steps"), keys):
            torch.as_tensor(values, dtype=torch.int64).contiguous().numpy().tofile(d / f"{name}.bin")
        return {
            "dtype": DTYPE_CODES[logits.dtype],
            "B": logits.shape[0],
            "K": logits.shape[1],
            "V": logits.shape[2],
            "stride_b": logits.stride(0),
            "stride_k": logits.stride(1),
            "stride_v": logits.stride(2),
            "weight_stride_b": 0 if weights.dim() == 1 else logits.shape[1],
            "logits_pad_bytes": pad_bytes + logits.storage_offset() * logits.element_size(),
        }

    def _run(self, params, d: Path, schedule: int):
        with open(d / "params.txt", "w") as f:
            for name, value in params.items():
                f.write(f"{name} {value!r}\n" if isinstance(value, float) else f"{name} {value}\n")
        subprocess.run([str(self.path), str(d), str(schedule), "7"], check=True, capture_output=True, timeout=600)
        status = int((d / "status.txt").read_text())
        err = np.fromfile(d / "err.bin", dtype=np.uint64).tolist()
        trace = dict(line.split() for line in (d / "trace.txt").read_text().splitlines())
        return status, err, {name: int(count) for name, count in trace.items()}

    def _dir(self) -> Path:
        self.runs += 1
        d = self.workdir / f"run{self.runs}"
        d.mkdir()
        return d

    def sample(self, logits, weights, *, seeds, row_keys, steps, temperature=1.0, top_k=0, top_p=1.0,
               vocab_size=None, plausibility_alpha=0.0, schedule=0, pad_bytes=0):  # fmt: skip
        d = self._dir()
        batch = logits.shape[0]
        keys = [torch.as_tensor(v, dtype=torch.int64).reshape(-1) for v in (seeds, row_keys, steps)]
        params = self._write_inputs(d, logits, weights, pad_bytes, keys)
        params.update(
            op="sample", vocab_size=vocab_size or logits.shape[2], temperature=float(temperature), top_k=top_k,
            top_p=float(top_p), plausibility_alpha=float(plausibility_alpha), normalize=0, out_stride_b=0,
            seed_stride=int(keys[0].numel() > 1), row_key_stride=int(keys[1].numel() > 1),
            step_stride=int(keys[2].numel() > 1), workspace_extra=0,
        )  # fmt: skip
        status, err, trace = self._run(params, d, schedule)
        tokens = torch.from_numpy(np.fromfile(d / "tokens.bin", dtype=np.int64))[:batch]
        logprobs = torch.from_numpy(np.fromfile(d / "logprobs.bin", dtype=np.float32))[:batch]
        return status, err, tokens, logprobs, trace

    def combine(self, logits, weights, *, normalize=True, vocab_size=None, plausibility_alpha=0.0, schedule=0):
        d = self._dir()
        params = self._write_inputs(d, logits, weights, 0, [torch.zeros(1)] * 3)
        params.update(
            op="combine", vocab_size=vocab_size or logits.shape[2], normalize=int(normalize),
            plausibility_alpha=float(plausibility_alpha), out_stride_b=logits.shape[2],
        )  # fmt: skip
        status, err, trace = self._run(params, d, schedule)
        out = torch.from_numpy(np.fromfile(d / "out.bin", dtype=np.float32)).view(logits.shape[0], logits.shape[2])
        return status, err, out, trace


def build_emulator(tmp_path_factory, *defines):
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA-kernel emulator")
    if not sys.platform.startswith("linux"):
        pytest.skip("the emulator's fibers use glibc ucontext")
    workdir = tmp_path_factory.mktemp("cuda_emulator")
    binary = workdir / "driver"
    command = [
        compiler, "-std=c++17", "-O1", "-DSTEER_EMULATE", *defines, "-Wall", "-Wextra", "-Werror",
        "-Wno-unknown-pragmas", "-I", str(ROOT / "csrc" / "include"),
        str(ROOT / "csrc" / "cuda" / "emulate" / "driver.cpp"), "-o", str(binary),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return Emulator(binary, workdir)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return build_emulator(tmp_path_factory)


def assert_draws_match(emulator, logits, weights, sampler, *, expect=None, **options):
    batch = logits.shape[0]
    seeds, keys, steps = row_keys_for(batch)
    status, err, tokens, logprobs, trace = emulator.sample(
        logits, weights, seeds=seeds, row_keys=keys, steps=steps, **sampler, **options
    )
    assert status == 0 and err == [NO_ERROR] * 3
    semantic = {name: options[name] for name in ("vocab_size", "plausibility_alpha") if name in options}
    want_tokens, want_logprobs = reference_draw(logits, weights, seeds, keys, steps, dict(sampler, **semantic))
    assert torch.equal(tokens, want_tokens), (tokens, want_tokens)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4)
    if expect is not None:
        assert trace.get(expect, 0) > 0, f"path {expect} not taken: {trace}"
    return tokens, logprobs, trace


EMULATED_SAMPLERS = [
    {"temperature": 1.0},
    {"temperature": 0.0},
    {"temperature": 0.7, "top_k": 5},
    {"temperature": 1.5, "top_p": 0.8},
    {"temperature": 1.0, "top_k": 10, "top_p": 0.9},
    {"temperature": 0.0, "top_k": 10, "top_p": 0.5},
    {"temperature": 1.0, "top_k": 50, "top_p": 0.8, "plausibility_alpha": 0.01},
]


@pytest.mark.parametrize("sampler", EMULATED_SAMPLERS, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 17), (3, 4, 2600)], ids=str)
def test_emulated_draws_are_the_reference_draws(emulator, shape, sampler):
    logits = random_logits(shape, seed=shape[2])
    assert_draws_match(emulator, logits, weights_for(shape[1]), sampler)


@pytest.mark.parametrize("sampler", [{"temperature": 0.7, "top_k": 50, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.9}], ids=str)
def test_emulated_gpt2_vocabulary(emulator, sampler):
    logits = random_logits((2, 7, 50257), seed=21)  # 50 chunks, odd V: scalar loads
    assert_draws_match(emulator, logits, steer_weights(0.2, 0.6, 5), sampler)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("vocab", [2048, 2051], ids=lambda v: f"V{v}")
def test_emulated_dtypes_and_load_paths(emulator, dtype, vocab):
    # V = 2048 with aligned rows takes the 16-byte loads; 2051 (or a misaligned base) the scalar ones.
    logits = random_logits((2, 3, vocab), dtype, seed=3, scale=3.0)
    weights = weights_for(3, per_row_batch=2)
    sampler = {"temperature": 0.9, "top_k": 10, "top_p": 0.95}
    tokens, logprobs, _ = assert_draws_match(emulator, logits, weights, sampler)
    seeds, keys, steps = row_keys_for(2)
    misaligned = emulator.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, pad_bytes=4, **sampler)
    assert torch.equal(misaligned[2], tokens) and torch.equal(misaligned[3], logprobs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_padded_vocabulary_with_vector_loads(emulator, dtype):
    # Aligned rows (16-byte loads) whose last vector straddles vocab_size: padding never read or kept.
    logits = random_logits((2, 3, 2048), dtype, seed=4)
    logits[:, :, 2045:] = 60.0
    for sampler in ({"temperature": 1.0, "top_p": 0.9}, {"temperature": 1.0, "top_k": 3}):
        tokens, _, _ = assert_draws_match(emulator, logits, weights_for(3), sampler, vocab_size=2045)
        assert (tokens < 2045).all()


def test_emulated_strided_logits(emulator):
    logits = random_logits((2, 2100, 6), seed=5).permute(0, 2, 1)[:, ::2]  # stride_v = 6, stride_k = 2
    assert_draws_match(emulator, logits, weights_for(3), {"temperature": 1.1, "top_k": 7})


@pytest.mark.parametrize(
    "case",
    [
        # top-p alone, nucleus inside the 32 candidates per chunk
        ("merge.topp.candidates", 6.0, {"temperature": 1.0, "top_p": 0.9}),
        # top-p alone, flat distribution: the nucleus is wider than the candidates
        ("merge.exact.topp", 0.5, {"temperature": 1.0, "top_p": 0.9}),
        ("merge.exact.topp", 0.5, {"temperature": 0.0, "top_p": 0.5}),
        ("merge.topk.candidates", 2.0, {"temperature": 0.8, "top_k": 40}),
        # top_k above the candidate limit: exact count select over the stored row
        ("merge.exact.topk", 2.0, {"temperature": 0.8, "top_k": 300}),
        ("merge.exact.topk_topp", 2.0, {"temperature": 0.8, "top_k": 300, "top_p": 0.7}),
    ],
    ids=lambda case: case[0],
)
def test_emulated_paths_are_taken_and_exact(emulator, case):
    path, scale, sampler = case
    logits = random_logits((3, 3, 2600), seed=11, scale=scale)
    assert_draws_match(emulator, logits, weights_for(3), sampler, expect=path)


@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_emulated_top_k_ties_beyond_the_candidates_are_all_kept(emulator, top_p):
    logits = random_logits((2, 1, 3000), seed=12, scale=1.0)
    logits[:, 0, 100:160] = 5.0  # 60 tokens tied for first place, all in one chunk: top_k = 5 keeps all 60
    sampler = {"temperature": 1.0, "top_k": 5, "top_p": top_p}
    _, _, trace = assert_draws_match(emulator, logits.to(torch.bfloat16), [1.0], sampler)
    assert trace.get("merge.topk.tie_left_out", 0) == 2


def test_emulated_fewer_finite_tokens_than_top_k(emulator):
    logits = random_logits((2, 2, 50), seed=13)
    logits[:, 0, 10:] = -math.inf
    assert_draws_match(emulator, logits, torch.tensor([1.2, -0.2]), {"temperature": 1.0, "top_k": 20})


def test_emulated_minus_inf_rules_and_padding(emulator):
    logits = random_logits((3, 4, 1100), seed=14)
    logits[0, 0, :1000] = -math.inf  # expert forbids most tokens
    logits[1, 1, :500] = -math.inf  # base stream (negative weight): floored
    logits[2, 3, 7] = -math.inf  # negative stream: floored
    logits[2, 2, 9] = -math.inf  # weight 0: ignored
    logits[:, :, 1050:] = 50.0  # LM-head padding, never drawn
    logits[0, 1, 1060] = math.nan  # garbage in padding, never read
    weights = torch.tensor([[1.2, -0.2, -0.1, -0.1], [1.2, -0.2, -0.1, -0.1], [1.2, -0.2, 0.0, -0.2]])
    for sampler in ({"temperature": 1.0}, {"temperature": 1.0, "top_k": 30, "top_p": 0.9}):
        tokens, _, _ = assert_draws_match(emulator, logits, weights, sampler, vocab_size=1050)
        assert tokens[0] >= 1000 and (tokens < 1050).all()


@pytest.mark.parametrize("schedule", [1, 2])
def test_emulated_results_do_not_depend_on_the_thread_schedule(emulator, schedule):
    logits = random_logits((3, 3, 2600), seed=15, scale=0.5)
    seeds, keys, steps = row_keys_for(3)
    for sampler in ({"temperature": 1.0, "top_k": 40, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.9}):
        first = emulator.sample(logits, weights_for(3), seeds=seeds, row_keys=keys, steps=steps, **sampler)
        other = emulator.sample(logits, weights_for(3), seeds=seeds, row_keys=keys, steps=steps, schedule=schedule, **sampler)
        assert torch.equal(first[2], other[2]) and torch.equal(first[3], other[3])


def test_emulated_rows_do_not_depend_on_the_batch(emulator):
    logits = random_logits((5, 3, 2100), seed=16, scale=0.7)
    seeds, keys, steps = torch.arange(5) + 3, torch.arange(100, 105), torch.tensor([0, 1, 2, 3, 4])
    sampler = {"temperature": 1.0, "top_p": 0.9}
    full = emulator.sample(logits, weights_for(3), seeds=seeds, row_keys=keys, steps=steps, **sampler)
    subset = torch.tensor([3, 1])
    alone = emulator.sample(
        logits[subset], weights_for(3), seeds=seeds[subset], row_keys=keys[subset], steps=steps[subset], **sampler
    )
    assert torch.equal(full[2][subset], alone[2]) and torch.equal(full[3][subset], alone[3])


def test_emulated_more_rows_than_the_grid(tmp_path_factory):
    # Batches beyond gridDim.y's limit (65535 on a GPU) loop over rows inside the chunk kernels.
    small_grid = build_emulator(tmp_path_factory, "-DSTEER_KERN_MAX_GRID_Y=2")
    logits = random_logits((5, 3, 1500), seed=20)
    for sampler in ({"temperature": 1.0}, {"temperature": 1.0, "top_k": 8, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.9}):
        assert_draws_match(small_grid, logits, weights_for(3, per_row_batch=5), sampler, plausibility_alpha=0.001)
    status, err, got, _ = small_grid.combine(logits, weights_for(3))
    assert status == 0 and err == [NO_ERROR] * 3
    torch.testing.assert_close(got, reference.combine(logits, weights_for(3)), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("bad, slot", [(math.nan, 0), (math.inf, 1)])
def test_emulated_nan_and_posinf_are_recorded(emulator, bad, slot):
    logits = random_logits((3, 4, 40), seed=17)
    logits[2, 1, 13] = bad
    logits[1, 3, 39] = bad
    seeds, keys, steps = row_keys_for(3)
    status, err, *_ = emulator.sample(logits, weights_for(4), seeds=seeds, row_keys=keys, steps=steps, top_k=3)
    assert status == 0 and err[slot] == 1 * 4 + 3
    status, err, *_ = emulator.combine(logits, weights_for(4))
    assert status == 0 and err[slot] == 1 * 4 + 3


def test_emulated_empty_row_is_recorded(emulator):
    logits = random_logits((3, 2, 2400), seed=18)
    logits[1, 0] = -math.inf
    logits[2, 0] = -math.inf
    seeds, keys, steps = row_keys_for(3)
    weights = torch.tensor([1.2, -0.2])
    assert emulator.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, top_k=5)[1] == [NO_ERROR, NO_ERROR, 1]
    for normalize in (True, False):
        assert emulator.combine(logits, weights, normalize=normalize)[1] == [NO_ERROR, NO_ERROR, 1]


def test_emulated_invalid_arguments(emulator):
    seeds, keys, steps = row_keys_for(1)
    status, *_ = emulator.sample(random_logits((1, 1, 4)), [1.0], seeds=seeds, row_keys=keys, steps=steps, top_p=0.0)
    assert status == INVALID_ARGUMENT


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("options", [{}, {"normalize": False}, {"vocab_size": 2000, "plausibility_alpha": 0.1}], ids=str)
def test_emulated_combine_matches_the_reference(emulator, dtype, options):
    logits = random_logits((3, 4, 2100), dtype, seed=19, scale=4.0)
    weights = weights_for(4, per_row_batch=3)
    status, err, got, _ = emulator.combine(logits, weights, **options)
    assert status == 0 and err == [NO_ERROR] * 3
    kwargs = {"normalize": options.get("normalize", True), "vocab_size": options.get("vocab_size"),
              "plausibility_alpha": options.get("plausibility_alpha", 0.0)}  # fmt: skip
    want = reference.combine(logits, weights, **kwargs)
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=2e-5)


# ------------------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(not cuda_backend.is_available(), reason="needs a CUDA GPU and steer._C_cuda")


def gpu_sample(logits, weights, seeds, keys, steps, sampler, vocab_size=None):
    sampler = dict(sampler)
    alpha = sampler.pop("plausibility_alpha", 0.0)
    batch = logits.shape[0]
    weights = torch.as_tensor(weights, dtype=torch.float32)
    weights = (weights.expand(batch, -1) if weights.dim() == 1 else weights).contiguous().cuda()
    tokens, logprobs = cuda_backend.sample(
        logits.cuda(), weights, seeds=seeds.cuda(), row_keys=keys.cuda(), steps=steps.cuda(),
        vocab_size=vocab_size or logits.shape[2], plausibility_alpha=alpha,
        temperature=sampler.get("temperature", 1.0), top_k=sampler.get("top_k", 0), top_p=sampler.get("top_p", 1.0),
    )  # fmt: skip
    return tokens.cpu(), logprobs.cpu()


def assert_gpu_draws_match(logits, weights, sampler, vocab_size=None):
    seeds, keys, steps = row_keys_for(logits.shape[0])
    tokens, logprobs = gpu_sample(logits, weights, seeds, keys, steps, sampler, vocab_size)
    want_tokens, want_logprobs = reference_draw(
        logits, weights, seeds, keys, steps, dict(sampler, vocab_size=vocab_size) if vocab_size else sampler
    )
    assert torch.equal(tokens, want_tokens), (tokens != want_tokens).nonzero().flatten().tolist()
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-4, atol=1e-4)


GPU_SAMPLERS = [
    {"temperature": 1.0},
    {"temperature": 0.0},
    {"temperature": 0.7, "top_k": 10},
    {"temperature": 1.2, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 50, "top_p": 0.8},
    {"temperature": 0.0, "top_k": 10, "top_p": 0.5},
    {"temperature": 1.0, "top_k": 1000},
    {"temperature": 1.0, "top_k": 50, "top_p": 0.8, "plausibility_alpha": 0.01},
]


@gpu
@pytest.mark.parametrize("sampler", GPU_SAMPLERS, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 3, 17), (4, 7, 1001), (2, 9, 50257), (2, 3, 128256), (64, 3, 4099)], ids=str)
def test_gpu_draws_are_the_reference_draws(shape, sampler):
    assert_gpu_draws_match(random_logits(shape, seed=shape[2]), weights_for(shape[1]), sampler)


@gpu
@pytest.mark.parametrize("num_streams", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_streams_and_dtypes(num_streams, dtype):
    logits = random_logits((3, num_streams, 5003), dtype, seed=num_streams)
    assert_gpu_draws_match(logits, weights_for(num_streams, per_row_batch=3), {"temperature": 0.9, "top_k": 20, "top_p": 0.9})


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_aligned_and_strided_layouts(dtype):
    aligned = random_logits((4, 3, 32768), dtype, seed=1)
    strided = random_logits((4, 32768, 6), dtype, seed=2).permute(0, 2, 1)[:, ::2]
    offset = random_logits((4, 3, 32769), dtype, seed=3)[:, :, 1:]  # misaligned rows
    for logits in (aligned, strided, offset):
        assert_gpu_draws_match(logits, weights_for(3), {"temperature": 1.0, "top_p": 0.95})


@gpu
def test_gpu_minus_inf_rules_padding_and_plausibility():
    logits = random_logits((3, 4, 50304), seed=4)
    logits[0, 0, :50000] = -math.inf
    logits[1, 1, :5000] = -math.inf
    logits[2, 3, 7] = -math.inf
    logits[2, 2, 9] = -math.inf
    logits[:, :, 50257:] = 80.0
    logits[1, 2, 50300] = math.nan  # padding: never read
    weights = torch.tensor([[1.2, -0.2, -0.1, -0.1], [1.2, -0.2, -0.1, -0.1], [1.2, -0.2, 0.0, -0.2]])
    for sampler in ({"temperature": 1.0}, {"temperature": 1.0, "top_k": 30}, {"temperature": 0.8, "top_p": 0.9, "plausibility_alpha": 0.05}):
        assert_gpu_draws_match(logits, weights, sampler, vocab_size=50257)


@gpu
@pytest.mark.parametrize("bad, message", [(math.nan, "NaN"), (math.inf, r"\+inf")])
def test_gpu_nan_and_posinf_raise(bad, message):
    logits = random_logits((3, 4, 40000), seed=5)
    logits[2, 1, 13] = bad
    seeds, keys, steps = row_keys_for(3)
    with pytest.raises(ValueError, match=f"{message} \\(batch row 2, stream 1\\)"):
        gpu_sample(logits, weights_for(4), seeds, keys, steps, {"top_k": 5})


@gpu
def test_gpu_empty_row_raises():
    logits = random_logits((2, 2, 3000), seed=6)
    logits[1, 0] = -math.inf
    seeds, keys, steps = row_keys_for(2)
    with pytest.raises(ValueError, match="row 1 has no token"):
        gpu_sample(logits, torch.tensor([1.2, -0.2]), seeds, keys, steps, {"top_p": 0.9})


@gpu
@pytest.mark.parametrize("sampler", [{"top_k": 20}, {"top_p": 0.9}, {"temperature": 1.0}], ids=str)
def test_gpu_rows_do_not_depend_on_the_batch(sampler):
    logits = random_logits((64, 3, 32000), seed=7, scale=0.5)
    seeds, keys, steps = torch.full((64,), 3), torch.arange(1000, 1064), torch.full((64,), 9)
    full = gpu_sample(logits, weights_for(3), seeds, keys, steps, sampler)
    subset = torch.tensor([63, 5, 17])
    alone = gpu_sample(logits[subset], weights_for(3), seeds[subset], keys[subset], steps[subset], sampler)
    assert torch.equal(full[0][subset], alone[0]) and torch.equal(full[1][subset], alone[1])


@gpu
def test_gpu_sampler_replays_in_a_cuda_graph():
    batch, vocab = 4, 32000
    logits = random_logits((batch, 3, vocab), seed=8).cuda()
    weights = weights_for(3).expand(batch, -1).contiguous().cuda()
    seeds, keys, steps = (t.cuda() for t in row_keys_for(batch, step=0))
    kwargs = dict(temperature=1.0, top_k=0, top_p=0.9, vocab_size=vocab, plausibility_alpha=0.0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        cuda_backend.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens, logprobs = cuda_backend.sample(logits, weights, seeds=seeds, row_keys=keys, steps=steps, **kwargs)
    for step in range(3):
        steps.fill_(step)
        graph.replay()
        torch.cuda.synchronize()
        want, _ = reference.sample(
            logits.cpu(), weights[0].cpu(), seeds=seeds.cpu(), row_keys=keys.cpu(), steps=steps.cpu(), top_p=0.9
        )
        assert torch.equal(tokens.cpu(), want)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 17), (4, 7, 1001), (2, 9, 50257), (1, 3, 128256)], ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_gpu_combine_matches_the_reference(dtype, shape, normalize):
    logits = random_logits(shape, dtype, seed=9, scale=4.0)
    weights = weights_for(shape[1], per_row_batch=shape[0])
    got = cuda_backend.combine(
        logits.cuda(), weights.cuda(), normalize=normalize, vocab_size=shape[2], plausibility_alpha=0.0
    ).cpu()
    want = reference.combine(logits, weights, normalize=normalize)
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    finite = torch.isfinite(want)
    scale = float(want[finite].abs().max().clamp(min=1.0))
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=scale * 2e-6 + 1e-5)


def test_cuda_backend_is_unavailable_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cuda_backend.is_available() is False
