// steer: the counter-based noise every sampling backend shares (CPU, CUDA; Triton mirrors it in
// steer_kernels, and steer/reference.py is the oracle with Random123's known-answer tests).
//
// A row draws its token by the Gumbel-max trick:
//
//   token = argmax_v  f(v) + g(v),        f = the filtered scores s / T (-inf where removed)
//   g(v)  = -log(-log(u(v)))
//   u(v)  = (2 * (x >> 9) + 1) * 2^-24    exactly representable in float32, strictly in (0, 1)
//   x     = word 0 of Philox4x32-10 with key     = (seed & 0xffffffff, seed >> 32)
//                                   and counter = (v, step, row_key & 0xffffffff, row_key >> 32)
//
// Keying by (seed, row key, step, token id) rather than by a position in a stream of draws makes
// a row's tokens independent of the batch around it, of how the vocabulary is split across
// threads or blocks, and of the backend. Ties in f + g go to the lowest token id.

#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define STEER_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define STEER_HOST_DEVICE inline
#endif

namespace steer {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// Word 0 of Philox4x32-10(key, counter) (Salmon et al., SC 2011).
STEER_HOST_DEVICE uint32_t philox4x32_word0(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1, uint32_t c2,
                                            uint32_t c3) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t next0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t next2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = next0;
    c2 = next2;
  }
  return c0;
}

// u(v) in (0, 1) for token `token` of a row keyed by (seed, row_key, step).
STEER_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t row_key, uint32_t step, uint32_t token) {
  const uint32_t x = philox4x32_word0(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), token, step,
                                      static_cast<uint32_t>(row_key), static_cast<uint32_t>(row_key >> 32));
  return static_cast<float>((x >> 9) * 2u + 1u) * 5.9604644775390625e-8f;  // * 2^-24
}

}  // namespace steer
