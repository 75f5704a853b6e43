// steer: the multi-row decode matmul as a raw-pointer C++ API (no torch, no pybind11; the
// conventions of combine.h: pointers plus element strides, caller-owned memory, Status codes).
//
//   y[t, n] = sum_k x[t, k] * W(n, k)  (+ bias[n])        t < T, n < N, k < Kin
//
// for the few rows (T = 1 .. ~16) of one decode step: each weight element is read from memory
// once per call for all T rows, so a call costs about what one row costs while the weight stream
// dominates (csrc/cpu/decode_matmul.cpp says why and how).

#pragma once

#include <cstdint>

#include "steer/combine.h"  // Status, DType

namespace steer {

// How W is stored. Either way the innermost index has unit stride and ldw is the outer stride.
enum class WeightLayout : int32_t {
  kOutIn = 0,  // nn.Linear: W is [N, Kin], W(n, k) = w[n * ldw + k]
  kInOut = 1,  // GPT-2 Conv1D: W is [Kin, N], W(n, k) = w[k * ldw + n]  (y = x @ W + b)
};

// CPU kernel (csrc/cpu/decode_matmul.cpp), OpenMP over blocks of outputs.
//
//   x        float32 [T, Kin], x[t, k] at x[t * ldx + k]
//   w        [N, Kin] or [Kin, N] (layout) of w_dtype: float32, float16 or bfloat16, read in
//            place and converted to float32 on load (never copied whole); accumulation is float32
//   bias     float32 [N] with unit stride, or null for none
//   y        float32 [T, N], y[t, n] at y[t * ldy + n]; must not overlap x, w or bias
//   num_threads  <= 0: the OpenMP default; ignored in a build without OpenMP
//
// Returns STEER_OK, STEER_ERR_INVALID_ARGUMENT (a null pointer where data is needed, a negative
// size, a leading stride smaller than the row it strides over, an unknown layout or dtype) or
// STEER_ERR_OUT_OF_MEMORY (the small per-thread conversion buffer of a float16 / bfloat16 weight).
// T == 0 or N == 0 does nothing; Kin == 0 writes the bias (or zeros).
Status decode_matmul_cpu(const float* x, int64_t T, int64_t Kin, int64_t ldx, const void* w, DType w_dtype,
                         WeightLayout layout, int64_t N, int64_t ldw, const float* bias, float* y, int64_t ldy,
                         int num_threads);

}  // namespace steer
