// steer: the STEER combine op as a raw-pointer C++ API.
//
// No torch and no pybind11 here on purpose: this header is the contract between the kernels
// (csrc/cpu, csrc/cuda), the Python glue (csrc/python, csrc/cuda/module.cpp) and any other
// inference stack that wants the sampler without Python. Every tensor is a pointer plus
// element strides; the caller owns all memory.
//
// The maths (docs/design.md, section 1), for a batch row b with K streams of logits z_k[v] and
// weights w[b, k]:
//
//   zz_k(v) = z_k(v)           if z_k(v) is finite, or -inf in a stream with w > 0
//           = NEG_INF_FLOOR    if z_k(v) == -inf in a stream with w < 0
//   s(v)    = sum_{k : w[b,k] != 0} w[b,k] * zz_k(v)            for v < vocab_size
//   s(v)    = -inf   where plausibility_alpha > 0 and z_0(v) < log(alpha) + max_u z_0(u)
//   out(v)  = s(v) - logsumexp_u s(u)   (normalize)   or   s(v)   (otherwise)
//   out(v)  = -inf   for vocab_size <= v < V          (LM-head padding, never sampled)
//
// Shift invariance makes the per-stream log_softmax of the paper unnecessary: it subtracts a
// constant per (row, stream), so only the combined row needs a logsumexp, and only if normalised
// log-probabilities are wanted.
//
// Errors (the caller turns them into the shared Python ValueErrors, steer/ops/errors.py), with
// the same precedence as the torch backend: a NaN anywhere beats a +inf anywhere, which beats an
// empty row; within a kind the first (row, stream) in row-major order is reported. Only columns
// v < vocab_size are inspected, and streams with w == 0 are inspected too.

#pragma once

#include <cstdint>

namespace steer {

enum Status : int32_t {
  STEER_OK = 0,
  STEER_ERR_NAN = 1,               // a logit is NaN; *err_row / *err_stream name the first one
  STEER_ERR_POSINF = 2,            // a logit is +inf; *err_row / *err_stream name the first one
  STEER_ERR_EMPTY_ROW = 3,         // every s(v), v < vocab_size, of row *err_row is -inf
  STEER_ERR_INVALID_ARGUMENT = 4,  // a shape, stride or pointer the kernel cannot work with
  STEER_ERR_CUDA = 5,              // a CUDA launch failed (see combine_cuda)
  STEER_ERR_OUT_OF_MEMORY = 6,     // a scratch allocation failed (reported by the C ABI, steer/steer.h)
};

// The storage type of the logits. float16 and bfloat16 are read natively by the CPU kernels
// (converted to float in registers, never copied); all arithmetic is float32.
enum class DType : int32_t {
  kFloat32 = 0,
  kFloat16 = 1,   // IEEE binary16
  kBFloat16 = 2,  // the top 16 bits of a float32
};

// Stands in for -inf in negatively weighted streams: large enough to push the token far down,
// finite so that -w * z never becomes +inf (and w * z never NaN).
constexpr float NEG_INF_FLOOR = -1.0e4f;

// The temperatures the samplers take besides 0 (greedy), as steer.config checks them in Python:
// the scores are float32, and divided by a temperature near 0 they overflow (1e-45 drew garbage);
// beyond the upper bound the draw is uniform over the kept tokens already.
constexpr float kMinTemperature = 1.0e-5f;
constexpr float kMaxTemperature = 1.0e4f;

// Whether `temperature` is 0 or within [kMinTemperature, kMaxTemperature] (false for NaN).
inline bool temperature_ok(float temperature) {
  return temperature == 0.0f || (temperature >= kMinTemperature && temperature <= kMaxTemperature);
}

// CPU kernel (csrc/cpu/combine.cpp), OpenMP over rows and, when rows are few, vocabulary chunks.
//
//   logits   [B, K, V] of `dtype`, element strides (stride_b, stride_k, stride_v); fastest when
//            stride_v == 1. Columns v >= vocab_size are never read.
//   weights  float32, element (b, k) at weights[b * weight_stride_b + k]; weight_stride_b = 0
//            shares one [K] vector across rows.
//   out      [B, V] float32, element (b, v) at out[b * out_stride_b + v]; must not overlap logits.
//   err_row, err_stream  set on STEER_ERR_NAN / POSINF / EMPTY_ROW (err_stream = -1 for an empty
//            row); may be null.
//   num_threads  <= 0: the OpenMP default; ignored in a build without OpenMP.
//
// Returns STEER_OK or an error; on error the contents of out are unspecified.
// B == 0 is valid and does nothing.
Status combine_cpu(const void* logits, DType dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                   int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                   int64_t vocab_size, bool normalize, float plausibility_alpha, float* out, int64_t out_stride_b,
                   int64_t* err_row, int64_t* err_stream, int num_threads);

// The float32 form of the above (the original signature, kept for existing callers).
inline Status combine_cpu(const float* logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
                          int64_t stride_v, const float* weights, int64_t weight_stride_b, int64_t vocab_size,
                          bool normalize, float plausibility_alpha, float* out, int64_t out_stride_b,
                          int64_t* err_row, int64_t* err_stream, int num_threads) {
  return combine_cpu(static_cast<const void*>(logits), DType::kFloat32, B, K, V, stride_b, stride_k, stride_v,
                     weights, weight_stride_b, vocab_size, normalize, plausibility_alpha, out, out_stride_b, err_row,
                     err_stream, num_threads);
}

// CUDA kernel (csrc/cuda/combine.cu), defined only in the CUDA build (steer._C_cuda). Same
// arguments with device pointers, launched asynchronously on `stream` (a cudaStream_t; null is
// the legacy default stream) of the current device.
//
// Data errors cannot be returned synchronously, so the kernel records them in err_device, three
// uint64 in device memory that the caller sets to all ones (UINT64_MAX) before the launch:
//   err_device[0] = min over NaN logits of (b * K + k)        (NaN)
//   err_device[1] = min over +inf logits of (b * K + k)       (+inf)
//   err_device[2] = min row b whose scores are all -inf      (empty row)
// and reads back after the stream has reached the kernel. The return value only reports
// STEER_ERR_INVALID_ARGUMENT or a failed launch (STEER_ERR_CUDA; *cuda_error, if not null,
// receives the cudaError_t value, which cuda_error_string() turns into text).
Status combine_cuda(const float* logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
                    int64_t stride_v, const float* weights, int64_t weight_stride_b, int64_t vocab_size,
                    bool normalize, float plausibility_alpha, float* out, int64_t out_stride_b,
                    uint64_t* err_device, void* stream, int* cuda_error);

const char* cuda_error_string(int cuda_error);

}  // namespace steer
