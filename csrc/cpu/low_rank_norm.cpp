// DoRA's norm on the CPU (kernels.h, LowRankNormParams), compiled once per ISA.
//
// T = M + L @ R is formed a register tile at a time (kTileRows rows x two vectors of
// columns), squared and summed, and never stored: M is read once from memory, L and R
// (rank x (rows + cols), small) from cache. Each tile costs `rank` multiply-adds per
// element, so for large ranks the kernel is bound by arithmetic rather than by memory;
// the low-rank identity ||M||^2 + 2<M, LR> + ||LR||^2 would cost the same rank
// multiply-adds per element of M (for M R^T) and cancels where M ~ -LR, so this form is
// used. Every norm is summed by one task in a fixed order: bit-identical results at any
// thread count.
#include <algorithm>
#include <cmath>
#include <memory>

#include "kernel_util.h"

namespace fastwn::cpu::FASTWN_ISA {
namespace {

// AVX2 has 16 vector registers: 4 rows x 2 vectors of accumulators, 4 row sums, two R
// vectors and a broadcast of L.
constexpr int kTileRows = 4;
constexpr int64_t kRowsPerTask = 16;           // per-row mode: rows of M per task
constexpr int64_t kRBlockBytes = 128 << 10;    // per-row mode: R's column block, kept in L2
constexpr int64_t kColumnVectorsPerTask = 32;  // per-column mode: columns per task / W

// R packed in panels of 2W columns, each panel [rank][2W] contiguous and zero-padded
// past the last column: the k loop then reads one stream instead of `rank` rows a
// row-stride apart (which, for strides of a few KiB, fall into the same L1 sets).
template <class A>
std::unique_ptr<A[]> pack_panels(const A* r, int64_t rank, int64_t cols) {
  constexpr int64_t W2 = 2 * Vec<A>::W;
  const int64_t panels = ceil_div(cols, W2);
  std::unique_ptr<A[]> packed(new A[std::max<int64_t>(panels * rank * W2, 1)]());
  for (int64_t q = 0; q < panels; ++q)
    for (int64_t k = 0; k < rank; ++k)
      for (int64_t c = q * W2; c < std::min(cols, (q + 1) * W2); ++c)
        packed[(q * rank + k) * W2 + c - q * W2] = r[k * cols + c];
  return packed;
}

// acc[j][h] = T[j, c + h W ...] for rows j < NR and the 2W columns of one panel, where
// `n` of them exist (Full: n = 2W); missing lanes are 0 (zero M loads, zero padding).
template <int NR, bool Full, class T, class A>
inline void tile(const T* m, int64_t ms, const A* l, int64_t rank, const A* panel, int64_t n,
                 Vec<A> (&acc)[kTileRows][2]) {
  using V = Vec<A>;
  constexpr int64_t W = V::W;
  const int64_t n0 = Full ? W : std::min(n, W), n1 = Full ? W : std::max<int64_t>(n - W, 0);
  for (int j = 0; j < NR; ++j) {
    acc[j][0] = Full ? V::load(m + j * ms) : ld<V>(m + j * ms, n0);
    acc[j][1] = Full ? V::load(m + j * ms + W) : n1 ? ld<V>(m + j * ms + W, n1) : V::zero();
  }
  for (int64_t k = 0; k < rank; ++k) {
    const V r0 = V::load(panel + k * 2 * W), r1 = V::load(panel + k * 2 * W + W);
    for (int j = 0; j < NR; ++j) {
      const V b = V::set1(l[j * rank + k]);
      acc[j][0] = fma(b, r0, acc[j][0]);
      acc[j][1] = fma(b, r1, acc[j][1]);
    }
  }
}

// Calls f.template operator()<NR>() with NR = nr as a compile-time constant.
template <class F>
inline void with_rows(int nr, F&& f) {
  static_assert(kTileRows == 4);
  switch (nr) {
    case 4: return f.template operator()<4>();
    case 3: return f.template operator()<3>();
    case 2: return f.template operator()<2>();
    default: return f.template operator()<1>();
  }
}

template <class T>
void per_row(const LowRankNormParams& p, ParallelFor par) {
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int64_t W2 = 2 * V::W;
  const T* m = static_cast<const T*>(p.m);
  const A* l = static_cast<const A*>(p.l);
  A* norm = static_cast<A*>(p.norm);
  const int64_t rank = p.rank, cols = p.cols;
  const auto panels = pack_panels(static_cast<const A*>(p.r), rank, cols);
  const int64_t block = std::max(W2, kRBlockBytes / int64_t(sizeof(A) * std::max<int64_t>(rank, 1)) / W2 * W2);

  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t r0 = t * kRowsPerTask, r1 = std::min(p.rows, r0 + kRowsPerTask);
      V sum[kRowsPerTask];
      for (auto& s : sum) s = V::zero();
      for (int64_t c0 = 0; c0 < cols; c0 += block) {
        const int64_t c1 = std::min(cols, c0 + block);
        for (int64_t row = r0; row < r1; row += kTileRows) {
          with_rows(int(std::min<int64_t>(kTileRows, r1 - row)), [&]<int NR>() {
            V acc[kTileRows][2];
            V* s = sum + (row - r0);
            auto add_squares = [&] {
              for (int j = 0; j < NR; ++j) s[j] = fma(acc[j][1], acc[j][1], fma(acc[j][0], acc[j][0], s[j]));
            };
            const T* mrow = m + row * p.m_stride;
            const A* lrow = l + row * rank;
            int64_t c = c0;
            for (; c + W2 <= c1; c += W2) {
              tile<NR, true>(mrow + c, p.m_stride, lrow, rank, panels.get() + c * rank, W2, acc);
              add_squares();
            }
            if (c < c1) {
              tile<NR, false>(mrow + c, p.m_stride, lrow, rank, panels.get() + c * rank, c1 - c, acc);
              add_squares();
            }
          });
        }
      }
      for (int64_t row = r0; row < r1; ++row) norm[row] = std::sqrt(sum[row - r0].hsum());
    }
  };
  parallel(par, ceil_div(p.rows, kRowsPerTask), 1, body);
}

template <class T>
void per_column(const LowRankNormParams& p, ParallelFor par) {
  using A = acc_t<T>;
  using V = Vec<A>;
  constexpr int64_t W = V::W, W2 = 2 * W, kCols = kColumnVectorsPerTask * W;
  const T* m = static_cast<const T*>(p.m);
  const A* l = static_cast<const A*>(p.l);
  A* norm = static_cast<A*>(p.norm);
  const int64_t rank = p.rank, cols = p.cols;
  const auto panels = pack_panels(static_cast<const A*>(p.r), rank, cols);

  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t c0 = t * kCols, c1 = std::min(cols, c0 + kCols);
      V sum[kColumnVectorsPerTask];
      for (auto& s : sum) s = V::zero();
      for (int64_t row = 0; row < p.rows; row += kTileRows) {
        with_rows(int(std::min<int64_t>(kTileRows, p.rows - row)), [&]<int NR>() {
          V acc[kTileRows][2];
          const T* mrow = m + row * p.m_stride;
          const A* lrow = l + row * rank;
          for (int64_t c = c0; c < c1; c += W2) {
            const A* panel = panels.get() + c * rank;  // c is a multiple of 2W
            if (c + W2 <= c1) tile<NR, true>(mrow + c, p.m_stride, lrow, rank, panel, W2, acc);
            else tile<NR, false>(mrow + c, p.m_stride, lrow, rank, panel, c1 - c, acc);
            V* s = sum + (c - c0) / W;
            for (int j = 0; j < NR; ++j) {
              s[0] = fma(acc[j][0], acc[j][0], s[0]);
              s[1] = fma(acc[j][1], acc[j][1], s[1]);
            }
          }
        });
      }
      for (int64_t c = c0; c < c1; c += W) {
        A lanes[W];
        sum[(c - c0) / W].store(lanes);
        for (int64_t i = 0; i < std::min(W, c1 - c); ++i) norm[c + i] = std::sqrt(lanes[i]);
      }
    }
  };
  parallel(par, ceil_div(cols, kCols), 1, body);
}

}  // namespace

void low_rank_norm(const LowRankNormParams& p, ParallelFor par) {
  const int64_t n = p.per_row ? p.rows : p.cols;
  if (n == 0) return;
  visit_dtype(p.dtype, [&](auto t) {
    using T = decltype(t);
    if (p.rows == 0 || p.cols == 0) {  // empty sums
      std::fill_n(static_cast<acc_t<T>*>(p.norm), n, acc_t<T>(0));
    } else if (p.per_row) {
      per_row<T>(p, par);
    } else {
      per_column<T>(p, par);
    }
  });
}

}  // namespace fastwn::cpu::FASTWN_ISA
