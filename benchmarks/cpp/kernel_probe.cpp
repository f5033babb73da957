// kernel_probe ISA DTYPE OUTER D INNER REPS [fwd|bwd|mul|sum|copy]   (DTYPE: f32, bf16 or f16;
// PROBE_OFFSETS=V,GW,OUT places the tensors, PROBE_THP=1 maps them in huge pages; see below)
// Built by tests/cpp's CMake project on request:
//   cmake -S tests/cpp -B build/probe && cmake --build build/probe --target kernel_probe
// Runs one CPU kernel (or a plain broadcast multiply / column sum of the same data, the
// floor the kernel's passes are measured against, or a memcpy of v's bytes to the
// output: the benchmark's clone without the allocation) REPS times and prints the median time
// per call. Inputs are random and resident (touched before timing). One thread, or
// PROBE_THREADS=2: the kernel's tasks split between two std::threads as torch splits them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sys/mman.h>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "../../csrc/kernels.h"

using namespace fastwn;

namespace {

void serial(int64_t n, int64_t, void* ctx, cpu::TaskBody body) { body(ctx, 0, n); }

void two_threads(int64_t n, int64_t, void* ctx, cpu::TaskBody body) {
  std::thread other([&] { body(ctx, n / 2, n); });
  body(ctx, 0, n / 2);
  other.join();
}

template <class F>
double median_us(int reps, F f) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: kernel_probe scalar|avx2|avx512 f32|bf16|f16 OUTER D INNER REPS [fwd|bwd|mul|sum|copy]\n");
    return 2;
  }
  const std::string isa = argv[1], dt = argv[2], what = argc > 7 ? argv[7] : "fwd";
  const Shape3 s{std::atoll(argv[3]), std::atoll(argv[4]), std::atoll(argv[5])};
  const int reps = std::atoi(argv[6]);
  const DType t = dt == "bf16" ? DType::bf16 : dt == "f16" ? DType::f16 : DType::f32;
  const size_t es = t == DType::f32 ? 4 : 2, n = size_t(s.numel()), D = size_t(s.D);
  // v, grad_w and the output at PROBE_OFFSETS="V,GW,OUT" bytes past a page boundary (0,0,0
  // without it): where the buffers sit relative to each other modulo 4 KiB decides which
  // loads share L1 sets or alias a pending store's address bits.
  long long off[3] = {0, 0, 0};
  if (const char* e = std::getenv("PROBE_OFFSETS")) std::sscanf(e, "%lld,%lld,%lld", &off[0], &off[1], &off[2]);
  // PROBE_THP=1: each buffer starts on a 2 MiB boundary and asks for transparent huge
  // pages before its first touch (the benchmark's thp mode, for torch's allocator).
  const bool thp = std::getenv("PROBE_THP") && std::atoi(std::getenv("PROBE_THP")) == 1;
  const size_t align = thp ? size_t(2) << 20 : 4096;
  std::vector<unsigned char> mem[3];
  std::span<unsigned char> bufs[3];
  for (int k = 0; k < 3; ++k) {
    mem[k].reserve(n * es + 2 * align + size_t(off[k]));  // reserve: no touch before madvise
    const uintptr_t base = (reinterpret_cast<uintptr_t>(mem[k].data()) + align - 1) & ~uintptr_t(align - 1);
    if (thp) madvise(reinterpret_cast<void*>(base), (n * es + size_t(off[k]) + align - 1) & ~(align - 1), MADV_HUGEPAGE);
    mem[k].resize(n * es + 2 * align + size_t(off[k]));
    bufs[k] = {reinterpret_cast<unsigned char*>(base) + off[k], n * es};
  }
  const std::span<unsigned char> v = bufs[0], gw = bufs[1], out = bufs[2];
  std::vector<unsigned char> g(D * es), gout(D * es);
  std::vector<float> norm(D), fv(n), fg(D), fo(n);
  std::mt19937 rng(1);
  // Normal numbers in [0.5, 1.5) (denormals would take microcode assists and time that).
  auto fill = [&](auto& buf) {
    for (size_t i = 0; i < buf.size() / es; ++i) {
      const float x = 0.5f + float(rng() % 1000) / 1000.f;
      if (es == 4) std::memcpy(&buf[i * 4], &x, 4);
      else if (t == DType::bf16) std::memcpy(&buf[i * 2], reinterpret_cast<const unsigned char*>(&x) + 2, 2);  // the top half
      else {
        const _Float16 h = _Float16(x);
        std::memcpy(&buf[i * 2], &h, 2);
      }
    }
  };
  fill(v), fill(gw), fill(g);
  for (size_t i = 0; i < n; ++i) fv[i] = 0.5f + float(rng() % 1000) / 1000.f;
  for (size_t d = 0; d < D; ++d) fg[d] = 1.f + float(d % 7);
  std::memset(out.data(), 1, out.size());
  std::memset(fo.data(), 1, fo.size() * 4);

  const cpu::ParallelFor par = std::getenv("PROBE_THREADS") && std::atoi(std::getenv("PROBE_THREADS")) == 2
                                   ? two_threads : serial;
  auto fwd = [&] {
    const FwdParams p{s, t, v.data(), g.data(), out.data(), norm.data(), 0.0};
    if (isa == "avx512") cpu::avx512::forward(p, par);
    else if (isa == "avx2") cpu::avx2::forward(p, par);
    else cpu::scalar::forward(p, par);
  };
  auto bwd = [&] {
    const BwdParams p{s, t, gw.data(), v.data(), g.data(), norm.data(), out.data(), gout.data(), 0.0};
    if (isa == "avx512") cpu::avx512::backward(p, par);
    else if (isa == "avx2") cpu::avx2::backward(p, par);
    else cpu::scalar::backward(p, par);
  };
  // The floors, fp32, compiled at -O3 for the build's default ISA (what torch's
  // TensorIterator loops amount to): out = v * g[d] over [outer, D, inner], and the
  // column sums of squares.
  // (inner == 1, the column case, has its own loops: the compiler vectorises over d.)
  auto mul = [&] {
    float* __restrict__ o_ = fo.data();
    const float* __restrict__ v_ = fv.data();
    const float* __restrict__ g_ = fg.data();
    if (s.inner == 1) {
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t d = 0; d < s.D; ++d) o_[o * s.D + d] = v_[o * s.D + d] * g_[d];
      return;
    }
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t d = 0; d < s.D; ++d)
        for (int64_t i = 0; i < s.inner; ++i) {
          const size_t k = size_t((o * s.D + d) * s.inner + i);
          o_[k] = v_[k] * g_[d];
        }
  };
  auto sum = [&] {
    std::vector<float> acc(D, 0.f);
    float* __restrict__ a_ = acc.data();
    const float* __restrict__ v_ = fv.data();
    if (s.inner == 1) {
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t d = 0; d < s.D; ++d) a_[d] += v_[o * s.D + d] * v_[o * s.D + d];
    } else {
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t d = 0; d < s.D; ++d)
          for (int64_t i = 0; i < s.inner; ++i) {
            const float x = v_[size_t((o * s.D + d) * s.inner + i)];
            a_[size_t(d)] += x * x;
          }
    }
    norm[0] = acc[0];
  };
  double us = 0;
  if (what == "fwd") us = median_us(reps, fwd);
  else if (what == "bwd") {
    fwd();  // the norms the backward reads (zeros would make every coefficient inf or NaN)
    us = median_us(reps, bwd);
  }
  else if (what == "mul") us = median_us(reps, mul);
  else if (what == "copy") us = median_us(reps, [&] { std::memcpy(out.data(), v.data(), v.size()); });
  else us = median_us(reps, sum);
  const double bytes = double(n) * (what == "sum" ? 4 : what == "mul" ? 8 : what == "bwd" ? 3 * es : 2 * es);
  std::printf("%s %s %s [%lld,%lld,%lld]: %.1f us, %.1f GB/s\n", what.c_str(), isa.c_str(), dt.c_str(),
              (long long)s.outer, (long long)s.D, (long long)s.inner, us, bytes / us / 1e3);
  return 0;
}
