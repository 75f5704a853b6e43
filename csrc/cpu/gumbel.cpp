// Gumbel noise for the CPU sampler (csrc/cpu/gumbel.h).
//
// With no top-k / top-p filter the sampler needs noise for every token that could still win the
// race, often the whole vocabulary, and then this loop, not reading the logits, is the cost: ten
// Philox rounds (two 32x32->64 multiplies each) and two logs per token. So it is one branch-free
// loop over the ids that the compiler vectorises: the Philox rounds are plain uint32 / uint64
// arithmetic (pmuludq at the SSE2 baseline), and the logs are Cephes' logf polynomial written
// with selects instead of the libm call, which does not vectorise without -ffast-math.
//
// On x86-64 Linux with GCC the function is also compiled for AVX2 and AVX-512 (target_clones,
// picked once at load time by the CPU's features), and bit-identical to the SSE2 build because
// the build disables FMA contraction (-ffp-contract=off, CMakeLists.txt) and every operation is a
// correctly rounded IEEE one (checked: the three builds give the same bits for 4M ids).
// -fopt-info-vec-optimized reports the loop vectorised in every clone (16, 32, 64-byte vectors).
// Measured on the dev box (Zen 4), sampling without filters, B=8, K=7, V=128256, one thread:
// SSE2 19.1 ms, AVX2 15.0 ms, AVX-512 13.6 ms; about half of it is this loop.

#include "gumbel.h"

#include <cstring>

#include "steer/philox.h"

// STEER_NO_CLONES: build only the baseline version (e.g. for a libc without ifunc).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(STEER_NO_CLONES)
#define STEER_NOISE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define STEER_NOISE_CLONES
#endif

namespace steer {
namespace cpu {
namespace {

inline float as_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t as_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// log(x) for finite normal x > 0 (all this file needs: u and -log(u) are both in [6e-8, 17]),
// Cephes' logf: x = m * 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by a degree-9 polynomial in
// m - 1, e * ln 2 added in two parts. About 1 ulp.
inline float log_positive(float x) {
  const uint32_t bits = as_bits(x);
  int32_t e = int32_t((bits >> 23) & 0xffu) - 126;
  const float m = as_float((bits & 0x007fffffu) | 0x3f000000u);  // in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  const float r = (small ? m + m : m) - 1.0f;
  const float r2 = r * r;
  float y = 7.0376836292e-2f;
  y = y * r - 1.1514610310e-1f;
  y = y * r + 1.1676998740e-1f;
  y = y * r - 1.2420140846e-1f;
  y = y * r + 1.4249322787e-1f;
  y = y * r - 1.6668057665e-1f;
  y = y * r + 2.0000714765e-1f;
  y = y * r - 2.4999993993e-1f;
  y = y * r + 3.3333331174e-1f;
  y = y * r * r2;
  const float fe = float(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * r2;
  return (r + y) + 0.693359375f * fe;
}

}  // namespace

STEER_NOISE_CLONES
void gumbel_noise(const NoiseKey& key, const uint32_t* __restrict__ ids, int64_t n, float* __restrict__ g) {
  const uint64_t seed = key.seed, row_key = key.row_key;
  const uint32_t step = key.step;
  for (int64_t j = 0; j < n; ++j) {
    g[j] = -log_positive(-log_positive(philox_uniform(seed, row_key, step, ids[j])));
  }
}

}  // namespace cpu
}  // namespace steer
