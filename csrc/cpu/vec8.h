// The 8-wide float vectors of the CPU kernels that are hand-tiled for registers (decode_matmul.cpp,
// paged_attention.cpp), and the x86-64-v3 clone attribute they are built with. Internal to
// csrc/cpu.
//
// Vec is a GCC / Clang vector extension: two SSE registers at the x86-64 baseline, one AVX
// register in the x86-64-v3 clone. On x86-64 Linux with GCC, STEER_CPU_CLONES builds a function
// for x86-64-v3 (AVX2 + FMA + F16C) beside the baseline and the loader picks the one the CPU
// runs; a file that wants `acc + a * b` fused into one FMA there is compiled with
// -ffp-contract=fast (CMakeLists.txt). Elsewhere Vec is a plain struct with scalar loops.

#pragma once

#include <cstring>

#include "kernel_common.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(STEER_NO_CLONES)
#define STEER_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define STEER_CPU_F16C 1  // float16 -> float32 by vcvtph2ps in the x86-64-v3 build
#include <immintrin.h>
#else
#define STEER_CPU_CLONES
#define STEER_CPU_F16C 0
#endif

#if defined(__GNUC__) && !defined(__clang__)
// The helpers below pass 32-byte vectors by value; GCC warns that the baseline build's calling
// convention for them differs from an AVX build's. They are always inlined and internal to each
// file that includes them, so no call ever crosses that boundary.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace steer {
namespace cpu {
namespace {

constexpr int kLanes = 8;

#if defined(__GNUC__)
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
// Vec{} + s, an add GCC cannot fold away (it turns -0 into +0): in a target_clones function GCC 12
// expands a plain splat ({s, s, ...}, or s - 0, which it folds to that) inside a loop as 8 inserts
// instead of one broadcast; this costs one add and a broadcast.
STEER_ALWAYS_INLINE Vec splat(float s) { return Vec{} + s; }
STEER_ALWAYS_INLINE Vec madd(Vec acc, Vec a, Vec b) { return acc + a * b; }
STEER_ALWAYS_INLINE Vec mul(Vec a, Vec b) { return a * b; }
#else
struct Vec {
  float v[kLanes];
};
STEER_ALWAYS_INLINE Vec splat(float s) {
  Vec r;
  for (int i = 0; i < kLanes; ++i) r.v[i] = s;
  return r;
}
STEER_ALWAYS_INLINE Vec madd(Vec acc, Vec a, Vec b) {
  for (int i = 0; i < kLanes; ++i) acc.v[i] += a.v[i] * b.v[i];
  return acc;
}
STEER_ALWAYS_INLINE Vec mul(Vec a, Vec b) {
  for (int i = 0; i < kLanes; ++i) a.v[i] *= b.v[i];
  return a;
}
#endif

STEER_ALWAYS_INLINE Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

STEER_ALWAYS_INLINE void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// The sum of the lanes, in a fixed order (the same in every build).
STEER_ALWAYS_INLINE float hsum(Vec v) {
  float s[kLanes];
  std::memcpy(s, &v, sizeof v);
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

}  // namespace
}  // namespace cpu
}  // namespace steer
