// CPU kernel of the STEER combine op (the maths and the error rules: csrc/include/steer/combine.h).
//
//   s(v)   = sum_{k : w_k != 0} w_k * zz_k(v)      zz: -inf floored in negatively weighted streams
//   s(v)   = -inf  where z_0(v) < log(alpha) + max z_0           (plausibility, alpha > 0 only)
//   out(v) = (s(v) - M) - log(sum_u exp(s(u) - M)),  M = max_u s(u)   (normalize only)
//
// float16 and bfloat16 logits are read natively (converted in registers, kernel_common.h), so a
// half-precision input costs half the bytes and no upcast copy.
//
// One pass over the B*K*V logits, which is what bounds the op (it is memory bound: K reads per
// output element, K multiply-adds). The work is cut into (row, vocabulary chunk) items so that a
// batch of one row still uses every thread; each item walks its chunk in L1-sized tiles and, for
// each tile, lets the K streams pass over one accumulator before anything else touches it, so
// the accumulator never leaves L1 and every logit is loaded exactly once. While a tile is hot it
// also yields the tile's max and sum of exp (online logsumexp), so normalising costs a second
// pass over the [B, V] output only, never over the [B, K, V] input. Tiles are short (kTile = 256
// tokens): the K streams then advance through memory nearly together, which measured faster than
// 2048-token tiles both from DRAM and from L3 (kernel_common.h).
//
// Vectorisation: the hot loops are plain branch-free loops over restrict pointers (selects
// instead of ifs, an integer OR for "saw a NaN or +inf", a polynomial exp) so the compiler
// vectorises them at -O3 without -march or -ffast-math. The float max / sum reductions need
// `#pragma omp simd reduction(...)` to be reassociated, which -fopenmp or -fopenmp-simd honour
// and other compilers ignore. Checked with g++ 12 at the x86-64 baseline (SSE2, 16-byte vectors):
// -fopt-info-vec-optimized reports every loop of accumulate_tile (every dtype), the max and
// sum-of-exp loops and the normalisation loop as vectorised, and `perf annotate` of a B=8, K=7,
// V=128256 run shows only packed instructions (mulps/addps/cmpnltps/andnps, and their v-prefixed
// 32-byte forms in the AVX2 build) in the hot loops. -fopt-info alone is not proof: without
// -fno-trapping-math (CMakeLists.txt) GCC reports the exp and floor loops vectorised yet emits
// their scalar copies, and the kernel runs 2x slower. The multiply-add and sum-of-exp loops live
// in kernel_common.h / hot_loops.cpp (shared with sample.cpp), which also builds them for AVX2
// with a load-time dispatch.

#include "steer/combine.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernel_common.h"

namespace steer {
namespace {

using namespace cpu;

// Per (row, chunk) partial results. lse: max of s over the chunk and sum of exp(s - max) (the
// sum only when normalising); z0_max: max of stream 0's raw logits (plausibility pre-pass); bad:
// saw a NaN or +inf.
struct ChunkStats {
  OnlineLogSumExp lse;
  float z0_max = -kInf;
  int bad = 0;
};

struct Output {
  bool normalize;
  float* out;
  int64_t out_stride_b;
  int64_t chunks_per_row, chunk_len;
};

// Phase A for one (row, chunk) item: scores into out, the chunk's max and sum of exp, padding.
template <typename T>
ChunkStats process_item(const Logits<T>& p, const Output& o, int64_t b, int64_t c, float threshold) {
  ChunkStats st;
  const int64_t v0 = c * o.chunk_len;
  const int64_t v1 = std::min(p.vocab_size, v0 + o.chunk_len);
  float* STEER_RESTRICT orow = o.out + b * o.out_stride_b;
  for (int64_t t0 = v0; t0 < v1; t0 += kTile) {
    const int64_t n = std::min(kTile, v1 - t0);
    float* STEER_RESTRICT acc = orow + t0;
    st.bad |= accumulate(p, b, threshold, t0, n, acc);
    const float tile_max = max_of(acc, n);
    if (o.normalize) {
      st.lse.add_tile(acc, n, tile_max);
    } else {
      st.lse.max = std::max(st.lse.max, tile_max);
    }
  }
  if (c == o.chunks_per_row - 1) {
    for (int64_t v = p.vocab_size; v < p.V; ++v) orow[v] = -kInf;
  }
  return st;
}

template <typename T>
Status combine_typed(const Logits<T>& p, int64_t B, bool normalize, float plausibility_alpha, float* out,
                     int64_t out_stride_b, int64_t* err_row, int64_t* err_stream, int num_threads) {
  const int64_t vocab_size = p.vocab_size;
  const int threads = resolve_threads(num_threads);
  const bool parallel = threads > 1 && B * p.K * vocab_size >= kSerialWork;
  const int64_t chunks = parallel ? choose_chunks_per_row(B, vocab_size, threads) : 1;
  const int64_t chunk_len = chunk_length(vocab_size, chunks);
  const Output o{normalize, out, out_stride_b, chunks, chunk_len};

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
        stats[size_t(i)].z0_max = max_of_stream0(p, i / chunks, v0, std::min(vocab_size, v0 + chunk_len));
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
      stats[size_t(i)] = process_item(p, o, i / chunks, i % chunks, threshold[size_t(i / chunks)]);
      stats[size_t(i)].z0_max = z0_max;
    }

#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      OnlineLogSumExp row;
      for (int64_t c = 0; c < chunks; ++c) row.merge(stats[size_t(b * chunks + c)].lse);
      row_max[size_t(b)] = row.max;
      row_log_sum[size_t(b)] = float(std::log(row.sum));
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

}  // namespace

Status combine_cpu(const void* logits, DType dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                   int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                   int64_t vocab_size, bool normalize, float plausibility_alpha, float* out, int64_t out_stride_b,
                   int64_t* err_row, int64_t* err_stream, int num_threads) {
  if (B < 0 || K < 1 || V < 1 || vocab_size < 1 || vocab_size > V || stride_b < 0 || stride_k < 0 ||
      stride_v < 0 || weight_stride_b < 0 || out_stride_b < V || !(plausibility_alpha >= 0.0f) ||
      std::isinf(plausibility_alpha)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (B == 0) return STEER_OK;
  if (logits == nullptr || weights == nullptr || out == nullptr) return STEER_ERR_INVALID_ARGUMENT;
  return dispatch_dtype(dtype, logits, [&](const auto* data) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(data)>>;
    const Logits<T> p{data, K, V, stride_b, stride_k, stride_v, weights, weight_stride_b, vocab_size};
    return combine_typed(p, B, normalize, plausibility_alpha, out, out_stride_b, err_row, err_stream, num_threads);
  });
}

}  // namespace steer
