// CPU backend: torch's thread pool and the ISA choice around the raw-pointer kernels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <stdexcept>

#include "../kernels.h"
#include "../weight_norm_glue.h"

namespace fastwn::cpu {
namespace {

void torch_parallel_for(int64_t n, int64_t grain, void* ctx, TaskBody body) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

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
