// CPU kernel of the multi-row decode matmul (the contract: csrc/include/steer/decode_matmul.h).
//
//   y[t, n] = sum_k x[t, k] * W(n, k)  (+ bias[n])      T rows, N outputs, Kin inputs
//
// Why: a decode step of a small LM on a few CPU cores is bound by reading the weights (one row:
// 2 flops per 4-byte weight). torch's GEMM reads a weight once per row for 2-3 rows (measured on
// the 2-core dev box, 32000x512 float32: 7.7 ms for 1 row, 16 ms for 2, 24 ms for 3), while a
// STEER step runs 2-24 rows (the prompt, base and negative streams). This kernel streams every
// weight from memory once per call for all T rows: 1 to 4 rows run at the memory's speed
// (~2 ms for those 65 MB on the dev box), 8 rows take ~1.3x that, and from ~16 rows on it is
// bound by the multiply-adds (at ~70% of the FMA peak).
//
// How, per layout (W is never copied; float16 / bfloat16 are converted to float32 on load):
//
//   out_in (nn.Linear, W [N, Kin]): a thread owns a range of outputs n. For NR = 3 rows of W at a
//   time it computes the T x 3 dot products: each 8-wide vector of the 3 W rows is loaded once and
//   multiplied into the MR = 4 rows of x of the current row tile (12 vector accumulators, lanes
//   summed at the end). More than 4 rows: the row tiles take turns over the same 3 W rows, which
//   are then in L1 / L2 (3 x Kin floats), as is x (T x Kin floats, read by every tile).
//
//   in_out (GPT-2 Conv1D, W [Kin, N]): a thread owns a range of columns n, in blocks of
//   kBlockCols columns (y[T, block] stays in L2), each walked in panels of kPanelRows rows by
//   kPanelCols columns of W: the panels of a block left to right, then the next kPanelRows rows,
//   so that W is read as kPanelRows streams along its rows. Within a panel, MR = 4 rows of y by
//   24 columns (3 vectors) are accumulated in registers: per k, the 3 vectors of W are loaded
//   once and multiplied by the broadcast x[t, k] of each of the 4 rows; y is loaded and stored
//   once per panel. The row tiles take turns over the panel, which is then in L1.
//
//   Prefetching: while the first row tile works on a tile (out_in) or panel (in_out), it issues
//   software prefetches (into L2) for the next one. With the hardware prefetchers alone, a core
//   read W at about half its one-row bandwidth once T > 1 made each tile slower, and the short
//   row segments of in_out did worse.
//
//   float16 / bfloat16 W: the 3 rows (out_in) or the panel (in_out) about to be used are
//   converted into a small per-thread float32 buffer (exactly: kernel_common.h's to_float, or
//   F16C's vcvtph2ps), then the float32 tiles run on it; the buffer is in L1 / L2, so the weight
//   is still read from memory once, at half the bytes. (Converting in the tiles' registers
//   instead was no faster for bfloat16 and slower for in_out: GCC widened in 128-bit halves and
//   the extra registers spilled an accumulator.)
//
//   Many rows: T is cut into passes of rows_per_pass rows, each streaming W once, so that what
//   the tiles revisit (x for out_in, the y block for in_out) stays in L2 whatever T is.
//
// Vectorisation (vec8.h): 8-wide GCC / Clang vector extensions (two SSE registers at the x86-64 baseline,
// one AVX register in the x86-64-v3 build). On x86-64 Linux with GCC the hot functions are also
// built for x86-64-v3 (AVX2 + FMA + F16C; target_clones, the loader picks it where the CPU has
// it), like hot_loops.cpp but at a level that includes FMA. This file is compiled with
// -ffp-contract=fast (CMakeLists.txt, this file only) so that `acc + a * b` becomes one fused
// multiply-add in that build: unlike combine / sample, this kernel promises no bit-identity
// across instruction sets, only float32 accumulation (the summation order also differs from
// torch's GEMM: results agree to float32 rounding, ~1e-6 relative to sum |x w|). Within one
// build every output is computed by the same operations in the same order whatever the thread
// count, so results do not depend on it.
//
// Threads: OpenMP over output blocks (rows of W for out_in, column ranges for in_out), each
// thread streaming its own contiguous part of W, no synchronisation but the end of the region;
// problems under kSerialWeights weights run on the calling thread, where waking the team would
// cost more than it saves. In a process with torch, steer._C and torch share one OpenMP runtime
// and thread pool (torch's libgomp.so.1 and the system's have the same soname, so whichever loads
// first serves both): measured alternating with torch ops, the kernel's time per call is that of
// the kernel alone (benchmarks/test_bench_decode_linear.py, test_alternation_with_torch_ops).

#include "steer/decode_matmul.h"

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

constexpr int kRowTile = 4;          // MR: rows of x per register tile (both layouts)
constexpr int kOutInRows = 3;        // NR: rows of W per out_in tile (4 x 3 accumulators)
constexpr int kInOutVectors = 3;     // vectors of columns per in_out tile (4 x 3 accumulators)
// in_out: a thread's columns in blocks of kBlockCols (y[T, block] stays in L1 / L2), each walked
// in panels of kPanelRows rows by kPanelCols columns of W (24 KiB of float32: L1), panels of a
// block left to right, then the next kPanelRows rows. Tried on the dev box (float32, T = 1..16,
// W [in, out] of 4096x4096, 512x32000, 768x2304, 3072x768): 8, 16 and 32 rows; 1536, 3072 and all columns per
// block. 16 rows amortise the load / store of y per tile best without losing bandwidth at T = 1.
constexpr int64_t kBlockCols = 3072;
constexpr int64_t kPanelCols = 384;
constexpr int64_t kPanelRows = 16;
// Software prefetches into L2 (x86: prefetcht2), not L1: measured on the dev box, one thread
// streams 2x faster (32000x512 float32, T = 1: 2.9 vs 6.0 ms; 4096x4096: 2.8 vs 3.5 ms).
constexpr int kPrefetchLocality = 1;
constexpr int64_t kColumnAlign = 16;           // in_out thread ranges start on 64-byte boundaries
constexpr int64_t kSerialWeights = 1 << 16;    // below this many weights, one thread

// What the next tile (out_in) or panel (in_out) will read of W, in W's storage type: the first
// row tile prefetches it while it computes, so that its loads are in flight one tile ahead.
struct Prefetch {
  const char* rows;  // null: nothing to prefetch
  int64_t ld;        // bytes between rows
  int64_t step;      // bytes per kLanes weights
};

// ---------------------------------------------------------------- out_in: dot products

// y[t, r] = x_t . w_r (+ bias[r]) for t < MR, r < NR: every vector of the NR rows of W is loaded
// once and used by all MR rows of x.
template <int MR, int NR>
STEER_ALWAYS_INLINE void dot_tile(const float* STEER_RESTRICT x, int64_t ldx, const float* STEER_RESTRICT w,
                                  int64_t ldw, int64_t Kin, const float* STEER_RESTRICT bias,
                                  float* STEER_RESTRICT y, int64_t ldy, Prefetch next) {
  Vec acc[MR][NR] = {};
  int64_t k = 0;
  const char* ahead = next.rows;
  for (; k + kLanes <= Kin; k += kLanes) {
    if (next.rows) {  // loop-invariant: the compiler unswitches it
      for (int r = 0; r < NR; ++r) __builtin_prefetch(ahead + r * next.ld, 0, kPrefetchLocality);
      ahead += next.step;
    }
    Vec wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = load(w + r * ldw + k);
    for (int t = 0; t < MR; ++t) {
      const Vec xv = load(x + t * ldx + k);
      for (int r = 0; r < NR; ++r) acc[t][r] = madd(acc[t][r], xv, wv[r]);
    }
  }
  for (int t = 0; t < MR; ++t) {
    for (int r = 0; r < NR; ++r) {
      float s = hsum(acc[t][r]);
      for (int64_t i = k; i < Kin; ++i) s += x[t * ldx + i] * w[r * ldw + i];
      y[t * ldy + r] = bias ? s + bias[r] : s;
    }
  }
}

// All T rows against NR rows of W, kRowTile rows of x at a time; the first row tile prefetches.
template <int NR>
STEER_ALWAYS_INLINE void dot_rows(const float* x, int64_t ldx, int64_t T, int64_t Kin, const float* w, int64_t ldw,
                                  const float* bias, float* y, int64_t ldy, Prefetch next) {
  const Prefetch none{nullptr, 0, 0};
  int64_t t = 0;
  for (; t + kRowTile <= T; t += kRowTile) {
    dot_tile<kRowTile, NR>(x + t * ldx, ldx, w, ldw, Kin, bias, y + t * ldy, ldy, t == 0 ? next : none);
  }
  const Prefetch tail = t == 0 ? next : none;
  switch (T - t) {
    case 3:
      return dot_tile<3, NR>(x + t * ldx, ldx, w, ldw, Kin, bias, y + t * ldy, ldy, tail);
    case 2:
      return dot_tile<2, NR>(x + t * ldx, ldx, w, ldw, Kin, bias, y + t * ldy, ldy, tail);
    case 1:
      return dot_tile<1, NR>(x + t * ldx, ldx, w, ldw, Kin, bias, y + t * ldy, ldy, tail);
    default:
      return;
  }
}

// y[:, 0, nr) for nr <= kOutInRows rows of float32 W (rows ldw apart), all T rows of x.
STEER_CPU_CLONES
void out_in_block(const float* x, int64_t ldx, int64_t T, int64_t Kin, const float* w, int64_t ldw, int64_t nr,
                  const float* bias, float* y, int64_t ldy, Prefetch next) {
  static_assert(kOutInRows == 3, "the switch below covers 1 .. kOutInRows rows of W");
  switch (nr) {
    case 3:
      return dot_rows<3>(x, ldx, T, Kin, w, ldw, bias, y, ldy, next);
    case 2:
      return dot_rows<2>(x, ldx, T, Kin, w, ldw, bias, y, ldy, next);
    case 1:
      return dot_rows<1>(x, ldx, T, Kin, w, ldw, bias, y, ldy, next);
    default:
      return;
  }
}

// ---------------------------------------------------------------- in_out: broadcast multiply-adds

// y[t, 0, 8 NV) for t < MR over kb rows of a panel p (rows ldp apart): starts from y (or, on the
// first panel of k, from the bias or zero); per k the NV vectors of p are loaded once and
// multiplied by x[t, k] for all MR rows.
template <int MR, int NV>
STEER_ALWAYS_INLINE void axpy_tile(const float* STEER_RESTRICT x, int64_t ldx, const float* STEER_RESTRICT p,
                                   int64_t ldp, int64_t kb, const float* STEER_RESTRICT bias, bool first,
                                   float* STEER_RESTRICT y, int64_t ldy, Prefetch next) {
  Vec acc[MR][NV];
  for (int t = 0; t < MR; ++t) {
    for (int v = 0; v < NV; ++v) {
      acc[t][v] = !first ? load(y + t * ldy + v * kLanes) : bias ? load(bias + v * kLanes) : splat(0.0f);
    }
  }
  for (int64_t k = 0; k < kb; ++k) {
    if (next.rows) {  // the lines of this row of the next panel's NV vectors
      __builtin_prefetch(next.rows + k * next.ld, 0, kPrefetchLocality);
      __builtin_prefetch(next.rows + k * next.ld + NV * next.step - 1, 0, kPrefetchLocality);
    }
    Vec pv[NV];
    for (int v = 0; v < NV; ++v) pv[v] = load(p + k * ldp + v * kLanes);
    for (int t = 0; t < MR; ++t) {
      const Vec xs = splat(x[t * ldx + k]);
      for (int v = 0; v < NV; ++v) acc[t][v] = madd(acc[t][v], xs, pv[v]);
    }
  }
  for (int t = 0; t < MR; ++t) {
    for (int v = 0; v < NV; ++v) store(y + t * ldy + v * kLanes, acc[t][v]);
  }
}

// The same for the last cols < 8 columns, one scalar at a time.
STEER_ALWAYS_INLINE void axpy_tail(const float* x, int64_t ldx, int64_t mr, const float* p, int64_t ldp, int64_t kb,
                                   int64_t cols, const float* bias, bool first, float* y, int64_t ldy) {
  for (int64_t t = 0; t < mr; ++t) {
    for (int64_t j = 0; j < cols; ++j) {
      float s = !first ? y[t * ldy + j] : bias ? bias[j] : 0.0f;
      for (int64_t k = 0; k < kb; ++k) s += x[t * ldx + k] * p[k * ldp + j];
      y[t * ldy + j] = s;
    }
  }
}

template <int MR>
STEER_ALWAYS_INLINE void axpy_rows(const float* x, int64_t ldx, const float* p, int64_t ldp, int64_t kb, int64_t nc,
                                   const float* bias, bool first, float* y, int64_t ldy, Prefetch next) {
  constexpr int64_t kWide = kInOutVectors * kLanes;
  const auto at = [&](int64_t j) {
    return Prefetch{next.rows ? next.rows + j / kLanes * next.step : nullptr, next.ld, next.step};
  };
  int64_t j = 0;
  for (; j + kWide <= nc; j += kWide) {
    axpy_tile<MR, kInOutVectors>(x, ldx, p + j, ldp, kb, bias ? bias + j : nullptr, first, y + j, ldy, at(j));
  }
  for (; j + kLanes <= nc; j += kLanes) {
    axpy_tile<MR, 1>(x, ldx, p + j, ldp, kb, bias ? bias + j : nullptr, first, y + j, ldy, at(j));
  }
  if (j < nc) axpy_tail(x, ldx, MR, p + j, ldp, kb, nc - j, bias ? bias + j : nullptr, first, y + j, ldy);
}

// y[:, 0, nc) += x[:, 0, kb) @ p for a float32 panel p [kb, nc] (rows ldp apart), all T rows;
// the first row tile prefetches the next panel (next: its first row, in W's storage type).
STEER_CPU_CLONES
void in_out_panel(const float* x, int64_t ldx, int64_t T, const float* p, int64_t ldp, int64_t kb, int64_t nc,
                  const float* bias, bool first, float* y, int64_t ldy, Prefetch next) {
  const Prefetch none{nullptr, 0, 0};
  int64_t t = 0;
  for (; t + kRowTile <= T; t += kRowTile) {
    axpy_rows<kRowTile>(x + t * ldx, ldx, p, ldp, kb, nc, bias, first, y + t * ldy, ldy, t == 0 ? next : none);
  }
  const Prefetch tail = t == 0 ? next : none;
  switch (T - t) {
    case 3:
      return axpy_rows<3>(x + t * ldx, ldx, p, ldp, kb, nc, bias, first, y + t * ldy, ldy, tail);
    case 2:
      return axpy_rows<2>(x + t * ldx, ldx, p, ldp, kb, nc, bias, first, y + t * ldy, ldy, tail);
    case 1:
      return axpy_rows<1>(x + t * ldx, ldx, p, ldp, kb, nc, bias, first, y + t * ldy, ldy, tail);
    default:
      return;
  }
}

// ---------------------------------------------------------------- half-precision weights

// dst[r, c] = float(src[r * ld_src + c]) for r < rows, c < cols (dst rows ld_dst apart).
template <typename W>
STEER_ALWAYS_INLINE void convert_block(const W* STEER_RESTRICT src, int64_t rows, int64_t cols, int64_t ld_src,
                                       float* STEER_RESTRICT dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const W* STEER_RESTRICT s = src + r * ld_src;
    float* STEER_RESTRICT d = dst + r * ld_dst;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) d[c] = to_float(s[c]);
  }
}

#if STEER_CPU_F16C
// float16 has a conversion instruction in x86-64-v3 (F16C): 1 instruction per 8 weights instead
// of the ~24 of the exact bit manipulation of to_float(Half), which made float16 weights convert
// at ~1 weight per cycle, slower than memory. Both are exact. (GCC function multiversioning: a
// target_clones function has one body for every build, and this one needs an intrinsic.)
__attribute__((target("default")))
#endif
void to_float_block(const Half* src, int64_t rows, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst) {
  convert_block(src, rows, cols, ld_src, dst, ld_dst);
}

#if STEER_CPU_F16C
__attribute__((target("arch=x86-64-v3")))
void to_float_block(const Half* src, int64_t rows, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const Half* s = src + r * ld_src;
    float* d = dst + r * ld_dst;
    int64_t c = 0;
    for (; c + kLanes <= cols; c += kLanes) {
      _mm256_storeu_ps(d + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + c))));
    }
    for (; c < cols; ++c) d[c] = to_float(s[c]);
  }
}
#endif

STEER_CPU_CLONES
void to_float_block(const BFloat16* src, int64_t rows, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst) {
  convert_block(src, rows, cols, ld_src, dst, ld_dst);
}

// A float32 view of rows x cols of W at `src`: W itself for float32, else the converted buffer.
STEER_ALWAYS_INLINE const float* as_float(const float* src, int64_t, int64_t, int64_t ld_src, float*, int64_t,
                                          int64_t* ld) {
  *ld = ld_src;
  return src;
}

template <typename W>
STEER_ALWAYS_INLINE const float* as_float(const W* src, int64_t rows, int64_t cols, int64_t ld_src, float* buffer,
                                          int64_t ld_buffer, int64_t* ld) {
  to_float_block(src, rows, cols, ld_src, buffer, ld_buffer);
  *ld = ld_buffer;
  return buffer;
}

// ---------------------------------------------------------------- drivers

struct Problem {
  const float* x;
  int64_t T, Kin, ldx;
  int64_t N, ldw;
  const float* bias;
  float* y;
  int64_t ldy;

  // Rows [t, t + count) of x and y.
  Problem rows(int64_t t, int64_t count) const {
    Problem part = *this;
    part.x += t * ldx;
    part.y += t * ldy;
    part.T = count;
    return part;
  }
};

// Rows of x per pass over W: as many as keep what each tile of W revisits in L2 (out_in: x,
// Kin floats a row; in_out: the y block, kBlockCols floats a row), at least one register tile.
// Each further pass streams W once more, as a GEMM would. (32 rows of Kin = 4096 take one pass;
// decode_linear sends more than 32 rows only with a half-precision weight and float32 x, which
// torch has no kernel for.)
int64_t rows_per_pass(int64_t T, int64_t floats_per_row) {
  constexpr int64_t kPassBytes = 512 << 10;
  const int64_t fit = kPassBytes / (int64_t(sizeof(float)) * std::max<int64_t>(floats_per_row, 1));
  return std::min(T, std::max<int64_t>(kRowTile, fit / kRowTile * kRowTile));
}

// Outputs [n0, n1) of out_in, every row.
template <typename W>
void out_in_range(const Problem& q, const W* w, int64_t n0, int64_t n1, float* buffer) {
  for (int64_t n = n0; n < n1; n += kOutInRows) {
    const int64_t nr = std::min<int64_t>(kOutInRows, n1 - n);
    int64_t ld = 0;
    const float* rows = as_float(w + n * q.ldw, nr, q.Kin, q.ldw, buffer, q.Kin, &ld);
    // The next tile's rows, where there is a full next tile in this range.
    const Prefetch next{n + 2 * kOutInRows <= n1 ? reinterpret_cast<const char*>(w + (n + kOutInRows) * q.ldw) : nullptr,
                        int64_t(sizeof(W)) * q.ldw, int64_t(sizeof(W)) * kLanes};
    out_in_block(q.x, q.ldx, q.T, q.Kin, rows, ld, nr, q.bias ? q.bias + n : nullptr, q.y + n, q.ldy, next);
  }
}

// Columns [n0, n1) of in_out, every row.
template <typename W>
void in_out_range(const Problem& q, const W* w, int64_t n0, int64_t n1, float* buffer) {
  for (int64_t b = n0; b < n1; b += kBlockCols) {
    const int64_t b1 = std::min(n1, b + kBlockCols);
    for (int64_t k = 0; k < q.Kin; k += kPanelRows) {
      const int64_t kb = std::min(kPanelRows, q.Kin - k);
      for (int64_t n = b; n < b1; n += kPanelCols) {
        const int64_t nc = std::min(kPanelCols, b1 - n);
        int64_t ld = 0;
        const float* panel = as_float(w + k * q.ldw + n, kb, nc, q.ldw, buffer, kPanelCols, &ld);
        // The next panel of this block and k range, or the first of the next k range; prefetched
        // only where it has this panel's shape (the edges go without).
        const int64_t next_n = n + nc < b1 ? n + nc : b, next_k = n + nc < b1 ? k : k + kb;
        const bool same_shape = next_k + kb <= q.Kin && next_n + nc <= b1;
        const Prefetch next{same_shape ? reinterpret_cast<const char*>(w + next_k * q.ldw + next_n) : nullptr,
                            int64_t(sizeof(W)) * q.ldw, int64_t(sizeof(W)) * kLanes};
        in_out_panel(q.x + k, q.ldx, q.T, panel, ld, kb, nc, q.bias ? q.bias + n : nullptr, k == 0, q.y + n, q.ldy,
                     next);
      }
    }
  }
}

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// The calling thread's conversion buffer of at least len floats, or null if it cannot be had.
// Kept for the thread's lifetime (3 x Kin or kPanelRows x kPanelCols floats): allocated, zeroed
// and then only ever touched by the thread that uses it. (A buffer for all threads allocated and
// zeroed by the caller on every call made the other thread's first writes fetch each line from
// the caller's cache: float16 in_out at T = 16 then gained 1.3x from a second thread, not 1.8x.)
float* thread_buffer(int64_t len) {
  thread_local std::vector<float> buffer;
  if (int64_t(buffer.size()) < len) {
    try {
      buffer.resize(size_t(len));
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
  }
  return buffer.data();
}

template <typename W>
Status run(const Problem& q, const W* w, WeightLayout layout, int num_threads) {
  const bool out_in = layout == WeightLayout::kOutIn;
  int threads = resolve_threads(num_threads);
  if (q.N * q.Kin < kSerialWeights) threads = 1;
  // out_in splits rows of W; in_out splits columns on kColumnAlign boundaries.
  const int64_t units = out_in ? q.N : (q.N + kColumnAlign - 1) / kColumnAlign;
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
  const int64_t pass = rows_per_pass(q.T, out_in ? q.Kin : std::min(q.N, kBlockCols));

  // Half-precision weights: each thread converts into its own buffer (thread_buffer).
  const int64_t buffer_len = std::is_same<W, float>::value ? 0 : out_in ? kOutInRows * q.Kin : kPanelRows * kPanelCols;
  bool out_of_memory = false;

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int64_t team = team_size(), index = thread_index();
    const int64_t per = (units + team - 1) / team;
    const int64_t scale = out_in ? 1 : kColumnAlign;
    const int64_t n0 = std::min(q.N, index * per * scale), n1 = std::min(q.N, (index + 1) * per * scale);
    float* buffer = buffer_len > 0 ? thread_buffer(buffer_len) : nullptr;
    if (buffer_len > 0 && !buffer) {
#pragma omp atomic write
      out_of_memory = true;
    } else {
      for (int64_t t = 0; n0 < n1 && t < q.T; t += pass) {
        const Problem part = q.rows(t, std::min(pass, q.T - t));
        if (out_in) {
          out_in_range(part, w, n0, n1, buffer);
        } else {
          in_out_range(part, w, n0, n1, buffer);
        }
      }
    }
  }
  if (out_of_memory) return STEER_ERR_OUT_OF_MEMORY;
  return STEER_OK;
}

}  // namespace

Status decode_matmul_cpu(const float* x, int64_t T, int64_t Kin, int64_t ldx, const void* w, DType w_dtype,
                         WeightLayout layout, int64_t N, int64_t ldw, const float* bias, float* y, int64_t ldy,
                         int num_threads) {
  const bool out_in = layout == WeightLayout::kOutIn;
  if (!out_in && layout != WeightLayout::kInOut) return STEER_ERR_INVALID_ARGUMENT;
  if (w_dtype != DType::kFloat32 && w_dtype != DType::kFloat16 && w_dtype != DType::kBFloat16) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (T < 0 || N < 0 || Kin < 0) return STEER_ERR_INVALID_ARGUMENT;
  if (T == 0 || N == 0) return STEER_OK;
  if (!y || (T > 1 && ldy < N)) return STEER_ERR_INVALID_ARGUMENT;
  if (Kin == 0) {  // an empty sum: the bias, or zeros
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t n = 0; n < N; ++n) y[t * ldy + n] = bias ? bias[n] : 0.0f;
    }
    return STEER_OK;
  }
  if (!x || !w || (T > 1 && ldx < Kin)) return STEER_ERR_INVALID_ARGUMENT;
  // The stride between the rows of W: over Kin weights (out_in, N rows) or N weights (in_out, Kin rows).
  const int64_t rows = out_in ? N : Kin, row_len = out_in ? Kin : N;
  if (rows > 1 && ldw < row_len) return STEER_ERR_INVALID_ARGUMENT;

  const Problem q{x, T, Kin, ldx, N, ldw, bias, y, ldy};
  return cpu::dispatch_dtype(w_dtype, w, [&](auto* typed) { return run(q, typed, layout, num_threads); });
}

}  // namespace steer
