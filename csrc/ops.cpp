// The operator schemas (one place for all backends) and the small pybind11 module
// that reports how the extension was built and gives eager calls a direct entry.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/python.h>  // pybind11's at::Tensor conversions

#include <algorithm>
#include <string>

#include "autograd.h"
#include "kernels.h"

#ifndef FASTWN_VERSION
#error "FASTWN_VERSION is set by CMakeLists.txt"
#endif

TORCH_LIBRARY(fastwn, m) {
  // dim = -1 means one norm over the whole tensor (torch._weight_norm's legacy rule).
  m.def("weight_norm_fwd(Tensor v, Tensor g, int dim, float eps=0.0) -> (Tensor w, Tensor norm)");
  m.def("weight_norm_bwd(Tensor grad_w, Tensor v, Tensor g, Tensor norm, int dim, float eps=0.0)"
        " -> (Tensor grad_v, Tensor grad_g)");
  // The backward as differentiable torch ops, for create_graph=True and for grad_g alone:
  // [grad_v, grad_g], or [grad_g] when need_v is false. Implemented in Python.
  m.def("weight_norm_bwd_composite(Tensor grad_w, Tensor v, Tensor g, int dim, float eps, bool need_v)"
        " -> Tensor[]");
  // DoRA: the per-row norms of weight + scaling * lora_B @ lora_A, never forming that
  // [out, in] matrix; float32 for half weights. Not differentiable (DoRA detaches it).
  m.def("dora_norm(Tensor weight, Tensor lora_A, Tensor lora_B, float scaling) -> Tensor");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastwn compiled extension: importing it registers torch.ops.fastwn.*";
  // fastwn.functional calls this outside torch.compile and __torch_function__ overrides,
  // which need the operator's Python object; the GIL is released as torch's ops do.
  m.def("weight_norm", &fastwn::weight_norm_eager, py::arg("v"), py::arg("g"), py::arg("dim"), py::arg("eps"),
        py::call_guard<py::gil_scoped_release>(), "w of torch.ops.fastwn.weight_norm_fwd, called unboxed.");
  m.def("cpu_isa", [] { return std::string(fastwn::cpu::isa_name(fastwn::cpu::active_isa())); },
        "The CPU kernel set the next call will use (FASTWN_CPU_ISA lowers it).");
  m.def("build_info", [] {
    py::dict info;
    info["version"] = FASTWN_VERSION;
    info["torch_version"] = FASTWN_TORCH_VERSION;
    info["cuda"] = bool(FASTWN_WITH_CUDA);
    info["cuda_version"] = FASTWN_CUDA_VERSION;
    py::list archs;  // CMAKE_CUDA_ARCHITECTURES entries, e.g. "90-real" (machine code), "100" (+ PTX)
    std::string all = FASTWN_CUDA_ARCHS;
    for (size_t start = 0; start < all.size();) {
      const size_t comma = std::min(all.find(',', start), all.size());
      archs.append(all.substr(start, comma - start));
      start = comma + 1;
    }
    info["cuda_archs"] = archs;
    py::list isas;
    const auto best = fastwn::cpu::best_supported_isa();
    for (auto isa : {fastwn::cpu::Isa::scalar, fastwn::cpu::Isa::avx2, fastwn::cpu::Isa::avx512})
      if (isa <= best) isas.append(fastwn::cpu::isa_name(isa));
    info["cpu_isas"] = isas;
    return info;
  }, "What this build contains: versions, CUDA support, the CPU ISAs this machine can run.");
}
