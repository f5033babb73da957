// column_floor ROWS COLS ROUNDS   (x86 with AVX2 and FMA; COLS a multiple of 64, ROWS of 32)
// Built by tests/cpp's CMake project on request:
//   cmake -S tests/cpp -B build/probe && cmake --build build/probe --target column_floor
//
// How fast an fp32 weight-norm forward over columns (v [ROWS, COLS], dim=1: one norm per
// column) can be, one thread, in the caches, and which loop gets there. A column norm
// needs every row before any output, so v is read twice: a reduction (the column sums
// of squares), then the rescale w = v * scale[column]. Timed in one process (shuffled
// rounds, medians), each against a floor:
// - the floors: v read once into register accumulators, and v times one scale (the
//   same bytes as each pass, with nothing of the column structure); a memcpy;
// - the forms a column reduction can take, with vec.h's loads (AVX2, as both libraries'
//   fp32 kernels for this shape): rows r..r+G-1 per pass over a row of column sums (load
//   the sums, G FMAs, store), G = 1 (torch's loop) or 4 (fastwn's); plain, or in blocks
//   of 32 rows the way fastwn bounds the chain of rounding errors (kSumRows: the block's
//   sums start at zero and are added into the column sums after it, fastwn's loop before
//   2026-12-08), or linked (the block's first pass starts from zero, its last adds into
//   the column sums: the same sums, without the zeroing and adding passes; fastwn's loop
//   since, kernels.cpp's Link); and strips of 64 columns whose sums stay in registers
//   down every row (no sums loaded or stored; each row gives a strip 256 B, COLS * 4
//   bytes after the last);
// - the rescale by a per-column scale (both libraries' loop: load v, load the scale,
//   multiply, store);
// - whole forwards: the floor (the two floors in turn), torch's loops (one row per pass,
//   then the rescale), four rows per pass in linked blocks then the rescale (the loops
//   fastwn's kernel runs for an fp32 forward in the caches whose rows are a multiple of
//   4 KiB: plan_columns), and fastwn's kernel itself (cpu::avx2::forward: the AVX-512
//   set hands fp32 columns of rows of a page or more to it).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/cpu/vec.h"
#include "../../csrc/kernels.h"
#include "probe.h"

namespace {

using namespace fastwn;
using V = cpu::FASTWN_ISA::Vec<float>;
constexpr int64_t W = V::W;
constexpr int64_t kBlockRows = 32;  // kernels.cpp's kSumRows

// Sum of squares of v[0, n), n a multiple of 8 W: eight accumulators, enough FMAs in
// flight that only the loads bound it.
[[gnu::noinline]] float read_once(const float* v, int64_t n) {
  V a[8] = {V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero()};
  for (int64_t i = 0; i < n; i += 8 * W) {
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const V x = V::load(v + i + k * W);
      a[k] = fma(x, x, a[k]);
    }
  }
  return (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))).hsum();
}

enum class Pass { first, middle, last };

// One pass of G rows (p, p + cols, ...) over `cols` column sums: from zero (first) or
// from `part`; stored to `part`, or added into `sums` (last).
template <int G, Pass kind>
inline void rows_pass(const float* p, int64_t cols, float* part, float* sums) {
  for (int64_t j = 0; j < cols; j += W) {
    V s = kind == Pass::first ? V::zero() : V::load(part + j);
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const V x = V::load(p + g * cols + j);
      s = fma(x, x, s);
    }
    if constexpr (kind == Pass::last) (V::load(sums + j) + s).store(sums + j);
    else s.store(part + j);
  }
}

enum class Chain { plain, blocks, linked };

// v [rows, cols] and where its column sums go (block: a block's sums, cols of them).
struct Columns {
  const float* v;
  int64_t rows, cols;
  float* sums;
  float* block;
};

template <int G, Chain chain>
[[gnu::noinline]] void sums_of(const Columns& m) {
  const float* v = m.v;
  const int64_t rows = m.rows, cols = m.cols;
  float *sums = m.sums, *block = m.block;
  std::fill(sums, sums + cols, 0.f);
  if constexpr (chain == Chain::plain) {
    for (int64_t r = 0; r < rows; r += G) rows_pass<G, Pass::middle>(v + r * cols, cols, sums, sums);
    return;
  }
  for (int64_t b = 0; b < rows; b += kBlockRows) {
    const float* p = v + b * cols;
    if constexpr (chain == Chain::blocks) {
      std::fill(block, block + cols, 0.f);
      for (int64_t r = 0; r < kBlockRows; r += G) rows_pass<G, Pass::middle>(p + r * cols, cols, block, block);
      for (int64_t j = 0; j < cols; j += W) (V::load(sums + j) + V::load(block + j)).store(sums + j);
    } else {
      rows_pass<G, Pass::first>(p, cols, block, sums);
      for (int64_t r = G; r < kBlockRows - G; r += G) rows_pass<G, Pass::middle>(p + r * cols, cols, block, sums);
      rows_pass<G, Pass::last>(p + (kBlockRows - G) * cols, cols, block, sums);
    }
  }
}

// Strips of 8 W columns, their sums in registers down every row (in blocks of 32 rows,
// also in registers).
[[gnu::noinline]] void column_strips(const Columns& m) {
  const float* v = m.v;
  const int64_t rows = m.rows, cols = m.cols;
  float* sums = m.sums;
  for (int64_t c = 0; c < cols; c += 8 * W) {
    V t[8] = {V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero()};
    for (int64_t b = 0; b < rows; b += kBlockRows) {
      V s[8] = {V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero()};
      for (int64_t r = b; r < b + kBlockRows; ++r) {
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) {
          const V x = V::load(v + r * cols + c + k * W);
          s[k] = fma(x, x, s[k]);
        }
      }
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) t[k] = t[k] + s[k];
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) t[k].store(sums + c + k * W);
  }
}

[[gnu::noinline]] void scales_of(const float* sums, int64_t cols, float* scale) {
  for (int64_t j = 0; j < cols; ++j) scale[j] = 1.f / std::sqrt(sums[j]);
}

[[gnu::noinline]] void rescale_columns(const float* v, int64_t rows, int64_t cols, const float* scale, float* w) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; j += W) (V::load(v + r * cols + j) * V::load(scale + j)).store(w + r * cols + j);
}

[[gnu::noinline]] void rescale_one(const float* v, int64_t n, float k, float* w) {
  const V s = V::set1(k);
  for (int64_t i = 0; i < n; i += W) (V::load(v + i) * s).store(w + i);
}

// 64-byte aligned, as PyTorch's CPU allocator aligns tensors (std::vector's 16 bytes
// would split every other 32-byte load and store across two cache lines).
struct Floats {
  float* p;
  Floats(size_t n, float x) : p(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64))) {
    std::fill(p, p + n, x);
  }
  ~Floats() { std::free(p); }
  Floats(const Floats&) = delete;
  Floats& operator=(const Floats&) = delete;
  float* data() const { return p; }
  float& operator[](size_t i) const { return p[i]; }
};

void serial(int64_t n, int64_t, void* ctx, cpu::TaskBody body) { body(ctx, 0, n); }

}  // namespace

int main(int argc, char** argv) {
  probe::Args args;
  if (!probe::read_args(argc, argv, "column_floor ROWS COLS ROUNDS (ROWS a multiple of 32, COLS of 64)", kBlockRows,
                        8 * W, args))
    return 2;
  const int64_t rows = args.rows, cols = args.cols, n = rows * cols;
  const int rounds = args.rounds;
  // Normal numbers in [0.5, 1.5) (denormals would take assists and time that).
  std::mt19937 rng(1);
  const size_t c = size_t(cols), count = size_t(n);
  Floats v(count, 0.f), w(count, 1.f);
  for (size_t i = 0; i < count; ++i) v[i] = 0.5f + float(rng() % 1000) / 1000.f;
  Floats sums(c, 0.f), block(c, 0.f), scale(c, 0.f), ones(c, 1.f), norm(c, 0.f);
  float sink = 0;

  const char* kRead = "read v";
  const char* kScale = "v * one scale";
  const char* kFloor = "forward floor";
  const Columns cv{v.data(), rows, cols, sums.data(), block.data()};
  auto sums_then = [&](void (*sum_fn)(const Columns&)) {
    return [&, sum_fn] {
      sum_fn(cv);
      sink += sums[0];
    };
  };
  // A whole forward: sum_fn's reduction, the scales, the rescale.
  auto forward_after = [&](void (*sum_fn)(const Columns&)) {
    return [&, reduce = sums_then(sum_fn)] {
      reduce();
      scales_of(sums.data(), cols, scale.data());
      rescale_columns(v.data(), rows, cols, scale.data(), w.data());
    };
  };
  std::vector<probe::Candidate> cs = {
      {kRead, [&] { sink += read_once(v.data(), n); }, "", {}},
      {"sums, 1 row/pass (torch)", sums_then(sums_of<1, Chain::plain>), kRead, {}},
      {"sums, 1 row/pass, blocks", sums_then(sums_of<1, Chain::blocks>), kRead, {}},
      {"sums, 1 row/pass, linked", sums_then(sums_of<1, Chain::linked>), kRead, {}},
      {"sums, 4 rows/pass", sums_then(sums_of<4, Chain::plain>), kRead, {}},
      {"sums, 4 rows/pass, blocks", sums_then(sums_of<4, Chain::blocks>), kRead, {}},
      {"sums, 4 rows/pass, linked", sums_then(sums_of<4, Chain::linked>), kRead, {}},
      {"sums, 64-column strips", sums_then(column_strips), kRead, {}},
      {kScale, [&] { rescale_one(v.data(), n, 0.5f, w.data()); }, "", {}},
      {"v * scale[column]", [&] { rescale_columns(v.data(), rows, cols, ones.data(), w.data()); }, kScale, {}},
      {"memcpy v -> w", [&] { std::memcpy(w.data(), v.data(), size_t(n) * 4); }, "", {}},
      {kFloor, [&] { rescale_one(v.data(), n, 1.f / std::sqrt(read_once(v.data(), n)), w.data()); }, "", {}},
      {"forward, torch's loops", forward_after(sums_of<1, Chain::plain>), kFloor, {}},
      {"forward, 4 rows/pass linked", forward_after(sums_of<4, Chain::linked>), kFloor, {}},
      {"forward, fastwn's kernel",
       [&] {
         const FwdParams p{Shape3{rows, cols, 1}, DType::f32, v.data(), ones.data(), w.data(), norm.data(), 0.0};
         cpu::avx2::forward(p, serial);
       },
       kFloor, {}},
  };
  probe::time_rounds(cs, rounds);
  std::printf("[%lld rows, %lld cols] fp32 columns, 1 thread, medians of %d rounds:\n", (long long)rows,
              (long long)cols, rounds);
  probe::print_medians(cs);
  return sink == 12345.f ? 1 : 0;  // sink keeps the reductions' results live
}
