// The CUDA schedule (csrc/cuda/plan.h) on the CPU: shapes no GPU test can allocate, the
// one-block-per-row case a 132-SM GPU reaches only at some sizes, and the invariants the
// kernels rely on over many random shapes. Ends with "N passed, M failed".
#include <cstdio>
#include <random>

#include "../../csrc/cuda/plan.h"

using namespace fastwn;
using cuda::Plan;

namespace {

int passed = 0, failed = 0;
void expect(bool ok, const char* what, const Shape3& s, int elem) {
  ok ? ++passed : ++failed;
  if (!ok)
    std::printf("FAIL %s: shape [%lld, %lld, %lld] elem %d\n", what, (long long)s.outer, (long long)s.D,
                (long long)s.inner, elem);
}

// What every kernel launch needs of a plan: the pieces and chunks cover the tensor,
// grids fit their limits, the rows kernel's template covers the row.
void check_invariants(const Shape3& s, int elem, bool aligned, int sms) {
  const Plan p = cuda::make_plan(s, elem, aligned, sms);
  const int vec = 16 / elem;
  if (s.numel() == 0) return expect(p.kind == Plan::kRows, "empty: finish only", s, elem);
  expect(p.vec == 1 || (aligned && s.inner % vec == 0), "vector loads only when aligned", s, elem);
  switch (p.kind) {
    case Plan::kRows:
      expect(s.outer == 1 && (p.rt == 32 || p.rt == cuda::kBlock), "rows: outer 1, warp or block", s, elem);
      expect(int64_t(p.items) * p.rt * p.vec >= s.inner && p.items <= cuda::max_row_items(elem, p.vec),
             "rows: items hold the row, within the cap", s, elem);
      expect(cuda::ceil_div(s.D, cuda::kBlock / p.rt) < (int64_t(1) << 31), "rows: grid", s, elem);
      break;
    case Plan::kSegments:
      expect(p.pieces * p.piece_len >= s.inner && p.piece_len % p.vec == 0, "segments: pieces", s, elem);
      expect(p.chunks * p.chunk_rows >= s.outer && (p.chunks - 1) * p.chunk_rows < s.outer, "segments: chunks", s,
             elem);
      expect(s.D * p.chunks * p.pieces < (int64_t(1) << 31), "segments: grid", s, elem);
      expect(p.K == p.chunks * p.pieces && p.stride == s.D, "segments: partials", s, elem);
      break;
    case Plan::kColumns:
      expect(s.inner < 32 && s.outer > 1, "columns: inner < 32", s, elem);
      expect(p.chunks * p.chunk_rows >= s.outer && p.chunks <= 65535, "columns: chunks", s, elem);
      expect(p.stride == s.D * s.inner && p.fold == s.inner, "columns: partials", s, elem);
      break;
  }
}

}  // namespace

int main() {
  const int sms = 132;  // H100 SXM
  // Rows of 2^30 + 1 elements: the plan used to loop for ever before any launch.
  const Shape3 huge_whole{1, 1, (int64_t(1) << 30) + 1}, huge_rows{1, 2, (int64_t(1) << 30) + 1};
  expect(cuda::make_plan(huge_whole, 4, true, sms).kind == Plan::kSegments, "fp32 (2^30+1,) whole", huge_whole, 4);
  expect(cuda::make_plan(huge_rows, 2, true, sms).kind == Plan::kSegments, "fp16 (2, 2^30+1) dim=0", huge_rows, 2);
  check_invariants(huge_whole, 4, true, sms);
  check_invariants(huge_rows, 2, false, sms);

  // One block per row (256 < packs <= 2048, D >= SMs): the shapes the CUDA tests use.
  struct { Shape3 s; int elem; } block_rows[] = {{{1, 512, 2048}, 4}, {{1, 512, 2047}, 4}, {{1, 256, 8192}, 2}};
  for (auto& c : block_rows) {
    const Plan p = cuda::make_plan(c.s, c.elem, true, sms);
    expect(p.kind == Plan::kRows && p.rt == cuda::kBlock, "rows with a block per row", c.s, c.elem);
  }

  std::mt19937_64 rng(7);
  auto dim = [&](int max_log2) { return int64_t(1) + int64_t(rng() % (uint64_t(1) << (rng() % max_log2))); };
  for (int i = 0; i < 200000; ++i) {
    const Shape3 s{dim(12), dim(16), dim(22)};
    for (int elem : {2, 4, 8}) check_invariants(s, elem, rng() % 2, int(1 + rng() % 160));
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
