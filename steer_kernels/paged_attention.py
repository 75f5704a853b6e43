"""Attention over a paged KV pool, keys and values read in place from their slots (no gather copy),
grouped-query heads sharing each key / value read: ``paged_decode_attention`` (one new query per
row, split-K) and ``paged_extend_attention`` (varlen rows of new queries: prefill, prefill after a
prefix hit, and decode rows, in one launch). steer.ops.attention is the op above both.

Row r has c_r = context_lens[r] keys; key j lives in slot t_r(j) = block_tables[r, j // P] * P + j % P
(P = block_size) of the pool k_cache / v_cache [num_slots, Hkv, D]. Query head h reads kv head
h // G (G = H / Hkv). A query at position p (decode: p = c_r - 1) attends the keys

    j in [lo(p), p]            lo(p) = max(0, p - W + 1) with a sliding window W > 0, else 0

with the scores (an optional logit soft cap C > 0, Gemma 2), in base 2 for exp2:

    z_j = scale * (q_h . k_j)                    z_j = C * tanh(z_j / C) when C > 0
    s_j = z_j * log2(e)
    out_h = sum_j 2^(s_j - m) v_j / sum_j 2^(s_j - m)        m = max_j s_j
          = softmax_j(z_j) v_j

(tanh from exp2, see _tanh: tl.math has no tanh in every Triton version). Online softmax over tiles
of BLOCK_N keys (fp32 running max m, sum l and accumulator a):

    m' = max(m, max_tile s)
    l' = l 2^(m - m') + sum_tile 2^(s_j - m')
    a' = a 2^(m - m') + sum_tile 2^(s_j - m') v_j

Tiles are aligned to multiples of BLOCK_N (a tile then lies in one block when P >= BLOCK_N); keys
of a tile may span several blocks (BLOCK_N > P) or part of one (BLOCK_N < P): each key finds its
block id in the row's block table. Only the tiles that hold an allowed key are read: those from
the one holding lo(first query) to the one holding the last query's position, so a windowed long
context costs the window, not the context.

Decode. Grid (R, Hkv, num_splits): program (r, kvh, i) loads the G query heads of kv head kvh as
one [BLOCK_G, D] tile (padded to 16 heads, the MMA's M), so each key / value tile feeds G heads at
once through two tl.dot: scores [BLOCK_G, BLOCK_N] = q k^T, then a += p v. The window [lo, c_r) of
row r is ceil((c_r - lo') / BLOCK_N) tiles (lo' = lo rounded down to a tile); split i takes a
contiguous range of them, ceil(tiles_r / num_splits), decided per row on the device from c_r (so
short rows leave trailing splits empty). One split (num_splits = 1): the program writes out = a / l
in the output dtype. Several (flash decoding, for long contexts with few rows): each program writes
its partial (m_i, l_i, a_i) and a second small kernel, grid (R, H), merges them, with M = max_i m_i:

    out = sum_i 2^(m_i - M) a_i / sum_i 2^(m_i - M) l_i          (an empty split: m_i = -inf, l_i = 0, a_i = 0)

Extend. Row r has n_r = query_starts[r + 1] - query_starts[r] new queries, the last n_r of its
context: query i (flat token query_starts[r] + i) sits at p = c_r - n_r + i, so it attends the
cached prefix and the new tokens causally. Grid (R, Hkv, ceil(max_query_length / BLOCK_M)):
program (r, kvh, t) loads queries t*BLOCK_M .. t*BLOCK_M + BLOCK_M - 1 of row r for the G heads of
kv head kvh as one [BLOCK_M * BLOCK_G, D] tile (tile row = position * BLOCK_G + head; BLOCK_G =
G rounded up to a power of two, and further so that the tile has at least 16 rows), so each key /
value tile feeds BLOCK_M positions x G heads through the same two dots. Its key tiles run from
the one holding lo(p_first) to p_last (p_first, p_last: the tile's first and last query), so
tiles fully masked for every query of the tile (after the causal limit of its last query, before
the window of its first) are never read; inside, each score is masked to [lo(p), p] of its own
query (a query whose allowed keys all lie in later tiles keeps m = -inf: the exponentials then
subtract 0 in place of m' = -inf, so that it keeps l = 0, a = 0 until they come). Rows are not padded: a program
whose tile starts at or past n_r exits at once, so a row costs its own ceil(n_r / BLOCK_M) tiles
(n_r = 0: nothing, its tokens do not exist in q).

Scores and probabilities use q's dtype in the dots (keys and values are converted to it, as the
torch path does), fp32 accumulation, fp32 softmax (fp32 inputs: IEEE dots, no TF32; half: tensor
cores). A decode row with c_r = 0 (padding in a captured batch) gets zeros. (Under the interpreter,
bfloat16 dots run as fp32 dots of the same bfloat16 values: the interpreter would multiply their
raw bits, see _mma; and conversions to bfloat16 round to nearest even as on the GPU, where the
interpreter would truncate, see _cast.)

CUDA graphs. Neither launcher reads anything back from the device. The decode split plan uses
the table width (block_tables.shape[1] * P, or the window span when smaller) as the longest
context, so a captured decode launch replays correctly for any context lengths the table covers.
The extend grid depends on R and the host int max_query_length only: a captured extend launch
replays correctly for new query_starts / context_lens / q contents as long as every row keeps
n_r <= max_query_length as captured (queries past ceil(max_query_length / BLOCK_M) * BLOCK_M of a
row are not computed: the caller's plan must bound n_r), and T (the shape of q) is fixed.
"""

from __future__ import annotations

import math

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
# Extend: query rows (positions x heads) per program, to be tuned on the GPU (the benchmark's
# test_extend_tuning_sweep); the usual flash-attention forward tile on Hopper.
EXTEND_TILE_ROWS = 128  # D <= 128; 64 for larger heads (registers: the [rows, D] fp32 accumulator)


@triton.jit
def _mma(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b, fp32 accumulation. UPCAST (the interpreter, bfloat16): Triton's interpreter multiplies
    bfloat16 operands as their raw uint16 bits, so multiply the same values in fp32 there (the
    products of bfloat16 values are exact in fp32, as in the tensor cores)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _cast(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """x.to(dtype). UPCAST (the interpreter, bfloat16): the interpreter converts to bfloat16 by
    truncation where the GPU rounds to nearest even, so round here on the float32 bits and keep
    the (exactly bfloat16) value in float32, for _mma's float32 dot or a store to bfloat16."""
    if UPCAST:
        if dtype == tl.bfloat16:
            x32 = x.to(tl.float32)
            bits = x32.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return tl.where(x32 != x32, x32, bits.to(tl.float32, bitcast=True))
    return x.to(dtype)


@triton.jit
def _tanh(x):
    """tanh of fp32 x from exp2 (no tl.math.tanh in every Triton): sign(x) (1 - e) / (1 + e) with
    e = exp(-2|x|) in (0, 1], which never overflows (|x| large: e = 0, tanh = +-1); for |x| < 1/16,
    where 1 - e would cancel, the odd Taylor series to x^7 (error < |x|^9 / 40 < 2^-41). NaN stays NaN."""
    a = tl.abs(x)
    e = tl.exp2(a * -2.8853900817779268)  # -2 log2(e)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * -0.05396825396825397)))
    return tl.where(a < 0.0625, small, tl.where(x < 0, -t, t))


@triton.jit
def _scores(q, k, qk_scale, cap_scale, PRECISION: tl.constexpr, UPCAST: tl.constexpr, SOFT_CAP: tl.constexpr):
    """Base-2 scores s = log2(e) * z of q [M, D] against k [N, D]: qk_scale = scale * log2(e)
    without a cap; with one (SOFT_CAP), qk_scale = scale / C and cap_scale = C * log2(e), so that
    s = C log2(e) tanh(scale q.k / C)."""
    s = _mma(q, tl.trans(k), PRECISION, UPCAST) * qk_scale
    if SOFT_CAP:
        s = cap_scale * _tanh(s)
    return s


@triton.jit
def _paged_decode_kernel(
    q_ptr, sq_r, sq_h, sq_d,
    k_ptr, sk_n, sk_h, sk_d,
    v_ptr, sv_n, sv_h, sv_d,
    table_ptr, st_r, st_b,
    lens_ptr,
    out_ptr, so_r, so_h, so_d,
    pm_ptr, pl_ptr, pacc_ptr,
    qk_scale, cap_scale, window, num_heads, num_splits,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, SOFT_CAP: tl.constexpr,
):
    r = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    r64 = r.to(tl.int64)
    context = tl.load(lens_ptr + r).to(tl.int32)
    lo = tl.where(window > 0, tl.maximum(context - window, 0), 0)  # the window's first key
    first = (lo // BLOCK_N) * BLOCK_N  # its tile: the tiles before it are never read
    tiles_per_split = tl.cdiv(tl.cdiv(context - first, BLOCK_N), num_splits)
    start = first + split * tiles_per_split * BLOCK_N
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
        n_ok = (n < end) & (n >= lo)
        block = tl.load(table_row + (n // PAGE) * st_b, mask=n_ok, other=0)
        slot = block.to(tl.int64) * PAGE + n % PAGE
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_head + slot[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        s = _scores(q, _cast(k, dtype, UPCAST), qk_scale, cap_scale, PRECISION, UPCAST, SOFT_CAP)  # [G, BLOCK_N]
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))  # finite: every tile in [start, end) has a key >= lo
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_head + slot[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _mma(_cast(p, dtype, UPCAST), _cast(v, dtype, UPCAST), PRECISION, UPCAST)
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
                 _cast(out, out_ptr.dtype.element_ty, UPCAST), mask=g_ok[:, None] & d_ok[None, :])


@triton.jit
def _paged_decode_reduce_kernel(
    pm_ptr, pl_ptr, pacc_ptr,
    out_ptr, so_r, so_h, so_d,
    num_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, UPCAST: tl.constexpr,
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
    tl.store(out_ptr + r.to(tl.int64) * so_r + h * so_h + offs_d * so_d,
             _cast(out, out_ptr.dtype.element_ty, UPCAST), mask=d_ok)


@triton.jit
def _paged_extend_kernel(
    q_ptr, sq_t, sq_h, sq_d,
    k_ptr, sk_n, sk_h, sk_d,
    v_ptr, sv_n, sv_h, sv_d,
    table_ptr, st_r, st_b,
    starts_ptr, lens_ptr,
    out_ptr, so_t, so_h, so_d,
    qk_scale, cap_scale, window,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, SOFT_CAP: tl.constexpr,
):
    r = tl.program_id(0)
    kvh = tl.program_id(1)
    q_first = tl.program_id(2) * BLOCK_M  # the tile's first query, within the row
    first_token = tl.load(starts_ptr + r).to(tl.int32)
    count = tl.load(starts_ptr + r + 1).to(tl.int32) - first_token  # n_r
    if q_first < count:  # else: past the row's queries (rows are not padded), nothing to do
        r64 = r.to(tl.int64)
        context = tl.load(lens_ptr + r).to(tl.int32)
        offs_i = tl.arange(0, BLOCK_M * BLOCK_G)  # tile row = position * BLOCK_G + head
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        query = q_first + offs_i // BLOCK_G
        g = offs_i % BLOCK_G
        heads = kvh * GROUP + g
        row_ok = (query < count) & (g < GROUP)
        d_ok = offs_d < HEAD_DIM
        io_mask = row_ok[:, None] & d_ok[None, :]
        tokens = (first_token + query).to(tl.int64)
        q = tl.load(q_ptr + tokens[:, None] * sq_t + heads[:, None] * sq_h + offs_d[None, :] * sq_d,
                    mask=io_mask, other=0.0)
        dtype = q.dtype

        shift = context - count  # position of query i: shift + i
        position = shift + query  # rows past n_r: past the last query, never stored
        lo = tl.where(window > 0, position - window + 1, 0)  # each query's first key (may be < 0)
        p_first = shift + q_first
        end = shift + tl.minimum(q_first + BLOCK_M, count)  # one past the tile's last query
        lo_first = tl.where(window > 0, tl.maximum(p_first - window + 1, 0), 0)
        start = (lo_first // BLOCK_N) * BLOCK_N  # tiles before the first query's window: skipped

        m = tl.full([BLOCK_M * BLOCK_G], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_M * BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_M * BLOCK_G, BLOCK_D], tl.float32)
        table_row = table_ptr + r64 * st_r
        k_head = k_ptr + kvh.to(tl.int64) * sk_h
        v_head = v_ptr + kvh.to(tl.int64) * sv_h
        for tile in range(start, end, BLOCK_N):
            n = tile + offs_n
            n_ok = (n < end) & (n >= lo_first)  # keys before every window of the tile: not even loaded
            block = tl.load(table_row + (n // PAGE) * st_b, mask=n_ok, other=0)
            slot = block.to(tl.int64) * PAGE + n % PAGE
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(k_head + slot[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
            s = _scores(q, _cast(k, dtype, UPCAST), qk_scale, cap_scale, PRECISION, UPCAST, SOFT_CAP)  # [rows, BLOCK_N]
            allowed = n_ok[None, :] & (n[None, :] <= position[:, None]) & (n[None, :] >= lo[:, None])
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no allowed key yet: p = 0, alpha = 0
            alpha = tl.exp2(m - m_use)
            p = tl.exp2(s - m_use[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_head + slot[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + _mma(_cast(p, dtype, UPCAST), _cast(v, dtype, UPCAST), PRECISION, UPCAST)
            m = m_new

        out = acc / tl.where(l > 0, l, 1.0)[:, None]  # every stored query has key p itself: l > 0
        tl.store(out_ptr + tokens[:, None] * so_t + heads[:, None] * so_h + offs_d[None, :] * so_d,
                 _cast(out, out_ptr.dtype.element_ty, UPCAST), mask=io_mask)


_INTERPRETED = not isinstance(_paged_decode_kernel, triton.runtime.jit.JITFunction)  # TRITON_INTERPRET=1


def plan_splits(rows: int, kv_heads: int, max_context: int, device: torch.device, *,
                programs_per_sm: int | None = None, min_keys: int | None = None) -> int:
    """How many programs share each (row, kv head): enough that rows * kv_heads * splits covers
    the GPU about ``programs_per_sm`` times over (few rows, long contexts), at most one per
    ``min_keys`` keys of the longest context (the merge must pay for itself), 1 when the rows
    alone fill the GPU. Under the interpreter the GPU is 4 "SMs" (streams.multiprocessors).
    With a sliding window, pass the keys a row reads (``window_span``), not its context."""
    programs = max(rows * kv_heads, 1)
    wanted = triton.cdiv((programs_per_sm or PROGRAMS_PER_SM) * streams.multiprocessors(device), programs)
    by_length = max_context // (min_keys or MIN_KEYS_PER_SPLIT)
    return max(1, min(wanted, by_length, MAX_SPLITS))


def window_span(max_context: int, sliding_window: int, block_n: int) -> int:
    """The most keys a decode row reads: its context, or with a window W the whole tiles that hold
    it (W keys from any offset touch at most ceil((W - 1) / block_n) + 1 tiles)."""
    if sliding_window <= 0:
        return max_context
    return min(max_context, (triton.cdiv(sliding_window - 1, block_n) + 1) * block_n)


def default_block_n(head_dim: int) -> int:
    """Keys per tile: 64 (a [64, D] tile of K and one of V per step), 32 for D > 128."""
    return 64 if head_dim <= 128 else 32


def extend_defaults(head_dim: int, group: int, max_query_length: int, dtype: torch.dtype) -> tuple[int, int]:
    """(block_m, block_n) of the extend kernel (num_warps: _extend_warps). Half inputs:
    EXTEND_TILE_ROWS query rows (positions x the G heads of a kv head; half as many for D > 128)
    against 64-key tiles (32 for D > 128). float32 (IEEE dots on the FMA units, no tensor cores):
    32 rows against 32-key tiles, 16 against 16 for D > 128, the largest that compile for sm_90
    without spilling. block_m never exceeds the longest row's queries (rounded up to a power of
    two), so short extends (speculative decoding, decode rows) waste fewer tile rows."""
    if dtype == torch.float32:
        rows, block_n = (32, 32) if head_dim <= 128 else (16, 16)
    else:
        rows = EXTEND_TILE_ROWS if head_dim <= 128 else EXTEND_TILE_ROWS // 2
        block_n = default_block_n(head_dim)
    block_m = max(1, rows // triton.next_power_of_2(group))
    return min(block_m, triton.next_power_of_2(max(max_query_length, 1))), block_n


def _extend_warps(tile_rows: int, head_dim: int, dtype: torch.dtype) -> int:
    """8 warps for 128-row half tiles and 32-row float32 tiles (D <= 128), else 4."""
    if dtype == torch.float32:
        return 8 if tile_rows >= 32 and head_dim <= 128 else 4
    return 8 if tile_rows >= 128 else 4


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _is_host_int(value) -> bool:
    """A Python (or numpy) integer, not a bool and not a tensor: launch parameters stay on the host."""
    return not isinstance(value, (bool, torch.Tensor)) and hasattr(value, "__index__")


FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)


def _check_pool(q, k_cache, v_cache, block_size, sliding_window, soft_cap, block_n):
    """What both kernels share: q [*, H, D], the pool, dtypes, block size, window, cap, tile."""
    if q.dim() != 3:
        raise ValueError(f"q must be [rows, heads, head_dim], got shape {tuple(q.shape)}")
    heads, head_dim = q.shape[1], q.shape[2]
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
        if tensor.dtype not in FLOATS:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache and v_cache dtypes differ: {k_cache.dtype} and {v_cache.dtype}")
    if not _is_power_of_two(block_size):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    if not _is_host_int(sliding_window) or sliding_window < 0:
        raise ValueError(f"sliding_window must be an int >= 0 (0: no window), got {sliding_window!r}")
    if not (isinstance(soft_cap, (int, float)) and math.isfinite(soft_cap) and soft_cap >= 0):
        raise ValueError(f"soft_cap must be a finite float >= 0 (0: no cap), got {soft_cap!r}")
    if block_n is not None and not (_is_power_of_two(block_n) and block_n >= 16):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")


def _check_rows(q, block_tables, context_lens, out, rows, tensors):
    if block_tables.dim() != 2 or block_tables.shape[0] != rows:
        raise ValueError(f"block_tables must be [rows={rows}, max_blocks], got shape {tuple(block_tables.shape)}")
    if context_lens.shape != (rows,):
        raise ValueError(f"context_lens must be [rows={rows}], got shape {tuple(context_lens.shape)}")
    for name, tensor in (("block_tables", block_tables), ("context_lens", context_lens)):
        if tensor.dtype not in INTS:
            raise ValueError(f"{name} must be int32 (or int64), got {tensor.dtype}")
    if out is not None and (out.shape != q.shape or out.dtype not in FLOATS):
        raise ValueError(f"out must be a float tensor of shape {tuple(q.shape)}, got {tuple(out.shape)} {out.dtype}")
    tensors = tensors + ((out,) if out is not None else ())
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def _check(q, k_cache, v_cache, block_tables, context_lens, block_size, out, num_splits, block_n,
           sliding_window=0, soft_cap=0.0):
    """The decode launcher's arguments: a ValueError naming the first wrong one."""
    _check_pool(q, k_cache, v_cache, block_size, sliding_window, soft_cap, block_n)
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    _check_rows(q, block_tables, context_lens, out, q.shape[0], (q, k_cache, v_cache, block_tables, context_lens))


def _check_extend(q, k_cache, v_cache, block_tables, query_starts, context_lens, block_size, max_query_length,
                  sliding_window, soft_cap, out, block_m, block_n):
    """The extend launcher's arguments: a ValueError naming the first wrong one. Values on the
    device (n_r <= c_r, n_r <= max_query_length, query_starts increasing from 0 to at most T, the
    table covering each context) are the caller's contract: they are not read back."""
    _check_pool(q, k_cache, v_cache, block_size, sliding_window, soft_cap, block_n)
    if context_lens.dim() != 1:
        raise ValueError(f"context_lens must be 1-D [rows], got shape {tuple(context_lens.shape)}")
    rows = context_lens.shape[0]
    if query_starts.shape != (rows + 1,):
        raise ValueError(f"query_starts must be [rows + 1] = [{rows + 1}], got shape {tuple(query_starts.shape)}")
    if query_starts.dtype not in INTS:
        raise ValueError(f"query_starts must be int32 (or int64), got {query_starts.dtype}")
    if not _is_host_int(max_query_length) or max_query_length < 0:
        raise ValueError(f"max_query_length must be a host int >= 0 (the most new tokens of a row), "
                         f"got {max_query_length!r}")
    if block_m is not None and not _is_power_of_two(block_m):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    _check_rows(q, block_tables, context_lens, out, rows,
                (q, k_cache, v_cache, block_tables, query_starts, context_lens))


def _score_scales(scale: float, soft_cap: float) -> tuple[float, float]:
    """(qk_scale, cap_scale) for _scores."""
    if soft_cap > 0:
        return scale / soft_cap, soft_cap * LOG2E
    return scale * LOG2E, 1.0


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    block_size: int,
    scale: float,
    sliding_window: int = 0,
    soft_cap: float = 0.0,
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
    row (entries past a row's context, or before its window, are never read); context_lens:
    int32 [R], keys per row including the one just written (0: the row's output is zeros).
    float32 / float16 / bfloat16. sliding_window W > 0: only the last W keys of each row (0: all);
    soft_cap C > 0: scores C * tanh(score / C) (0: none). num_splits (flash decoding: programs per
    (row, kv head), see plan_splits, over the window's keys only), block_n (keys per tile),
    num_warps, num_stages: tuning knobs.
    """
    _check(q, k_cache, v_cache, block_tables, context_lens, block_size, out, num_splits, block_n,
           sliding_window, soft_cap)
    sliding_window, soft_cap = int(sliding_window), float(soft_cap)
    rows, heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if rows == 0:
        return out
    group = heads // kv_heads
    block_n = block_n or default_block_n(head_dim)
    if num_splits is None:
        span = window_span(block_tables.shape[1] * block_size, sliding_window, block_n)
        num_splits = plan_splits(rows, kv_heads, span, q.device)
    split = num_splits > 1
    if split:
        pm = torch.empty((rows, heads, num_splits), dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
        pacc = torch.empty((rows, heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    else:
        pm = pl = pacc = out  # unused
    block_d = max(16, triton.next_power_of_2(head_dim))
    qk_scale, cap_scale = _score_scales(scale, soft_cap)
    with streams.on_device(q.device):
        _paged_decode_kernel[(rows, kv_heads, num_splits)](
            q, *q.stride(),
            k_cache, *k_cache.stride(),
            v_cache, *v_cache.stride(),
            block_tables, *block_tables.stride(),
            context_lens,
            out, *out.stride(),
            pm, pl, pacc,
            qk_scale, cap_scale, sliding_window, heads, num_splits,
            GROUP=group, BLOCK_G=max(MIN_HEAD_TILE, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
            BLOCK_D=block_d, BLOCK_N=block_n, PAGE=block_size, SPLIT=split,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32", UPCAST=_INTERPRETED and q.dtype == torch.bfloat16,
            SOFT_CAP=soft_cap > 0,
            num_warps=num_warps or 4, num_stages=num_stages or 2, enable_fp_fusion=True,
        )
        if split:
            _paged_decode_reduce_kernel[(rows, heads)](
                pm, pl, pacc, out, *out.stride(), heads, num_splits,
                HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=min(16, triton.next_power_of_2(num_splits)),
                UPCAST=_INTERPRETED, num_warps=4, enable_fp_fusion=True,
            )
    return out


def paged_extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_starts: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    block_size: int,
    scale: float,
    max_query_length: int,
    sliding_window: int = 0,
    soft_cap: float = 0.0,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Varlen attention of each row's new queries over its paged context (the extend kernel of the
    module docstring); returns ``out`` [T, H, D] (a new tensor of q's dtype unless given), without
    host synchronisation (CUDA-graph safe for a fixed T and max_query_length, see the module
    docstring).

    q: [T, H, D], row r's n_r queries at q[query_starts[r] : query_starts[r + 1]] (tokens of q
    outside every row are not written); k_cache, v_cache: [num_slots, Hkv, D], one layer of the
    pool, any strides, the new tokens' K / V already written (H a multiple of Hkv; D <= 256);
    block_tables: int32 [R, max_blocks]; query_starts: int32 [R + 1]; context_lens: int32 [R],
    c_r >= n_r keys per row, the new ones included. max_query_length: a host int >= max_r n_r (the
    caller's plan; it sizes the grid). sliding_window W > 0: a query at position p attends keys
    [p - W + 1, p] (0: [0, p]); soft_cap C > 0: scores C * tanh(score / C) (0: none).
    float32 / float16 / bfloat16. block_m (query positions per program; a power of two), block_n
    (keys per tile), num_warps, num_stages: tuning knobs.
    """
    _check_extend(q, k_cache, v_cache, block_tables, query_starts, context_lens, block_size, max_query_length,
                  sliding_window, soft_cap, out, block_m, block_n)
    sliding_window, soft_cap, max_query_length = int(sliding_window), float(soft_cap), int(max_query_length)
    tokens, heads, head_dim = q.shape
    rows, kv_heads = context_lens.shape[0], k_cache.shape[1]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if rows == 0 or tokens == 0 or max_query_length == 0:
        return out
    group = heads // kv_heads
    default_m, default_n = extend_defaults(head_dim, group, max_query_length, q.dtype)
    block_n, block_m = block_n or default_n, block_m or default_m
    block_g = max(triton.next_power_of_2(group), triton.cdiv(MIN_HEAD_TILE, block_m))  # >= 16 tile rows
    qk_scale, cap_scale = _score_scales(scale, soft_cap)
    with streams.on_device(q.device):
        _paged_extend_kernel[(rows, kv_heads, triton.cdiv(max_query_length, block_m))](
            q, *q.stride(),
            k_cache, *k_cache.stride(),
            v_cache, *v_cache.stride(),
            block_tables, *block_tables.stride(),
            query_starts, context_lens,
            out, *out.stride(),
            qk_scale, cap_scale, sliding_window,
            GROUP=group, BLOCK_G=block_g, BLOCK_M=block_m, HEAD_DIM=head_dim,
            BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_N=block_n, PAGE=block_size,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32", UPCAST=_INTERPRETED and q.dtype == torch.bfloat16,
            SOFT_CAP=soft_cap > 0,
            num_warps=num_warps or _extend_warps(block_m * block_g, head_dim, q.dtype),
            num_stages=num_stages or 2, enable_fp_fusion=True,
        )
    return out


__all__ = ["default_block_n", "extend_defaults", "paged_decode_attention", "paged_extend_attention", "plan_splits",
           "window_span"]
