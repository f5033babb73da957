// Autograd for fastwn::weight_norm_fwd, registered at the Autograd key in C++.
//
// The operator stays one node for the compiler (Dynamo records the op; AOTAutograd
// traces this kernel into the fused forward and backward ops), while eager calls pay a
// C++ autograd node instead of torch.library's Python one: register_autograd cost about
// 17 us per forward + backward, a sixth of a 256x256x3x3 weight's whole step.
//
// The node is written as PyTorch's generated ones are (a Node with SavedVariables), not
// as a torch::autograd::Function: on a 4x4 weight the Function's forward cost 8.8 us over
// the no-grad call against 4.8 us for torch._weight_norm's node (Zen 3 VM), and
// functorch transforms (torch.func.grad, vjp) refuse C++ Functions outright.
#include "autograd.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fastwn {
namespace {

using torch::autograd::SavedVariable;
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

// The node of w = weight_norm_fwd(v, g)[0]: one input (grad_w), two outputs (grad_v,
// grad_g). norm, the op's second result, is not differentiable and gets no edge.
struct WeightNormBackward : torch::autograd::TraceableFunction {
  SavedVariable v, g, norm;
  int64_t dim = 0;
  double eps = 0;

  std::string name() const override { return "WeightNormBackward"; }

  // What the engine frees once backward has run (unless retain_graph).
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    v.reset_data();
    g.reset_data();
    norm.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    static const auto bwd = op<BwdSig>("fastwn::weight_norm_bwd");
    // Implemented in Python (fastwn/_composite.py) as CompositeImplicitAutograd.
    static const auto composite = op<CompositeSig>("fastwn::weight_norm_bwd_composite");
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor& grad_w = grads[0];
    // Edges the engine pruned (torch.autograd.grad with `inputs`) count as not needed.
    const bool need_v = task_should_compute_output(0), need_g = task_should_compute_output(1);
    if (!grad_w.defined() || !(need_v || need_g)) return {at::Tensor(), at::Tensor()};  // w unused
    // unpack() raises PyTorch's error if v or g was modified in place since the forward.
    const at::Tensor v_ = v.unpack(), g_ = g.unpack(), norm_ = norm.unpack();
    at::Tensor grad_v, grad_g;
    if (at::GradMode::is_enabled() || !need_v) {
      // create_graph=True needs a differentiable graph; grad_g alone needs no grad_v pass.
      const std::vector<at::Tensor> r = composite.call(grad_w, v_, g_, dim, eps, need_v);
      grad_g = r.back();
      if (need_v) grad_v = r.front();
    } else {
      // No graph to record: straight to the backend kernel, past autograd's boxed
      // not-implemented fallback (about 0.5K instructions a call).
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(grad_v, grad_g) = bwd.call(grad_w, v_, g_, norm_, dim, eps);
    }
    return {grad_v, need_g ? grad_g : at::Tensor()};
  }
};

// torch 2.13 holds nodes in c10::intrusive_ptr, earlier releases (the GPU machine's 2.11)
// in std::shared_ptr: Edge::function says which this build has.
template <class T>
auto make_node() {
  using Held = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<Held, std::shared_ptr<torch::autograd::Node>>) {
    return std::shared_ptr<T>(new T());
  } else {
    return c10::make_intrusive<T>();
  }
}

std::tuple<at::Tensor, at::Tensor> weight_norm_fwd_autograd(const at::Tensor& v, const at::Tensor& g, int64_t dim,
                                                            double eps) {
  // A forward-mode tangent would be lost by the call below, which records no jvp.
  TORCH_CHECK(!v._fw_grad(0).defined() && !g._fw_grad(0).defined(),
              "fastwn.weight_norm: forward-mode AD is not supported (jvp is not implemented); "
              "use reverse mode (backward, torch.func.grad or vjp)");
  const bool record = torch::autograd::compute_requires_grad(v, g);
  at::Tensor w, norm;
  {
    // Inference (no_grad, or no input that requires grad) builds no node at all, as
    // torch's own ops do.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(w, norm) = fwd_op().call(v, g, dim, eps);
  }
  if (record) {
    auto node = make_node<WeightNormBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(v, g));
    node->v = SavedVariable(v, false);
    node->g = SavedVariable(g, false);
    node->norm = SavedVariable(norm, false);
    node->dim = dim;
    node->eps = eps;
    torch::autograd::set_history(w, node);
  }
  return {w, norm};
}

}  // namespace

at::Tensor weight_norm_eager(const at::Tensor& v, const at::Tensor& g, int64_t dim, double eps) {
  return std::get<0>(fwd_op().call(v, g, dim, eps));
}

TORCH_LIBRARY_IMPL(fastwn, Autograd, m) { m.impl("weight_norm_fwd", &weight_norm_fwd_autograd); }

}  // namespace fastwn
