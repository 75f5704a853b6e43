// The Gumbel noise of the CPU sampler, vectorised: g = -log(-log(u)) with u the shared Philox
// uniform of steer/philox.h, for a list of token ids of one row. Internal to csrc/cpu.

#pragma once

#include <cstdint>

namespace steer {
namespace cpu {

// Which row's noise: the (seed, row key, step) that key its Philox counters.
struct NoiseKey {
  uint64_t seed;
  uint64_t row_key;
  uint32_t step;
};

// Bounds on every g this file can return: u lies in [2^-24, 1 - 2^-24], so g lies in
// [-log(-log(2^-24)), -log(-log(1 - 2^-24))] = [-2.8116, 16.6355]; the margins cover the ~1 ulp
// of the polynomial logs. The sampler uses them to skip tokens that cannot win the race.
constexpr float kGumbelMin = -2.82f;
constexpr float kGumbelMax = 16.64f;

// g[j] = -log(-log(philox_uniform(key.seed, key.row_key, key.step, ids[j]))) for j < n.
// Bit-identical whichever instruction set the runtime dispatch picks (no FMA contraction).
void gumbel_noise(const NoiseKey& key, const uint32_t* ids, int64_t n, float* g);

}  // namespace cpu
}  // namespace steer
