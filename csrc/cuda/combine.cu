// CUDA kernel of the STEER combine op (the maths and the error rules: csrc/include/steer/combine.h).
//
//   s(v)   = sum_{k : w_k != 0} w_k * zz_k(v)      zz: -inf floored in negatively weighted streams
//   s(v)   = -inf  where z_0(v) < log(alpha) + max z_0           (plausibility, alpha > 0 only)
//   out(v) = (s(v) - M) - log(sum_u exp(s(u) - M)),  M = max_u s(u)   (normalize only)
//
// Correctness first: one block per batch row walks the row's vocabulary with a block-stride
// loop (consecutive threads on consecutive tokens, so each stream's reads coalesce when
// stride_v == 1), keeps s in the output row, and reduces max and sum of exp across the block.
// Each thread re-reads only the output elements it wrote itself, so no barrier is needed
// between writing s and normalising it. A batch of few rows leaves most SMs idle; splitting a
// row over several blocks (two-phase logsumexp, as the CPU kernel does) is the obvious next step.
//
// Data errors are recorded in err_device (see the header) with one atomicMin per thread and
// kind, so "the first (row, stream)" is well defined however blocks are scheduled.

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "steer/combine.h"

namespace steer {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxStreams = 12288;  // weights live in shared memory: at most 48 KiB of them

template <bool kMax>
__device__ __forceinline__ float warp_reduce(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float y = __shfl_xor_sync(0xffffffffu, x, offset);
    x = kMax ? fmaxf(x, y) : x + y;
  }
  return x;
}

// Max or sum over the block; every thread gets the result. scratch: kWarps floats of shared memory.
template <bool kMax>
__device__ float block_reduce(float x, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  x = warp_reduce<kMax>(x);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < kWarps ? scratch[lane] : (kMax ? -INFINITY : 0.0f);
  x = warp_reduce<kMax>(x);
  __syncthreads();  // scratch may be reused by the next reduction
  return x;
}

__global__ void __launch_bounds__(kThreads)
    combine_kernel(const float* __restrict__ logits, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
                   int64_t stride_v, const float* __restrict__ weights, int64_t weight_stride_b, int64_t vocab_size,
                   bool normalize, bool plausibility, float log_alpha, float* __restrict__ out, int64_t out_stride_b,
                   unsigned long long* __restrict__ err) {
  extern __shared__ float w[];  // this row's K weights
  __shared__ float scratch[kWarps];
  const int64_t b = blockIdx.x;
  const float* row = logits + b * stride_b;
  float* orow = out + b * out_stride_b;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) w[k] = weights[b * weight_stride_b + k];
  __syncthreads();

  float threshold = -INFINITY;  // plausibility floor on z_0; -inf: off
  if (plausibility) {
    float m0 = -INFINITY;
    for (int64_t v = threadIdx.x; v < vocab_size; v += blockDim.x) m0 = fmaxf(m0, row[v * stride_v]);
    threshold = log_alpha + block_reduce<true>(m0, scratch);
  }

  unsigned long long nan_key = ULLONG_MAX, posinf_key = ULLONG_MAX;
  float local_max = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab_size; v += blockDim.x) {
    const float z0 = row[v * stride_v];
    float s = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float z = k == 0 ? z0 : row[k * stride_k + v * stride_v];
      const unsigned long long key = static_cast<unsigned long long>(b * K + k);
      if (isnan(z)) nan_key = min(nan_key, key);
      if (z == INFINITY) posinf_key = min(posinf_key, key);
      const float wk = w[k];
      if (wk != 0.0f) s += wk * (z == -INFINITY ? (wk > 0.0f ? -INFINITY : NEG_INF_FLOOR) : z);
    }
    if (z0 < threshold) s = -INFINITY;
    orow[v] = s;
    local_max = fmaxf(local_max, s);
  }
  for (int64_t v = vocab_size + threadIdx.x; v < V; v += blockDim.x) orow[v] = -INFINITY;
  if (nan_key != ULLONG_MAX) atomicMin(&err[0], nan_key);
  if (posinf_key != ULLONG_MAX) atomicMin(&err[1], posinf_key);

  const float m = block_reduce<true>(local_max, scratch);
  if (m == -INFINITY) {  // uniform across the block: every thread returns
    if (threadIdx.x == 0) atomicMin(&err[2], static_cast<unsigned long long>(b));
    return;
  }
  if (!normalize) return;
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab_size; v += blockDim.x) sum += expf(orow[v] - m);
  const float log_sum = logf(block_reduce<false>(sum, scratch));
  for (int64_t v = threadIdx.x; v < vocab_size; v += blockDim.x) orow[v] = (orow[v] - m) - log_sum;
}

}  // namespace

Status combine_cuda(const float* logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
                    int64_t stride_v, const float* weights, int64_t weight_stride_b, int64_t vocab_size,
                    bool normalize, float plausibility_alpha, float* out, int64_t out_stride_b,
                    uint64_t* err_device, void* stream, int* cuda_error) {
  if (B < 0 || B > INT_MAX || K < 1 || K > kMaxStreams || V < 1 || vocab_size < 1 || vocab_size > V ||
      stride_b < 0 || stride_k < 0 || stride_v < 0 || weight_stride_b < 0 || out_stride_b < V ||
      !(plausibility_alpha >= 0.0f) || std::isinf(plausibility_alpha)) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  if (B == 0) return STEER_OK;
  if (logits == nullptr || weights == nullptr || out == nullptr || err_device == nullptr) {
    return STEER_ERR_INVALID_ARGUMENT;
  }
  const bool plausibility = plausibility_alpha > 0.0f;
  combine_kernel<<<static_cast<unsigned int>(B), kThreads, K * sizeof(float), static_cast<cudaStream_t>(stream)>>>(
      logits, K, V, stride_b, stride_k, stride_v, weights, weight_stride_b, vocab_size, normalize, plausibility,
      plausibility ? logf(plausibility_alpha) : 0.0f, out, out_stride_b,
      reinterpret_cast<unsigned long long*>(err_device));
  const cudaError_t launch = cudaGetLastError();
  if (launch != cudaSuccess) {
    if (cuda_error) *cuda_error = static_cast<int>(launch);
    return STEER_ERR_CUDA;
  }
  return STEER_OK;
}

const char* cuda_error_string(int cuda_error) { return cudaGetErrorString(static_cast<cudaError_t>(cuda_error)); }

}  // namespace steer
