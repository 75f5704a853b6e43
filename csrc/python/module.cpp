// steer._C: the CPU kernels as a Python module.
//
// Thin on purpose: tensors arrive as (data_ptr, strides) integers from steer/ops/cpp_backend.py,
// which owns dtype, device and shape checks, so this module needs neither torch headers nor
// a torch build dependency. Each glue function turns integers into pointers, releases the GIL
// for the kernel, and hands back (status, row, stream) for the Python side to raise the shared
// errors (steer/ops/errors.py). Malformed arguments are a bug in the caller: ValueError here.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <new>
#include <stdexcept>
#include <tuple>

#include "steer/combine.h"
#include "steer/decode_matmul.h"
#include "steer/paged_attention.h"
#include "steer/sample.h"

namespace py = pybind11;

namespace {

using Result = std::tuple<int, int64_t, int64_t>;  // (status, row, stream); row/stream -1 when unset

template <typename T>
T* as_pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

steer::DType as_dtype(int dtype) {
  if (dtype < 0 || dtype > int(steer::DType::kBFloat16)) throw py::value_error("steer._C: unknown dtype code");
  return steer::DType(dtype);
}

Result combine(std::uintptr_t logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
               int64_t stride_v, std::uintptr_t weights, int64_t weight_stride_b, int64_t vocab_size, bool normalize,
               float plausibility_alpha, std::uintptr_t out, int64_t out_stride_b, int num_threads, int dtype) {
  const steer::DType type = as_dtype(dtype);
  int64_t row = -1, stream = -1;
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::combine_cpu(as_pointer<const void>(logits), type, B, K, V, stride_b, stride_k, stride_v,
                                as_pointer<const float>(weights), weight_stride_b, vocab_size, normalize,
                                plausibility_alpha, as_pointer<float>(out), out_stride_b, &row, &stream, num_threads);
  }
  if (status == steer::STEER_ERR_INVALID_ARGUMENT) {
    throw py::value_error("steer._C.combine: invalid shape, stride, pointer or plausibility_alpha");
  }
  return {int(status), row, stream};
}

Result sample(std::uintptr_t logits, int dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
              int64_t stride_v, std::uintptr_t weights, int64_t weight_stride_b, int64_t vocab_size,
              float plausibility_alpha, float temperature, int64_t top_k, float top_p, std::uintptr_t seeds,
              std::uintptr_t row_keys, std::uintptr_t steps, std::uintptr_t tokens, std::uintptr_t logprobs,
              int num_threads) {
  const steer::DType type = as_dtype(dtype);
  int64_t row = -1, stream = -1;
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::sample_cpu(as_pointer<const void>(logits), type, B, K, V, stride_b, stride_k, stride_v,
                               as_pointer<const float>(weights), weight_stride_b, vocab_size, plausibility_alpha,
                               temperature, top_k, top_p, as_pointer<const int64_t>(seeds),
                               as_pointer<const int64_t>(row_keys), as_pointer<const int64_t>(steps),
                               as_pointer<int64_t>(tokens), as_pointer<float>(logprobs), &row, &stream, num_threads);
  }
  if (status == steer::STEER_ERR_INVALID_ARGUMENT) {
    throw py::value_error("steer._C.sample: invalid shape, stride, pointer, weight or sampling parameter");
  }
  return {int(status), row, stream};
}

void decode_matmul(std::uintptr_t x, int64_t T, int64_t Kin, int64_t ldx, std::uintptr_t weight, int dtype,
                   int layout, int64_t N, int64_t ldw, std::uintptr_t bias, std::uintptr_t y, int64_t ldy,
                   int num_threads) {
  const steer::DType type = as_dtype(dtype);
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::decode_matmul_cpu(as_pointer<const float>(x), T, Kin, ldx, as_pointer<const void>(weight), type,
                                      steer::WeightLayout(layout), N, ldw, as_pointer<const float>(bias),
                                      as_pointer<float>(y), ldy, num_threads);
  }
  if (status == steer::STEER_ERR_OUT_OF_MEMORY) throw std::bad_alloc();
  if (status != steer::STEER_OK) {
    throw py::value_error("steer._C.decode_matmul: invalid layout, shape, stride or pointer");
  }
}

void paged_attention(std::uintptr_t q, int q_dtype, int64_t T, int64_t H, int64_t D, int64_t sq_t, int64_t sq_h,
                     std::uintptr_t k_cache, std::uintptr_t v_cache, int kv_dtype, int64_t Hkv, int64_t sk_n,
                     int64_t sk_h, int64_t sv_n, int64_t sv_h, std::uintptr_t block_tables, int64_t R,
                     int64_t max_blocks, int64_t st_r, std::uintptr_t query_starts, std::uintptr_t context_lengths,
                     int64_t block_size, float scale, int64_t sliding_window, float soft_cap, std::uintptr_t out,
                     int64_t so_t, int64_t so_h, int num_threads) {
  const steer::DType q_type = as_dtype(q_dtype), kv_type = as_dtype(kv_dtype);
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::paged_attention_cpu(
        as_pointer<const void>(q), q_type, T, H, D, sq_t, sq_h, as_pointer<const void>(k_cache),
        as_pointer<const void>(v_cache), kv_type, Hkv, sk_n, sk_h, sv_n, sv_h, as_pointer<const int32_t>(block_tables),
        R, max_blocks, st_r, as_pointer<const int32_t>(query_starts), as_pointer<const int32_t>(context_lengths),
        block_size, scale, sliding_window, soft_cap, as_pointer<void>(out), so_t, so_h, num_threads);
  }
  if (status == steer::STEER_ERR_OUT_OF_MEMORY) throw std::bad_alloc();
  if (status != steer::STEER_OK) {
    throw py::value_error(
        "steer._C.paged_attention: invalid shape, pointer, dtype, block size, query range, context length or block id");
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "steer CPU kernels (raw-pointer bindings; use steer.ops, not this module)";
  m.attr("STEER_OK") = int(steer::STEER_OK);
  m.attr("STEER_ERR_NAN") = int(steer::STEER_ERR_NAN);
  m.attr("STEER_ERR_POSINF") = int(steer::STEER_ERR_POSINF);
  m.attr("STEER_ERR_EMPTY_ROW") = int(steer::STEER_ERR_EMPTY_ROW);
  m.attr("NEG_INF_FLOOR") = steer::NEG_INF_FLOOR;
  m.attr("DTYPE_FLOAT32") = int(steer::DType::kFloat32);
  m.attr("DTYPE_FLOAT16") = int(steer::DType::kFloat16);
  m.attr("DTYPE_BFLOAT16") = int(steer::DType::kBFloat16);

  // One binding per op; arguments positional, in the order of the C++ signatures (steer/*.h).
  m.def("combine", &combine, "STEER combine of [B, K, V] logits into float32 out [B, V] -> (status, row, stream)",
        py::arg("logits"), py::arg("B"), py::arg("K"), py::arg("V"), py::arg("stride_b"), py::arg("stride_k"),
        py::arg("stride_v"), py::arg("weights"), py::arg("weight_stride_b"), py::arg("vocab_size"),
        py::arg("normalize"), py::arg("plausibility_alpha"), py::arg("out"), py::arg("out_stride_b"),
        py::arg("num_threads") = 0, py::arg("dtype") = int(steer::DType::kFloat32));
  m.def("decode_matmul", &decode_matmul,
        "y [T, N] = x [T, Kin] @ W^T (+ bias), float32 x / y / bias, W out_in [N, Kin] (layout 0) or in_out [Kin, N] (1)");
  m.def("paged_attention", &paged_attention,
        "varlen paged attention: out [T, H, D] = softmax(scale q k^T) v over each row's paged keys (q's dtype)");
  m.def("sample", &sample, "STEER sample of [B, K, V] logits into tokens, logprobs [B] -> (status, row, stream)");
}
