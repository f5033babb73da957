// Weight-norm forward and backward on NVIDIA GPUs: torch-free kernels and launchers.
//
// The problem is the glue's dense [outer, D, inner] view (csrc/kernels.h). As on the CPU,
// forward and backward are "ops" plugged into shared kernels: a reduction per d, a per-d
// step, an elementwise pass. Three schedules:
//   rows      outer == 1 and a row fits in registers: a warp or a block per row, the row
//             read once (forward: v; backward: grad_w and v), reduced, then written.
//   segments  contiguous runs along inner (inner >= 32, or rows too long for registers):
//             blocks reduce (d, outer-chunk, inner-piece) tiles into partial sums.
//   columns   inner < 32 (dim = last axis, say): coalesced reductions down the columns of
//             the [outer, D * inner] matrix into partial sums.
// Partial sums have exactly one writer and are combined in a fixed order (no atomics),
// so results are bit-identical run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "device.cuh"
#include "launch.h"
#include "plan.h"

namespace fastwn::cuda {
namespace {

// The divisor of g: max(norm, eps), the norm first rounded to T for bf16/fp16 (see
// csrc/kernels.h: g = ||v|| as stored then scales v by exactly 1). A norm beyond T's
// range is used unrounded; a NaN norm stays NaN (unlike fmax).
template <class T, class A>
__device__ __forceinline__ A divisor(A n, A eps) {
  if constexpr (!std::is_same_v<T, A>) {
    const A rounded = to_acc(from_acc<T>(n));
    if (isfinite(rounded)) n = rounded;
  }
  return n < eps ? eps : n;
}

// N consecutive elements moved as one access (16 bytes when N = 16 / sizeof(T)); the
// launcher only picks N > 1 when every pointer and run start is 16-byte aligned.
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T x[N];
};
template <int N, class T>
__device__ __forceinline__ void load_pack(const T* __restrict__ p, T (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = pk.x[e];
}
template <int N, class T>
__device__ __forceinline__ void store_pack(T* __restrict__ p, const T (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int e = 0; e < N; ++e) pk.x[e] = in[e];
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// ---- ops: what is loaded, reduced and written (compare csrc/cpu/kernels.cpp) ----

// Forward: norm[d] = ||v[:, d, :]||, w = v * g[d] / max(norm[d], eps).
template <class T>
struct FwdOp {
  using Elem = T;
  using A = acc_t<T>;
  struct In { A v; };
  struct Coef { A s; };
  const T* __restrict__ v;
  const T* __restrict__ g;
  T* __restrict__ w;
  A* __restrict__ norm;
  A eps;
  bool round_scale;  // csrc/kernels.h: PyTorch's composite rounding for bf16/fp16

  template <int N> __device__ __forceinline__ void load(int64_t i, In (&x)[N]) const {
    T t[N];
    load_pack<N>(v + i, t);
#pragma unroll
    for (int e = 0; e < N; ++e) x[e].v = to_acc(t[e]);
  }
  __device__ __forceinline__ static A term(const In& x) { return x.v * x.v; }
  __device__ __forceinline__ Coef finish(int64_t d, A sumsq, bool write) const {
    const A n = sqrt(sumsq);
    if (write) norm[d] = n;
    const A scale = to_acc(g[d]) / divisor<T>(n, eps);
    return {round_scale ? to_acc(from_acc<T>(scale)) : scale};
  }
  template <int N> __device__ __forceinline__ void store(int64_t i, const In (&x)[N], const Coef (&k)[N]) const {
    T t[N];
#pragma unroll
    for (int e = 0; e < N; ++e) t[e] = from_acc<T>(x[e].v * k[e].s);
    store_pack<N>(w + i, t);
  }
};

// Backward: dot = <grad_w, v>[d], grad_g = dot / n_eff, grad_v = a grad_w + b v with
// a = g / n_eff and b = -g dot / norm^3 unless eps clamped the norm (then 0).
template <class T>
struct BwdOp {
  using Elem = T;
  using A = acc_t<T>;
  struct In { A gw, v; };
  struct Coef { A a, b; };
  const T* __restrict__ gw;
  const T* __restrict__ v;
  const T* __restrict__ g;
  const A* __restrict__ norm;
  T* __restrict__ gv;
  T* __restrict__ gg;
  A eps;

  template <int N> __device__ __forceinline__ void load(int64_t i, In (&x)[N]) const {
    T a[N], b[N];
    load_pack<N>(gw + i, a);
    load_pack<N>(v + i, b);
#pragma unroll
    for (int e = 0; e < N; ++e) x[e] = {to_acc(a[e]), to_acc(b[e])};
  }
  __device__ __forceinline__ static A term(const In& x) { return x.gw * x.v; }
  __device__ __forceinline__ Coef finish(int64_t d, A dot, bool write) const {
    const A n = norm[d];
    const A n_eff = divisor<T>(n, eps);
    const A a = to_acc(g[d]) / n_eff;
    if (write) gg[d] = from_acc<T>(dot / n_eff);
    return {a, n >= eps ? -a * (dot / n) / n : A(0)};  // a (dot/n)/n: no overflow of n^3
  }
  template <int N> __device__ __forceinline__ void store(int64_t i, const In (&x)[N], const Coef (&k)[N]) const {
    T t[N];
#pragma unroll
    for (int e = 0; e < N; ++e) t[e] = from_acc<T>(k[e].a * x[e].gw + k[e].b * x[e].v);
    store_pack<N>(gv + i, t);
  }
};

// ---- the kernels ----

// One row per group of RT threads; each thread keeps ITEMS packs of N elements.
template <class Op, int RT, int ITEMS, int N>
__global__ void __launch_bounds__(kBlock) rows_kernel(Op op, int64_t D, int64_t inner) {
  using A = typename Op::A;
  const int64_t row = int64_t(blockIdx.x) * (kBlock / RT) + threadIdx.x / RT;
  const int lane = threadIdx.x % RT;
  const bool active = row < D;
  const int64_t base = row * inner;
  typename Op::In x[ITEMS][N];
  A sum = 0;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) {
    const int64_t j = (int64_t(k) * RT + lane) * N;
    if (active && j < inner) {  // inner % N == 0 (launcher), so a pack never straddles the end
      op.template load<N>(base + j, x[k]);
#pragma unroll
      for (int e = 0; e < N; ++e) sum += Op::term(x[k][e]);
    }
  }
  const A total = group_sum<RT>(sum);  // every thread takes part
  if (!active) return;
  const typename Op::Coef c = op.finish(row, total, lane == 0);
  typename Op::Coef k[N];
#pragma unroll
  for (int e = 0; e < N; ++e) k[e] = c;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int64_t j = (int64_t(it) * RT + lane) * N;
    if (j < inner) op.template store<N>(base + j, x[it], k);
  }
}

// Block (d, chunk, piece) reduces v[o, d, i] for o in the chunk, i in the piece.
template <class Op, int N>
__global__ void __launch_bounds__(kBlock) segments_kernel(Op op, Shape3 s, Plan pl, typename Op::A* partial) {
  using A = typename Op::A;
  const int64_t b = blockIdx.x;
  const int64_t d = b % s.D, cp = b / s.D;
  const int64_t piece = cp % pl.pieces, chunk = cp / pl.pieces;
  const int64_t o0 = chunk * pl.chunk_rows, o1 = o0 + pl.chunk_rows < s.outer ? o0 + pl.chunk_rows : s.outer;
  const int64_t i0 = piece * pl.piece_len, i1 = i0 + pl.piece_len < s.inner ? i0 + pl.piece_len : s.inner;
  A sum = 0;
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t base = (o * s.D + d) * s.inner;
    for (int64_t i = i0 + int64_t(threadIdx.x) * N; i < i1; i += int64_t(kBlock) * N) {
      typename Op::In x[N];
      op.template load<N>(base + i, x);
#pragma unroll
      for (int e = 0; e < N; ++e) sum += Op::term(x[e]);
    }
  }
  const A total = group_sum<kBlock>(sum);
  if (threadIdx.x == 0) partial[cp * s.D + d] = total;
}

// 32 columns x 8 row groups per block; blockIdx.y is the chunk of outer.
template <class Op>
__global__ void __launch_bounds__(kBlock) columns_kernel(Op op, int64_t outer, int64_t M, int64_t chunk_rows,
                                                         typename Op::A* partial) {
  using A = typename Op::A;
  constexpr int kGroups = kBlock / 32;
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t j = int64_t(blockIdx.x) * 32 + tx;
  const int64_t o0 = int64_t(blockIdx.y) * chunk_rows;
  const int64_t o1 = o0 + chunk_rows < outer ? o0 + chunk_rows : outer;
  A sum = 0;
  if (j < M) {
    for (int64_t o = o0 + ty; o < o1; o += kGroups) {
      typename Op::In x[1];
      op.template load<1>(o * M + j, x);
      sum += Op::term(x[0]);
    }
  }
  __shared__ A sums[kGroups][32];
  sums[ty][tx] = sum;
  __syncthreads();
  if (ty == 0 && j < M) {
    A t = 0;
#pragma unroll
    for (int r = 0; r < kGroups; ++r) t += sums[r][tx];
    partial[int64_t(blockIdx.y) * M + j] = t;
  }
}

template <class Op>
__global__ void finish_kernel(Op op, int64_t D, Plan pl, const typename Op::A* partial, typename Op::Coef* coefs) {
  using A = typename Op::A;
  for (int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x) {
    A total = 0;
    for (int64_t k = 0; k < pl.K; ++k)
      for (int64_t i = 0; i < pl.fold; ++i) total += partial[k * pl.stride + d * pl.fold + i];
    coefs[d] = op.finish(d, total, true);
  }
}

// Elementwise pass over the flat range, N elements per step. Each thread divides once
// to find its (d, offset in inner) and then walks forward by the grid stride, which the
// launcher pre-divided (step_d, step_r): no 64-bit division per element.
template <class Op, int N>
__global__ void __launch_bounds__(kBlock) apply_kernel(Op op, int64_t numel, int64_t D, int64_t inner,
                                                       int64_t step_d, int64_t step_r,
                                                       const typename Op::Coef* __restrict__ coefs) {
  const int64_t packs = numel / N;
  const int64_t stride = int64_t(gridDim.x) * kBlock;
  int64_t p = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  int64_t r = (p * N) % inner, d = ((p * N) / inner) % D;
  for (; p < packs; p += stride) {
    typename Op::In x[N];
    op.template load<N>(p * N, x);
    typename Op::Coef k[N];
    int64_t re = r, de = d;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      k[e] = coefs[de];
      if (++re == inner) re = 0, de = de + 1 == D ? 0 : de + 1;
    }
    op.template store<N>(p * N, x, k);
    r += step_r;
    const int64_t carry = r >= inner;
    r -= carry * inner;
    d += step_d + carry;
    if (d >= D) d -= D;
  }
  // The last numel % N elements, one per thread of the first block.
  const int64_t t = packs * N + threadIdx.x;
  if (blockIdx.x == 0 && threadIdx.x < N && t < numel) {
    typename Op::In x[1];
    op.template load<1>(t, x);
    const typename Op::Coef k[1] = {coefs[(t / inner) % D]};
    op.template store<1>(t, x, k);
  }
}

// ---- planning and launching ----

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Workspace: partial sums, then the per-d coefficients at a 16-byte boundary.
template <class Op>
size_t coef_offset(const Plan& pl) {
  return size_t(ceil_div(pl.partials() * int64_t(sizeof(typename Op::A)), 16) * 16);
}
template <class Op>
size_t workspace_bytes(const Shape3& s, const Plan& pl) {
  return coef_offset<Op>(pl) + size_t(s.D) * sizeof(typename Op::Coef);
}

// Returns false for a plan no kernel was compiled for (plan.h never makes one).
template <class Op, int RT, int ITEMS>
bool launch_rows(const Op& op, const Shape3& s, const Plan& pl, cudaStream_t stream) {
  constexpr int kVec = 16 / int(sizeof(typename Op::Elem));
  const dim3 grid(unsigned(ceil_div(s.D, kBlock / RT)));
  if (pl.vec != 1) {
    rows_kernel<Op, RT, ITEMS, kVec><<<grid, kBlock, 0, stream>>>(op, s.D, s.inner);
    return true;
  }
  if constexpr (ITEMS <= max_row_items(int(sizeof(typename Op::Elem)), 1)) {
    rows_kernel<Op, RT, ITEMS, 1><<<grid, kBlock, 0, stream>>>(op, s.D, s.inner);
    return true;
  }
  return false;
}

template <class Op, int RT>
bool launch_rows_items(const Op& op, const Shape3& s, const Plan& pl, cudaStream_t stream) {
  switch (pl.items) {
    case 1: return launch_rows<Op, RT, 1>(op, s, pl, stream);
    case 2: return launch_rows<Op, RT, 2>(op, s, pl, stream);
    case 4: return launch_rows<Op, RT, 4>(op, s, pl, stream);
    case 8: return launch_rows<Op, RT, 8>(op, s, pl, stream);
    default: return false;
  }
}

template <class Op>
cudaError_t run(const Op& op, const Shape3& s, void* workspace, int sms, cudaStream_t stream, bool aligned) {
  if (s.D == 0) return cudaGetLastError();
  const Plan pl = make_plan(s, int(sizeof(typename Op::Elem)), aligned, sms);
  using A = typename Op::A;
  using Coef = typename Op::Coef;
  A* partial = static_cast<A*>(workspace);
  Coef* coefs = reinterpret_cast<Coef*>(static_cast<char*>(workspace) + coef_offset<Op>(pl));
  const int64_t N = s.numel();
  const unsigned finish_grid = unsigned(std::min<int64_t>(ceil_div(s.D, kBlock), 65535));

  if (N == 0) {  // empty slices: norm 0
    Plan none = pl;
    none.K = 0;
    finish_kernel<<<finish_grid, kBlock, 0, stream>>>(op, s.D, none, partial, coefs);
    return cudaGetLastError();
  }
  if (pl.kind == Plan::kRows) {
    const bool launched = pl.rt == 32 ? launch_rows_items<Op, 32>(op, s, pl, stream)
                                      : launch_rows_items<Op, kBlock>(op, s, pl, stream);
    return launched ? cudaGetLastError() : cudaErrorInvalidConfiguration;
  }
  constexpr int kVec = 16 / int(sizeof(typename Op::Elem));
  if (pl.kind == Plan::kSegments) {
    const dim3 grid(unsigned(s.D * pl.chunks * pl.pieces));
    if (pl.vec == 1) segments_kernel<Op, 1><<<grid, kBlock, 0, stream>>>(op, s, pl, partial);
    else segments_kernel<Op, kVec><<<grid, kBlock, 0, stream>>>(op, s, pl, partial);
  } else {
    const dim3 grid(unsigned(ceil_div(s.D * s.inner, 32)), unsigned(pl.chunks));
    columns_kernel<<<grid, kBlock, 0, stream>>>(op, s.outer, s.D * s.inner, pl.chunk_rows, partial);
  }
  finish_kernel<<<finish_grid, kBlock, 0, stream>>>(op, s.D, pl, partial, coefs);

  const int64_t packs = N / pl.apply_vec;
  const int64_t blocks = std::clamp(ceil_div(packs, kBlock), int64_t(1), int64_t(sms) * 8);
  const int64_t step = blocks * kBlock * pl.apply_vec;  // elements one grid stride advances
  const int64_t step_d = (step / s.inner) % s.D, step_r = step % s.inner;
  if (pl.apply_vec == 1)
    apply_kernel<Op, 1><<<unsigned(blocks), kBlock, 0, stream>>>(op, N, s.D, s.inner, step_d, step_r, coefs);
  else
    apply_kernel<Op, kVec><<<unsigned(blocks), kBlock, 0, stream>>>(op, N, s.D, s.inner, step_d, step_r, coefs);
  return cudaGetLastError();
}

// The op for the params' storage type T: forward or backward by the params' type.
template <class T>
FwdOp<T> op_for(const FwdParams& p) {
  return {static_cast<const T*>(p.v), static_cast<const T*>(p.g), static_cast<T*>(p.w),
          static_cast<acc_t<T>*>(p.norm), acc_t<T>(p.eps), p.round_scale};
}
template <class T>
BwdOp<T> op_for(const BwdParams& p) {
  return {static_cast<const T*>(p.grad_w), static_cast<const T*>(p.v), static_cast<const T*>(p.g),
          static_cast<const acc_t<T>*>(p.norm), static_cast<T*>(p.grad_v), static_cast<T*>(p.grad_g),
          acc_t<T>(p.eps)};
}
bool aligned(const FwdParams& p) { return aligned16(p.v) && aligned16(p.w); }
bool aligned(const BwdParams& p) { return aligned16(p.grad_w) && aligned16(p.v) && aligned16(p.grad_v); }

// Calls f(op) with the op of the params' dtype: the one place dtypes are dispatched.
template <class P, class F>
auto with_op(const P& p, F f) {
  switch (p.dtype) {
    case DType::f64: return f(op_for<double>(p));
    case DType::bf16: return f(op_for<bf16>(p));
    case DType::f16: return f(op_for<half>(p));
    default: return f(op_for<float>(p));
  }
}

template <class P>
size_t workspace_for(const P& p, int sms) {
  return with_op(p, [&](auto op) {
    using Op = decltype(op);
    return workspace_bytes<Op>(p.shape, make_plan(p.shape, int(sizeof(typename Op::Elem)), aligned(p), sms));
  });
}

template <class P>
cudaError_t launch(const P& p, void* workspace, int sms, cudaStream_t stream) {
  return with_op(p, [&](auto op) { return run(op, p.shape, workspace, sms, stream, aligned(p)); });
}

}  // namespace

size_t forward_workspace_bytes(const FwdParams& p, int sms) { return workspace_for(p, sms); }
size_t backward_workspace_bytes(const BwdParams& p, int sms) { return workspace_for(p, sms); }
cudaError_t forward(const FwdParams& p, void* workspace, int sms, cudaStream_t stream) {
  return launch(p, workspace, sms, stream);
}
cudaError_t backward(const BwdParams& p, void* workspace, int sms, cudaStream_t stream) {
  return launch(p, workspace, sms, stream);
}

}  // namespace fastwn::cuda
