"""Reading the [B, K, V] logits: what every STEER kernel shares.

For one row b and a tile of token ids v, ``combined_tile`` reads each of the K streams once, in
their own dtype and strides, and returns

    s(v) = sum_{k : w_k != 0} w_k * z'_k(v)      z'_k = NEG_INF_FLOOR where z_k = -inf and w_k < 0
    s(v) = -inf                                  where v >= vocab_size, or (plausibility) where
                                                 z_0(v) < max_u z_0(u) + log(alpha)

which equals sum_k w_k log_softmax(z_k)(v) up to a per-row constant (docs/design.md, section 1), so no
kernel ever computes a per-stream exponential. It also folds every element into an error code,
min over (stream k if z is NaN, K + k if z is +inf), which the kernel turns into the shared
error buffer

    err[0] = min over rows b, streams k with a NaN of       b * K + k      (INT64_MAX if none)
    err[1] = min over rows b, streams k with a +inf of      b * K + k
    err[2] = min over rows b without any finite score of    b

(the same layout as the CUDA backend), and ``raise_for_errors`` turns it into the shared
ValueErrors of steer.ops.errors. The plausibility floor needs max_u z_0(u) before the main pass:
``launch_stream0_max`` is a cheap pass over stream 0 only, one partial max per vocabulary chunk.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

NEG_INF_FLOOR = tl.constexpr(-1.0e4)  # steer.reference.NEG_INF_FLOOR
NO_ERROR = 2**63 - 1  # an untouched entry of the error buffer


@triton.jit
def combined_tile(row_ptr, stride_k, stride_v, w_row_ptr, w_stride_k, offs, in_vocab, plaus_threshold, code,
                  K: tl.constexpr, PLAUS: tl.constexpr):
    """(s [BLOCK] float32, updated error code [BLOCK] int32) for the token ids ``offs`` of one row.

    row_ptr points at logits[b, 0, 0] (int64 offset already applied); offs may be int32 or int64.
    """
    acc = tl.zeros(offs.shape, dtype=tl.float32)
    keep = in_vocab
    for k in tl.static_range(K):
        z = tl.load(row_ptr + k * stride_k + offs * stride_v, mask=in_vocab, other=0.0,
                    eviction_policy="evict_first").to(tl.float32)  # read once: keep L2 for the rest
        w = tl.load(w_row_ptr + k * w_stride_k)
        # NaN / +inf: both fail z < inf; -inf passes. Streams of weight 0 are checked too.
        code = tl.minimum(code, tl.where(z < float("inf"), 2 * K, tl.where(z != z, k, K + k)))
        if PLAUS:
            if k == 0:
                keep = keep & (z >= plaus_threshold)
        z = tl.where(z == float("-inf"), tl.where(w < 0, NEG_INF_FLOOR, float("-inf")), z)
        if w != 0:
            acc = acc + w * z
    return tl.where(keep, acc, float("-inf")), code


@triton.jit
def report_stream_errors(err_ptr, b, code, K: tl.constexpr):
    """Fold a tile's error codes into err[0] (NaN) and err[1] (+inf) with one atomic each, if any."""
    worst = tl.min(code)
    if worst < 2 * K:
        b64 = b.to(tl.int64)
        if worst < K:
            tl.atomic_min(err_ptr, b64 * K + worst)
        else:
            tl.atomic_min(err_ptr + 1, b64 * K + (worst - K))


@triton.jit
def plausibility_threshold(pmax_ptr, b, num_chunks, log_alpha, NCH: tl.constexpr):
    """max z_0 + log(alpha) of row b from the per-chunk maxima of ``_stream0_max_kernel``;
    +inf (nothing plausible, as in the reference) when stream 0 is -inf everywhere."""
    ch = tl.arange(0, NCH)
    partial = tl.load(pmax_ptr + b * num_chunks + ch, mask=ch < num_chunks, other=float("-inf"))
    best = tl.max(partial)
    return tl.where(best == float("-inf"), float("inf"), best + log_alpha)


@triton.jit
def _stream0_max_kernel(logits_ptr, stride_b, stride_v, pmax_ptr, vocab_size, chunk, num_chunks,
                        BLOCK: tl.constexpr, OFFS64: tl.constexpr):
    """pmax[b, c] = max of logits[b, 0, v] over chunk c (float32; -inf where all -inf)."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    row_ptr = logits_ptr + b.to(tl.int64) * stride_b
    start = c * chunk
    end = tl.minimum(start + chunk, vocab_size)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    for tile in range(start, end, BLOCK):
        offs = tile + tl.arange(0, BLOCK)
        if OFFS64:
            offs = offs.to(tl.int64)
        z = tl.load(row_ptr + offs * stride_v, mask=offs < end, other=float("-inf")).to(tl.float32)
        best = tl.maximum(best, z)
    tl.store(pmax_ptr + b * num_chunks + c, tl.max(best))


def launch_stream0_max(logits: torch.Tensor, vocab_size: int, block: int, chunk: int, num_chunks: int) -> torch.Tensor:
    """Per-chunk maxima [B, num_chunks] of stream 0 (for the plausibility floor)."""
    batch = logits.shape[0]
    pmax = torch.empty((batch, num_chunks), dtype=torch.float32, device=logits.device)
    _stream0_max_kernel[(batch, num_chunks)](
        logits, logits.stride(0), logits.stride(2), pmax, vocab_size, chunk, num_chunks,
        BLOCK=block, OFFS64=needs_int64_offsets(logits), num_warps=4, enable_fp_fusion=False,
    )
    return pmax


def needs_int64_offsets(logits: torch.Tensor) -> bool:
    """Whether k * stride_k + v * stride_v can leave int32 (the row offset is always int64)."""
    _, num_streams, vocab = logits.shape
    return (num_streams - 1) * abs(logits.stride(1)) + (vocab - 1) * abs(logits.stride(2)) >= 2**31 - 1


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def multiprocessors(device: torch.device) -> int:
    """The number of SMs to fill (4 under the interpreter, where it only shapes the test grid)."""
    if device.type != "cuda":
        return 4
    return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


# Launch defaults, to be tuned on the GPU (benchmarks/test_bench_triton.py sweeps them): tiles of
# 1024 logits per stream, 8 per thread (4 warps), and enough programs for several waves per SM so
# that the last wave is short. (2048-wide tiles of 16-bit logits spill registers at K = 16 with
# top-p lists: python -m steer_kernels.compile_check.)
PROGRAMS_PER_SM = 8


def default_block(dtype: torch.dtype, columns: int) -> int:
    return min(1024, max(16, triton.next_power_of_2(columns)))


def default_warps(block: int) -> int:
    return max(1, min(8, block // 256))


def plan_chunks(batch: int, columns: int, block: int, device: torch.device, *, chunk: int | None = None,
                max_chunks: int = 1024, programs_per_sm: int | None = None) -> tuple[int, int]:
    """(chunk, num_chunks): how the vocabulary of each row is split across programs.

    Enough chunks that batch * num_chunks covers the GPU about ``programs_per_sm`` times over (so
    B = 1..8 still fills an H100's 132 SMs), each a whole number of BLOCK tiles; ``chunk`` forces
    a chunk size (tests use small ones so that small vocabularies still get several chunks).
    """
    tiles = triton.cdiv(columns, block)
    if chunk is None:
        wanted = triton.cdiv((programs_per_sm or PROGRAMS_PER_SM) * multiprocessors(device), max(batch, 1))
        num_chunks = max(1, min(wanted, tiles, max_chunks))
        chunk = triton.cdiv(tiles, num_chunks) * block
    else:
        chunk = triton.cdiv(max(chunk, 1), block) * block
    num_chunks = triton.cdiv(columns, chunk)
    if num_chunks > max_chunks:
        chunk = triton.cdiv(tiles, max_chunks) * block
        num_chunks = triton.cdiv(columns, chunk)
    return chunk, num_chunks


def on_device(device: torch.device):
    """Make the tensors' GPU current while launching (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def new_error_buffer(device: torch.device) -> torch.Tensor:
    """A fresh error buffer (3 x int64, see the module docstring); filling it is a device op."""
    return torch.full((3,), NO_ERROR, dtype=torch.int64, device=device)


def raise_for_errors(err: torch.Tensor, num_streams: int) -> None:
    """Read the error buffer back (the one host synchronisation) and raise the shared ValueError."""
    from steer.ops import errors

    errors.RecordedErrors(err, NO_ERROR, num_streams).raise_if_any()
