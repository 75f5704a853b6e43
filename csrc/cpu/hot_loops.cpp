// The hot loops of the CPU kernels that gain from wider vectors, built for the x86-64 baseline
// (SSE2) and, on x86-64 Linux with GCC, also for AVX2 (target_clones: the loader picks AVX2 where
// the CPU has it). STEER_NO_CLONES builds the baseline only.
//
//   accumulate_contiguous  accumulate_tile<T, true> (kernel_common.h), once per dtype: the K-stream
//                          multiply-add that every op runs over every logit.
//   sum_exp                sum of exp(x - m) over a tile: the logsumexp of combine (normalize) and
//                          of sampling without filters.
//
// Both builds give the same bits: the same IEEE operations in the same order (no FMA contraction:
// -ffp-contract=off in CMakeLists.txt), and sum_exp adds into 16 explicit partial sums in a fixed
// order rather than letting the vectoriser choose an order per vector width. Measured on the dev
// box (AMD EPYC, Zen 4), B=8, K=7, V=128256 float32 on one thread: top-k sampling 2.3 ms with the
// SSE2 build, 1.75 ms with AVX2 (2048-token tiles at the time); an AVX-512 clone of the
// multiply-add was slower (2.9 ms), so there is none.

#include "kernel_common.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(STEER_NO_CLONES)
#define STEER_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define STEER_CLONES
#endif

namespace steer {
namespace cpu {

STEER_CLONES
int accumulate_contiguous(const float* row_logits, int64_t K, int64_t stride_k, const float* w, float threshold,
                          int64_t v0, int64_t n, float* acc) {
  return accumulate_tile<float, true>(row_logits, K, stride_k, 1, w, threshold, v0, n, acc);
}

STEER_CLONES
int accumulate_contiguous(const Half* row_logits, int64_t K, int64_t stride_k, const float* w, float threshold,
                          int64_t v0, int64_t n, float* acc) {
  return accumulate_tile<Half, true>(row_logits, K, stride_k, 1, w, threshold, v0, n, acc);
}

STEER_CLONES
int accumulate_contiguous(const BFloat16* row_logits, int64_t K, int64_t stride_k, const float* w, float threshold,
                          int64_t v0, int64_t n, float* acc) {
  return accumulate_tile<BFloat16, true>(row_logits, K, stride_k, 1, w, threshold, v0, n, acc);
}

STEER_CLONES
float sum_exp(const float* STEER_RESTRICT x, int64_t n, float m) {
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += exp_nonpositive(x[i + j] - m);
  }
  for (int j = 0; i < n; ++i, ++j) lanes[j] += exp_nonpositive(x[i] - m);
  float total = 0.0f;
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

}  // namespace cpu
}  // namespace steer
