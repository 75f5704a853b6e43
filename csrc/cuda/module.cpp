// steer._C_cuda: the CUDA kernels as a Python module.
//
// Compiled by the host compiler, not nvcc: it only needs the raw-pointer launchers of
// steer/combine.h, so no CUDA or torch headers. Tensors arrive as device addresses plus
// strides from steer/ops/cuda_backend.py, the stream as its cudaStream_t value
// (torch.cuda.current_stream().cuda_stream). Launches are asynchronous; data errors land in
// the caller's err buffer (see combine_cuda in the header). cudart is linked statically, so
// importing this module works on a machine without the CUDA runtime library.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "steer/combine.h"

namespace py = pybind11;

namespace {

template <typename T>
T* as_pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void combine(std::uintptr_t logits, int64_t B, int64_t K, int64_t V, int64_t stride_b, int64_t stride_k,
             int64_t stride_v, std::uintptr_t weights, int64_t weight_stride_b, int64_t vocab_size, bool normalize,
             float plausibility_alpha, std::uintptr_t out, int64_t out_stride_b, std::uintptr_t err,
             std::uintptr_t stream) {
  int cuda_error = 0;
  steer::Status status;
  {
    py::gil_scoped_release no_gil;
    status = steer::combine_cuda(as_pointer<const float>(logits), B, K, V, stride_b, stride_k, stride_v,
                                 as_pointer<const float>(weights), weight_stride_b, vocab_size, normalize,
                                 plausibility_alpha, as_pointer<float>(out), out_stride_b, as_pointer<uint64_t>(err),
                                 as_pointer<void>(stream), &cuda_error);
  }
  if (status == steer::STEER_ERR_INVALID_ARGUMENT) {
    throw py::value_error("steer._C_cuda.combine: invalid shape, stride, pointer or plausibility_alpha");
  }
  if (status == steer::STEER_ERR_CUDA) {
    throw std::runtime_error(std::string("steer._C_cuda.combine: kernel launch failed: ") +
                             steer::cuda_error_string(cuda_error));
  }
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "steer CUDA kernels (raw-pointer bindings; use steer.ops, not this module)";
  m.attr("NEG_INF_FLOOR") = steer::NEG_INF_FLOOR;

  m.def("combine", &combine, "STEER combine on the GPU, asynchronous on `stream`; errors land in `err`",
        py::arg("logits"), py::arg("B"), py::arg("K"), py::arg("V"), py::arg("stride_b"), py::arg("stride_k"),
        py::arg("stride_v"), py::arg("weights"), py::arg("weight_stride_b"), py::arg("vocab_size"),
        py::arg("normalize"), py::arg("plausibility_alpha"), py::arg("out"), py::arg("out_stride_b"), py::arg("err"),
        py::arg("stream"));
}
