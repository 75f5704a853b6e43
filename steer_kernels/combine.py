"""steer.combine in Triton: the combined STEER scores of [B, K, V] logits, one read of each logit.

    s(v)   = sum_k w_k z_k(v)   with the -inf rules, padding and plausibility of streams.py
    out(v) = s(v)                                           normalize=False
    out(v) = s(v) - logsumexp_u s(u)                        normalize=True
           = log_softmax(sum_k w_k log_softmax(z_k))(v)     (the per-stream normalisers cancel)

Grid (B, num_chunks): program (b, c) reads chunk c of row b's K streams, writes s and keeps the
chunk's running max m_c and sum_c exp(s - m_c). A second small kernel, grid (B, num_chunks) again,
merges the B x num_chunks partials into each row's logsumexp (and flags rows without a finite
score), and subtracts it in place when normalising.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from steer_kernels import streams


@triton.jit
def _combine_kernel(
    logits_ptr, stride_b, stride_k, stride_v,
    w_ptr, w_stride_b, w_stride_k,
    pmax0_ptr, log_alpha,
    out_ptr, out_stride_b,
    pmax_ptr, psum_ptr, err_ptr,
    vocab_size, out_columns, chunk, num_chunks,
    K: tl.constexpr, BLOCK: tl.constexpr, NCH: tl.constexpr,
    PLAUS: tl.constexpr, STATS: tl.constexpr, OFFS64: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.program_id(1)
    row_ptr = logits_ptr + b.to(tl.int64) * stride_b
    w_row_ptr = w_ptr + b.to(tl.int64) * w_stride_b
    out_row_ptr = out_ptr + b.to(tl.int64) * out_stride_b
    plaus_threshold = 0.0
    if PLAUS:
        plaus_threshold = streams.plausibility_threshold(pmax0_ptr, b, num_chunks, log_alpha, NCH)
    start = c * chunk
    end = tl.minimum(start + chunk, out_columns)
    code = tl.full([BLOCK], 2 * K, tl.int32)
    m = float("-inf")
    total = 0.0
    for tile in range(start, end, BLOCK):
        offs = tile + tl.arange(0, BLOCK)
        if OFFS64:
            offs = offs.to(tl.int64)
        s, code = streams.combined_tile(row_ptr, stride_k, stride_v, w_row_ptr, w_stride_k, offs,
                                        offs < vocab_size, plaus_threshold, code, K, PLAUS)
        tl.store(out_row_ptr + offs, s, mask=offs < end)
        m_new = tl.maximum(m, tl.max(s))
        if STATS:
            if m_new > float("-inf"):
                total = total * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new))
        m = m_new
    streams.report_stream_errors(err_ptr, b, code, K)
    tl.store(pmax_ptr + b * num_chunks + c, m)
    tl.store(psum_ptr + b * num_chunks + c, total)


@triton.jit
def _combine_finish_kernel(
    out_ptr, out_stride_b, pmax_ptr, psum_ptr, err_ptr, out_columns, chunk, num_chunks,
    BLOCK: tl.constexpr, NCH: tl.constexpr, NORMALIZE: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.program_id(1)
    ch = tl.arange(0, NCH)
    pm = tl.load(pmax_ptr + b * num_chunks + ch, mask=ch < num_chunks, other=float("-inf"))
    m = tl.max(pm)
    if m == float("-inf"):
        if c == 0:
            tl.atomic_min(err_ptr + 2, b.to(tl.int64))
    elif NORMALIZE:
        ps = tl.load(psum_ptr + b * num_chunks + ch, mask=ch < num_chunks, other=0.0)
        lse = m + tl.log(tl.sum(ps * tl.exp(pm - m)))
        out_row_ptr = out_ptr + b.to(tl.int64) * out_stride_b
        start = c * chunk
        end = tl.minimum(start + chunk, out_columns)
        for tile in range(start, end, BLOCK):
            offs = tile + tl.arange(0, BLOCK)
            s = tl.load(out_row_ptr + offs, mask=offs < end)
            tl.store(out_row_ptr + offs, s - lse, mask=offs < end)


def launch_combine(
    logits: torch.Tensor,
    weights: torch.Tensor,
    out: torch.Tensor,
    err: torch.Tensor,
    *,
    normalize: bool,
    vocab_size: int,
    plausibility_alpha: float,
    block: int | None = None,
    chunk: int | None = None,
    num_warps: int | None = None,
    programs_per_sm: int | None = None,
) -> None:
    """Write the combined scores of ``logits`` [B, K, V] into ``out`` [B, V] float32 (unit stride
    along V) and errors into ``err`` (int64 [3], see steer_kernels.streams; reset here), with no
    host synchronisation: safe inside CUDA graph capture.

    weights: float32 [B, K] (any strides, e.g. a row stride of 0 for shared weights).
    block, chunk, num_warps, programs_per_sm: tiling knobs (see steer_kernels.streams).
    """
    with streams.on_device(logits.device):
        _launch_combine(logits, weights, out, err, normalize=normalize, vocab_size=vocab_size,
                        plausibility_alpha=plausibility_alpha, block=block, chunk=chunk, num_warps=num_warps,
                        programs_per_sm=programs_per_sm)


def _launch_combine(logits, weights, out, err, *, normalize, vocab_size, plausibility_alpha, block, chunk, num_warps,
                    programs_per_sm):
    batch, num_streams, columns = logits.shape
    err.fill_(streams.NO_ERROR)
    if batch == 0:
        return
    block = block or streams.default_block(logits.dtype, columns)
    num_warps = num_warps or streams.default_warps(block)
    chunk, num_chunks = streams.plan_chunks(batch, columns, block, logits.device, chunk=chunk,
                                            programs_per_sm=programs_per_sm)
    nch = triton.next_power_of_2(num_chunks)
    plaus = plausibility_alpha > 0
    pmax0 = streams.launch_stream0_max(logits, vocab_size, block, chunk, num_chunks) if plaus else out
    log_alpha = math.log(plausibility_alpha) if plaus else 0.0
    pmax = torch.empty((batch, num_chunks), dtype=torch.float32, device=logits.device)
    psum = torch.empty_like(pmax)
    _combine_kernel[(batch, num_chunks)](
        logits, logits.stride(0), logits.stride(1), logits.stride(2),
        weights, weights.stride(0), weights.stride(1),
        pmax0, log_alpha,
        out, out.stride(0),
        pmax, psum, err,
        vocab_size, columns, chunk, num_chunks,
        K=num_streams, BLOCK=block, NCH=nch, PLAUS=plaus, STATS=normalize,
        OFFS64=streams.needs_int64_offsets(logits), num_warps=num_warps, enable_fp_fusion=False,
    )
    _combine_finish_kernel[(batch, num_chunks if normalize else 1)](
        out, out.stride(0), pmax, psum, err, columns, chunk, num_chunks,
        BLOCK=block, NCH=nch, NORMALIZE=normalize, num_warps=num_warps, enable_fp_fusion=False,
    )


def combine(
    logits: torch.Tensor,
    weights: torch.Tensor,
    *,
    normalize: bool = True,
    vocab_size: int | None = None,
    plausibility_alpha: float = 0.0,
    **knobs,
) -> torch.Tensor:
    """The combined STEER scores [B, V] float32 (see ``steer.combine``) of validated inputs:
    logits [B, K, V] float32 / float16 / bfloat16, weights float32 [B, K] on the same device.
    Raises the shared ValueErrors (one host synchronisation, to read the error buffer)."""
    vocab_size = logits.shape[-1] if vocab_size is None else vocab_size
    out = torch.empty((logits.shape[0], logits.shape[-1]), dtype=torch.float32, device=logits.device)
    err = streams.new_error_buffer(logits.device)
    launch_combine(logits, weights, out, err, normalize=normalize, vocab_size=vocab_size,
                   plausibility_alpha=plausibility_alpha, **knobs)
    streams.raise_for_errors(err, logits.shape[1])
    return out
