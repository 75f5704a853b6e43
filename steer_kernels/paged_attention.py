"""Decode attention over a paged KV pool: one new query token per row, keys and values read in
place from their slots (no gather copy), grouped-query heads sharing each key / value read.

Row r has c_r = context_lens[r] keys; key j lives in slot t_r(j) = block_tables[r, j // P] * P + j % P
(P = block_size) of the pool k_cache / v_cache [num_slots, Hkv, D]. Query head h reads kv head
h // G (G = H / Hkv). With the scores in base 2, s_j = (q_h . k_j) * scale * log2(e):

    out_h = sum_j 2^(s_j - m) v_j / sum_j 2^(s_j - m)        m = max_j s_j
          = softmax_j(q_h . k_j * scale) v_j

Online softmax over tiles of BLOCK_N keys (fp32 running max m, sum l and accumulator a):

    m' = max(m, max_tile s)
    l' = l 2^(m - m') + sum_tile 2^(s_j - m')
    a' = a 2^(m - m') + sum_tile 2^(s_j - m') v_j

Grid (R, Hkv, num_splits): program (r, kvh, i) loads the G query heads of kv head kvh as one
[BLOCK_G, D] tile (padded to 16 heads, the MMA's M), so each key / value tile feeds G heads at once
through two tl.dot: scores [BLOCK_G, BLOCK_N] = q k^T, then a += p v. Keys of a tile may span
several blocks (BLOCK_N > P) or part of one (BLOCK_N < P): each key finds its block id in the
row's block table. Split i takes a contiguous range of whole tiles, ceil(tiles_r / num_splits) of
them, decided per row on the device from c_r (so short rows leave trailing splits empty).

One split (num_splits = 1): the program writes out = a / l in the output dtype. Several (flash
decoding, for long contexts with few rows): each program writes its partial (m_i, l_i, a_i) and a
second small kernel, grid (R, H), merges them, with M = max_i m_i:

    out = sum_i 2^(m_i - M) a_i / sum_i 2^(m_i - M) l_i          (an empty split: m_i = -inf, l_i = 0, a_i = 0)

Scores and probabilities use q's dtype in the dots (keys and values are converted to it, as the
torch path does), fp32 accumulation (fp32 inputs: IEEE dots, no TF32). A row with c_r = 0 (padding
in a captured batch) gets zeros. (Under the interpreter, bfloat16 dots run as fp32 dots of the same
bfloat16 values: the interpreter would multiply their raw bits, see _mma.) The launcher reads nothing back from the device: the split plan
uses the table width (block_tables.shape[1] * P) as the longest context, so it is CUDA-graph safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from steer_kernels import streams

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
# Split planning (to be tuned on the GPU: benchmarks/test_bench_paged_attention.py sweeps it):
# enough programs for a few per SM, but at least MIN_KEYS_PER_SPLIT keys per split.
PROGRAMS_PER_SM = 4
MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 64
MIN_HEAD_TILE = 16  # the query heads of a kv head, padded to the MMA's M


@triton.jit
def _mma(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b, fp32 accumulation. UPCAST (the interpreter, bfloat16): Triton's interpreter multiplies
    bfloat16 operands as their raw uint16 bits, so multiply the same values in fp32 there (the
    products of bfloat16 values are exact in fp32, as in the tensor cores)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _paged_decode_kernel(
    q_ptr, sq_r, sq_h, sq_d,
    k_ptr, sk_n, sk_h, sk_d,
    v_ptr, sv_n, sv_h, sv_d,
    table_ptr, st_r, st_b,
    lens_ptr,
    out_ptr, so_r, so_h, so_d,
    pm_ptr, pl_ptr, pacc_ptr,
    qk_scale, num_heads, num_splits,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    r = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    r64 = r.to(tl.int64)
    context = tl.load(lens_ptr + r).to(tl.int32)
    tiles_per_split = tl.cdiv(tl.cdiv(context, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, context)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + offs_g
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    q = tl.load(q_ptr + r64 * sq_r + heads[:, None] * sq_h + offs_d[None, :] * sq_d,
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    dtype = q.dtype

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    table_row = table_ptr + r64 * st_r
    k_head = k_ptr + kvh.to(tl.int64) * sk_h
    v_head = v_ptr + kvh.to(tl.int64) * sv_h
    for tile in range(start, end, BLOCK_N):
        n = tile + offs_n
        n_ok = n < end
        block = tl.load(table_row + (n // PAGE) * st_b, mask=n_ok, other=0)
        slot = block.to(tl.int64) * PAGE + n % PAGE
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_head + slot[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        s = _mma(q, tl.trans(k.to(dtype)), PRECISION, UPCAST) * qk_scale  # [BLOCK_G, BLOCK_N]
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))  # finite: every tile in [start, end) has a key
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_head + slot[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _mma(p.to(dtype), v.to(dtype), PRECISION, UPCAST)
        m = m_new

    if SPLIT:
        # partials [R, H, num_splits] (m, l) and [R, H, num_splits, HEAD_DIM] (acc), float32
        part = (r64 * num_heads + heads) * num_splits + split
        tl.store(pm_ptr + part, m, mask=g_ok)
        tl.store(pl_ptr + part, l, mask=g_ok)
        tl.store(pacc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=g_ok[:, None] & d_ok[None, :])
    else:
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptr + r64 * so_r + heads[:, None] * so_h + offs_d[None, :] * so_d,
                 out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])


@triton.jit
def _paged_decode_reduce_kernel(
    pm_ptr, pl_ptr, pacc_ptr,
    out_ptr, so_r, so_h, so_d,
    num_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    r = tl.program_id(0)
    h = tl.program_id(1)
    base = (r.to(tl.int64) * num_heads + h) * num_splits
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    big_m = float("-inf")
    for first in range(0, num_splits, BLOCK_S):
        s_ok = first + offs_s < num_splits
        big_m = tl.maximum(big_m, tl.max(tl.load(pm_ptr + base + first + offs_s, mask=s_ok, other=float("-inf"))))
    big_m = tl.where(big_m == float("-inf"), 0.0, big_m)  # every split empty (context 0): zeros
    total = tl.zeros([BLOCK_S], tl.float32)
    acc = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    for first in range(0, num_splits, BLOCK_S):
        part = first + offs_s
        s_ok = part < num_splits
        w = tl.exp2(tl.load(pm_ptr + base + part, mask=s_ok, other=float("-inf")) - big_m)
        total += w * tl.load(pl_ptr + base + part, mask=s_ok, other=0.0)
        a = tl.load(pacc_ptr + (base + part)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        acc += w[:, None] * a
    denominator = tl.sum(total)
    out = tl.sum(acc, 0) / tl.where(denominator > 0, denominator, 1.0)
    tl.store(out_ptr + r.to(tl.int64) * so_r + h * so_h + offs_d * so_d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


_INTERPRETED = not isinstance(_paged_decode_kernel, triton.runtime.jit.JITFunction)  # TRITON_INTERPRET=1


def plan_splits(rows: int, kv_heads: int, max_context: int, device: torch.device, *,
                programs_per_sm: int | None = None, min_keys: int | None = None) -> int:
    """How many programs share each (row, kv head): enough that rows * kv_heads * splits covers
    the GPU about ``programs_per_sm`` times over (few rows, long contexts), at most one per
    ``min_keys`` keys of the longest context (the merge must pay for itself), 1 when the rows
    alone fill the GPU. Under the interpreter the GPU is 4 "SMs" (streams.multiprocessors)."""
    programs = max(rows * kv_heads, 1)
    wanted = triton.cdiv((programs_per_sm or PROGRAMS_PER_SM) * streams.multiprocessors(device), programs)
    by_length = max_context // (min_keys or MIN_KEYS_PER_SPLIT)
    return max(1, min(wanted, by_length, MAX_SPLITS))


def default_block_n(head_dim: int) -> int:
    """Keys per tile: 64 (a [64, D] tile of K and one of V per step), 32 for D > 128."""
    return 64 if head_dim <= 128 else 32


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check(q, k_cache, v_cache, block_tables, context_lens, block_size, out, num_splits, block_n):
    floats = (torch.float32, torch.float16, torch.bfloat16)
    if q.dim() != 3:
        raise ValueError(f"q must be [rows, heads, head_dim], got shape {tuple(q.shape)}")
    rows, heads, head_dim = q.shape
    if k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must both be [num_slots, kv_heads, head_dim], got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    _, kv_heads, cache_dim = k_cache.shape
    if cache_dim != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and of the cache ({cache_dim}) differ")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in 1..{MAX_HEAD_DIM}, got {head_dim}")
    if kv_heads < 1 or heads % kv_heads != 0:
        raise ValueError(f"the query heads ({heads}) must be a multiple of the kv heads ({kv_heads})")
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if tensor.dtype not in floats:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache and v_cache dtypes differ: {k_cache.dtype} and {v_cache.dtype}")
    if block_tables.dim() != 2 or block_tables.shape[0] != rows:
        raise ValueError(f"block_tables must be [rows={rows}, max_blocks], got shape {tuple(block_tables.shape)}")
    if context_lens.shape != (rows,):
        raise ValueError(f"context_lens must be [rows={rows}], got shape {tuple(context_lens.shape)}")
    for name, tensor in (("block_tables", block_tables), ("context_lens", context_lens)):
        if tensor.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 (or int64), got {tensor.dtype}")
    if not _is_power_of_two(block_size):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    if block_n is not None and not (_is_power_of_two(block_n) and block_n >= 16):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if out is not None and (out.shape != q.shape or out.dtype not in floats):
        raise ValueError(f"out must be a float tensor of shape {tuple(q.shape)}, got {tuple(out.shape)} {out.dtype}")
    tensors = (q, k_cache, v_cache, block_tables, context_lens) + ((out,) if out is not None else ())
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    block_size: int,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale) v for one query per row over the row's paged keys; returns ``out``
    [R, H, D] (a new tensor of q's dtype unless given), without host synchronisation.

    q: [R, H, D]; k_cache, v_cache: [num_slots, Hkv, D], one layer of the pool, any strides
    (H a multiple of Hkv; D <= 256); block_tables: int32 [R, max_blocks], the block ids of each
    row (entries past a row's context are never read); context_lens: int32 [R], keys per row
    including the one just written (0: the row's output is zeros). float32 / float16 / bfloat16.
    num_splits (flash decoding: programs per (row, kv head), see plan_splits), block_n (keys per
    tile), num_warps, num_stages: tuning knobs.
    """
    _check(q, k_cache, v_cache, block_tables, context_lens, block_size, out, num_splits, block_n)
    rows, heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if rows == 0:
        return out
    group = heads // kv_heads
    block_n = block_n or default_block_n(head_dim)
    if num_splits is None:
        num_splits = plan_splits(rows, kv_heads, block_tables.shape[1] * block_size, q.device)
    split = num_splits > 1
    if split:
        pm = torch.empty((rows, heads, num_splits), dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
        pacc = torch.empty((rows, heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    else:
        pm = pl = pacc = out  # unused
    block_d = max(16, triton.next_power_of_2(head_dim))
    with streams.on_device(q.device):
        _paged_decode_kernel[(rows, kv_heads, num_splits)](
            q, *q.stride(),
            k_cache, *k_cache.stride(),
            v_cache, *v_cache.stride(),
            block_tables, *block_tables.stride(),
            context_lens,
            out, *out.stride(),
            pm, pl, pacc,
            scale * LOG2E, heads, num_splits,
            GROUP=group, BLOCK_G=max(MIN_HEAD_TILE, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
            BLOCK_D=block_d, BLOCK_N=block_n, PAGE=block_size, SPLIT=split,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32", UPCAST=_INTERPRETED and q.dtype == torch.bfloat16,
            num_warps=num_warps or 4, num_stages=num_stages or 2, enable_fp_fusion=True,
        )
        if split:
            _paged_decode_reduce_kernel[(rows, heads)](
                pm, pl, pacc, out, *out.stride(), heads, num_splits,
                HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=min(16, triton.next_power_of_2(num_splits)),
                num_warps=4, enable_fp_fusion=True,
            )
    return out


__all__ = ["default_block_n", "paged_decode_attention", "plan_splits"]
