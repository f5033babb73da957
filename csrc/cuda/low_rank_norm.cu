// DoRA's norm on NVIDIA GPUs (csrc/kernels.h, LowRankNormParams): T = M + L @ R formed in
// registers and reduced, never stored. As on the CPU (csrc/cpu/low_rank_norm.cpp), M is
// read once and L, R (small) from cache, and every sum has a fixed order: no atomics,
// bit-identical results run to run.
//   per_row     a block per kRows rows; threads stride the columns (coalesced M and R
//               loads), each R value feeding kRows rows; a block sum per row.
//   per column  a thread per column over a slice of the rows (M stored [in, out], as
//               fan_in_fan_out weights are); partial sums per slice, then a final pass.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device.cuh"
#include "launch.h"

namespace fastwn::cuda {
namespace {

// per_row: rows per block, one R load feeding all of them; 4 for float64, whose
// accumulators take twice the registers (8 spilled on sm_100).
template <class A>
constexpr int kRows = sizeof(A) == 8 ? 4 : 8;
constexpr int kColumnRows = 4;    // per column: rows per step, one R load feeds all of them
constexpr int64_t kSliceRows = 256;  // per column: rows per slice at least

// Two blocks per SM at least: lets ptxas use up to 128 registers (kRows accumulators
// and sums); at its default of 64 the kernel spilled.
template <class T>
__global__ void __launch_bounds__(kBlock, 2) rows_kernel(const T* __restrict__ m, int64_t ms,
                                                      const acc_t<T>* __restrict__ l, const acc_t<T>* __restrict__ r,
                                                      int64_t rows, int64_t cols, int64_t rank,
                                                      acc_t<T>* __restrict__ norm) {
  using A = acc_t<T>;
  const int64_t row0 = int64_t(blockIdx.x) * kRows<A>;
  const int nr = int(rows - row0 < kRows<A> ? rows - row0 : kRows<A>);
  const T* mt = m + row0 * ms;    // the block's tile of M and L: one base pointer each
  const A* lt = l + row0 * rank;  // keeps the 64-bit address registers few
  A sum[kRows<A>];
#pragma unroll
  for (int j = 0; j < kRows<A>; ++j) sum[j] = A(0);
  for (int64_t c = threadIdx.x; c < cols; c += kBlock) {
    A acc[kRows<A>];
#pragma unroll
    for (int j = 0; j < kRows<A>; ++j) acc[j] = j < nr ? to_acc(mt[j * ms + c]) : A(0);
    for (int64_t k = 0; k < rank; ++k) {
      const A rk = r[k * cols + c];
#pragma unroll
      for (int j = 0; j < kRows<A>; ++j)
        if (j < nr) acc[j] += lt[j * rank + k] * rk;
    }
#pragma unroll
    for (int j = 0; j < kRows<A>; ++j) sum[j] += acc[j] * acc[j];
  }
  // Each row's sum: warp butterflies, then one thread per row adds the warps in order.
  __shared__ A warp_sums[kRows<A>][kBlock / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kRows<A>; ++j) {
    A x = sum[j];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    if (lane == 0) warp_sums[j][warp] = x;
  }
  __syncthreads();
  if (int(threadIdx.x) < nr) {
    A total = 0;
    for (int w = 0; w < kBlock / 32; ++w) total += warp_sums[threadIdx.x][w];
    norm[row0 + threadIdx.x] = sqrt(total);
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock) columns_kernel(const T* __restrict__ m, int64_t ms,
                                                         const acc_t<T>* __restrict__ l,
                                                         const acc_t<T>* __restrict__ r, int64_t rows, int64_t cols,
                                                         int64_t rank, int64_t slice_rows, acc_t<T>* __restrict__ partial) {
  using A = acc_t<T>;
  const int64_t c = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * slice_rows, r1 = min(rows, r0 + slice_rows);
  A sum = 0;
  for (int64_t row = r0; row < r1; row += kColumnRows) {
    const int nr = int(r1 - row < kColumnRows ? r1 - row : kColumnRows);
    A acc[kColumnRows];
#pragma unroll
    for (int j = 0; j < kColumnRows; ++j) acc[j] = j < nr ? to_acc(m[(row + j) * ms + c]) : A(0);
    for (int64_t k = 0; k < rank; ++k) {
      const A rk = r[k * cols + c];
#pragma unroll
      for (int j = 0; j < kColumnRows; ++j)
        if (j < nr) acc[j] += l[(row + j) * rank + k] * rk;
    }
#pragma unroll
    for (int j = 0; j < kColumnRows; ++j) sum += acc[j] * acc[j];
  }
  partial[int64_t(blockIdx.y) * cols + c] = sum;
}

template <class A>
__global__ void __launch_bounds__(kBlock) finish_columns_kernel(const A* __restrict__ partial, int64_t slices,
                                                                int64_t cols, A* __restrict__ norm) {
  const int64_t c = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  if (c >= cols) return;
  A total = 0;
  for (int64_t s = 0; s < slices; ++s) total += partial[s * cols + c];
  norm[c] = sqrt(total);
}

// Row slices for the per-column mode: enough blocks for two waves on `sms` SMs, each
// slice at least kSliceRows rows long.
int64_t column_slices(const LowRankNormParams& p, int sms) {
  const int64_t col_blocks = ceil_div(p.cols, kBlock);
  const int64_t wanted = ceil_div(int64_t(2) * sms, col_blocks);
  return std::max<int64_t>(1, std::min(wanted, ceil_div(p.rows, kSliceRows)));
}

size_t acc_bytes(DType t) { return t == DType::f64 ? sizeof(double) : sizeof(float); }

template <class T>
cudaError_t run(const LowRankNormParams& p, void* workspace, int sms, cudaStream_t stream) {
  using A = acc_t<T>;
  const T* m = static_cast<const T*>(p.m);
  const A* l = static_cast<const A*>(p.l);
  const A* r = static_cast<const A*>(p.r);
  A* norm = static_cast<A*>(p.norm);
  if (p.per_row) {
    rows_kernel<T><<<unsigned(ceil_div(p.rows, kRows<A>)), kBlock, 0, stream>>>(m, p.m_stride, l, r, p.rows, p.cols,
                                                                              p.rank, norm);
    return cudaGetLastError();
  }
  const int64_t slices = column_slices(p, sms);
  const dim3 grid(unsigned(ceil_div(p.cols, kBlock)), unsigned(slices));
  A* partial = static_cast<A*>(workspace);
  columns_kernel<T><<<grid, kBlock, 0, stream>>>(m, p.m_stride, l, r, p.rows, p.cols, p.rank,
                                                 ceil_div(p.rows, slices), partial);
  finish_columns_kernel<A><<<unsigned(ceil_div(p.cols, kBlock)), kBlock, 0, stream>>>(partial, slices, p.cols, norm);
  return cudaGetLastError();
}

}  // namespace

size_t low_rank_norm_workspace_bytes(const LowRankNormParams& p, int sms) {
  if (p.per_row || p.rows == 0 || p.cols == 0) return 0;
  return size_t(column_slices(p, sms)) * size_t(p.cols) * acc_bytes(p.dtype);
}

cudaError_t low_rank_norm(const LowRankNormParams& p, void* workspace, int sms, cudaStream_t stream) {
  const int64_t n = p.per_row ? p.rows : p.cols;
  if (n == 0) return cudaSuccess;
  if (p.rows == 0 || p.cols == 0)  // empty sums: every norm is 0
    return cudaMemsetAsync(p.norm, 0, size_t(n) * acc_bytes(p.dtype), stream);
  switch (p.dtype) {
    case DType::f64: return run<double>(p, workspace, sms, stream);
    case DType::bf16: return run<bf16>(p, workspace, sms, stream);
    case DType::f16: return run<half>(p, workspace, sms, stream);
    default: return run<float>(p, workspace, sms, stream);
  }
}

}  // namespace fastwn::cuda
