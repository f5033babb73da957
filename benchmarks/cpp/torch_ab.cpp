// torch_ab OUTER D INNER DTYPE fwd|bwd ROUNDS THREADS CANDIDATE...
//   DTYPE: f32, bf16 or f16; CANDIDATE: torch, scalar, avx2, avx512, or clone (a copy of
//   v into a fresh tensor: the benchmark's "% of a clone" in the same process). A kernel
//   set's name with ":nt" (avx512:nt) writes its output with non-temporal stores
//   (OutputWrite::streamed, which the glue picks for large resident outputs), without it
//   with ordinary ones.
// Built on request by the main CMake project (make torch-ab): build/ab/torch_ab.
//
// PyTorch's CPU weight-norm kernel (at::_weight_norm_interface and its backward) and
// fastwn's kernel sets, called from one C++ process on the same tensors, in rounds that
// run every candidate once in a shuffled order (probe.h's timing loop); prints each
// candidate's median time per call and torch's time over it. No Python, no autograd, no
// dispatcher on fastwn's side: the kernels themselves, each allocating its outputs per
// call as the libraries do (torch: w and its buffers; fastwn: w or grad_v and the norm,
// through at::empty).
// Why in one process: the time of the same code moves by up to 25 % from one process to
// the next on the 2-core VM (the placement of its code and data), so a comparison of two
// processes, as kernel_probe against Python, can show a gap that is not there.
// With TORCH_AB_POOL=1 in the environment, every CPU allocation of 1 MiB or more comes
// from a pool per size, last freed first out: each call's output then lands in the same
// memory whichever library makes it. Without it glibc places them, not always alike
// (wav2vec2's (36864, 128) fp32 backward: torch's grad_v came from one heap block in 8 of
// 12 calls, fastwn's from another in 4 of 6), and the ratio moved with it: 0.87-1.02x
// torch in ten processes of one binary, 0.94-0.99 in five pooled.
// With TORCH_AB_REPEAT=K, each round runs each candidate K times in a row and times all
// but the first: every timed call then finds the caches as the same candidate's previous
// call left them, as in a model that uses one library; without it each call finds what
// another candidate left. (Zen 4 VM, (36864, 128) fp32 backward, avx512 -> avx512:nt,
// medians in us, 1 thread then 2: alternating 3636 -> 3117 and 2050 -> 1504, K = 4 3715
// -> 2927 and 2155 -> 1580; torch 3545, 2013 and 3447, 2131.)
// torch's fused kernels take the first or the last axis only: (1, D, INNER) runs as a
// [D, INNER] weight with dim 0, (OUTER, D, 1) as [OUTER, D] with dim 1. Before timing,
// each fastwn candidate's output is checked against torch's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "../../csrc/kernels.h"
#include "probe.h"

using namespace fastwn;

namespace {

void torch_parallel_for(int64_t n, int64_t grain, void* ctx, cpu::TaskBody body) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

// TORCH_AB_POOL (above): large blocks from per-size free lists, never returned to glibc.
struct PoolAllocator final : c10::Allocator {
  static constexpr size_t kMin = size_t(1) << 20;
  c10::Allocator* base = nullptr;
  static inline std::map<size_t, std::vector<void*>> free_lists;
  static inline std::map<void*, size_t> sizes;
  static void release(void* p) { free_lists[sizes[p]].push_back(p); }
  c10::DataPtr allocate(size_t n) override {
    if (n < kMin) return base->allocate(n);
    auto& list = free_lists[n];
    void* p = nullptr;
    if (!list.empty()) {
      p = list.back();
      list.pop_back();
    } else {
      if (posix_memalign(&p, 4096, n) != 0) throw std::bad_alloc();
      std::memset(p, 0, n);  // resident, as glibc's reused blocks are
      sizes[p] = n;
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

template <class P>
using Kernel = void (*)(const P&, cpu::ParallelFor);

template <class P>
Kernel<P> kernel_of(const std::string& isa, Kernel<P> scalar_fn, Kernel<P> avx2_fn, Kernel<P> avx512_fn) {
  if (isa == "scalar") return scalar_fn;
  if (isa == "avx2") return avx2_fn;
  if (isa == "avx512") return avx512_fn;
  std::fprintf(stderr, "unknown candidate %s (torch, scalar, avx2, avx512, clone)\n", isa.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 9) {
    std::fprintf(stderr, "usage: torch_ab OUTER D INNER f32|bf16|f16 fwd|bwd ROUNDS THREADS CANDIDATE...\n");
    return 2;
  }
  static PoolAllocator pool;  // outlives every tensor: main's locals are destroyed first
  if (const char* e = std::getenv("TORCH_AB_POOL"); e && std::string(e) == "1") {
    pool.base = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&pool, /*priority=*/255);
  }
  const int64_t outer = std::atoll(argv[1]), D = std::atoll(argv[2]), inner = std::atoll(argv[3]);
  const std::string dt = argv[4], dir = argv[5];
  const int rounds = std::atoi(argv[6]);
  at::set_num_threads(std::atoi(argv[7]));
  if (outer != 1 && inner != 1) {
    std::fprintf(stderr, "torch's fused kernels take the first or the last axis: OUTER or INNER must be 1\n");
    return 2;
  }
  const auto st = dt == "bf16" ? at::kBFloat16 : dt == "f16" ? at::kHalf : at::kFloat;
  const DType fdt = dt == "bf16" ? DType::bf16 : dt == "f16" ? DType::f16 : DType::f32;
  const bool forward = dir == "fwd";

  at::manual_seed(0);
  const int64_t rows = outer == 1 ? D : outer, cols = outer == 1 ? inner : D, tdim = outer == 1 ? 0 : 1;
  const at::Tensor v = at::randn({rows, cols}).to(st), grad_w = at::randn({rows, cols}).to(st);
  const at::Tensor g = at::randn(tdim == 0 ? std::vector<int64_t>{D, 1} : std::vector<int64_t>{1, D}).to(st);
  const auto [w_ref, norm_torch] = at::_weight_norm_interface(v, g, tdim);
  const at::Tensor norm = norm_torch.to(at::kFloat).contiguous();  // fastwn's norm is fp32 for bf16/fp16
  const auto [gv_ref, gg_ref] = at::_weight_norm_interface_backward(grad_w, v, g, norm_torch, tdim);
  const Shape3 shape{outer, D, inner};

  std::vector<std::string> names;
  std::vector<std::function<at::Tensor()>> fns;  // each returns its w or grad_v
  for (int a = 8; a < argc; ++a) {
    names.push_back(argv[a]);
    const size_t colon = names.back().find(':');
    const std::string c = names.back().substr(0, colon);
    if (colon != std::string::npos && (names.back().substr(colon) != ":nt" || c == "torch" || c == "clone")) {
      std::fprintf(stderr, "%s: only a kernel set takes a suffix, and only :nt\n", names.back().c_str());
      return 2;
    }
    const OutputWrite write = colon != std::string::npos ? OutputWrite::streamed : OutputWrite::cached;
    if (c == "clone") {
      fns.push_back([&] { return v.clone(); });
    } else if (c == "torch") {
      if (forward) fns.push_back([&] { return std::get<0>(at::_weight_norm_interface(v, g, tdim)); });
      else fns.push_back([&] { return std::get<0>(at::_weight_norm_interface_backward(grad_w, v, g, norm_torch, tdim)); });
    } else if (forward) {
      const auto k = kernel_of<FwdParams>(c, cpu::scalar::forward, cpu::avx2::forward, cpu::avx512::forward);
      fns.push_back([&, k, write] {
        at::Tensor w = at::empty_like(v), n = at::empty({D}, v.options().dtype(at::kFloat));
        k(FwdParams{shape, fdt, v.const_data_ptr(), g.const_data_ptr(), w.data_ptr(), n.data_ptr(), 0.0, false, write},
          torch_parallel_for);
        return w;
      });
    } else {
      const auto k = kernel_of<BwdParams>(c, cpu::scalar::backward, cpu::avx2::backward, cpu::avx512::backward);
      fns.push_back([&, k, write] {
        at::Tensor gv = at::empty_like(v), gg = at::empty({D}, v.options());
        k(BwdParams{shape, fdt, grad_w.const_data_ptr(), v.const_data_ptr(), g.const_data_ptr(), norm.const_data_ptr(),
                    gv.data_ptr(), gg.data_ptr(), 0.0, write},
          torch_parallel_for);
        return gv;
      });
    }
  }

  // The check: a candidate that computed something else would be timed for nothing.
  const at::Tensor ref = (forward ? w_ref : gv_ref).to(at::kDouble);
  for (size_t k = 0; k < fns.size(); ++k) {
    if (names[k] == "clone") continue;
    const double err = (fns[k]().to(at::kDouble) - ref).abs().max().item<double>();
    const double scale = ref.abs().max().item<double>();
    // fp32: the sums' rounding, not a fault, reaches 1.2e-5 in rows of 1M elements.
    const double tol = st == at::kFloat ? 5e-5 : 2e-2;
    if (!(err <= tol * scale)) {
      std::fprintf(stderr, "%s: max |difference| to torch %g (of %g)\n", names[k].c_str(), err, scale);
      return 1;
    }
  }

  std::vector<probe::Candidate> cs;
  for (size_t k = 0; k < fns.size(); ++k) cs.push_back({names[k], [&, k] { fns[k](); }, "", {}});
  const char* repeat_env = std::getenv("TORCH_AB_REPEAT");
  probe::time_rounds(cs, rounds, std::max(1, repeat_env ? std::atoi(repeat_env) : 1));
  double torch_us = 0;
  std::vector<double> med(fns.size());
  for (size_t k = 0; k < fns.size(); ++k) {
    med[k] = probe::median_us(cs[k]);
    if (names[k] == "torch") torch_us = med[k];
  }
  std::printf("%s %s [%lld,%lld,%lld] %s threads:", dir.c_str(), dt.c_str(), (long long)outer, (long long)D,
              (long long)inner, argv[7]);
  for (size_t k = 0; k < fns.size(); ++k) {
    std::printf("  %s %.1f us", names[k].c_str(), med[k]);
    if (torch_us > 0 && names[k] != "torch" && names[k] != "clone") std::printf(" (torch/this %.2f)", torch_us / med[k]);
  }
  std::printf("\n");
  return 0;
}
