// What the CPU kernels (combine.cpp, sample.cpp) share: loading float32 / float16 / bfloat16
// logits as float, the weighted multiply-add of K streams over one vocabulary tile with the -inf
// rules of combine.h, a vectorisable exp, the threading policy and the slow path that names the
// first bad logit. Internal to csrc/cpu: nothing here is part of the public headers.
//
// Every hot loop is a plain branch-free loop over restrict pointers, so GCC and Clang vectorise it
// at -O3 at the x86-64 / aarch64 baseline (see the header comment of combine.cpp for how that was
// checked and why -fno-trapping-math matters).

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "steer/combine.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(_MSC_VER)
#define STEER_RESTRICT __restrict
#define STEER_ALWAYS_INLINE __forceinline
#else
#define STEER_RESTRICT __restrict__
#define STEER_ALWAYS_INLINE __attribute__((always_inline)) inline
#endif

namespace steer {
namespace cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();
// Tokens per tile: each tile's accumulator (1 KiB) stays in L1 while the K streams pass over it,
// and the streams advance through memory nearly together. Measured on the dev box (B=8, K=7,
// V=128256 float32, one thread): top-k sampling 1.2 ms with 256-token tiles, 1.6 ms with 2048;
// combine 0.95 vs 1.3 ms; 512 is within noise of 256.
constexpr int64_t kTile = 256;
constexpr int64_t kChunkAlign = 64;       // chunk boundaries on 256-byte multiples: no split cache lines
constexpr int64_t kMinChunk = 8192;       // a thread's vocabulary chunk is never smaller than this
constexpr int64_t kSerialWork = 1 << 15;  // below this many logits, waking threads costs more than it saves

STEER_ALWAYS_INLINE float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

STEER_ALWAYS_INLINE uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// The storage types of the logits. Half and bfloat16 are 16-bit patterns converted on load, in
// registers, so a float16 / bfloat16 input is read at half the bytes and never copied.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

STEER_ALWAYS_INLINE float to_float(float x) { return x; }

STEER_ALWAYS_INLINE float to_float(BFloat16 x) { return bits_to_float(uint32_t(x.bits) << 16); }

// IEEE binary16 -> binary32, exact for every input (normals, subnormals, +-0, +-inf, NaN), as
// selects rather than branches so that it vectorises without F16C: shift the exponent and
// mantissa into place and rebias; an all-ones exponent (inf / NaN) gets the extra rebias to 255;
// a zero exponent (zero / subnormal) is renormalised by one float subtraction (2^-14 * (1 + m) -
// 2^-14 = 2^-14 * m).
STEER_ALWAYS_INLINE float to_float(Half x) {
  const uint32_t magnitude = uint32_t(x.bits & 0x7fffu) << 13;  // exponent and mantissa in float position
  const uint32_t exponent = magnitude & 0x0f800000u;             // the 5 exponent bits, shifted
  const uint32_t normal = magnitude + 0x38000000u;                // rebias 15 -> 127
  const uint32_t inf_nan = magnitude + 0x70000000u;               // rebias to an exponent of 255
  const float subnormal = bits_to_float(magnitude + 0x38800000u) - bits_to_float(0x38800000u);
  uint32_t result = exponent == 0x0f800000u ? inf_nan : normal;
  result = exponent == 0 ? float_to_bits(subnormal) : result;
  return bits_to_float(result | (uint32_t(x.bits & 0x8000u) << 16));
}

// exp(x) for x <= 0 (what a logsumexp needs after subtracting the max), in a form the compiler
// can vectorise: Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial, ~1 ulp)
// with the rounding to an integer done by the 1.5 * 2^23 trick instead of a call to nearbyint.
// Anything below -87 is 0 (its true value is below FLT_MIN anyway), including -inf.
STEER_ALWAYS_INLINE float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: t + kRound has the integer part of t in its low bits
  constexpr uint32_t kRoundBits = 0x4B400000u;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const float xc = x < -87.0f ? -87.0f : x;
  const float t = xc * kLog2e + kRound;
  uint32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  const float n = t - kRound;                  // round(xc / ln 2), exactly, as a float
  const uint32_t n_int = t_bits - kRoundBits;  // the same as an int in [-126, 0], mod 2^32
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;  // exp(r), |r| <= ln(2) / 2
  const uint32_t scale_bits = (n_int + 127u) << 23;  // unsigned throughout: a NaN input is not UB
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return x < -87.0f ? 0.0f : e * scale;
}

// What -inf in a stream becomes: -inf where w > 0 (the token is forbidden), the finite floor
// where w < 0 (so -|w| * z never becomes +inf) and where w == 0 (so 0 * z never becomes NaN;
// only stream 0 is ever multiplied by a zero weight, see accumulate_tile).
STEER_ALWAYS_INLINE float neg_inf_substitute(float w) { return w > 0.0f ? -kInf : NEG_INF_FLOOR; }

// The logits of one problem, typed: element (b, k, v) at data[b * stride_b + k * stride_k + v * stride_v].
template <typename T>
struct Logits {
  const T* data;
  int64_t K, V, stride_b, stride_k, stride_v;
  const float* weights;  // (b, k) at weights[b * weight_stride_b + k]
  int64_t weight_stride_b, vocab_size;

  const T* row(int64_t b) const { return data + b * stride_b; }
  const float* row_weights(int64_t b) const { return weights + b * weight_stride_b; }
};

// acc[0, n) = s over tokens [v0, v0 + n) of one row (a tile: n <= kTile): stream 0 initialises
// the accumulator, the other streams add to it. Returns nonzero iff any logit read was NaN or +inf
// (`!(z < inf)` is true for exactly those), which the caller then locates on the slow path.
// threshold: the plausibility floor on stream 0's raw logits (-inf when off). kContig: stride_v
// == 1, the case the loops are shaped for.
// Always inlined, so that each instruction-set build of hot_loops.cpp gets its own copy.
template <typename T, bool kContig>
STEER_ALWAYS_INLINE int accumulate_tile(const T* STEER_RESTRICT row_logits, int64_t K, int64_t stride_k,
                                        int64_t stride_v_runtime, const float* STEER_RESTRICT w, float threshold,
                                        int64_t v0, int64_t n, float* STEER_RESTRICT acc) {
  const int64_t sv = kContig ? 1 : stride_v_runtime;
  int bad = 0;
  {
    // Stream 0 applies the plausibility floor (threshold is -inf when it is off, so the select
    // never fires). A token removed here stays -inf: later streams only add finite values or -inf
    // to it, never +inf.
    const T* STEER_RESTRICT z = row_logits + v0 * sv;
    const float w0 = w[0];
    const float sub = neg_inf_substitute(w0);
    int bad0 = 0;  // one reduction variable per loop: a shared one gets spilled to the stack
#pragma omp simd reduction(| : bad0)
    for (int64_t i = 0; i < n; ++i) {
      const float zi = to_float(z[i * sv]);
      bad0 |= !(zi < kInf);
      const float zz = zi == -kInf ? sub : zi;
      acc[i] = zi < threshold ? -kInf : w0 * zz;
    }
    bad |= bad0;
  }
  for (int64_t k = 1; k < K; ++k) {
    const T* STEER_RESTRICT z = row_logits + k * stride_k + v0 * sv;
    const float wk = w[k];
    int bad_k = 0;
    if (wk == 0.0f) {
      // Contributes nothing, but a NaN or +inf in it is still an error (as in the torch backend).
#pragma omp simd reduction(| : bad_k)
      for (int64_t i = 0; i < n; ++i) bad_k |= !(to_float(z[i * sv]) < kInf);
    } else {
      const float sub = neg_inf_substitute(wk);
#pragma omp simd reduction(| : bad_k)
      for (int64_t i = 0; i < n; ++i) {
        const float zi = to_float(z[i * sv]);
        bad_k |= !(zi < kInf);
        acc[i] += wk * (zi == -kInf ? sub : zi);
      }
    }
    bad |= bad_k;
  }
  return bad;
}

// accumulate_tile<T, true> compiled for the baseline and, where the toolchain can dispatch at
// load time, for AVX2 too (hot_loops.cpp): the same operations in the same order, so the same
// bits, in wider vectors.
int accumulate_contiguous(const float* row_logits, int64_t K, int64_t stride_k, const float* w, float threshold,
                          int64_t v0, int64_t n, float* acc);
int accumulate_contiguous(const Half* row_logits, int64_t K, int64_t stride_k, const float* w, float threshold,
                          int64_t v0, int64_t n, float* acc);
int accumulate_contiguous(const BFloat16* row_logits, int64_t K, int64_t stride_k, const float* w, float threshold,
                          int64_t v0, int64_t n, float* acc);

template <typename T>
int accumulate(const Logits<T>& p, int64_t b, float threshold, int64_t v0, int64_t n, float* STEER_RESTRICT acc) {
  if (p.stride_v == 1) return accumulate_contiguous(p.row(b), p.K, p.stride_k, p.row_weights(b), threshold, v0, n, acc);
  return accumulate_tile<T, false>(p.row(b), p.K, p.stride_k, p.stride_v, p.row_weights(b), threshold, v0, n, acc);
}

// max over v in [v0, v1) of stream 0's raw logits (the plausibility floor's reference point).
template <typename T>
float max_of_stream0(const Logits<T>& p, int64_t b, int64_t v0, int64_t v1) {
  const T* z = p.row(b);
  float m = -kInf;
  if (p.stride_v == 1) {
#pragma omp simd reduction(max : m)
    for (int64_t v = v0; v < v1; ++v) {
      const float zv = to_float(z[v]);
      m = zv > m ? zv : m;
    }
  } else {
    for (int64_t v = v0; v < v1; ++v) m = std::max(m, to_float(z[v * p.stride_v]));
  }
  return m;
}

// max of x[0, n) (-inf if n == 0 or all -inf; NaNs are skipped).
inline float max_of(const float* STEER_RESTRICT x, int64_t n) {
  float m = -kInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// sum of exp(x[i] - m), i < n, for x <= m (hot_loops.cpp: vectorised, AVX2 where available, the
// same bits either way).
float sum_exp(const float* x, int64_t n, float m);

// The logsumexp of a row, tile by tile: the running max and the sum of exp(x - max). A tile
// rescales the sum (one std::exp) only when it raises the max, which after the first few tiles
// of a row is rare; otherwise it adds one vectorised sum of exps.
struct OnlineLogSumExp {
  float max = -kInf;
  double sum = 0.0;

  void add_tile(const float* STEER_RESTRICT x, int64_t n, float tile_max) {
    if (tile_max == -kInf) return;  // all -inf (or n == 0): contributes nothing
    if (tile_max > max) {
      sum = max == -kInf ? 0.0 : sum * std::exp(double(max) - double(tile_max));
      max = tile_max;
    }
    sum += sum_exp(x, n, max);  // n <= kTile terms in [0, 1]: a float sum is plenty, the row's is double
  }

  void merge(const OnlineLogSumExp& other) {
    if (other.max == -kInf) return;
    if (other.max > max) {
      sum = (max == -kInf ? 0.0 : sum * std::exp(double(max) - double(other.max))) + other.sum;
      max = other.max;
    } else {
      sum += other.sum * std::exp(double(other.max) - double(max));
    }
  }
};

// The slow path after a NaN or +inf was seen: find the first (row, stream) holding one, scanning
// in the torch backend's order (all NaNs before any +inf). Only columns < vocab_size are read.
template <typename T>
Status locate_bad_logit(const Logits<T>& p, int64_t B, int64_t* err_row, int64_t* err_stream) {
  for (const bool want_nan : {true, false}) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = 0; k < p.K; ++k) {
        const T* z = p.row(b) + k * p.stride_k;
        for (int64_t v = 0; v < p.vocab_size; ++v) {
          const float zv = to_float(z[v * p.stride_v]);
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

inline int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// How many vocabulary chunks per row: one when the rows alone keep every thread equally busy
// (B a multiple of the thread count, or so many rows that the remainder does not matter),
// otherwise one per thread so that B * chunks is a multiple of the thread count; never chunks
// shorter than kMinChunk.
inline int64_t choose_chunks_per_row(int64_t B, int64_t vocab_size, int threads) {
  if (threads <= 1 || B >= 8 * int64_t(threads) || B % threads == 0) return 1;
  const int64_t cap = std::max<int64_t>(1, vocab_size / kMinChunk);
  return std::min<int64_t>(threads, cap);
}

// Chunk length for `chunks` chunks of a row of vocab_size tokens, rounded up to kChunkAlign.
inline int64_t chunk_length(int64_t vocab_size, int64_t chunks) {
  const int64_t len = (vocab_size + chunks - 1) / chunks;
  return (len + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
}

// Calls fn(static_cast<const T*>(data)) with T the storage type named by dtype.
template <typename Fn>
Status dispatch_dtype(DType dtype, const void* data, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      return fn(static_cast<const float*>(data));
    case DType::kFloat16:
      return fn(static_cast<const Half*>(data));
    case DType::kBFloat16:
      return fn(static_cast<const BFloat16*>(data));
  }
  return STEER_ERR_INVALID_ARGUMENT;
}

}  // namespace cpu
}  // namespace steer
