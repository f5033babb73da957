// Torch-free CUDA launchers (csrc/cuda/kernels.cu, low_rank_norm.cu); the glue is csrc/cuda/weight_norm.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "../kernels.h"

namespace fastwn::cuda {

// Scratch the launchers need (partial sums and per-d coefficients), in bytes, for a
// problem on a device with `sms` multiprocessors. The glue allocates it on the stream.
size_t forward_workspace_bytes(const FwdParams& p, int sms);
size_t backward_workspace_bytes(const BwdParams& p, int sms);

// Enqueue on `stream`; return the launch status (cudaGetLastError) for the glue to check.
cudaError_t forward(const FwdParams& p, void* workspace, int sms, cudaStream_t stream);
cudaError_t backward(const BwdParams& p, void* workspace, int sms, cudaStream_t stream);

// DoRA's norm (csrc/cuda/low_rank_norm.cu): partial sums of the per-column mode.
size_t low_rank_norm_workspace_bytes(const LowRankNormParams& p, int sms);
cudaError_t low_rank_norm(const LowRankNormParams& p, void* workspace, int sms, cudaStream_t stream);

}  // namespace fastwn::cuda
