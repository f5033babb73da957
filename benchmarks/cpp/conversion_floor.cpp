// conversion_floor ROWS COLS ROUNDS   (AVX-512 CPUs; the vcvtneps2bf16 loops need AVX512-BF16)
// Built by tests/cpp's CMake project on request:
//   cmake -S tests/cpp -B build/probe && cmake --build build/probe --target conversion_floor
//
// The fewest instructions a row-wise weight-norm forward can take per element, timed in
// the caches against a memcpy of the same bytes: what "% of a clone" any kernel with these
// conversions can reach on a CPU. Each row of COLS elements is reduced (load, widen to
// fp32, FMA into four accumulators), then rescaled (load, widen, multiply, narrow, store),
// with vec.h's own loads and stores, the kernels' conversions. Two schedules, as
// cached_rows has them: in turn (reduce row r, then rescale it) and overlapped (row r
// rescaled inside the loop that reduces row r + 1). One thread; every round runs every
// candidate once, in a shuffled order; medians.
// The bf16 stores round as c10 does (vec.h's cvt_bf16: shift, and, two adds, a word
// permute per 16 values). The loops marked vcvtneps2bf16 narrow with the one AVX512-BF16
// instruction instead, which rounds alike but reads fp32 denormals as zero: not c10's
// bits for them, so fastwn does not use it; it is here to show what the rounding costs.
#include <immintrin.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../../csrc/cpu/vec.h"
#include "probe.h"

namespace {

using namespace fastwn;
using V = cpu::FASTWN_ISA::Vec<float>;

// The narrowing store of one full vector of values that are not NaN: vec.h's, as the
// kernels' NoNaN stores (c10's rounding for bf16 without its NaN fix-up), or vcvtneps2bf16.
template <class T, bool kNative>
inline void put(T* p, const V& y) {
  if constexpr (kNative) _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(y.x));
  else if constexpr (std::is_same_v<T, bf16_t>) y.store(p, cpu::FASTWN_ISA::NoNaN{});
  else y.store(p);
}

// Sum of squares of n elements (n a multiple of 4 W), side(j) on every chunk index.
template <class T, class Side>
inline float reduce(const T* p, int64_t n, Side side) {
  constexpr int64_t W = V::W;
  V a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  for (int64_t j = 0; j < n; j += 4 * W) {
    const V x0 = V::load(p + j), x1 = V::load(p + j + W), x2 = V::load(p + j + 2 * W), x3 = V::load(p + j + 3 * W);
    a0 = fma(x0, x0, a0), a1 = fma(x1, x1, a1), a2 = fma(x2, x2, a2), a3 = fma(x3, x3, a3);
    side(j), side(j + W), side(j + 2 * W), side(j + 3 * W);
  }
  return ((a0 + a1) + (a2 + a3)).hsum();
}

template <class T, bool kNative>
[[gnu::noinline]] void forward(const T* v, T* w, int64_t rows, int64_t n, bool overlap) {
  auto rescale = [&](int64_t r, float sumsq) {
    const V k = V::set1(1.f / std::sqrt(sumsq));
    return [=](int64_t j) { put<T, kNative>(w + r * n + j, V::load(v + r * n + j) * k); };
  };
  if (!overlap) {
    for (int64_t r = 0; r < rows; ++r) {
      const auto put_row = rescale(r, reduce(v + r * n, n, [](int64_t) {}));
      for (int64_t j = 0; j < n; j += V::W) put_row(j);
    }
    return;
  }
  float sumsq = reduce(v, n, [](int64_t) {});
  for (int64_t r = 0; r + 1 < rows; ++r) sumsq = reduce(v + (r + 1) * n, n, rescale(r, sumsq));
  const auto put_last = rescale(rows - 1, sumsq);
  for (int64_t j = 0; j < n; j += V::W) put_last(j);
}

// Normal numbers in [0.5, 1.5), stored as T (denormals would take assists and time that).
template <class T>
std::vector<T> random_rows(int64_t count) {
  std::mt19937 rng(1);
  std::vector<T> out(size_t(count), T{});
  for (auto& x : out) {
    const float f = 0.5f + float(rng() % 1000) / 1000.f;
    if constexpr (std::is_same_v<T, float>) x = f;
    else x = cpu::FASTWN_ISA::from_acc<T>(f);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  probe::Args args;
  if (!probe::read_args(argc, argv, "conversion_floor ROWS COLS ROUNDS (COLS a multiple of 64)", 1, 64, args))
    return 2;
  const int64_t rows = args.rows, cols = args.cols, n = rows * cols;
  const int rounds = args.rounds;
  const auto v32 = random_rows<float>(n);
  const auto vbf = random_rows<bf16_t>(n);
  const auto vh = random_rows<f16_t>(n);
  std::vector<float> w32(size_t(n), 1.f);
  std::vector<bf16_t> wbf(size_t(n), bf16_t{1});
  std::vector<f16_t> wh(size_t(n), f16_t{1});

  std::vector<probe::Candidate> cs;
  for (bool overlap : {false, true}) {
    const std::string sched = overlap ? " overlapped" : " in turn";
    cs.push_back({"fp32" + sched, [&, overlap] { forward<float, false>(v32.data(), w32.data(), rows, cols, overlap); }, "memcpy 4 B", {}});
    cs.push_back({"fp16" + sched, [&, overlap] { forward<f16_t, false>(vh.data(), wh.data(), rows, cols, overlap); }, "memcpy 2 B", {}});
    cs.push_back({"bf16 c10 rounding" + sched, [&, overlap] { forward<bf16_t, false>(vbf.data(), wbf.data(), rows, cols, overlap); }, "memcpy 2 B", {}});
    if (__builtin_cpu_supports("avx512bf16"))
      cs.push_back({"bf16 vcvtneps2bf16" + sched, [&, overlap] { forward<bf16_t, true>(vbf.data(), wbf.data(), rows, cols, overlap); }, "memcpy 2 B", {}});
  }
  cs.push_back({"memcpy 4 B", [&] { std::memcpy(w32.data(), v32.data(), size_t(n) * 4); }, "", {}});
  cs.push_back({"memcpy 2 B", [&] { std::memcpy(wbf.data(), vbf.data(), size_t(n) * 2); }, "", {}});

  probe::time_rounds(cs, rounds);
  std::printf("[%lld rows, %lld cols], 1 thread, medians of %d rounds:\n", (long long)rows, (long long)cols, rounds);
  probe::print_medians(cs);
  return 0;
}
