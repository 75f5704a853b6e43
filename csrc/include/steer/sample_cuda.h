// steer: the CUDA sampler (and a dtype-generic CUDA combine) as a raw-pointer C++ API.
//
// Conventions of steer/combine.h: tensors are device pointers plus element strides, the caller
// owns all memory, launches are asynchronous on `stream` (a cudaStream_t, null = legacy default
// stream) of the current device, and data errors land in err_device (three uint64 the caller
// sets to all ones before the launch; see combine_cuda). Nothing here synchronises with the
// host, allocates, or reads a parameter from host memory that a CUDA graph could not replay:
// seeds, row keys and steps are read by the kernels from device memory.
//
// dtype: 0 float32, 1 float16 (IEEE binary16), 2 bfloat16 (the values of steer::DType). Half
// types are read natively (16-byte vector loads when every (row, stream) start is 16-byte aligned
// and stride_v == 1); all arithmetic is float32.
//
// The sampler draws exactly what steer.reference.sample draws (see steer/sample.h for the
// maths: combined scores, temperature, top-k with ties kept, top-p on the top-k set, Gumbel-max
// with Philox noise keyed by (seed, row key, step, token), greedy at temperature 0, and the
// chosen token's log-probability), up to the last ulp of exp / log.
// The kernels and their design are described in csrc/cuda/kernels.cuh.

#pragma once

#include <cstddef>
#include <cstdint>

#include "steer/combine.h"

namespace steer {

// Bytes of device workspace sample_cuda needs for these parameters (0 when B == 0). It grows
// with B * vocab_size only when top_k > 0 or top_p < 1 (a float32 copy of the combined row).
size_t sample_cuda_workspace_bytes(int64_t B, int64_t vocab_size, float temperature, int64_t top_k, float top_p,
                                   float plausibility_alpha);

// Draws one token per row from the combined STEER distribution of logits [B, K, V].
//
//   logits, dtype, B, K, V, stride_*, weights, weight_stride_b, vocab_size, plausibility_alpha:
//            as for combine_cuda (weights float32, weight_stride_b = 0 shares one [K] vector).
//   temperature  0 (greedy) or in [1e-5, 1e4] (kMinTemperature, kMaxTemperature);  top_k >= 0 (0 or >= vocab_size = off);
//   top_p        in (0, 1] (1 = off).
//   seeds, row_keys, steps  int64 device arrays, element b at [b * *_stride] (stride 0 shares one).
//   tokens   [B] int64 device out;  logprobs [B] float32 device out, or null.
//   workspace    device memory of at least sample_cuda_workspace_bytes(...) bytes (any alignment).
//   err_device   as for combine_cuda: [0] NaN key (b * K + k), [1] +inf key, [2] first empty row.
//
// Returns STEER_OK, STEER_ERR_INVALID_ARGUMENT (shapes, strides, pointers, sampling parameters,
// a workspace too small), or STEER_ERR_CUDA (a launch failed; *cuda_error gets the cudaError_t).
// When err_device reports an error, tokens and logprobs are unspecified. vocab_size must be below
// 2^31 - 1024; B below 2^31.
Status sample_cuda(const void* logits, int32_t dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                   int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                   int64_t vocab_size, float plausibility_alpha, float temperature, int64_t top_k, float top_p,
                   const int64_t* seeds, int64_t seed_stride, const int64_t* row_keys, int64_t row_key_stride,
                   const int64_t* steps, int64_t step_stride, int64_t* tokens, float* logprobs, void* workspace,
                   size_t workspace_bytes, uint64_t* err_device, void* stream, int* cuda_error);

// Bytes of device workspace combine_cuda_typed needs (0 when B == 0).
size_t combine_cuda_workspace_bytes(int64_t B, int64_t V, float plausibility_alpha);

// combine_cuda for float32, float16 or bfloat16 logits, with a caller-provided workspace
// (combine_cuda itself allocates one with cudaMallocAsync on `stream`). Splits each row over
// ceil(V / 1024) blocks, so few rows still fill the GPU.
Status combine_cuda_typed(const void* logits, int32_t dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                          int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                          int64_t vocab_size, bool normalize, float plausibility_alpha, float* out,
                          int64_t out_stride_b, void* workspace, size_t workspace_bytes, uint64_t* err_device,
                          void* stream, int* cuda_error);

}  // namespace steer
