// CPU kernel of the STEER combine op (the maths and the error rules: csrc/include/steer/combine.h).
//
//   s(v)   = sum_{k : w_k != 0} w_k * zz_k(v)      zz: -inf floored in negatively weighted streams
//   s(v)   = -inf  where z_0(v) < log(alpha) + max z_0           (plausibility, alpha > 0 only)
//   out(v) = (s(v) - M) - log(sum_u exp(s(u) - M)),  M = max_u s(u)   (normalize only)
//
// One pass over the B*K*V logits, which is what bounds the op (it is memory bound: K reads per
// output element, K multiply-adds). The work is cut into (row, vocabulary chunk) items so that a
// batch of one row still uses every thread; each item walks its chunk in L1-sized tiles and, for
// each tile, lets the K streams pass over one accumulator before anything else touches it, so
// the accumulator never leaves L1 and every logit is loaded exactly once. While a tile is hot it
// also yields the tile's max and sum of exp (online logsumexp), so normalising costs a second
// pass over the [B, V] output only, never over the [B, K, V] input.
//
// Vectorisation: the hot loops are plain branch-free loops over restrict pointers (selects
// instead of ifs, an integer OR for "saw a NaN or +inf", a polynomial exp) so the compiler
// vectorises them at -O3 without -march or -ffast-math. The float max / sum reductions need
// `#pragma omp simd reduction(...)` to be reassociated, which -fopenmp or -fopenmp-simd honour
// and other compilers ignore. Checked with g++ 12 at the x86-64 baseline (SSE2, 16-byte vectors):
// -fopt-info-vec-optimized reports every loop of accumulate_tile<true>, the max and sum-of-exp
// reductions of process_item and the normalisation loop as vectorised, and `perf annotate` of a
// B=8, K=7, V=128256 run shows only packed instructions (mulps/addps/cmpnltps/andnps) in the hot
// loops. -fopt-info alone is not proof: without -fno-trapping-math (CMakeLists.txt) GCC reports
// the exp and floor loops vectorised yet emits their scalar copies, and the kernel runs 2x slower.

#include "steer/combine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(_MSC_VER)
#define STEER_RESTRICT __restrict
#else
#define STEER_RESTRICT __restrict__
#endif

namespace steer {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kTile = 2048;           // accumulator floats per tile: 8 KiB, stays in L1 while K streams pass
constexpr int64_t kChunkAlign = 64;       // chunk boundaries on 256-byte multiples: no split cache lines
constexpr int64_t kMinChunk = 8192;       // a thread's vocabulary chunk is never smaller than this
constexpr int64_t kSerialWork = 1 << 15;  // below this many logits, waking threads costs more than it saves

// exp(x) for x <= 0 (what a logsumexp needs after subtracting the max), in a form the compiler
// can vectorise: Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial, ~1 ulp)
// with the rounding to an integer done by the 1.5 * 2^23 trick instead of a call to nearbyint.
// Anything below -87 is 0 (its true value is below FLT_MIN anyway), including -inf.
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: t + kRound has the integer part of t in its low bits
  constexpr int32_t kRoundBits = 0x4B400000;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const float xc = x < -87.0f ? -87.0f : x;
  const float t = xc * kLog2e + kRound;
  int32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  const float n = t - kRound;           // round(xc / ln 2), exactly, as a float
  const int32_t n_int = t_bits - kRoundBits;  // the same as an int, in [-126, 0]
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;  // exp(r), |r| <= ln(2) / 2
  const int32_t scale_bits = (n_int + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return x < -87.0f ? 0.0f : e * scale;
}

// What -inf in a stream becomes: -inf where w > 0 (the token is forbidden), the finite floor
// where w < 0 (so -|w| * z never becomes +inf) and where w == 0 (so 0 * z never becomes NaN;
// only stream 0 is ever multiplied by a zero weight, see accumulate_tile).
inline float neg_inf_substitute(float w) { return w > 0.0f ? -kInf : NEG_INF_FLOOR; }

// acc[0, n) = s over tokens [v0, v0 + n) of one row. Returns nonzero iff any logit read was NaN or
// +inf (`!(z < inf)` is true for exactly those), which the caller then locates on the slow path.
// kContig: stride_v == 1, the case the loops are shaped for.
template <bool kContig>
int accumulate_tile(const float* STEER_RESTRICT row_logits, int64_t K, int64_t stride_k, int64_t stride_v_runtime,
                    const float* STEER_RESTRICT w, float threshold, int64_t v0, int64_t n, float* STEER_RESTRICT acc) {
  const int64_t sv = kContig ? 1 : stride_v_runtime;
  int bad = 0;
  {
    // Stream 0 initialises the accumulator and applies the plausibility floor (threshold is -inf
    // when it is off, so the select never fires). A token removed here stays -inf: later streams
    // only add finite values or -inf to it, never +inf.
    const float* STEER_RESTRICT z = row_logits + v0 * sv;
    const float w0 = w[0];
    const float sub = neg_inf_substitute(w0);
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const float zi = z[i * sv];
      bad |= !(zi < kInf);
      const float zz = zi == -kInf ? sub : zi;
      acc[i] = zi < threshold ? -kInf : w0 * zz;
    }
  }
  for (int64_t k = 1; k < K; ++k) {
    const float* STEER_RESTRICT z = row_logits + k * stride_k + v0 * sv;
    const float wk = w[k];
    if (wk == 0.0f) {
      // Contributes nothing, but a NaN or +inf in it is still an error (as in the torch backend).
#pragma omp simd reduction(| : bad)
      for (int64_t i = 0; i < n; ++i) bad |= !(z[i * sv] < kInf);
      continue;
    }
    const float sub = neg_inf_substitute(wk);
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const float zi = z[i * sv];
      bad |= !(zi < kInf);
      acc[i] += wk * (zi == -kInf ? sub : zi);
    }
  }
  return bad;
}

// Per (row, chunk) partial results. max: of s over the chunk; z0_max: of stream 0's raw logits
// (plausibility pre-pass); sumexp: sum of exp(s - max) over the chunk; bad: saw a NaN or +inf.
struct ChunkStats {
  float max = -kInf;
  float z0_max = -kInf;
  double sumexp = 0.0;
  int bad = 0;
};

struct Problem {
  const float* logits;
  int64_t K, V, stride_b, stride_k, stride_v;
  const float* weights;
  int64_t weight_stride_b, vocab_size;
  bool normalize;
  float* out;
  int64_t out_stride_b;
  int64_t chunks_per_row, chunk_len;
};

inline float row_max_of_z0(const Problem& p, int64_t b, int64_t v0, int64_t v1) {
  const float* z = p.logits + b * p.stride_b;
  float m = -kInf;
  if (p.stride_v == 1) {
#pragma omp simd reduction(max : m)
    for (int64_t v = v0; v < v1; ++v) m = z[v] > m ? z[v] : m;
  } else {
    for (int64_t v = v0; v < v1; ++v) m = std::max(m, z[v * p.stride_v]);
  }
  return m;
}

// Phase A for one (row, chunk) item: scores into out, the chunk's max and sum of exp, padding.
ChunkStats process_item(const Problem& p, int64_t b, int64_t c, float threshold) {
  ChunkStats st;
  const int64_t v0 = c * p.chunk_len;
  const int64_t v1 = std::min(p.vocab_size, v0 + p.chunk_len);
  const float* row_logits = p.logits + b * p.stride_b;
  const float* w = p.weights + b * p.weight_stride_b;
  float* STEER_RESTRICT orow = p.out + b * p.out_stride_b;
  double sumexp = 0.0;
  float m = -kInf;
  for (int64_t t0 = v0; t0 < v1; t0 += kTile) {
    const int64_t n = std::min(kTile, v1 - t0);
    float* STEER_RESTRICT acc = orow + t0;
    st.bad |= p.stride_v == 1
                  ? accumulate_tile<true>(row_logits, p.K, p.stride_k, 1, w, threshold, t0, n, acc)
                  : accumulate_tile<false>(row_logits, p.K, p.stride_k, p.stride_v, w, threshold, t0, n, acc);
    float tile_max = -kInf;
#pragma omp simd reduction(max : tile_max)
    for (int64_t i = 0; i < n; ++i) tile_max = acc[i] > tile_max ? acc[i] : tile_max;
    if (!p.normalize || tile_max == -kInf) {
      m = std::max(m, tile_max);
      continue;
    }
    float tile_sum = 0.0f;  // n <= 2048 terms in (0, 1]: float is plenty, the row total is double
#pragma omp simd reduction(+ : tile_sum)
    for (int64_t i = 0; i < n; ++i) tile_sum += exp_nonpositive(acc[i] - tile_max);
    // Online logsumexp: rescale whichever running sum has the smaller max.
    if (tile_max > m) {
      sumexp = sumexp * std::exp(double(m) - double(tile_max)) + tile_sum;
      m = tile_max;
    } else {
      sumexp += double(tile_sum) * std::exp(double(tile_max) - double(m));
    }
  }
  st.max = m;
  st.sumexp = sumexp;
  if (c == p.chunks_per_row - 1) {
    for (int64_t v = p.vocab_size; v < p.V; ++v) orow[v] = -kInf;
  }
  return st;
}

// The slow path after a NaN or +inf was seen: find the first (row, stream) holding one, scanning
// in the torch backend's order (all NaNs before any +inf).
Status locate_bad_logit(const Problem& p, int64_t B, int64_t* err_row, int64_t* err_stream) {
  for (const bool want_nan : {true, false}) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = 0; k < p.K; ++k) {
        const float* z = p.logits + b * p.stride_b + k * p.stride_k;
        for (int64_t v = 0; v < p.vocab_size; ++v) {
          const float zv = z[v * p.stride_v];
          if (want_nan ? std::isnan(zv) : zv == kInf) {
            if (err_row) *err_row = b;
            if (err_stream) *err_stream = k;
            return want_nan ? STEER_ERR_NAN : STEER_ERR_POSINF;
          }
        }
      }
    }
  }
  return STEER_OK;  // unreachable when a bad flag was set
}

int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

// How many vocabulary chunks per row: one when the rows alone keep every thread equally busy
// (B a multiple of the thread count, or so many rows that the remainder does not matter),
// otherwise one per thread so that B * chunks is a multiple of the thread count; never chunks
// shorter than kMinChunk.
int64_t choose_chunks_per_row(int64_t B, int64_t vocab_size, int threads) {
  if (threads <= 1 || B >= 8 * int64_t(threads) || B % threads == 0) return 1;
  const int64_t cap = std::max<int64_t>(1, vocab_size / kMinChunk);
  return std::min<int64_t>(threads, cap);
}

}  // namespace

Status combine_cpu(const float* logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
                   int64_t stride_v, const float* weights, int64_t weight_stride_b, int64_t vocab_size,
                   bool normalize, float plausibility_alpha, float* out, int64_t out_stride_b, int64_t* err_row,
                   int64_t* err_stream, int num_threads) {
  if (B < 0 || K < 1 || V < 1 || vocab_size < 1 || vocab_size > V || stride_b < 0 || stride_k < 0 ||
      stride_v < 0 || weight_stride_b < 0 || out_stride_b < V || !(plausibility_alpha >= 0.0f) ||
      std::isinf(plausibility_alpha)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (B == 0) return STEER_OK;
  if (logits == nullptr || weights == nullptr || out == nullptr) return STEER_ERR_INVALID_ARGUMENT;

  const int threads = resolve_threads(num_threads);
  const bool parallel = threads > 1 && B * K * vocab_size >= kSerialWork;
  const int64_t chunks = parallel ? choose_chunks_per_row(B, vocab_size, threads) : 1;
  int64_t chunk_len = (vocab_size + chunks - 1) / chunks;
  chunk_len = (chunk_len + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
  const Problem p{logits, K, V, stride_b, stride_k, stride_v, weights, weight_stride_b, vocab_size,
                  normalize, out, out_stride_b, chunks, chunk_len};

  const int64_t items = B * chunks;
  const bool plausibility = plausibility_alpha > 0.0f;
  const float log_alpha = plausibility ? std::log(plausibility_alpha) : 0.0f;
  std::vector<ChunkStats> stats(static_cast<size_t>(items));
  std::vector<float> threshold(static_cast<size_t>(B), -kInf);  // plausibility floor per row; -inf = off
  std::vector<float> row_max(static_cast<size_t>(B), -kInf);
  std::vector<float> row_log_sum(static_cast<size_t>(B), 0.0f);

#pragma omp parallel num_threads(threads) if (parallel)
  {
    if (plausibility) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < items; ++i) {
        const int64_t v0 = (i % chunks) * chunk_len;
        stats[size_t(i)].z0_max = row_max_of_z0(p, i / chunks, v0, std::min(vocab_size, v0 + chunk_len));
      }
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        float m0 = -kInf;
        for (int64_t c = 0; c < chunks; ++c) m0 = std::max(m0, stats[size_t(b * chunks + c)].z0_max);
        threshold[size_t(b)] = log_alpha + m0;  // shift-invariant form of lE >= log(alpha) + max lE
      }
    }

#pragma omp for schedule(static)
    for (int64_t i = 0; i < items; ++i) {
      const float z0_max = stats[size_t(i)].z0_max;
      stats[size_t(i)] = process_item(p, i / chunks, i % chunks, threshold[size_t(i / chunks)]);
      stats[size_t(i)].z0_max = z0_max;
    }

#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      float m = -kInf;
      for (int64_t c = 0; c < chunks; ++c) m = std::max(m, stats[size_t(b * chunks + c)].max);
      double sum = 0.0;
      if (normalize && m != -kInf) {
        for (int64_t c = 0; c < chunks; ++c) {
          const ChunkStats& st = stats[size_t(b * chunks + c)];
          if (st.max != -kInf) sum += st.sumexp * std::exp(double(st.max) - double(m));
        }
      }
      row_max[size_t(b)] = m;
      row_log_sum[size_t(b)] = float(std::log(sum));
    }

    if (normalize) {
      // Phase B: out = (s - M) - log(sum exp(s - M)), the order of torch.log_softmax, so rows
      // agree with the reference to the last few ulps. Empty rows are an error; leave them.
#pragma omp for schedule(static)
      for (int64_t i = 0; i < items; ++i) {
        const int64_t b = i / chunks;
        const float m = row_max[size_t(b)];
        const float log_sum = row_log_sum[size_t(b)];
        if (m == -kInf) continue;
        const int64_t v0 = (i % chunks) * chunk_len;
        const int64_t v1 = std::min(vocab_size, v0 + chunk_len);
        float* STEER_RESTRICT orow = out + b * out_stride_b;
#pragma omp simd
        for (int64_t v = v0; v < v1; ++v) orow[v] = (orow[v] - m) - log_sum;
      }
    }
  }

  for (int64_t i = 0; i < items; ++i) {
    if (stats[size_t(i)].bad) return locate_bad_logit(p, B, err_row, err_stream);
  }
  for (int64_t b = 0; b < B; ++b) {
    if (row_max[size_t(b)] == -kInf) {
      if (err_row) *err_row = b;
      if (err_stream) *err_stream = -1;
      return STEER_ERR_EMPTY_ROW;
    }
  }
  return STEER_OK;
}

}  // namespace steer
