// steer: paged attention over a varlen ("ragged") batch as a raw-pointer C++ API (no torch, no
// pybind11; the conventions of combine.h: pointers plus element strides, caller-owned memory,
// Status codes). One call serves every kind of engine step: prefill, decode, a prefill after a
// prefix hit, and any mix of them in one batch.
//
// Row r's new queries are q[qs[r] .. qs[r + 1]) (n_r = qs[r + 1] - qs[r] of them); its context
// holds c_r = context_lengths[r] keys, the n_r new ones last (already written to the pool). Key j
// of row r lives in slot table[r, j / P] * P + j % P (P = block_size). Query i of row r sits at
// position p = c_r - n_r + i; query head h reads kv head h / (H / Hkv):
//
//   s_j   = scale * (q . k_j)                 j in [lo(p), p],  lo(p) = max(0, p - W + 1) (W > 0) or 0
//   s_j   = cap * tanh(s_j / cap)             when soft_cap = cap > 0
//   out   = sum_j softmax(s)_j v_j
//
// (python/steer/ops/attention.py: the same formula, and paged_attention_reference in torch.)

#pragma once

#include <cstdint>

#include "steer/combine.h"  // Status, DType

namespace steer {

// CPU kernel (csrc/cpu/paged_attention.cpp): OpenMP over (row, query tile, kv heads) work items,
// float32 accumulation, an online softmax over tiles of keys read in place from the pool.
//
//   q        [T, H, D] of q_dtype, element (t, h, d) at q[t * sq_t + h * sq_h + d]
//   k_cache, v_cache  [num_slots, Hkv, D] of kv_dtype, element (n, g, d) at k[n * sk_n + g * sk_h + d]
//            (v: sv_n, sv_h); float32, float16 or bfloat16, converted on load. Only the slots of
//            the keys some query attends are read: table entries past a row's last needed block
//            (and, with a sliding window, before its first) are never looked at.
//   block_tables  int32 [R, max_blocks], entry (r, b) at tables[r * st_r + b]
//   query_starts  int32 [R + 1], nondecreasing, query_starts[R] <= T; rows with n_r = 0 are skipped
//   context_lengths  int32 [R], n_r <= c_r <= max_blocks * block_size
//   block_size    P >= 1 (any; the Python side asks for a power of two)
//   scale         the score scale (usually 1 / sqrt(D))
//   sliding_window  W >= 0 keys (0: none)
//   soft_cap      > 0: scores capped by cap * tanh(s / cap); <= 0: none
//   out      [T, H, D] of q_dtype, element (t, h, d) at out[t * so_t + h * so_h + d]; must not
//            overlap q, k_cache or v_cache. Tokens outside every row's query range are not written.
//   num_threads  <= 0: the OpenMP default; ignored in a build without OpenMP
//
// Returns STEER_OK, STEER_ERR_INVALID_ARGUMENT (a null pointer where data is needed, a negative
// size, Hkv not dividing H, block_size < 1, an unknown dtype, query_starts not nondecreasing in
// [0, T], a context shorter than its queries or longer than its table, a negative block id among
// the blocks a row reads) or STEER_ERR_OUT_OF_MEMORY (the per-thread scratch: ~(2 M + 64 k) x D
// floats for a work item of M query heads over k kv heads, M ~ 32 or G). T == 0, R == 0 or no
// queries do nothing. The result of a query depends only on the shapes, never on the thread count.
Status paged_attention_cpu(const void* q, DType q_dtype, int64_t T, int64_t H, int64_t D, int64_t sq_t, int64_t sq_h,
                           const void* k_cache, const void* v_cache, DType kv_dtype, int64_t Hkv, int64_t sk_n,
                           int64_t sk_h, int64_t sv_n, int64_t sv_h, const int32_t* block_tables, int64_t R,
                           int64_t max_blocks, int64_t st_r, const int32_t* query_starts,
                           const int32_t* context_lengths, int64_t block_size, float scale, int64_t sliding_window,
                           float soft_cap, void* out, int64_t so_t, int64_t so_h, int num_threads);

}  // namespace steer
