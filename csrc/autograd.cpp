// Autograd for fastwn::weight_norm_fwd, registered at the Autograd key in C++.
//
// The operator stays one node for the compiler (Dynamo records the op; AOTAutograd
// traces this kernel into the fused forward and backward ops), while eager calls pay a
// C++ autograd node instead of torch.library's Python one: register_autograd cost about
// 17 us per forward + backward, a sixth of a 256x256x3x3 weight's whole step.
#include "autograd.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace fastwn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, double);
using BwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, int64_t, double);
using CompositeSig = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                             double, bool);

template <class Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static const auto handle = op<FwdSig>("fastwn::weight_norm_fwd");
  return handle;
}

struct WeightNorm : torch::autograd::Function<WeightNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& v, const at::Tensor& g, int64_t dim,
                               double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [w, norm] = fwd_op().call(v, g, dim, eps);
    ctx->save_for_backward({v, g, norm});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({norm});
    // norm's gradient is never used: without this, every backward allocates and fills a
    // zero tensor for it (about 5 us of a 4x4 weight's 100 us step).
    ctx->set_materialize_grads(false);
    return {w, norm};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<BwdSig>("fastwn::weight_norm_bwd");
    // Implemented in Python (fastwn/_composite.py) as CompositeImplicitAutograd.
    static const auto composite = op<CompositeSig>("fastwn::weight_norm_bwd_composite");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &v = saved[0], &g = saved[1], &norm = saved[2], &grad_w = grads[0];
    if (!grad_w.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};  // w unused
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool need_v = ctx->needs_input_grad(0), need_g = ctx->needs_input_grad(1);
    at::Tensor grad_v, grad_g;
    if (at::GradMode::is_enabled() || !need_v) {
      // create_graph=True needs a differentiable graph; grad_g alone needs no grad_v pass.
      const std::vector<at::Tensor> r = composite.call(grad_w, v, g, dim, eps, need_v);
      grad_g = r.back();
      if (need_v) grad_v = r.front();
    } else {
      // No graph to record: straight to the backend kernel, past autograd's boxed
      // not-implemented fallback (about 0.5K instructions a call).
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(grad_v, grad_g) = bwd.call(grad_w, v, g, norm, dim, eps);
    }
    return {grad_v, need_g ? grad_g : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Whether the call must be recorded: a graph to build, or a forward-mode tangent, which
// the Function rejects rather than drop it.
bool needs_node(const at::Tensor& v, const at::Tensor& g) {
  return (at::GradMode::is_enabled() && (v.requires_grad() || g.requires_grad())) || v._fw_grad(0).defined() ||
         g._fw_grad(0).defined();
}

std::tuple<at::Tensor, at::Tensor> weight_norm_fwd_autograd(const at::Tensor& v, const at::Tensor& g, int64_t dim,
                                                            double eps) {
  if (!needs_node(v, g)) {
    // Inference (no_grad, or no input that requires grad) skips the Function, which
    // builds and frees a node even when nothing records it, as torch's own ops do.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_op().call(v, g, dim, eps);
  }
  const variable_list out = WeightNorm::apply(v, g, dim, eps);
  return {out[0], out[1]};
}

}  // namespace

at::Tensor weight_norm_eager(const at::Tensor& v, const at::Tensor& g, int64_t dim, double eps) {
  return std::get<0>(fwd_op().call(v, g, dim, eps));
}

TORCH_LIBRARY_IMPL(fastwn, Autograd, m) { m.impl("weight_norm_fwd", &weight_norm_fwd_autograd); }

}  // namespace fastwn
