// The CUDA entry points of steer/sample_cuda.h: the kernels of kernels.cuh launched with <<<>>>.

#include <cuda_runtime.h>

#include "kernels.cuh"
#include "steer/sample_cuda.h"

namespace steer {
namespace {

// Launches kernels in order on one stream; remembers the first launch error.
struct CudaLaunch {
  cudaStream_t stream;
  cudaError_t error = cudaSuccess;

  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), kern::Grid grid, int threads, const Args&... args) {
    if (error != cudaSuccess) return;
    kernel<<<dim3(grid.x, grid.y), static_cast<unsigned>(threads), 0, stream>>>(args...);
    error = cudaGetLastError();
  }
  Status status() const { return error == cudaSuccess ? STEER_OK : STEER_ERR_CUDA; }
};

Status finish(Status status, const CudaLaunch& launch, int* cuda_error) {
  if (status == STEER_ERR_CUDA && cuda_error != nullptr) *cuda_error = static_cast<int>(launch.error);
  return status;
}

}  // namespace

size_t sample_cuda_workspace_bytes(int64_t B, int64_t vocab_size, float temperature, int64_t top_k, float top_p,
                                   float plausibility_alpha) {
  return kern::sample_workspace_bytes(B, vocab_size, temperature, top_k, top_p, plausibility_alpha);
}

Status sample_cuda(const void* logits, int32_t dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                   int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                   int64_t vocab_size, float plausibility_alpha, float temperature, int64_t top_k, float top_p,
                   const int64_t* seeds, int64_t seed_stride, const int64_t* row_keys, int64_t row_key_stride,
                   const int64_t* steps, int64_t step_stride, int64_t* tokens, float* logprobs, void* workspace,
                   size_t workspace_bytes, uint64_t* err_device, void* stream, int* cuda_error) {
  kern::SampleRequest r{logits,      dtype,          B,
                        K,           V,              stride_b,
                        stride_k,    stride_v,       weights,
                        weight_stride_b, vocab_size, temperature,
                        top_k,       top_p,          plausibility_alpha,
                        seeds,       seed_stride,    row_keys,
                        row_key_stride, steps,       step_stride,
                        tokens,      logprobs,       workspace,
                        workspace_bytes, reinterpret_cast<unsigned long long*>(err_device)};
  CudaLaunch launch{static_cast<cudaStream_t>(stream)};
  return finish(kern::run_sample(r, launch), launch, cuda_error);
}

size_t combine_cuda_workspace_bytes(int64_t B, int64_t V, float plausibility_alpha) {
  return kern::combine_workspace_bytes(B, V, plausibility_alpha > 0.0f);
}

Status combine_cuda_typed(const void* logits, int32_t dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b,
                          int64_t stride_k, int64_t stride_v, const float* weights, int64_t weight_stride_b,
                          int64_t vocab_size, bool normalize, float plausibility_alpha, float* out,
                          int64_t out_stride_b, void* workspace, size_t workspace_bytes, uint64_t* err_device,
                          void* stream, int* cuda_error) {
  kern::CombineRequest r{logits,     dtype,       B,        K,       V,
                         stride_b,   stride_k,    stride_v, weights, weight_stride_b,
                         vocab_size, normalize,   plausibility_alpha, out, out_stride_b,
                         workspace,  workspace_bytes, reinterpret_cast<unsigned long long*>(err_device)};
  CudaLaunch launch{static_cast<cudaStream_t>(stream)};
  return finish(kern::run_combine(r, launch), launch, cuda_error);
}

}  // namespace steer
