// Argument checks, output allocation and the memory layout decision, shared by the
// CPU and CUDA backends so that both accept and reject exactly the same inputs.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels.h"

namespace fastwn {

struct FwdCall {
  at::Tensor v, g;  // dense (v keeps its own memory order when it is already dense)
  at::Tensor w, norm;
  FwdParams params;
};

struct BwdCall {
  at::Tensor grad_w, v, g, norm;  // grad_w in v's memory order
  at::Tensor grad_v, grad_g;
  BwdParams params;
};

struct LowRankNormCall {
  at::Tensor m, l, r;  // kernels.h, LowRankNormParams
  at::Tensor norm;
  LowRankNormParams params;
};

// Both validate every argument (errors name it) and allocate the outputs on v's device.
FwdCall prepare_forward(const at::Tensor& v, const at::Tensor& g, int64_t dim, double eps);
BwdCall prepare_backward(const at::Tensor& grad_w, const at::Tensor& v, const at::Tensor& g,
                         const at::Tensor& norm, int64_t dim, double eps);
// fastwn.dora_norm: the norms of the rows of weight + scaling * lora_B @ lora_A.
LowRankNormCall prepare_dora_norm(const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
                                  double scaling);

}  // namespace fastwn
