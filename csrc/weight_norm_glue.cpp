#include "weight_norm_glue.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace fastwn {
namespace {

constexpr int64_t kWholeTensor = -1;

DType to_dtype(at::ScalarType t, const char* arg, const char* op = "fastwn.weight_norm") {
  switch (t) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kBFloat16: return DType::bf16;
    case at::kHalf: return DType::f16;
    default:
      TORCH_CHECK_TYPE(false, op, ": ", arg,
                       " must be float32, float64, bfloat16 or float16, got ", t);
  }
  return DType::f32;  // unreachable
}

at::ScalarType norm_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// torch._weight_norm's rule: -1 (Python None) means the whole tensor, other negative
// dims wrap. Returns kWholeTensor or a dim in [0, v.dim()).
int64_t resolve_dim(int64_t dim, int64_t ndim) {
  if (dim == kWholeTensor) return kWholeTensor;
  const int64_t wrapped = dim < 0 ? dim + ndim : dim;
  TORCH_CHECK_INDEX(wrapped >= 0 && wrapped < ndim, "fastwn.weight_norm: dim must be None, -1 (whole tensor) or in [",
                    -ndim, ", ", ndim, ") for v with ", ndim, " dimensions, got ", dim);
  return wrapped;
}

// Memory order of a dense tensor: its dims by decreasing stride (size-1 dims anywhere).
std::vector<int64_t> memory_order(const at::Tensor& t) {
  std::vector<int64_t> order(t.dim());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (t.size(a) == 1 || t.size(b) == 1) return t.size(a) == 1 && t.size(b) != 1;
    return t.stride(a) > t.stride(b);
  });
  return order;
}

// v viewed as [outer, D, inner] in memory order.
Shape3 problem_shape(const at::Tensor& v, int64_t dim) {
  if (dim == kWholeTensor) return {1, 1, v.numel()};
  const std::vector<int64_t> order = memory_order(v);
  Shape3 s{1, v.size(dim), 1};
  bool before = true;
  for (int64_t d : order) {
    if (d == dim) before = false;
    else (before ? s.outer : s.inner) *= v.size(d);
  }
  return s;
}

// True if b's elements sit at the same offsets as a's (ignoring size-1 dims' strides).
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

// Views that are not dense (slices with gaps, overlapping expands) are copied once;
// dense ones of any memory order (channels_last included) are used as they are.
at::Tensor dense(const at::Tensor& t) { return t.is_non_overlapping_and_dense() ? t : t.contiguous(); }

void check_same_device(const at::Tensor& v, const at::Tensor& other, const char* arg,
                       const char* op = "fastwn.weight_norm", const char* first = "v") {
  TORCH_CHECK(other.device() == v.device(), op, ": ", arg, " is on ", other.device(), " but ", first, " is on ",
              v.device(), "; move both to the same device");
}

// Checks shared by forward and backward; returns the resolved dim.
int64_t check_common(const at::Tensor& v, const at::Tensor& g, int64_t dim, double eps) {
  to_dtype(v.scalar_type(), "v");
  check_same_device(v, g, "g");
  TORCH_CHECK_TYPE(g.scalar_type() == v.scalar_type(), "fastwn.weight_norm: g must have v's dtype ",
                   v.scalar_type(), ", got ", g.scalar_type());
  const int64_t d = resolve_dim(dim, v.dim());
  const int64_t expected = d == kWholeTensor ? 1 : v.size(d);
  TORCH_CHECK_VALUE(g.numel() == expected, "fastwn.weight_norm: g must have ", expected,
                    d == kWholeTensor ? " element (dim=None: one norm for the whole tensor)"
                                      : " elements (v.size(dim))",
                    ", got g of shape ", g.sizes());
  TORCH_CHECK_VALUE(eps >= 0 && std::isfinite(eps), "fastwn.weight_norm: eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(v.scalar_type() == at::kDouble || eps <= std::numeric_limits<float>::max(),
                    "fastwn.weight_norm: eps must fit in float32 (the norm's dtype for ", v.scalar_type(), "), got ",
                    eps);
  return d;
}

// torch._weight_norm computes bf16/fp16 weights with its composite formula, scale
// rounded to the dtype, unless dim (as the caller passed it: -2 is not 0 there) is the
// first or last axis; kernels.h says what round_scale does.
bool torch_rounds_scale(const at::Tensor& v, int64_t dim) {
  const bool half = v.scalar_type() == at::kBFloat16 || v.scalar_type() == at::kHalf;
  return half && dim != 0 && dim != v.dim() - 1;
}

}  // namespace

FwdCall prepare_forward(const at::Tensor& v_in, const at::Tensor& g_in, int64_t dim, double eps) {
  const int64_t d = check_common(v_in, g_in, dim, eps);
  FwdCall c;
  c.v = dense(v_in);
  c.g = g_in.contiguous();
  c.w = at::empty_like(c.v);  // keeps a dense v's strides
  c.norm = at::empty(g_in.sizes(), c.v.options().dtype(norm_dtype(v_in.scalar_type())));
  c.params = FwdParams{problem_shape(c.v, d), to_dtype(v_in.scalar_type(), "v"),
                       c.v.const_data_ptr(), c.g.const_data_ptr(), c.w.mutable_data_ptr(),
                       c.norm.mutable_data_ptr(), eps};
  c.params.round_scale = torch_rounds_scale(v_in, dim);
  return c;
}

BwdCall prepare_backward(const at::Tensor& grad_w_in, const at::Tensor& v_in, const at::Tensor& g_in,
                         const at::Tensor& norm_in, int64_t dim, double eps) {
  const int64_t d = check_common(v_in, g_in, dim, eps);
  check_same_device(v_in, grad_w_in, "grad_w");
  check_same_device(v_in, norm_in, "norm");
  TORCH_CHECK_VALUE(grad_w_in.sizes() == v_in.sizes(), "fastwn.weight_norm backward: grad_w must have v's shape ",
                    v_in.sizes(), ", got ", grad_w_in.sizes());
  TORCH_CHECK_TYPE(grad_w_in.scalar_type() == v_in.scalar_type(),
                   "fastwn.weight_norm backward: grad_w must have v's dtype ", v_in.scalar_type(), ", got ",
                   grad_w_in.scalar_type());
  const at::ScalarType nt = norm_dtype(v_in.scalar_type());
  TORCH_CHECK_TYPE(norm_in.scalar_type() == nt, "fastwn.weight_norm backward: norm must be ", nt, " for v of dtype ",
                   v_in.scalar_type(), ", got ", norm_in.scalar_type());
  TORCH_CHECK_VALUE(norm_in.numel() == g_in.numel(), "fastwn.weight_norm backward: norm must have g's ",
                    g_in.numel(), " elements, got ", norm_in.numel());
  BwdCall c;
  c.v = dense(v_in);
  c.grad_w = same_layout(c.v, grad_w_in) ? grad_w_in : at::empty_like(c.v).copy_(grad_w_in);
  c.g = g_in.contiguous();
  c.norm = norm_in.contiguous();
  c.grad_v = at::empty_like(c.v);
  c.grad_g = at::empty(g_in.sizes(), g_in.options().memory_format(at::MemoryFormat::Contiguous));
  c.params = BwdParams{problem_shape(c.v, d),        to_dtype(v_in.scalar_type(), "v"),
                       c.grad_w.const_data_ptr(),    c.v.const_data_ptr(),
                       c.g.const_data_ptr(),         c.norm.const_data_ptr(),
                       c.grad_v.mutable_data_ptr(),  c.grad_g.mutable_data_ptr(),
                       eps};
  return c;
}

LowRankNormCall prepare_dora_norm(const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
                                  double scaling) {
  constexpr const char* op = "fastwn.dora_norm";
  const DType dtype = to_dtype(weight.scalar_type(), "weight", op);
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got shape ",
                    weight.sizes());
  check_same_device(weight, lora_A, "lora_A", op, "weight");
  check_same_device(weight, lora_B, "lora_B", op, "weight");
  auto check_factor = [&](const at::Tensor& t, const char* name) {
    to_dtype(t.scalar_type(), name, op);  // any float dtype: converted to the accumulation type
    TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
  };
  check_factor(lora_A, "lora_A");
  check_factor(lora_B, "lora_B");
  const int64_t out = weight.size(0), in = weight.size(1), rank = lora_A.size(0);
  TORCH_CHECK_VALUE(lora_A.size(1) == in, op, ": lora_A must be [rank, in_features] = [rank, ", in,
                    "] for weight of shape ", weight.sizes(), ", got ", lora_A.sizes());
  TORCH_CHECK_VALUE(lora_B.size(0) == out && lora_B.size(1) == rank, op, ": lora_B must be [out_features, rank] = [",
                    out, ", ", rank, "] for weight of shape ", weight.sizes(), " and lora_A of shape ",
                    lora_A.sizes(), ", got ", lora_B.sizes());
  TORCH_CHECK_VALUE(std::isfinite(scaling), op, ": scaling must be finite, got ", scaling);

  // W0 + s*B@A is the kernel's M + L@R read row by row when W0's columns are contiguous,
  // column by column (as M = W0^T) when its rows are, as for fan_in_fan_out's [in, out]
  // weights; any other view is copied once.
  const at::ScalarType acc = norm_dtype(weight.scalar_type());
  LowRankNormCall c;
  const bool rows_dense = weight.stride(1) == 1 || in <= 1;
  const bool cols_dense = !rows_dense && (weight.stride(0) == 1 || out <= 1);
  c.m = rows_dense || cols_dense ? weight : weight.contiguous();
  const at::Tensor scaled_b = lora_B.to(acc).mul(scaling);
  if (cols_dense) {
    c.l = lora_A.t().to(acc).contiguous();
    c.r = scaled_b.t().contiguous();
  } else {
    c.l = scaled_b.contiguous();
    c.r = lora_A.to(acc).contiguous();
  }
  c.norm = at::empty({out}, weight.options().dtype(acc));
  c.params = LowRankNormParams{dtype,
                               cols_dense ? in : out,
                               cols_dense ? out : in,
                               rank,
                               c.m.const_data_ptr(),
                               cols_dense ? c.m.stride(1) : c.m.stride(0),
                               c.l.const_data_ptr(),
                               c.r.const_data_ptr(),
                               !cols_dense,
                               c.norm.mutable_data_ptr()};
  return c;
}

}  // namespace fastwn
