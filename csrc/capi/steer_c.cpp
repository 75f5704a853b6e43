// libsteer: the C ABI of csrc/include/steer/steer.h over the C++ CPU kernels.
//
// Each function checks what the C++ kernels leave to their callers (the dtype code, finite
// weights), forwards to combine_cpu / sample_cpu, and keeps C++ exceptions (only std::bad_alloc
// can escape the kernels) from crossing the C boundary.

#include "steer/steer.h"

#include <cmath>
#include <cstdint>
#include <new>

#include "steer/combine.h"
#include "steer/sample.h"

#ifndef STEER_VERSION_STRING  // CMake passes the project version
#define STEER_VERSION_STRING "unknown"
#endif

static_assert(int(::STEER_OK) == int(steer::STEER_OK) && int(::STEER_ERR_NAN) == int(steer::STEER_ERR_NAN) &&
                  int(::STEER_ERR_POSINF) == int(steer::STEER_ERR_POSINF) &&
                  int(::STEER_ERR_EMPTY_ROW) == int(steer::STEER_ERR_EMPTY_ROW) &&
                  int(::STEER_ERR_INVALID_ARGUMENT) == int(steer::STEER_ERR_INVALID_ARGUMENT) &&
                  int(::STEER_ERR_CUDA) == int(steer::STEER_ERR_CUDA) &&
                  int(::STEER_ERR_OUT_OF_MEMORY) == int(steer::STEER_ERR_OUT_OF_MEMORY),
              "steer.h and steer/combine.h disagree on the status codes");
static_assert(int(::STEER_DTYPE_FLOAT32) == int(steer::DType::kFloat32) &&
                  int(::STEER_DTYPE_FLOAT16) == int(steer::DType::kFloat16) &&
                  int(::STEER_DTYPE_BFLOAT16) == int(steer::DType::kBFloat16),
              "steer.h and steer/combine.h disagree on the dtype codes");

namespace {

bool valid_dtype(int dtype) {
  return dtype == STEER_DTYPE_FLOAT32 || dtype == STEER_DTYPE_FLOAT16 || dtype == STEER_DTYPE_BFLOAT16;
}

bool finite_weights(const float* weights, int64_t batch, int64_t streams, int64_t weight_stride_b) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t k = 0; k < streams; ++k) {
      if (!std::isfinite(weights[b * weight_stride_b + k])) return false;
    }
  }
  return true;
}

void clear_error(int64_t* err_row, int64_t* err_stream) {
  if (err_row) *err_row = -1;
  if (err_stream) *err_stream = -1;
}

}  // namespace

extern "C" {

int steer_combine(const void* logits, int dtype, int64_t batch, int64_t streams, int64_t vocab, int64_t stride_b,
                  int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                  int64_t vocab_size, int normalize, float plausibility_alpha, float* out, int64_t out_stride_b,
                  int num_threads, int64_t* err_row, int64_t* err_stream) {
  clear_error(err_row, err_stream);
  if (!valid_dtype(dtype) || batch < 0 || streams < 1 || weight_stride_b < 0) return STEER_ERR_INVALID_ARGUMENT;
  if (batch > 0 && (weights == nullptr || !finite_weights(weights, batch, streams, weight_stride_b))) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  try {
    return steer::combine_cpu(logits, steer::DType(dtype), batch, streams, vocab, stride_b, stride_k, stride_v,
                              weights, weight_stride_b, vocab_size, normalize != 0, plausibility_alpha, out,
                              out_stride_b, err_row, err_stream, num_threads);
  } catch (...) {  // std::bad_alloc: the kernels throw nothing else
    return STEER_ERR_OUT_OF_MEMORY;
  }
}

int steer_sample(const void* logits, int dtype, int64_t batch, int64_t streams, int64_t vocab, int64_t stride_b,
                 int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                 int64_t vocab_size, float plausibility_alpha, float temperature, int64_t top_k, float top_p,
                 const int64_t* seeds, const int64_t* row_keys, const int64_t* steps, int64_t* tokens,
                 float* logprobs, int num_threads, int64_t* err_row, int64_t* err_stream) {
  clear_error(err_row, err_stream);
  if (!valid_dtype(dtype)) return STEER_ERR_INVALID_ARGUMENT;
  try {
    return steer::sample_cpu(logits, steer::DType(dtype), batch, streams, vocab, stride_b, stride_k, stride_v,
                             weights, weight_stride_b, vocab_size, plausibility_alpha, temperature, top_k, top_p,
                             seeds, row_keys, steps, tokens, logprobs, err_row, err_stream, num_threads);
  } catch (...) {  // std::bad_alloc: the kernels throw nothing else
    return STEER_ERR_OUT_OF_MEMORY;
  }
}

const char* steer_error_string(int status) {
  switch (status) {
    case STEER_OK:
      return "success";
    case STEER_ERR_NAN:
      return "logits contain NaN; NaN logits cannot be sampled from";
    case STEER_ERR_POSINF:
      return "logits contain +inf; logits must be finite or -inf";
    case STEER_ERR_EMPTY_ROW:
      return "a batch row has no token with a finite combined score (every token is -inf in a positively "
             "weighted stream, or removed by the plausibility floor)";
    case STEER_ERR_INVALID_ARGUMENT:
      return "invalid argument: a shape, stride, pointer, dtype, weight or sampling parameter is out of range";
    case STEER_ERR_CUDA:
      return "a CUDA kernel launch failed";
    case STEER_ERR_OUT_OF_MEMORY:
      return "out of memory";
    default:
      return "unknown steer status";
  }
}

const char* steer_version(void) { return STEER_VERSION_STRING; }

}  // extern "C"
