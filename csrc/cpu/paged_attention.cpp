// CPU kernel of varlen paged attention (the contract: csrc/include/steer/paged_attention.h).
//
// For query i of row r (n_r new queries, c_r keys, position p = c_r - n_r + i), query head h,
// kv head g = h / G (G = H / Hkv):
//
//   s_j  = scale * (q . k_j)                      j in [lo(p), p],  lo(p) = max(0, p - W + 1) or 0
//   s_j  = cap * tanh(s_j / cap)                  (soft_cap = cap > 0)
//   out  = sum_j softmax(s)_j v_j                 k_j, v_j: slot table[r, j / P] * P + j % P
//
// computed as an online softmax over tiles of kKeyTile keys, in float32:
//
//   m' = max(m, max_j s_j),  a = exp(m - m'),  p_j = exp(s_j - m'),  l' = a l + sum_j p_j,
//   acc' = a acc + sum_j p_j v_j;   out = acc / l  after the last tile.
//
// Why: the path this replaces padded every row's queries to the longest row and its keys to the
// longest context, gathered them into a dense [R, H, L, D] copy (GQA heads repeated) and ran
// SDPA under a dense [R, 1, Q, L] mask: a mixed step of 40 decode rows and 4 prefill rows of 130
// tokens computed 130 queries for every decode row. Here every row costs what its own queries
// and keys cost, and K / V are read in place from the pool, once per work item.
//
// Work items: (row, query tile, kv heads). A prefill row is cut into tiles of ~kTargetQueries / G
// queries (a 130-token row costs ~130x a decode row, so whole rows would leave threads idle); a
// decode row is one tile. An item computes the query heads of its tile over a range of kv heads,
// each kv head's G x (queries of the tile) query heads together, so that every key and value
// vector loaded from the pool serves that many dot products / multiply-adds. It takes as many kv
// heads as keep it within ~kTargetQueries query heads (a prefill tile: one; a decode row: all of
// them, e.g. Llama's 8 kv heads x 4), fewer where there would be under 2 items per thread: the
// rows of one slot for consecutive kv heads are adjacent in the pool, so a decode item reads
// whole slot rows rather than one head's rows 4 KB apart (Llama-size decode from DRAM, one thread:
// ~15% faster). Items are sorted by their cost (query heads x keys) and handed out by OpenMP's
// dynamic schedule, largest first, so that the uneven rows even out; small steps (under
// kSerialWork multiply-adds) run on the calling thread.
//
// Within an item, per tile of kKeyTile keys: the row pointers of its keys and values (read in
// place for float32 with D % 8 == 0, else converted / zero-padded into a per-thread buffer, F16C
// in the x86-64-v3 build), then per kv head:
//   scores: 2 query heads x 4 keys (or 1 x 8) of 8-wide dot-product accumulators along d, the 8
//           reduced into one vector by a shuffle tree (no per-dot horizontal sum);
//   softmax: soft cap, mask (causal, window), max, exp (kernel_common.h's polynomial exp, a
//           select-based tanh), vectorised over the tile's keys;
//   values: 2 query heads x up to 4 vectors of d in registers, per key one broadcast of p per
//           head and one load per vector of v; the rescale by a is folded into loading acc.
// Meanwhile the next tile's rows are prefetched into L2, a few rows per score block (the pool is
// in block order, not key order, so the hardware prefetcher cannot see the next tile coming:
// Llama-size decode from DRAM, one thread, 9.5 -> 7.9 ms). Nothing of size [T, c] is ever
// formed: the scores of one key tile, kKeyTile per query head, are all there is.
//
// Vectorisation: 8-wide GCC / Clang vector extensions, like decode_matmul.cpp; the tile function
// and the conversions are also built for x86-64-v3 (AVX2 + FMA + F16C; target_clones, picked at
// load time) on x86-64 Linux with GCC. This file is compiled with -ffp-contract=fast
// (CMakeLists.txt, this file only): the kernel promises float32 accumulation, not bit-identity
// across instruction sets, so `acc + a * b` may become an FMA. Within one build a query's result
// depends only on the shapes (its tile, its key tiles), never on the thread count or schedule.

#include "steer/paged_attention.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "kernel_common.h"
#include "vec8.h"

namespace steer {
namespace {

using namespace cpu;

constexpr int64_t kKeyTile = 32;         // keys per online-softmax step (a multiple of 8)
constexpr int64_t kTargetQueries = 32;   // query heads per work item: a prefill tile has ~32 / G queries
constexpr int64_t kSerialWork = 1 << 16; // below this many multiply-adds (q.k and p v), one thread
constexpr int64_t kLine = 64;            // bytes per prefetch
constexpr int kPrefetchLocality = 1;

// ---------------------------------------------------------------- 8-wide vectors (beyond vec8.h)

#if defined(__GNUC__)
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));
#if defined(__clang__)
#define STEER_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define STEER_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, IVec{__VA_ARGS__})
#endif
// *p in every lane: a scalar load and one broadcast (vbroadcastss) in the x86-64-v3 build, where
// splat(*p) costs an extra add.
STEER_ALWAYS_INLINE Vec broadcast(const float* p) {
  Vec v = {};
  v[0] = *p;
  return STEER_SHUFFLE(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
}
// Pairwise sums of a and b within each 128-bit half: [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, ...]
// (vshufps, vshufps, vaddps; the lanes of _mm256_hadd_ps).
STEER_ALWAYS_INLINE Vec hadd_pairs(Vec a, Vec b) {
  return STEER_SHUFFLE(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + STEER_SHUFFLE(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}
// r[i] = the sum of the lanes of a[i]: 8 dot products finished with 7 adds and 14 shuffles.
STEER_ALWAYS_INLINE Vec reduce8(const Vec* a) {
  const Vec u0 = hadd_pairs(hadd_pairs(a[0], a[1]), hadd_pairs(a[2], a[3]));  // a0..a3, low then high halves
  const Vec u1 = hadd_pairs(hadd_pairs(a[4], a[5]), hadd_pairs(a[6], a[7]));
  return STEER_SHUFFLE(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) + STEER_SHUFFLE(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
}
#else
STEER_ALWAYS_INLINE Vec broadcast(const float* p) { return splat(*p); }
STEER_ALWAYS_INLINE Vec reduce8(const Vec* a) {
  Vec r;
  for (int i = 0; i < kLanes; ++i) {
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += a[i].v[l];
    r.v[i] = s;
  }
  return r;
}
#endif

// tanh(x), vectorisable: (1 - e) / (1 + e) with e = exp(-2 |x|), and its Taylor series below
// |x| = 1/8 where 1 - e would cancel (both ~1e-7 absolute; tanh(+-inf) = +-1, NaN stays NaN).
STEER_ALWAYS_INLINE float tanh_select(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float e = exp_nonpositive(-2.0f * ax);
  const float large = (1.0f - e) / (1.0f + e);
  const float x2 = ax * ax;
  const float small = ax + ax * x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f)));
  const float t = ax < 0.125f ? small : large;
  return x < 0.0f ? -t : t;
}

// ---------------------------------------------------------------- one key tile of one work item

// The running state of one kv head of a work item, in its thread's scratch: M = G x (queries of
// the tile) query heads; query head m (query of the tile * G + head within the group) attends
// keys [lo[m], hi[m]).
struct ItemState {
  const float* q;  // [M, Dp] scaled queries, zero past D
  float* acc;      // [M, Dp] sum_j p_j v_j so far
  float* s;        // [M, kKeyTile] the tile's scores, then its p
  float* row_max;  // [M] m
  float* row_sum;  // [M] l
  float* alpha;    // [M] this tile's exp(m - m')
  const int64_t* lo;
  const int64_t* hi;
  int64_t M, Dp;
  float cap, inv_cap;  // cap 0: no soft cap
};

// s[r, j] = q_r . k_j for r < MR, j < NJ (MR * NJ = 8): every vector of the NJ keys is loaded once
// and used by all MR queries.
template <int MR, int NJ>
STEER_ALWAYS_INLINE void score_block(const float* STEER_RESTRICT q, int64_t Dp, const float* const* krows,
                                     float* STEER_RESTRICT s) {
  static_assert(MR * NJ == kLanes, "one reduction tree per block");
  Vec acc[kLanes] = {};
  for (int64_t d = 0; d < Dp; d += kLanes) {
    Vec kv[NJ];
    for (int j = 0; j < NJ; ++j) kv[j] = load(krows[j] + d);
    for (int r = 0; r < MR; ++r) {
      const Vec qv = load(q + r * Dp + d);
      for (int j = 0; j < NJ; ++j) acc[r * NJ + j] = madd(acc[r * NJ + j], qv, kv[j]);
    }
  }
  float lanes[kLanes];
  store(lanes, reduce8(acc));
  for (int r = 0; r < MR; ++r) std::memcpy(s + r * kKeyTile, lanes + r * NJ, NJ * sizeof(float));
}

// acc[r, d0 + 8 NV) = a_r acc[r, ...] + sum_{j < nk} p[r, j] v_j[d0 + ...] for r < MR.
template <int MR, int NV>
STEER_ALWAYS_INLINE void value_block(const float* STEER_RESTRICT p, const float* const* vrows, int64_t nk,
                                     int64_t d0, const float* alpha, float* STEER_RESTRICT acc, int64_t Dp) {
  Vec a[MR][NV];
  for (int r = 0; r < MR; ++r) {
    const Vec scale = broadcast(alpha + r);
    for (int v = 0; v < NV; ++v) a[r][v] = mul(load(acc + r * Dp + d0 + v * kLanes), scale);
  }
  for (int64_t j = 0; j < nk; ++j) {
    Vec vv[NV];
    for (int v = 0; v < NV; ++v) vv[v] = load(vrows[j] + d0 + v * kLanes);
    for (int r = 0; r < MR; ++r) {
      const Vec pr = broadcast(p + r * kKeyTile + j);
      for (int v = 0; v < NV; ++v) a[r][v] = madd(a[r][v], pr, vv[v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) store(acc + r * Dp + d0 + v * kLanes, a[r][v]);
  }
}

template <int MR>
STEER_ALWAYS_INLINE void value_rows(const float* p, const float* const* vrows, int64_t nk, const float* alpha,
                                    float* acc, int64_t Dp) {
  int64_t d = 0;
  for (; d + 4 * kLanes <= Dp; d += 4 * kLanes) value_block<MR, 4>(p, vrows, nk, d, alpha, acc, Dp);
  switch ((Dp - d) / kLanes) {
    case 3:
      return value_block<MR, 3>(p, vrows, nk, d, alpha, acc, Dp);
    case 2:
      return value_block<MR, 2>(p, vrows, nk, d, alpha, acc, Dp);
    case 1:
      return value_block<MR, 1>(p, vrows, nk, d, alpha, acc, Dp);
    default:
      return;
  }
}

// The pool rows of a later key tile (its keys, then its values), fetched into L2 a few slots at a
// time while this tile computes its scores: one burst of every line of a tile at once would fill
// the queue of misses in flight and stall the loads of this tile behind it. A slot's rows of the
// item's kv heads: `segments` runs of `bytes` bytes, `stride` bytes apart (one run when they are
// adjacent in the pool, as in a [slots, Hkv, D] tensor).
struct Prefetch {
  const char* const* keys;
  const char* const* values;
  int64_t count;                   // slots
  int64_t segments, bytes;         // per slot
  int64_t key_stride, value_stride;
  int64_t issued = 0;              // of the 2 * count slot rows, keys first

  STEER_ALWAYS_INLINE void issue_until(int64_t rows) {
    rows = std::min(rows, 2 * count);
    for (; issued < rows; ++issued) {
      const bool key = issued < count;
      const char* row = key ? keys[issued] : values[issued - count];
      const int64_t stride = key ? key_stride : value_stride;
      for (int64_t g = 0; g < segments; ++g) {
        for (int64_t b = 0; b < bytes; b += kLine) __builtin_prefetch(row + g * stride + b, 0, kPrefetchLocality);
      }
    }
  }
};

// One online-softmax step of one kv head of an item over keys [k0, k0 + nk), nk <= kKeyTile:
// krows holds kKeyTile row pointers (those past nk at a zero row), vrows nk; each row has Dp
// floats. This is part `part` of `parts` (the item's kv heads) of the tile: it issues that share
// of the prefetches ahead, evenly over its score blocks.
STEER_CPU_CLONES
void attend_tile(const ItemState& st, const float* const* krows, const float* const* vrows, int64_t k0, int64_t nk,
                 Prefetch& ahead, int64_t part, int64_t parts) {
  const int64_t M = st.M, Dp = st.Dp;
  // Scores, pairs of query heads by 4 keys, then a last odd head by 8 keys.
  const int64_t blocks = M / 2 * ((nk + 3) / 4) + M % 2 * ((nk + 7) / 8);
  const int64_t rows_ahead = 2 * ahead.count;
  const auto share = [&](int64_t done) { return (part * blocks + done) * rows_ahead / (parts * blocks); };
  int64_t block = 0;
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) {
    for (int64_t j = 0; j < nk; j += 4) {
      ahead.issue_until(share(++block));
      score_block<2, 4>(st.q + m * Dp, Dp, krows + j, st.s + m * kKeyTile + j);
    }
  }
  if (m < M) {
    for (int64_t j = 0; j < nk; j += 8) {
      ahead.issue_until(share(++block));
      score_block<1, 8>(st.q + m * Dp, Dp, krows + j, st.s + m * kKeyTile + j);
    }
  }
  // Soft cap, mask, online-softmax update; p replaces the scores.
  for (m = 0; m < M; ++m) {
    float* STEER_RESTRICT s = st.s + m * kKeyTile;
    // The attended keys of this tile, [lo, hi) relative to k0 (int: 8 lanes per compare).
    const int lo = int(std::min<int64_t>(std::max<int64_t>(st.lo[m] - k0, 0), nk));
    const int hi = int(std::min<int64_t>(std::max<int64_t>(st.hi[m] - k0, 0), nk));
    const int n = int(nk);
    if (st.cap > 0.0f) {
      const float cap = st.cap, inv_cap = st.inv_cap;
#pragma omp simd
      for (int j = 0; j < n; ++j) s[j] = cap * tanh_select(s[j] * inv_cap);
    }
    float tile_max = -kInf;
#pragma omp simd reduction(max : tile_max)
    for (int j = 0; j < n; ++j) {
      const float x = j >= lo && j < hi ? s[j] : -kInf;
      s[j] = x;
      tile_max = x > tile_max ? x : tile_max;
    }
    const float old_max = st.row_max[m];
    const float new_max = tile_max > old_max ? tile_max : old_max;
    if (new_max == -kInf) {  // nothing attended yet: p = 0, nothing to rescale
      st.alpha[m] = 1.0f;
      for (int j = 0; j < n; ++j) s[j] = 0.0f;
      continue;
    }
    const float alpha = exp_nonpositive(old_max - new_max);  // 0 when old_max is -inf
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; ++j) {
      const float p = exp_nonpositive(s[j] - new_max);
      s[j] = p;
      sum += p;
    }
    st.alpha[m] = alpha;
    st.row_sum[m] = st.row_sum[m] * alpha + sum;
    st.row_max[m] = new_max;
  }
  // acc = alpha acc + p V.
  for (m = 0; m + 2 <= M; m += 2) {
    value_rows<2>(st.s + m * kKeyTile, vrows, nk, st.alpha + m, st.acc + m * Dp, Dp);
  }
  if (m < M) value_rows<1>(st.s + m * kKeyTile, vrows, nk, st.alpha + m, st.acc + m * Dp, Dp);
}

// ---------------------------------------------------------------- K / V rows as float32

// A key tile's rows as float32, kv head by kv head: dst[g, j, 0, D) = float(src[j][g * head_stride +
// 0, D)) and dst[g, j, D, Dp) = 0 for j < nk, g < heads (dst is [heads, kKeyTile, Dp]). Read slot
// by slot, kv head by kv head: the pool's order.
template <typename T>
STEER_ALWAYS_INLINE void convert_tile_generic(const T* const* src, int64_t nk, int64_t heads, int64_t head_stride,
                                              int64_t D, int64_t Dp, float* dst) {
  for (int64_t j = 0; j < nk; ++j) {
    for (int64_t g = 0; g < heads; ++g) {
      const T* STEER_RESTRICT s = src[j] + g * head_stride;
      float* STEER_RESTRICT d = dst + (g * kKeyTile + j) * Dp;
#pragma omp simd
      for (int64_t c = 0; c < D; ++c) d[c] = to_float(s[c]);
      for (int64_t c = D; c < Dp; ++c) d[c] = 0.0f;
    }
  }
}

STEER_CPU_CLONES
void convert_tile(const float* const* src, int64_t nk, int64_t heads, int64_t head_stride, int64_t D, int64_t Dp,
                  float* dst) {
  convert_tile_generic(src, nk, heads, head_stride, D, Dp, dst);
}

STEER_CPU_CLONES
void convert_tile(const BFloat16* const* src, int64_t nk, int64_t heads, int64_t head_stride, int64_t D, int64_t Dp,
                  float* dst) {
  convert_tile_generic(src, nk, heads, head_stride, D, Dp, dst);
}

#if STEER_CPU_F16C
// float16 by F16C's vcvtph2ps in the x86-64-v3 build (1 instruction per 8 values instead of the
// ~24 of to_float(Half)); both exact. Function multiversioning, as in decode_matmul.cpp: this
// body needs an intrinsic, so it cannot be a target_clones function.
__attribute__((target("default")))
#endif
void convert_tile(const Half* const* src, int64_t nk, int64_t heads, int64_t head_stride, int64_t D, int64_t Dp,
                  float* dst) {
  convert_tile_generic(src, nk, heads, head_stride, D, Dp, dst);
}

#if STEER_CPU_F16C
__attribute__((target("arch=x86-64-v3")))
void convert_tile(const Half* const* src, int64_t nk, int64_t heads, int64_t head_stride, int64_t D, int64_t Dp,
                  float* dst) {
  for (int64_t j = 0; j < nk; ++j) {
    for (int64_t g = 0; g < heads; ++g) {
      const Half* s = src[j] + g * head_stride;
      float* d = dst + (g * kKeyTile + j) * Dp;
      int64_t c = 0;
      for (; c + kLanes <= D; c += kLanes) {
        _mm256_storeu_ps(d + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + c))));
      }
      for (; c < D; ++c) d[c] = to_float(s[c]);
      for (; c < Dp; ++c) d[c] = 0.0f;
    }
  }
}
#endif

// ---------------------------------------------------------------- queries in, outputs out

// float32 -> IEEE binary16, round to nearest even (overflow to inf, NaN stays NaN, subnormals
// exact): F. Giesen's float_to_half_fast3_rtne, its branches as selects so that it vectorises.
STEER_ALWAYS_INLINE uint16_t half_bits(float value) {
  const uint32_t bits = float_to_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t f = bits & 0x7fffffffu;
  const uint32_t inf_nan = f > 0x7f800000u ? 0x7e00u : 0x7c00u;  // for f >= 65536
  const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;  // below 2^-14: rounded by a float add
  const uint32_t subnormal = float_to_bits(bits_to_float(f) + bits_to_float(magic)) - magic;
  const uint32_t normal = (f + (uint32_t(15 - 127) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;  // rebias, round
  const uint32_t h = f >= (127u + 16u) << 23 ? inf_nan : f < 113u << 23 ? subnormal : normal;
  return uint16_t(h | sign);
}

// float32 -> bfloat16, round to nearest even, NaN kept quiet.
STEER_ALWAYS_INLINE uint16_t bfloat16_bits(float value) {
  const uint32_t f = float_to_bits(value);
  const uint32_t nan = (f >> 16) | 0x40u;
  const uint32_t rounded = (f + 0x7fffu + ((f >> 16) & 1u)) >> 16;
  return uint16_t((f & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// dst[0, D) = scale * float(src[0, D)), dst[D, Dp) = 0.
void load_query(const void* src, DType dtype, int64_t D, float scale, float* STEER_RESTRICT dst, int64_t Dp) {
  switch (dtype) {
    case DType::kFloat32: {
      const float* STEER_RESTRICT s = static_cast<const float*>(src);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dst[d] = scale * s[d];
      break;
    }
    case DType::kFloat16: {
      const Half* STEER_RESTRICT s = static_cast<const Half*>(src);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dst[d] = scale * to_float(s[d]);
      break;
    }
    case DType::kBFloat16: {
      const BFloat16* STEER_RESTRICT s = static_cast<const BFloat16*>(src);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dst[d] = scale * to_float(s[d]);
      break;
    }
  }
  for (int64_t d = D; d < Dp; ++d) dst[d] = 0.0f;
}

// dst[0, D) = src[0, D) * inv, in dtype.
void store_output(const float* STEER_RESTRICT src, float inv, int64_t D, DType dtype, void* dst) {
  switch (dtype) {
    case DType::kFloat32: {
      float* STEER_RESTRICT o = static_cast<float*>(dst);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = src[d] * inv;
      break;
    }
    case DType::kFloat16: {
      uint16_t* STEER_RESTRICT o = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = half_bits(src[d] * inv);
      break;
    }
    case DType::kBFloat16: {
      uint16_t* STEER_RESTRICT o = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = bfloat16_bits(src[d] * inv);
      break;
    }
  }
}

int64_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// ---------------------------------------------------------------- drivers

struct Problem {
  const char* q;
  DType q_dtype;
  int64_t H, D, sq_t, sq_h;
  int64_t Hkv, G, sk_n, sk_h, sv_n, sv_h;
  const int32_t* tables;
  int64_t st_r;
  const int32_t* query_starts;
  const int32_t* context_lengths;
  int64_t P;
  float scale;
  int64_t W;
  float cap;
  char* out;
  int64_t so_t, so_h;
  int64_t Dp;
};

struct Item {
  int64_t cost;                 // query heads x keys, the sort key
  int32_t row, first, count;    // queries [first, first + count) of the row
  int32_t kv_first, kv_count;   // kv heads [kv_first, kv_first + kv_count)
};

// The first key query position p attends.
STEER_ALWAYS_INLINE int64_t first_key(int64_t p, int64_t W) { return W > 0 ? std::max<int64_t>(0, p - W + 1) : 0; }

// The calling thread's scratch: floats and int64s (kept for the thread's lifetime, grown as
// needed; null when it cannot be had).
struct Scratch {
  float* f;
  int64_t* i;
};

Scratch thread_scratch(int64_t floats, int64_t ints) {
  thread_local std::vector<float> f;
  thread_local std::vector<int64_t> i;
  try {
    if (int64_t(f.size()) < floats) f.resize(size_t(floats));
    if (int64_t(i.size()) < ints) i.resize(size_t(ints));
  } catch (const std::bad_alloc&) {
    return {nullptr, nullptr};
  }
  return {f.data(), i.data()};
}

// Scratch floats of an item of M query heads over kv_count kv heads.
int64_t scratch_floats(int64_t M, int64_t kv_count, int64_t Dp) {
  return 2 * M * Dp + M * kKeyTile + 2 * kv_count * kKeyTile * Dp + Dp + 3 * M;
}

template <typename KV>
void run_item(const Problem& pb, const KV* k_cache, const KV* v_cache, const Item& it, Scratch sc) {
  const int64_t r = it.row, G = pb.G, Dp = pb.Dp, D = pb.D;
  const int64_t t0 = pb.query_starts[r] + it.first;
  const int64_t n = pb.query_starts[r + 1] - pb.query_starts[r], c = pb.context_lengths[r];
  const int64_t nq = it.count, heads = it.kv_count, per_head = nq * G, M = heads * per_head;
  const int64_t pos0 = c - n + it.first;

  float* q = sc.f;
  float* acc = q + M * Dp;
  float* s = acc + M * Dp;
  float* kbuf = s + M * kKeyTile;  // [heads, kKeyTile, Dp]
  float* vbuf = kbuf + heads * kKeyTile * Dp;
  float* zero = vbuf + heads * kKeyTile * Dp;
  float* row_max = zero + Dp;
  float* row_sum = row_max + M;
  float* alpha = row_sum + M;
  int64_t* lo = sc.i;
  int64_t* hi = lo + M;

  // Query head m = (kv head of the item * nq + query of the tile) * G + head within the group:
  // each kv head's query heads are contiguous, one ItemState each.
  const int64_t qsize = element_size(pb.q_dtype);
  for (int64_t gi = 0; gi < heads; ++gi) {
    for (int64_t i = 0; i < nq; ++i) {
      for (int64_t hh = 0; hh < G; ++hh) {
        const int64_t m = (gi * nq + i) * G + hh, h = (it.kv_first + gi) * G + hh;
        load_query(pb.q + ((t0 + i) * pb.sq_t + h * pb.sq_h) * qsize, pb.q_dtype, D, pb.scale, q + m * Dp, Dp);
        lo[m] = first_key(pos0 + i, pb.W);
        hi[m] = pos0 + i + 1;
        row_max[m] = -kInf;
        row_sum[m] = 0.0f;
      }
    }
  }
  std::fill(acc, acc + M * Dp, 0.0f);
  std::fill(zero, zero + Dp, 0.0f);
  const float cap = pb.cap > 0.0f ? pb.cap : 0.0f, inv_cap = pb.cap > 0.0f ? 1.0f / pb.cap : 0.0f;

  // float32 rows of whole vectors are read in place, anything else converted a tile at a time.
  const bool in_place = std::is_same<KV, float>::value && D % kLanes == 0;
  const int32_t* table = pb.tables + r * pb.st_r;
  const KV* k_base = k_cache + it.kv_first * pb.sk_h;
  const KV* v_base = v_cache + it.kv_first * pb.sv_h;
  const int64_t key_end = pos0 + nq;  // one past the last query's position
  // What a slot's rows of the item's kv heads span, for the prefetches: one run of heads x D
  // values where the heads are adjacent in the pool, else one run per head.
  const int64_t row_bytes = D * int64_t(sizeof(KV));
  const bool adjacent = pb.sk_h == D && pb.sv_h == D;
  const int64_t segments = adjacent ? 1 : heads, segment_bytes = adjacent ? heads * row_bytes : row_bytes;
  const KV* src[2][2][kKeyTile];  // [this tile, the next][keys, values]: slot rows at kv_first
  // The slot rows of the tile of keys [k0, min(k0 + kKeyTile, key_end)) into src[e]; their count.
  const auto locate = [&](int64_t k0, int e) -> int64_t {
    const int64_t nk = std::max<int64_t>(0, std::min(kKeyTile, key_end - k0));
    int64_t block = k0 / pb.P, offset = k0 % pb.P;
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t slot = int64_t(table[block]) * pb.P + offset;
      src[e][0][j] = k_base + slot * pb.sk_n;
      src[e][1][j] = v_base + slot * pb.sv_n;
      if (++offset == pb.P) {
        offset = 0;
        ++block;
      }
    }
    return nk;
  };
  const float* krows[kKeyTile];
  const float* vrows[kKeyTile];
  int cur = 0;
  locate(lo[0], 0);
  for (int64_t k0 = lo[0]; k0 < key_end; k0 += kKeyTile, cur ^= 1) {
    const int64_t nk = std::min(kKeyTile, key_end - k0);
    const KV* const* ksrc = src[cur][0];
    const KV* const* vsrc = src[cur][1];
    // The next tile's rows are requested while this one computes (spread over its scores).
    const int64_t next = locate(k0 + kKeyTile, cur ^ 1);
    Prefetch ahead{reinterpret_cast<const char* const*>(src[cur ^ 1][0]),
                   reinterpret_cast<const char* const*>(src[cur ^ 1][1]),
                   next,
                   segments,
                   segment_bytes,
                   pb.sk_h * int64_t(sizeof(KV)),
                   pb.sv_h * int64_t(sizeof(KV))};
    // Other than float32 rows of whole vectors: this tile's keys and values as float32, kv head
    // by kv head ([heads, kKeyTile, Dp]).
    if (!in_place) {
      convert_tile(ksrc, nk, heads, pb.sk_h, D, Dp, kbuf);
      convert_tile(vsrc, nk, heads, pb.sv_h, D, Dp, vbuf);
    }
    for (int64_t gi = 0; gi < heads; ++gi) {
      const int64_t m0 = gi * per_head;
      const ItemState st{q + m0 * Dp, acc + m0 * Dp, s, row_max + m0, row_sum + m0, alpha + m0,
                         lo + m0, hi + m0, per_head, Dp, cap, inv_cap};
      for (int64_t j = 0; j < nk; ++j) {
        krows[j] = in_place ? reinterpret_cast<const float*>(ksrc[j] + gi * pb.sk_h) : kbuf + (gi * kKeyTile + j) * Dp;
        vrows[j] = in_place ? reinterpret_cast<const float*>(vsrc[j] + gi * pb.sv_h) : vbuf + (gi * kKeyTile + j) * Dp;
      }
      for (int64_t j = nk; j < kKeyTile; ++j) krows[j] = zero;
      attend_tile(st, krows, vrows, k0, nk, ahead, gi, heads);
    }
  }

  for (int64_t gi = 0; gi < heads; ++gi) {
    for (int64_t i = 0; i < nq; ++i) {
      for (int64_t hh = 0; hh < G; ++hh) {
        const int64_t m = (gi * nq + i) * G + hh, h = (it.kv_first + gi) * G + hh;
        const float inv = row_sum[m] > 0.0f ? 1.0f / row_sum[m] : 0.0f;
        store_output(acc + m * Dp, inv, D, pb.q_dtype, pb.out + ((t0 + i) * pb.so_t + h * pb.so_h) * qsize);
      }
    }
  }
}

// The largest divisor of n that is at most cap (>= 1).
int64_t divisor_at_most(int64_t n, int64_t cap) {
  for (int64_t d = std::max<int64_t>(1, std::min(n, cap)); d > 1; --d) {
    if (n % d == 0) return d;
  }
  return 1;
}

template <typename KV>
Status run(const Problem& pb, const KV* k_cache, const KV* v_cache, int64_t R, int num_threads) {
  // Query tiles of ~kTargetQueries / G queries, evened out over the row; each item takes as many
  // kv heads as keep it within ~kTargetQueries query heads (a decode row: all of them, for
  // Llama's 32 / 8 heads), fewer where that would leave threads without work.
  const int64_t tile_queries = std::max<int64_t>(1, kTargetQueries / pb.G);
  int threads = resolve_threads(num_threads);
  int64_t tiles = 0;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t n = pb.query_starts[r + 1] - pb.query_starts[r];
    tiles += (n + tile_queries - 1) / tile_queries;
  }
  int64_t heads_cap = pb.Hkv;
  while (heads_cap > 1 && tiles * (pb.Hkv / divisor_at_most(pb.Hkv, heads_cap)) < 2 * int64_t(threads)) {
    heads_cap = divisor_at_most(pb.Hkv, heads_cap - 1);
  }
  std::vector<Item> items;
  int64_t work = 0, floats = 0, ints = 0;
  try {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t n = pb.query_starts[r + 1] - pb.query_starts[r], c = pb.context_lengths[r];
      if (n == 0) continue;
      const int64_t row_tiles = (n + tile_queries - 1) / tile_queries;
      const int64_t per = (n + row_tiles - 1) / row_tiles;
      for (int64_t first = 0; first < n; first += per) {
        const int64_t count = std::min(per, n - first);
        const int64_t fit = std::max<int64_t>(1, kTargetQueries / (count * pb.G));  // kv heads within the target
        const int64_t heads = divisor_at_most(pb.Hkv, std::min(heads_cap, fit));
        const int64_t p0 = c - n + first;
        const int64_t M = count * pb.G * heads;
        const int64_t cost = M * (p0 + count - first_key(p0, pb.W));
        floats = std::max(floats, scratch_floats(M, heads, pb.Dp));
        ints = std::max(ints, 2 * M);
        for (int64_t g = 0; g < pb.Hkv; g += heads) {
          items.push_back(Item{cost, int32_t(r), int32_t(first), int32_t(count), int32_t(g), int32_t(heads)});
          work += cost;
        }
      }
    }
  } catch (const std::bad_alloc&) {
    return STEER_ERR_OUT_OF_MEMORY;
  }
  if (items.empty()) return STEER_OK;
  // Largest first (ties in row order): the dynamic schedule then evens out the uneven rows.
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    if (a.cost != b.cost) return a.cost > b.cost;
    if (a.row != b.row) return a.row < b.row;
    if (a.first != b.first) return a.first < b.first;
    return a.kv_first < b.kv_first;
  });

  if (work * 2 * pb.D < kSerialWork) threads = 1;
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, int64_t(items.size()))));
  const int64_t count = int64_t(items.size());
  bool out_of_memory = false;

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const Scratch sc = thread_scratch(floats, ints);
    if (!sc.f) {
#pragma omp atomic write
      out_of_memory = true;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) {
      if (sc.f) run_item(pb, k_cache, v_cache, items[size_t(i)], sc);
    }
  }
  return out_of_memory ? STEER_ERR_OUT_OF_MEMORY : STEER_OK;
}

bool valid_dtype(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

}  // namespace

Status paged_attention_cpu(const void* q, DType q_dtype, int64_t T, int64_t H, int64_t D, int64_t sq_t, int64_t sq_h,
                           const void* k_cache, const void* v_cache, DType kv_dtype, int64_t Hkv, int64_t sk_n,
                           int64_t sk_h, int64_t sv_n, int64_t sv_h, const int32_t* block_tables, int64_t R,
                           int64_t max_blocks, int64_t st_r, const int32_t* query_starts,
                           const int32_t* context_lengths, int64_t block_size, float scale, int64_t sliding_window,
                           float soft_cap, void* out, int64_t so_t, int64_t so_h, int num_threads) {
  if (!valid_dtype(q_dtype) || !valid_dtype(kv_dtype)) return STEER_ERR_INVALID_ARGUMENT;
  if (T < 0 || H < 1 || D < 1 || Hkv < 1 || H % Hkv != 0 || R < 0 || max_blocks < 0 || block_size < 1 ||
      sliding_window < 0) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (R == 0) return STEER_OK;
  if (!query_starts || !context_lengths) return STEER_ERR_INVALID_ARGUMENT;
  // The rows: query ranges in [0, T], contexts holding their queries and fitting their table.
  int64_t queries = 0;
  if (query_starts[0] < 0) return STEER_ERR_INVALID_ARGUMENT;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t first = query_starts[r], last = query_starts[r + 1];
    if (last < first || last > T) return STEER_ERR_INVALID_ARGUMENT;
    const int64_t n = last - first, c = context_lengths[r];
    if (n == 0) continue;
    if (c < n || c > max_blocks * block_size) return STEER_ERR_INVALID_ARGUMENT;
    queries += n;
  }
  if (queries == 0) return STEER_OK;
  if (!q || !out || !k_cache || !v_cache || !block_tables) return STEER_ERR_INVALID_ARGUMENT;
  // The blocks each row reads (from its first query's first key to its last key) hold block ids.
  for (int64_t r = 0; r < R; ++r) {
    const int64_t n = query_starts[r + 1] - query_starts[r], c = context_lengths[r];
    if (n == 0) continue;
    const int64_t first = first_key(c - n, sliding_window) / block_size, last = (c - 1) / block_size;
    for (int64_t b = first; b <= last; ++b) {
      if (block_tables[r * st_r + b] < 0) return STEER_ERR_INVALID_ARGUMENT;
    }
  }

  const Problem pb{static_cast<const char*>(q), q_dtype, H, D, sq_t, sq_h, Hkv, H / Hkv, sk_n, sk_h, sv_n, sv_h,
                   block_tables, st_r, query_starts, context_lengths, block_size, scale, sliding_window,
                   soft_cap > 0.0f ? soft_cap : 0.0f, static_cast<char*>(out), so_t, so_h,
                   (D + kLanes - 1) / kLanes * kLanes};
  switch (kv_dtype) {
    case DType::kFloat32:
      return run(pb, static_cast<const float*>(k_cache), static_cast<const float*>(v_cache), R, num_threads);
    case DType::kFloat16:
      return run(pb, static_cast<const Half*>(k_cache), static_cast<const Half*>(v_cache), R, num_threads);
    case DType::kBFloat16:
      return run(pb, static_cast<const BFloat16*>(k_cache), static_cast<const BFloat16*>(v_cache), R,
                 num_threads);
  }
  return STEER_ERR_INVALID_ARGUMENT;
}

}  // namespace steer
