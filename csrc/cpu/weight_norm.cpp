// CPU backend: torch's thread pool and the ISA choice around the raw-pointer kernels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>

#include "../kernels.h"
#include "../weight_norm_glue.h"

namespace fastwn::cpu {
namespace {

void torch_parallel_for(int64_t n, int64_t grain, void* ctx, TaskBody body) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

// Whether the first and last pages of [p, p + bytes) are backed by memory (mincore
// reports it for anonymous memory). Freshly mapped outputs are not, until first touch.
bool resident(const void* p, int64_t bytes) {
  if (bytes <= 0) return false;
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes) - 1) & ~(page - 1);
  for (uintptr_t a : {first, last}) {
    unsigned char in_core = 0;
    if (mincore(reinterpret_cast<void*>(a), page, &in_core) != 0 || !(in_core & 1)) return false;
  }
  return true;
}

int64_t nbytes(const at::Tensor& t) { return t.numel() * int64_t(t.element_size()); }

Isa checked_active_isa() {
  try {
    return active_isa();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
  return Isa::scalar;  // unreachable
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& v, const at::Tensor& g, int64_t dim, double eps) {
  FwdCall c = prepare_forward(v, g, dim, eps);
  c.params.output_resident = resident(c.w.const_data_ptr(), nbytes(c.w));
  switch (checked_active_isa()) {
    case Isa::avx512: avx512::forward(c.params, torch_parallel_for); break;
    case Isa::avx2: avx2::forward(c.params, torch_parallel_for); break;
    case Isa::scalar: scalar::forward(c.params, torch_parallel_for); break;
  }
  return {c.w, c.norm};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_w, const at::Tensor& v, const at::Tensor& g,
                                            const at::Tensor& norm, int64_t dim, double eps) {
  BwdCall c = prepare_backward(grad_w, v, g, norm, dim, eps);
  c.params.output_resident = resident(c.grad_v.const_data_ptr(), nbytes(c.grad_v));
  switch (checked_active_isa()) {
    case Isa::avx512: avx512::backward(c.params, torch_parallel_for); break;
    case Isa::avx2: avx2::backward(c.params, torch_parallel_for); break;
    case Isa::scalar: scalar::backward(c.params, torch_parallel_for); break;
  }
  return {c.grad_v, c.grad_g};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastwn, CPU, m) {
  m.impl("weight_norm_fwd", &forward);
  m.impl("weight_norm_bwd", &backward);
}

}  // namespace fastwn::cpu
