// CPU backend of every fastwn operator: torch's thread pool and the ISA choice around
// the raw-pointer kernels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

#include "../kernels.h"
#include "../weight_norm_glue.h"

namespace fastwn::cpu {
namespace {

void torch_parallel_for(int64_t n, int64_t grain, void* ctx, TaskBody body) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

// The largest cache cpu0 shares, as the kernel describes it in sysfs, or 0. glibc's
// sysconf can answer with the whole package instead: 384 MiB on a Zen 5 VM whose cores
// share a 32 MiB L3.
int64_t cache_bytes_from_sysfs() {
  int64_t top_level = 0, bytes = 0;
  for (int i = 0;; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size");
    int64_t level = 0;
    std::string type, size;
    if (!(level_file >> level) || !(type_file >> type) || !(size_file >> size)) return bytes;
    if (type == "Instruction" || level < top_level) continue;
    const int64_t n = std::strtoll(size.c_str(), nullptr, 10);  // "32768K"
    const int shift = size.back() == 'K' ? 10 : size.back() == 'M' ? 20 : size.back() == 'G' ? 30 : 0;
    top_level = level;
    bytes = n << shift;
  }
}

int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t llc = cache_bytes_from_sysfs();
    if (llc <= 0) llc = sysconf(_SC_LEVEL3_CACHE_SIZE);  // 0 or -1 where glibc cannot tell
    return std::max<int64_t>(llc, int64_t(32) << 20);
  }();
  return bytes;
}

// How the kernel writes w or grad_v (OutputWrite), from where its pages stand.
// - Non-temporal stores skip reading each output line before writing it, a third of the
//   traffic, but leave nothing in the caches. Measured on the 2-core VM (480 MiB L3):
//   into freshly mapped pages they lose (4096x4096 fp32: 0.71x torch vs 0.98x), since the
//   page fault zeroes each page into the cache and ordinary stores then hit it; into
//   resident memory they win the op (1.5-1.7x torch) but cost the model when the next
//   layer would have read w from the cache (wav2vec2 pos-conv step: 0.88x vs 0.99x). So
//   only into resident memory, and only outputs larger than `stream_above` (Output):
// - w: 3/4 of the last-level cache, not all of it: the cache does not keep that much of
//   one output for its reader anyway (a C probe on the Zen 4 VM, 32 MiB L3: 16 MiB read
//   again at 4x the speed of 32 MiB), and 32 MiB bf16/fp16 outputs then pay the read of
//   every line. Zen 4 VM, 2 threads, resident memory (glibc's heap), one Python process,
//   shuffled rounds, stores that stream above 32 MiB -> 24 MiB: (4096, 4096) bf16
//   forward 92 -> 109 % of a clone's time, fp16 78 -> 108, dim=1 57 -> 67 and 55 -> 63;
//   forward + backward 7.0 -> 5.5 ms, 5.5 -> 4.7, dim=1 10.0 -> 8.6, 10.1 -> 8.9. (16 MiB
//   read the same.)
// - grad_v: 1/4 of the last-level cache, where the backward's three tensors of that
//   size (grad_w, v, grad_v) outgrow 3/4 of it. Its reader is the optimizer, after the
//   rest of the backward (or autograd adding it to an existing .grad at once, which
//   then reads it from memory), so the cache has little to keep it for; ordinary stores
//   read each of its lines first and push grad_w and v, which the second pass reads
//   again, out of the L3. Zen 4 VM (32 MiB L3), backward (fp32 where not said), libtorch
//   and fastwn in one process, each timed on its 2nd-4th consecutive call (torch_ab,
//   TORCH_AB_REPEAT=4, avx512 against avx512:nt), medians, ordinary -> non-temporal
//   stores (us, 1 thread then 2): (36864, 128) columns (18 MiB) 3797 -> 3178 and 1629
//   -> 1291 (torch 3633, 1624); (2048, 2048) rows (16 MiB) 2110 -> 1424 and 1097 ->
//   717; (4096, 1024) columns (16 MiB) 2997 -> 2547 and 1164 -> 902; (2560, 1024) (10
//   MiB) rows 945 -> 574 and 344 -> 322, columns 1336 -> 1007 and 849 -> 710; bf16
//   (36864, 128) (9 MiB) 1228 -> 1137 and 503 -> 492. bf16/fp16 rows, whose loops
//   convert as much as they move, went either way at 1 thread and gained at 2: (4096,
//   2048) (16 MiB) bf16 1738 -> 2012, 1665 -> 1910, 3631 -> 3709 and 1527 -> 1277, fp16
//   1799 -> 2010, 2004 -> 2058, 3025 -> 2657 and 1871 -> 1508; (2048, 4096) bf16 3251
//   -> 2862 and 2017 -> 2017 (1 thread); columns gained or tied ((4096, 2048) bf16 4255
//   -> 3914 and 1952 -> 1726, fp16 3961 -> 3984 and 2975 -> 2660). From 8 MiB down it
//   goes either way at 2 threads, where the caches of both cores hold more: (2048,
//   1024) rows 857 -> 498 but 198 -> 239 (247 -> 298 in another run), columns 1063 ->
//   755 and 465 -> 466; (1280, 1024) rows 234 -> 219 and 96 -> 187; (1024, 1024) rows
//   166 -> 174 and 82 -> 150, columns 284 -> 262 and 150 -> 217. In Python, one process
//   switching between the two rules call by call, wav2vec2's (768, 48, 128) dim=2
//   forward + backward (medians, ms, 2 threads then 1): fp32 in glibc's heap 3.84 ->
//   3.28 and 6.10 -> 5.48 (torch 3.78, 5.76), 3.82 -> 3.24 and 5.95 -> 5.48 in another
//   process (torch 3.79, 5.99); bf16 within 4 %; fresh huge pages (populated, never
//   streamed) the same.
// - Fresh pages (glibc maps large blocks anew and unmaps them on free) are populated a
//   block at a time instead of faulting page by page: the zeroing is the same, the
//   traps are not. populate_for_write skips whatever pages are resident after all.
// The residency test is a syscall: 2-3 us on the VM even for one page, so it runs only
// from kTestMinBytes on, where it is under 1 % of writing the output; smaller outputs
// (mostly recycled heap blocks, resident) get ordinary stores untested. Both thresholds
// are at least kTestMinBytes (last_level_cache_bytes() is at least 32 MiB).
enum class Output { w, grad_v };

OutputWrite output_write(const at::Tensor& out, Output which) {
  constexpr int64_t kTestMinBytes = int64_t(8) << 20;
  const int64_t bytes = out.numel() * int64_t(out.element_size());
  if (bytes < kTestMinBytes) return OutputWrite::cached;
  if (!resident(out.const_data_ptr(), bytes)) return OutputWrite::populate;
  const int64_t llc = last_level_cache_bytes();
  const int64_t stream_above = which == Output::w ? llc / 4 * 3 : llc / 4;
  return bytes > stream_above ? OutputWrite::streamed : OutputWrite::cached;
}

Isa checked_active_isa() {
  try {
    return active_isa();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
  return Isa::scalar;  // unreachable
}

// Runs the kernel set of the active ISA: the one place that choice is made.
template <class P>
using Kernel = void (*)(const P&, ParallelFor);
template <class P>
void run_active_isa(const P& p, Kernel<P> scalar_fn, Kernel<P> avx2_fn, Kernel<P> avx512_fn) {
  const Kernel<P> by_isa[] = {scalar_fn, avx2_fn, avx512_fn};  // indexed by Isa
  by_isa[int(checked_active_isa())](p, torch_parallel_for);
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& v, const at::Tensor& g, int64_t dim, double eps) {
  FwdCall c = prepare_forward(v, g, dim, eps);
  c.params.write_w = output_write(c.w, Output::w);
  run_active_isa(c.params, scalar::forward, avx2::forward, avx512::forward);
  return {c.w, c.norm};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_w, const at::Tensor& v, const at::Tensor& g,
                                            const at::Tensor& norm, int64_t dim, double eps) {
  BwdCall c = prepare_backward(grad_w, v, g, norm, dim, eps);
  c.params.write_grad_v = output_write(c.grad_v, Output::grad_v);
  run_active_isa(c.params, scalar::backward, avx2::backward, avx512::backward);
  return {c.grad_v, c.grad_g};
}

at::Tensor dora_norm(const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling) {
  LowRankNormCall c = prepare_dora_norm(weight, lora_A, lora_B, scaling);
  run_active_isa(c.params, scalar::low_rank_norm, avx2::low_rank_norm, avx512::low_rank_norm);
  return c.norm;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastwn, CPU, m) {
  m.impl("weight_norm_fwd", &forward);
  m.impl("weight_norm_bwd", &backward);
  m.impl("dora_norm", &dora_norm);
}

}  // namespace fastwn::cpu
