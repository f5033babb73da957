// CUDA backend glue: device guard, current stream, workspace, launch check. The checks
// and the layout decision are the CPU's (weight_norm_glue.cpp).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../weight_norm_glue.h"
#include "launch.h"

namespace fastwn::cuda {
namespace {

int sm_count(const at::Tensor& on) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, on.device().index()));
  return sms;
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  // From torch's caching allocator, on the current stream: no synchronisation.
  return at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> weight_norm_fwd(const at::Tensor& v, const at::Tensor& g, int64_t dim, double eps) {
  // Checks first: with v on the CPU and g on a GPU the dispatcher still lands here, and
  // the error must name the arguments, not the guard's device type.
  FwdCall c = prepare_forward(v, g, dim, eps);
  const c10::cuda::CUDAGuard guard(v.device());
  const int sms = sm_count(c.v);
  at::Tensor ws = workspace(forward_workspace_bytes(c.params, sms), c.v);
  C10_CUDA_CHECK(cuda::forward(c.params, ws.data_ptr(), sms, c10::cuda::getCurrentCUDAStream()));
  return {c.w, c.norm};
}

std::tuple<at::Tensor, at::Tensor> weight_norm_bwd(const at::Tensor& grad_w, const at::Tensor& v, const at::Tensor& g,
                                                    const at::Tensor& norm, int64_t dim, double eps) {
  BwdCall c = prepare_backward(grad_w, v, g, norm, dim, eps);  // checks first, as above
  const c10::cuda::CUDAGuard guard(v.device());
  const int sms = sm_count(c.v);
  at::Tensor ws = workspace(backward_workspace_bytes(c.params, sms), c.v);
  C10_CUDA_CHECK(cuda::backward(c.params, ws.data_ptr(), sms, c10::cuda::getCurrentCUDAStream()));
  return {c.grad_v, c.grad_g};
}

at::Tensor dora_norm(const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling) {
  LowRankNormCall c = prepare_dora_norm(weight, lora_A, lora_B, scaling);  // checks first, as above
  const c10::cuda::CUDAGuard guard(weight.device());
  const int sms = sm_count(c.m);
  at::Tensor ws = workspace(low_rank_norm_workspace_bytes(c.params, sms), c.m);
  C10_CUDA_CHECK(cuda::low_rank_norm(c.params, ws.data_ptr(), sms, c10::cuda::getCurrentCUDAStream()));
  return c.norm;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastwn, CUDA, m) {
  m.impl("weight_norm_fwd", &weight_norm_fwd);
  m.impl("weight_norm_bwd", &weight_norm_bwd);
  m.impl("dora_norm", &dora_norm);
}

}  // namespace fastwn::cuda
