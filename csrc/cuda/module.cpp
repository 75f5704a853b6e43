// steer._C_cuda: the CUDA kernels as a Python module.
//
// Compiled by the host compiler, not nvcc: it only needs the raw-pointer launchers of
// steer/combine.h and steer/sample_cuda.h, so no CUDA or torch headers. Tensors arrive as device
// addresses plus element strides from steer/ops/cuda_backend.py, the stream as its cudaStream_t
// value (torch.cuda.current_stream().cuda_stream), workspaces as torch-allocated device bytes.
// Launches are asynchronous; data errors land in the caller's err buffer (see combine_cuda in
// combine.h). cudart is linked statically, so importing this module works on a machine without
// the CUDA runtime library.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "steer/combine.h"
#include "steer/sample_cuda.h"

namespace py = pybind11;

namespace {

using Address = std::uintptr_t;

template <typename T>
T* as_pointer(Address address) {
  return reinterpret_cast<T*>(address);
}

void check(steer::Status status, int cuda_error, const char* op) {
  if (status == steer::STEER_ERR_INVALID_ARGUMENT) {
    throw py::value_error(std::string("steer._C_cuda.") + op +
                          ": invalid shape, stride, pointer, dtype, sampling parameter or workspace size");
  }
  if (status == steer::STEER_ERR_CUDA) {
    throw std::runtime_error(std::string("steer._C_cuda.") + op +
                             ": kernel launch failed: " + steer::cuda_error_string(cuda_error));
  }
  if (status != steer::STEER_OK) throw std::runtime_error(std::string("steer._C_cuda.") + op + ": unexpected status");
}

void combine(Address logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k, int64_t stride_v,
             Address weights, int64_t weight_stride_b, int64_t vocab_size, bool normalize, float plausibility_alpha,
             Address out, int64_t out_stride_b, Address err, Address stream) {
  int cuda_error = 0;
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::combine_cuda(as_pointer<const float>(logits), B, K, V, stride_b, stride_k, stride_v,
                                 as_pointer<const float>(weights), weight_stride_b, vocab_size, normalize,
                                 plausibility_alpha, as_pointer<float>(out), out_stride_b, as_pointer<uint64_t>(err),
                                 as_pointer<void>(stream), &cuda_error);
  }
  check(status, cuda_error, "combine");
}

void combine_typed(Address logits, int32_t dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
                   int64_t stride_v, Address weights, int64_t weight_stride_b, int64_t vocab_size, bool normalize,
                   float plausibility_alpha, Address out, int64_t out_stride_b, Address workspace,
                   size_t workspace_bytes, Address err, Address stream) {
  int cuda_error = 0;
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::combine_cuda_typed(as_pointer<const void>(logits), dtype, B, K, V, stride_b, stride_k, stride_v,
                                       as_pointer<const float>(weights), weight_stride_b, vocab_size, normalize,
                                       plausibility_alpha, as_pointer<float>(out), out_stride_b,
                                       as_pointer<void>(workspace), workspace_bytes, as_pointer<uint64_t>(err),
                                       as_pointer<void>(stream), &cuda_error);
  }
  check(status, cuda_error, "combine_typed");
}

void sample(Address logits, int32_t dtype, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
            int64_t stride_v, Address weights, int64_t weight_stride_b, int64_t vocab_size, float plausibility_alpha,
            float temperature, int64_t top_k, float top_p, Address seeds, int64_t seed_stride, Address row_keys,
            int64_t row_key_stride, Address steps, int64_t step_stride, Address tokens, Address logprobs,
            Address workspace, size_t workspace_bytes, Address err, Address stream) {
  int cuda_error = 0;
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::sample_cuda(as_pointer<const void>(logits), dtype, B, K, V, stride_b, stride_k, stride_v,
                                as_pointer<const float>(weights), weight_stride_b, vocab_size, plausibility_alpha,
                                temperature, top_k, top_p, as_pointer<const int64_t>(seeds), seed_stride,
                                as_pointer<const int64_t>(row_keys), row_key_stride, as_pointer<const int64_t>(steps),
                                step_stride, as_pointer<int64_t>(tokens), as_pointer<float>(logprobs),
                                as_pointer<void>(workspace), workspace_bytes, as_pointer<uint64_t>(err),
                                as_pointer<void>(stream), &cuda_error);
  }
  check(status, cuda_error, "sample");
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "steer CUDA kernels (raw-pointer bindings; use steer.ops, not this module)";
  m.attr("NEG_INF_FLOOR") = steer::NEG_INF_FLOOR;
  m.attr("DTYPE_FLOAT32") = 0;
  m.attr("DTYPE_FLOAT16") = 1;
  m.attr("DTYPE_BFLOAT16") = 2;

  m.def("combine", &combine, "STEER combine of float32 logits, asynchronous on `stream`; errors land in `err`",
        py::arg("logits"), py::arg("B"), py::arg("K"), py::arg("V"), py::arg("stride_b"), py::arg("stride_k"),
        py::arg("stride_v"), py::arg("weights"), py::arg("weight_stride_b"), py::arg("vocab_size"),
        py::arg("normalize"), py::arg("plausibility_alpha"), py::arg("out"), py::arg("out_stride_b"), py::arg("err"),
        py::arg("stream"));
  m.def("combine_typed", &combine_typed, "STEER combine of float32/float16/bfloat16 logits with a caller workspace");
  m.def("combine_workspace_bytes", &steer::combine_cuda_workspace_bytes, "workspace bytes of combine_typed");
  m.def("sample", &sample, "fused STEER sampler, asynchronous on `stream`; errors land in `err`");
  m.def("sample_workspace_bytes", &steer::sample_cuda_workspace_bytes, "workspace bytes of sample");
}
