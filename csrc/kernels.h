// Torch-free interface between the glue (csrc/*/weight_norm.*) and the kernels.
//
// Every weight-norm problem is reduced by the glue to a dense 3-D view of memory,
// [outer, D, inner], where D is the normalised axis: norm[d] is taken over all
// (o, i) of v[o, d, i]. dim = first axis gives outer = 1, dim = last gives inner = 1,
// the whole-tensor norm gives D = 1. Kernels never see strides: the glue picks the
// memory order (so channels_last weights need no copy) and makes other views dense.
#pragma once

#include <cstdint>

namespace fastwn {

enum class DType : int { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };

struct Shape3 {
  int64_t outer;
  int64_t D;
  int64_t inner;
  int64_t numel() const { return outer * D * inner; }
};

// How a CPU kernel writes its large output (w, grad_v); the glue decides which pays
// (csrc/cpu/weight_norm.cpp).
enum class OutputWrite : int {
  cached = 0,    // ordinary stores
  streamed = 1,  // non-temporal stores: no read-for-ownership of each line
  // Fresh pages: before writing a block, the task maps its absent pages in one call
  // (cpu::populate_for_write) instead of taking one page fault per page.
  populate = 2,
};

// norm is float64 for float64 inputs and float32 otherwise (also for bf16/fp16);
// v, g, w, grad_w, grad_v, grad_g are all in `dtype`. eps clamps the norm from below
// (0 = no clamp, PyTorch's exact behaviour on zero slices).
//
// bf16/fp16: g is divided by the norm rounded to `dtype` (where that is finite), the
// value g holds when a layer is wrapped (g = ||v|| as stored), so wrapping scales v by
// exactly 1 and never changes a weight. The returned norm is not rounded.
struct FwdParams {
  Shape3 shape;
  DType dtype;
  const void* v;
  const void* g;
  void* w;
  void* norm;
  double eps;
  // bf16/fp16 only: also round the scale g / norm to `dtype` before multiplying, as
  // torch._weight_norm's composite path does (whole-tensor and middle dims), so those
  // results are PyTorch's bit for bit. The glue decides (weight_norm_glue.cpp).
  bool round_scale = false;
  OutputWrite write_w = OutputWrite::cached;  // CPU only
};

struct BwdParams {
  Shape3 shape;
  DType dtype;
  const void* grad_w;
  const void* v;
  const void* g;
  const void* norm;  // as returned by the forward (unclamped)
  void* grad_v;
  void* grad_g;
  double eps;
  OutputWrite write_grad_v = OutputWrite::cached;  // CPU only
};

// DoRA's weight norm (fastwn.dora_norm): the norms of the rows or of the columns of
// T = M + L @ R without forming T, where M [rows, cols] is in `dtype` (row i at
// m + i * m_stride elements, columns contiguous) and L [rows, rank], R [rank, cols] are
// contiguous in the accumulation type (float, double for f64). The glue maps W0 + s*B@A
// onto it: L = s*B, R = A for a [out, in] W0 (per_row); L = A^T, R = s*B^T for a W0
// stored [in, out] (fan_in_fan_out, per column). norm is in the accumulation type.
struct LowRankNormParams {
  DType dtype;
  int64_t rows, cols, rank;
  const void* m;
  int64_t m_stride;
  const void* l;
  const void* r;
  bool per_row;
  void* norm;
};

namespace cpu {

// The kernels split work into tasks whose results do not depend on how tasks are
// scheduled; the glue supplies the thread pool (torch's, so torch.set_num_threads holds).
using TaskBody = void (*)(void* ctx, int64_t begin, int64_t end);
using ParallelFor = void (*)(int64_t n, int64_t grain, void* ctx, TaskBody body);

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

// One namespace per ISA; csrc/cpu/kernels.cpp is compiled once into each.
#define FASTWN_DECLARE_ISA(ns)                                  \
  namespace ns {                                                \
  void forward(const FwdParams& p, ParallelFor par);            \
  void backward(const BwdParams& p, ParallelFor par);           \
  void low_rank_norm(const LowRankNormParams& p, ParallelFor par); \
  }
FASTWN_DECLARE_ISA(scalar)
FASTWN_DECLARE_ISA(avx2)
FASTWN_DECLARE_ISA(avx512)
#undef FASTWN_DECLARE_ISA

Isa best_supported_isa();  // from cpuid (and the OS's saved-state support)
// The ISA the next call will use: best_supported_isa(), lowered by FASTWN_CPU_ISA.
// Throws std::invalid_argument for an unknown FASTWN_CPU_ISA value.
Isa active_isa();
const char* isa_name(Isa isa);

// pages.cpp. Whether every page of [p, p + bytes) is backed by memory (anonymous memory
// is not until its first write).
bool resident(const void* p, int64_t bytes);
// Maps the absent pages of [p, p + bytes), writable, a run at a time
// (madvise(MADV_POPULATE_WRITE)). Never changes memory; where the OS cannot, the pages
// fault under the stores as they would without it.
void populate_for_write(void* p, int64_t bytes);

}  // namespace cpu
}  // namespace fastwn
