// Device helpers every CUDA kernel file shares: storage <-> accumulation conversions
// (round to nearest even, as PyTorch) and the deterministic group sum.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "plan.h"

namespace fastwn::cuda {

using bf16 = __nv_bfloat16;
using half = __half;

template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(bf16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_acc(acc_t<T> a);
template <> __device__ __forceinline__ float from_acc<float>(float a) { return a; }
template <> __device__ __forceinline__ double from_acc<double>(double a) { return a; }
template <> __device__ __forceinline__ half from_acc<half>(float a) { return __float2half_rn(a); }
template <> __device__ __forceinline__ bf16 from_acc<bf16>(float a) { return __float2bfloat16_rn(a); }

// Sum over groups of RT threads (RT <= 32: lanes of a warp; RT == kBlock: the block).
// Butterfly shuffles leave the same bits in every lane (each step adds the same pair).
template <int RT, class A>
__device__ __forceinline__ A group_sum(A x) {
  constexpr int kWarpWidth = RT < 32 ? RT : 32;
#pragma unroll
  for (int off = kWarpWidth / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off, kWarpWidth);
  if constexpr (RT > 32) {
    static_assert(RT == kBlock, "a group wider than a warp is the whole block");
    __shared__ A warp_sums[kBlock / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = x;
    __syncthreads();
    x = lane < kBlock / 32 ? warp_sums[lane] : A(0);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  }
  return x;
}

}  // namespace fastwn::cuda
