// How the CUDA kernels (kernels.cu) split a weight-norm problem: plain host C++, so the
// C++ tests check it on the CPU (tests/cpp/plan_test.cpp) for shapes no GPU test reaches.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../kernels.h"

namespace fastwn::cuda {

constexpr int kBlock = 256;              // threads per block, every kernel
// A rows-kernel thread holds up to 8 packs of 16 bytes (a row of 2048 packs per block).
// Unaligned float64 rows (8-byte packs) hold at most 4 per thread: with 8, ptxas spilled
// 4 bytes in the forward kernel on sm_90 and sm_100. Longer rows take the segments path.
constexpr int kMaxItemsUnalignedF64 = 4;

constexpr int max_row_items(int elem_bytes, int vec) {
  return elem_bytes == 8 && vec == 1 ? kMaxItemsUnalignedF64 : 8;
}

struct Plan {
  enum Kind { kRows, kSegments, kColumns } kind;
  int rt, items, vec;            // rows (vec also for segments)
  int apply_vec;                 // elementwise pass
  int64_t chunks, pieces;        // two-phase: outer chunks x inner pieces
  int64_t chunk_rows, piece_len;
  int64_t K, stride, fold;       // finish: sum partial[k * stride + d * fold + i]
  int64_t partials() const { return kind == kRows ? 0 : K * stride; }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The schedule for [outer, D, inner] of elem_bytes-wide elements on `sms` multiprocessors;
// `aligned`: every pointer is 16-byte aligned (vector loads of 16 bytes).
inline Plan make_plan(const Shape3& s, int elem_bytes, bool aligned, int sms) {
  const int kVec = 16 / elem_bytes;
  Plan pl{};
  pl.apply_vec = aligned ? kVec : 1;
  pl.vec = aligned && s.inner % kVec == 0 ? kVec : 1;
  const int64_t target_blocks = 4 * int64_t(sms);
  if (s.numel() == 0) {  // only the finish step runs (norm 0); no partial sums
    pl.kind = Plan::kRows;
    return pl;
  }
  const int64_t packs = ceil_div(s.inner, pl.vec);
  // Rows that fit in registers (a row of 2^30 packs must not reach the doubling below:
  // items * rt would overflow an int and the loop never end).
  const int max_items = max_row_items(elem_bytes, pl.vec);
  if (s.outer == 1 && packs <= int64_t(kBlock) * max_items) {
    const bool warp_per_row = packs <= 32 * max_items;
    pl.rt = warp_per_row ? 32 : kBlock;
    pl.items = 1;
    while (int64_t(pl.items) * pl.rt < packs) pl.items *= 2;
    const int64_t blocks = ceil_div(s.D, kBlock / pl.rt);
    // And fill the GPU: one pass. Otherwise split the rows into segments.
    if (blocks >= sms || warp_per_row) {
      pl.kind = Plan::kRows;
      return pl;
    }
  }
  if (s.outer == 1 || s.inner >= 32) {
    pl.kind = Plan::kSegments;
    pl.chunks = std::clamp(ceil_div(target_blocks, s.D), int64_t(1), s.outer);
    pl.pieces = std::clamp(ceil_div(target_blocks, s.D * pl.chunks), int64_t(1), ceil_div(s.inner, 4 * kBlock));
    pl.piece_len = ceil_div(ceil_div(s.inner, pl.pieces), pl.vec) * pl.vec;
    pl.pieces = ceil_div(s.inner, pl.piece_len);
    pl.chunk_rows = ceil_div(s.outer, pl.chunks);
    pl.chunks = ceil_div(s.outer, pl.chunk_rows);
    pl.K = pl.chunks * pl.pieces;
    pl.stride = s.D;
    pl.fold = 1;
    return pl;
  }
  pl.kind = Plan::kColumns;
  const int64_t M = s.D * s.inner, tiles = ceil_div(M, 32);
  pl.chunks = std::clamp(ceil_div(target_blocks, tiles), int64_t(1), std::min<int64_t>(ceil_div(s.outer, 64), 65535));
  pl.chunk_rows = ceil_div(s.outer, pl.chunks);
  pl.chunks = ceil_div(s.outer, pl.chunk_rows);
  pl.K = pl.chunks;
  pl.stride = M;
  pl.fold = s.inner;
  return pl;
}

}  // namespace fastwn::cuda
