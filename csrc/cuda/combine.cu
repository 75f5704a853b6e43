// combine_cuda (steer/combine.h): the float32 entry point of the STEER combine op.
//
// The kernels are those of combine_cuda_typed (kernels.cuh, launched from sample.cu): each row is
// split into ceil(V / 1024) blocks that write s and a partial (max, sum of exp) per chunk, and a
// second launch merges a row's partials and normalises its chunks, so a batch of one row still
// spreads over the whole GPU. This signature has no workspace argument, so the few partials
// (8 bytes per 1024 tokens per row) come from the stream-ordered allocator: cudaMallocAsync /
// cudaFreeAsync on `stream`, which neither synchronises nor breaks CUDA-graph capture.

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "steer/combine.h"
#include "steer/sample_cuda.h"

namespace steer {

Status combine_cuda(const float* logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
                    int64_t stride_v, const float* weights, int64_t weight_stride_b, int64_t vocab_size,
                    bool normalize, float plausibility_alpha, float* out, int64_t out_stride_b,
                    uint64_t* err_device, void* stream, int* cuda_error) {
  if (B < 0 || B > INT_MAX || K < 1 || V < 1 || vocab_size < 1 || vocab_size > V || stride_b < 0 || stride_k < 0 ||
      stride_v < 0 || weight_stride_b < 0 || out_stride_b < V || !(plausibility_alpha >= 0.0f) ||
      std::isinf(plausibility_alpha)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (B == 0) return STEER_OK;
  if (logits == nullptr || weights == nullptr || out == nullptr || err_device == nullptr) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t bytes = combine_cuda_workspace_bytes(B, V, plausibility_alpha);
  void* workspace = nullptr;
  cudaError_t e = cudaMallocAsync(&workspace, bytes, s);
  if (e != cudaSuccess) {
    if (cuda_error) *cuda_error = static_cast<int>(e);
    return STEER_ERR_CUDA;
  }
  const Status status = combine_cuda_typed(logits, 0, B, K, V, stride_b, stride_k, stride_v, weights, weight_stride_b,
                                           vocab_size, normalize, plausibility_alpha, out, out_stride_b, workspace,
                                           bytes, err_device, stream, cuda_error);
  e = cudaFreeAsync(workspace, s);
  if (status == STEER_OK && e != cudaSuccess) {
    if (cuda_error) *cuda_error = static_cast<int>(e);
    return STEER_ERR_CUDA;
  }
  return status;
}

const char* cuda_error_string(int cuda_error) { return cudaGetErrorString(static_cast<cudaError_t>(cuda_error)); }

}  // namespace steer
