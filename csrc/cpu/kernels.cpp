// Weight-norm forward and backward on the CPU, compiled once per ISA (FASTWN_ISA).
//
// Both directions have the same shape: a per-d reduction over [outer, D, inner]
// (sum v^2 forward, sum grad_w * v backward), a per-d scalar step (norm and scale, or
// the two coefficients of grad_v and grad_g), then an elementwise pass. One driver,
// run(), schedules that for any (outer, D, inner); the ops say what is reduced and
// what is written. Task boundaries depend on the shape only, never on the thread
// count, so results are bit-identical whatever torch.set_num_threads says.
#include <algorithm>
#include <atomic>
#include <bit>
#include <memory>
#include <numeric>
#include <type_traits>

#include "../kernels.h"
#include "kernel_util.h"

namespace fastwn::cpu::FASTWN_ISA {
namespace {

// Rows up to this many bytes are reduced and rescaled while still in cache (one read
// from memory); longer rows are split into pieces and read twice.
constexpr int64_t kRowCacheBytes = int64_t(1) << 20;
constexpr int64_t kPiece = 16384;        // elements per reduction piece of a long segment
constexpr int64_t kTargetTasks = 64;     // reduction tasks to aim for (load balance)
// Elements per column-reduction task below 64 tasks: every task adds a row of partial
// sums to write and to add up, and a small tensor gains nothing from more tasks than
// threads. (1024, 1024) columns fp32, 2 threads, Zen 3 VM: 64 tasks 0.233 ms, 4 tasks 0.174.
constexpr int64_t kReduceGrain = 262144;
// A column task sums its rows this many at a time before adding them to its partial
// sums: the longest chain of serial adds, which bounds the rounding error, is then this
// plus the task's blocks, however many rows a task has.
constexpr int64_t kSumRows = 32;
constexpr int64_t kMinChunkRows = 16;    // keeps the partial-sum buffer <= 1/16 of v
constexpr int64_t kColumnBlock = 4096;   // accumulators per column task: stays in L1/L2
constexpr int64_t kApplyGrain = 32768;   // elements per elementwise task
constexpr int64_t kPage = 4096;          // bytes: a stream the prefetcher follows (plan_columns)
// Inputs up to this many bytes are taken to be in the caches when a kernel starts (they
// fit the L2s and the L3 with room to spare): plan_columns and plan_rows.
constexpr int64_t kCacheResident = int64_t(4) << 20;
constexpr int64_t kL1Bytes = 32768;      // the L1 data cache of a core (Zen 3, Zen 4)
// Output bytes a task maps per populate_for_write call (OutputWrite::populate): enough
// pages to amortise the call, few enough that they are still in cache, just zeroed, when
// the stores arrive. Into fresh 4 KiB pages, 2 threads, Zen 3 VM, 64 MiB (a C probe:
// madvise then stores, against the stores faulting page by page): blocks of 64 KiB to
// 2 MiB all took 20-24 ms against 27-30 ms; one call for a thread's whole half then
// ordinary stores, 25-27 ms. Into 2 MiB pages (THP) either way took 9-11 ms, and there
// the call is pure cost: after the first block of a huge page the rest is resident, and
// each call still asks mincore (0.9 us on the Zen 4 VM). So blocks of a huge page; before,
// 256 KiB (rows) and one per 128 KiB task (columns): fp32 wav2vec2 (36864, 128) made 144
// calls per forward. Zen 4 VM, fp32, 2 threads, one Python process, shuffled rounds,
// medians (ms), 2 MiB vs 128 KiB vs 512 KiB blocks: huge pages (THP_MEM_ALLOC_ENABLE=1)
// (4096, 4096) forward 6.65 / 7.14 / 7.07, (11008, 4096) forward 15.9 / 17.3 / 16.3,
// (4096, 4096) dim=1 forward 8.82 / 9.29 / 9.03; 4 KiB pages, forward + backward:
// (4096, 4096) 37.5 / 39.1 / 38.5, dim=1 44.6 / 46.6 / 45.8, (11008, 4096) 92.4 / 99.5 /
// 96.0. (wav2vec2 in 4 KiB pages swung 1.9-4.0 ms with any block: where glibc put w.)
constexpr int64_t kPopulateBytes = int64_t(2) << 20;

// Readies outputs ahead of the stores of one task range [ready, end): upto(i) prepares
// [ready, i) if it is not yet, and at least `block` elements while at it.
template <class Op>
struct PrepareAhead {
  const Op& op;
  int64_t ready, end, block;
  void upto(int64_t i) {
    if (i <= ready) return;
    const int64_t to = std::min(end, std::max(i, ready + block));
    op.prepare(ready, to - ready);
    ready = to;
  }
};

// The OutputWrite an op's stores and prepare() follow.
template <class T>
struct Output {
  T* p;
  OutputWrite write;
  // Maps the absent pages of elements [i, i + n) before they are written.
  void prepare(int64_t i, int64_t n) const {
    if (write == OutputWrite::populate) populate_for_write(p + i, n * int64_t(sizeof(T)));
  }
  bool streamed() const { return write == OutputWrite::streamed; }
};

// st of elements [i, i + n) of an output: streamed when the output is and the chunk is
// a full, aligned vector. tag: NoNaN or nothing, for full vectors (a tail chunk takes the
// conversion that handles NaN either way).
template <class V, class T, class... Tag>
inline void st_out(const V& v, const Output<T>& out, int64_t i, int64_t n, Tag... tag) {
  constexpr uintptr_t kAlign = uintptr_t(V::W) * sizeof(T);
  T* p = out.p + i;
  if (n != V::W) st(v, p, n);
  else if (out.streamed() && reinterpret_cast<uintptr_t>(p) % kAlign == 0) st_full<true>(v, p, tag...);
  else st_full<false>(v, p, tag...);
}

// The divisor of g: max(norm, eps), the norm first rounded to T for bf16/fp16 (see
// kernels.h: so that g = ||v|| as stored scales v by exactly 1). A norm beyond T's range
// is used unrounded.
template <class T, class A>
A divisor(A n, A eps) {
  if constexpr (!std::is_same_v<T, A>) {
    const A rounded = to_acc(from_acc<T>(n));
    if (std::isfinite(rounded)) n = rounded;
  }
  return std::max(n, eps);  // std::max(NaN, eps) is NaN: a NaN norm stays NaN
}

// An op says what one vector chunk of elements [i, i + c) contributes and writes; the
// driver below owns every loop:
//   acc(a, i, c)                   a + the chunk's reduction terms
//   finish(d, total)               the per-d step once slice d is reduced; returns
//                                  whether slice d's outputs cannot be NaN, so that
//                                  put may take vec.h's NoNaN (see with_nan_tag)
//   finish_slices(d0, c, totals)   finish for slices [d0, d0 + c), c <= W, their totals
//                                  in one vector: the square roots and divisions in
//                                  vectors, the rest as finish does it, bit for bit
//   coef(d), coef_columns(d0, c)   per-d coefficients, broadcast or one per lane
//   put(i, c, k[, NoNaN{}])        writes the chunk's outputs with coefficients k
//   prepare(i, n)                  readies outputs [i, i + n) for writing (Output)
// The loops below take the op by value: the intrinsics' vector types may alias
// anything, so after each store the compiler would reload every pointer of an op it
// reaches through a reference; a local copy whose address never escapes stays in registers.

// Forward: norm[d] = ||v[:, d, :]||, w = v * g[d] / max(norm[d], eps).
// The outputs of slice d, v * scale[d], cannot be NaN when norm[d] and scale[d] are
// finite: a finite sum of squares has only finite terms, so every v of the slice is
// finite, and a product of finite numbers is never NaN (it may overflow to inf, which the
// rounding handles).
template <class T>
struct FwdOp {
  using A = acc_t<T>;
  using V = vec_t<T>;
  struct Coef { V s; };
  const T* v;
  const T* g;
  Output<T> w;
  A* norm;
  A eps;
  A* scale;  // workspace [D]
  bool round_scale;  // kernels.h: PyTorch's composite rounding for bf16/fp16

  static constexpr int kStreams = 1;  // tensors the reduction reads
  static constexpr bool kWidens = sizeof(T) < sizeof(A);  // bf16/fp16: loads convert to fp32
  V acc(V a, int64_t i, int64_t c) const {
    const V x = ld<V>(v + i, c);
    return fma(x, x, a);
  }
  bool finish(int64_t d, A sumsq) const {
    const A n = std::sqrt(sumsq);
    return store_slice(d, n, to_acc(g[d]) / divisor<T>(n, eps));
  }
  bool finish_slices(int64_t d0, int64_t c, V sumsq) const {
    if constexpr (std::is_same_v<T, A>) {
      // fp32/fp64, a full vector: all of it in vectors, the same values bit for bit
      // (divisor is max(n, eps) here; scale is not rounded).
      if (c == V::W) {
        const V n = sqrt(sumsq), s = V::load(g + d0) / max(V::set1(eps), n);
        n.store(norm + d0);
        s.store(scale + d0);
        return all_finite(n, s);
      }
    }
    A n[V::W], div[V::W], s[V::W];
    sqrt(sumsq).store(n);
    std::fill(div, div + V::W, A(1));  // lanes past c are never stored: a harmless 1
    for (int64_t j = 0; j < c; ++j) div[j] = divisor<T>(n[j], eps);
    (ld<V>(g + d0, c) / V::load(div)).store(s);
    bool finite = true;
    for (int64_t j = 0; j < c; ++j) finite &= store_slice(d0 + j, n[j], s[j]);
    return finite;
  }
  // norm[d] = n and scale[d] = s (rounded to T where torch rounds it); whether both are finite.
  bool store_slice(int64_t d, A n, A s) const {
    norm[d] = n;
    scale[d] = round_scale ? to_acc(from_acc<T>(s)) : s;
    return std::isfinite(n) && std::isfinite(scale[d]);
  }
  Coef coef(int64_t d) const { return {V::set1(scale[d])}; }
  Coef coef_columns(int64_t d0, int64_t c) const { return {ld<V>(scale + d0, c)}; }
  template <class... Tag>
  void put(int64_t i, int64_t c, const Coef& k, Tag... tag) const {
    st_out(ld<V>(v + i, c) * k.s, w, i, c, tag...);
  }
  void prepare(int64_t i, int64_t n) const { w.prepare(i, n); }
};

// Backward: dot[d] = <grad_w, v>[d]; grad_g = dot / n_eff;
// grad_v = a[d] * grad_w + b[d] * v with a = g / n_eff and, unless the norm was
// clamped by eps, b = -g * dot / norm^3 (the projection away from w).
// The outputs of slice d cannot be NaN when dot, a and b are finite. A finite dot has
// only finite terms grad_w * v, and such a term has finite factors (inf * 0 is NaN, inf
// times anything else inf), whatever norm the caller passed. Then a * grad_w is finite or
// inf, and fma(b, v, that) adds the exact, finite b * v to it: finite or inf, never NaN.
// That needs the multiply-add fused, as the one vector that takes NoNaN (AVX2's VecBf16)
// has it: a rounded b * v could overflow to -inf against an inf.
template <class T>
struct BwdOp {
  using A = acc_t<T>;
  using V = vec_t<T>;
  struct Coef { V a, b; };
  const T* gw;
  const T* v;
  const T* g;
  const A* norm;
  Output<T> gv;
  T* gg;
  A eps;
  A* coef_a;  // workspace [D]
  A* coef_b;  // workspace [D]

  static constexpr int kStreams = 2;
  static constexpr bool kWidens = sizeof(T) < sizeof(A);
  V acc(V a, int64_t i, int64_t c) const { return fma(ld<V>(gw + i, c), ld<V>(v + i, c), a); }
  bool finish(int64_t d, A dot) const {
    const A n = norm[d];
    const A n_eff = divisor<T>(n, eps);
    return store_slice(d, dot, n, to_acc(g[d]) / n_eff, dot / n_eff, dot / n);
  }
  bool finish_slices(int64_t d0, int64_t c, V dot) const {
    if constexpr (std::is_same_v<T, A>) {
      // fp32/fp64, a full vector: all of it in vectors, as FwdOp's, the same values bit
      // for bit (n_eff is max(n, eps); keep_ge gives store_slice's 0 for a norm below
      // eps or NaN).
      if (c == V::W) {
        const V n = V::load(norm + d0), e = V::set1(eps), n_eff = max(e, n);
        const V a = V::load(g + d0) / n_eff, b = keep_ge(n, e, -a * (dot / n) / n);
        (dot / n_eff).store(gg + d0);
        a.store(coef_a + d0);
        b.store(coef_b + d0);
        return all_finite(dot, a, b);
      }
    }
    A dots[V::W], n[V::W], n_eff[V::W], a[V::W], dot_eff[V::W], dot_n[V::W];
    const V nv = ld<V>(norm + d0, c);
    nv.store(n);
    std::fill(n_eff, n_eff + V::W, A(1));  // lanes past c are never stored: a harmless 1
    for (int64_t j = 0; j < c; ++j) n_eff[j] = divisor<T>(n[j], eps);
    const V ne = V::load(n_eff);
    dot.store(dots);
    (ld<V>(g + d0, c) / ne).store(a);
    (dot / ne).store(dot_eff);
    (dot / nv).store(dot_n);
    bool finite = true;
    for (int64_t j = 0; j < c; ++j) finite &= store_slice(d0 + j, dots[j], n[j], a[j], dot_eff[j], dot_n[j]);
    return finite;
  }
  // grad_g[d] = dot / n_eff and the coefficients of slice d from a = g / n_eff and dot / n;
  // whether the outputs of slice d cannot be NaN (above).
  bool store_slice(int64_t d, A dot, A n, A a, A dot_eff, A dot_n) const {
    gg[d] = from_acc<T>(dot_eff);
    coef_a[d] = a;
    // Written as a * (dot / n) / n so that large norms do not overflow n^3.
    coef_b[d] = n >= eps ? -a * dot_n / n : A(0);
    return std::isfinite(dot) && std::isfinite(a) && std::isfinite(coef_b[d]);
  }
  Coef coef(int64_t d) const { return {V::set1(coef_a[d]), V::set1(coef_b[d])}; }
  Coef coef_columns(int64_t d0, int64_t c) const { return {ld<V>(coef_a + d0, c), ld<V>(coef_b + d0, c)}; }
  template <class... Tag>
  void put(int64_t i, int64_t c, const Coef& k, Tag... tag) const {
    st_out(fma(k.b, ld<V>(v + i, c), k.a * ld<V>(gw + i, c)), gv, i, c, tag...);
  }
  void prepare(int64_t i, int64_t n) const { gv.prepare(i, n); }
};

// reduce is flattened: every call in it (an op's acc, the side lambda, put and the
// stores under them) is inlined. GCC's heuristics otherwise left some out of line, so
// that each chunk paid a call with its vectors passed through memory, and which ones moved
// with unrelated edits. kernel_probe (1024, 1024) rows, callgrind, instructions per call:
// bf16 backward 4.16M with BwdOp::put out of line, 2.22M flattened; fp32 and fp16 rows
// 7-16 % more after an unrelated edit (c1f0344), back to before flattened; forcing put
// alone inline pushed the row loop's lambda out of line instead (bf16 forward 3.16M, 1.76M
// flattened). Flattening for_chunks as well changed no count by more than 5 %; it is
// left off because the benchmark's fp16 column forwards read 0.91-0.99x torch with it in
// one quick run and 0.99-1.26x without (not resolved: their counts are the same).
#define FASTWN_FLATTEN [[gnu::flatten]]

// f(j, c) over [0, n) in chunks of c = W lanes, then one tail chunk. The full chunks
// pass W as a constant, so ld/st compile to plain unmasked moves in the body.
template <class V, class F>
inline void for_chunks(int64_t n, F f) {
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) f(j, V::W);
  if (j < n) f(j, n - j);
}

struct NoSide {
  void operator()(int64_t, int64_t) const {}
};

// The terms of elements [off, off + n) summed with four accumulators (hiding the FMA
// latency). side(j, c) runs on the same chunk indices inside the loop: cached_rows
// rescales the previous bf16/fp16 row there, so that row's conversions overlap this
// row's memory reads. side never changes the sum.
template <class Op, class Side = NoSide>
FASTWN_FLATTEN typename Op::A reduce(Op op, int64_t off, int64_t n, Side side = {}) {
  using V = typename Op::V;
  constexpr int64_t W = V::W;
  V a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    a0 = op.acc(a0, off + j, W);
    a1 = op.acc(a1, off + j + W, W);
    a2 = op.acc(a2, off + j + 2 * W, W);
    a3 = op.acc(a3, off + j + 3 * W, W);
    side(j, W), side(j + W, W), side(j + 2 * W, W), side(j + 3 * W, W);
  }
  for (; j + W <= n; j += W) a0 = op.acc(a0, off + j, W), side(j, W);
  if (j < n) a1 = op.acc(a1, off + j, n - j), side(j, n - j);
  return ((a0 + a1) + (a2 + a3)).hsum();
}

// Where a pass of the column reduction starts and where its sums go. The passes over one
// block of rows (kSumRows) link: the first starts from zero, the middle ones carry the
// block's sums in part, and the last adds them into the task's sums (acc); a block of one
// pass does both. The same sums, bit for bit, as zeroing part, adding every pass into it
// and then part into acc, without those two extra passes over the sums.
enum class Link { first, middle, last, only };

// One pass: rows [0, rows) of the elements off + r * stride + j, j in [0, n), added to
// the sums L says. The rows share one load and store of the sums; the FMAs still chain
// in row order, so the sums are those of a row-by-row loop, bit for bit, whatever the
// grouping. kRows > 0: the pass has that many rows, a constant for which the compiler
// unrolls the row loop.
template <int64_t kRows, Link L, class Op>
void reduce_columns(Op op, int64_t off, int64_t stride, int64_t rows, int64_t n, typename Op::A* part,
                    typename Op::A* acc) {
  using V = typename Op::V;
  const int64_t count = kRows > 0 ? kRows : rows;
  for_chunks<V>(n, [&](int64_t j, int64_t c) {
    V a = L == Link::first || L == Link::only ? V::zero() : ld<V>(part + j, c);
    for (int64_t r = 0; r < count; ++r) a = op.acc(a, off + r * stride + j, c);
    if constexpr (L == Link::last || L == Link::only) st(ld<V>(acc + j, c) + a, acc + j, c);
    else st(a, part + j, c);
  });
}

// One block of rows ([0, rows), at most kSumRows) into acc, kRows rows per pass and the
// rest in a last, shorter one. The row count is a constant in every full pass: with a
// runtime count, each row's chunk (one load and FMA) also paid a compare, a branch and two
// adds. Kernel instructions per call (callgrind, kernel_probe, 1 thread), runtime count
// -> unrolled: (36864, 128) columns fp16 forward 10.4M -> 7.8M, fp32 11.9M -> 8.8M;
// (1024, 1024) fp32 forward 1.55M -> 1.03M, backward 2.22M -> 1.46M; bf16 8-11 % fewer.
// In perf's cpu-clock samples of the (36864, 128) fp16 forward, the reduction went from
// 1.03-1.12x the samples of torch's to 0.72-0.74x.
// The block's passes run in one function and link (Link): before, each pass was a call
// of its own and the block's sums were zeroed before and added into acc after. Zen 4 VM,
// (1024, 1024) columns fp32 forward, 1 thread, the AVX2 kernel in benchmarks/cpp/
// column_floor's process (rdtsc around the reduction, medians of 60-80 rounds, kcycles;
// before -> this, seven runs): 139.7-144.4 -> 131.7-135.5 (quiet host), 175.6-179.4 ->
// 164.2-169.3 (busy); the same loops written out in the probe took 129.7-133.6 and
// 162.6-163.8. Groups of one row (short rows from memory) gain the most instructions:
// callgrind, AVX2, per call, (36864, 128) columns fp32 forward 19.2M -> 9.7M, backward
// 20.8M -> 12.3M; their time less so (torch_ab's process, AVX-512, torch/this: forward
// at 1 thread 1.00-1.19 -> 0.98-1.15, lower in 11 of 13 runs; backward with streamed
// grad_v 0.96-1.35 -> 1.04-1.43, higher in all six).
template <int64_t kRows, class Op>
void reduce_column_passes(Op op, int64_t off, int64_t stride, int64_t rows, int64_t n, typename Op::A* part,
                          typename Op::A* acc) {
  if (rows == kRows) return reduce_columns<kRows, Link::only>(op, off, stride, rows, n, part, acc);
  if (rows < kRows) return reduce_columns<0, Link::only>(op, off, stride, rows, n, part, acc);
  reduce_columns<kRows, Link::first>(op, off, stride, kRows, n, part, acc);
  int64_t r = kRows;
  for (; rows - r > kRows; r += kRows)
    reduce_columns<kRows, Link::middle>(op, off + r * stride, stride, kRows, n, part, acc);
  if (rows - r == kRows) return reduce_columns<kRows, Link::last>(op, off + r * stride, stride, kRows, n, part, acc);
  reduce_columns<0, Link::last>(op, off + r * stride, stride, rows - r, n, part, acc);
}

// reduce_column_passes for the group sizes plan_columns gives.
template <class Op>
void reduce_column_block(Op op, int64_t off, int64_t stride, int64_t rows, int64_t group, int64_t n,
                         typename Op::A* part, typename Op::A* acc) {
  switch (group) {
    case 8: return reduce_column_passes<8>(op, off, stride, rows, n, part, acc);
    case 4: return reduce_column_passes<4>(op, off, stride, rows, n, part, acc);
    case 2: return reduce_column_passes<2>(op, off, stride, rows, n, part, acc);
    default: return reduce_column_passes<1>(op, off, stride, rows, n, part, acc);
  }
}

// How many rows the column reduction takes per pass over its accumulators. Long rows (at
// least a page per input) are streams the hardware prefetcher follows: 8 rows per pass.
// Short rows from beyond the L2 (inputs over 4 MiB) take groups of about 1 KiB of each
// input (512 B where the loads do not widen: fp32, fp64): fewer streams in flight. Zen 3
// VM, kernel_probe, medians of 15 rounds that alternate with 8 rows and no prefetch (ms,
// that -> this, with 1 KiB groups that also prefetched the rows 4 KiB ahead):
//   (36864, 128) columns, 1 thread: fp32 fwd 6.2 -> 5.1, bwd 10.5 -> 7.9;
//     bf16 fwd 3.5 -> 3.1, bwd 5.0 -> 4.3; 2 threads: fp32 fwd 3.5 -> 3.0, bwd 6.6 -> 5.2;
//   (9216, 512) columns, 1 thread: fp32 fwd 5.2 -> 4.6, bf16 bwd 7.5 -> 5.5.
// The 512 B groups come from the Zen 4 VM (avx512, 1 thread, 10 alternating rounds,
// medians): (36864, 128) columns fp32 forward 2.18 ms with 2 rows per group (1 KiB),
// 1.72 ms with 1, which won all 10 rounds, 5 of 6 at 2 threads, and 6 of 6 with the avx2
// kernel; 4 or 8 rows read 2.0-2.1 ms; the prefetch made no difference at 1 or 2 rows.
// There bf16 and fp16 go the other way (1 row per group 0.79 and 0.72 ms, 4 rows 0.67
// and 0.56: their widening loads make the accumulators' load and store per group the
// larger share), and (73728, 64) fp32 read the same with 1, 2 or 4 rows. fp64 rows of 128
// are 1 KiB, 1 row per group with either size; forced to 2 rows they read 2.14-2.46 ms,
// 1 row 1.91-2.04 (3 rounds). 1 row was not measured on the Zen 3.
// The software prefetch is gone: on the Zen 4 VM, without it was faster in 66 of 78 pairs
// of medians, by 1-15 % (torch_ab, both builds in one process, 20-30 rounds, three
// batches of (36864, 128), (9216, 512), (73728, 64), (17000, 130) columns, fp32, bf16,
// fp16, both directions, 1 and 2 threads; ms, with -> without):
// (36864, 128) fp32 backward 5.02 -> 4.43, 4.56 -> 4.08, 4.21 -> 3.91 (1 thread), forward
// 2.39 -> 2.33; bf16 forward 0.98 -> 0.92, backward 2.23 -> 1.99 (0.61 -> 0.53 at 2
// threads); (9216, 512) fp32 backward 6.35 -> 5.27; (17000, 130) bf16 backward 0.45 ->
// 0.39 (2 threads); the losses within 7 % ((17000, 130) fp32 backward 1.34 -> 1.44).
// The rows of such a group are adjacent in memory (the block spans the row), one stream.
// A tensor that stays in cache between calls gains nothing from small groups and pays
// for the accumulators' extra trips: (1024, 1024) columns fp16 (2 MiB), 2 threads,
// 0.218 ms with 8 rows, 0.286 ms with this. (4096, 4096) columns keep 8 rows in the
// forward (the L1 rule below halves that for the backward): 1 row per pass took 1.9x as
// long there (16 KiB of accumulators compete with the stream for L1), and prefetching 8
// rows ahead 1.3-1.5x.
// A group must also fit the L1's ways. Each chunk loads one line from each row of the
// group and input; rows whose stride is a multiple of 4 KiB (the L1's sets times its line:
// 64 x 64 B on Zen 3 and Skylake alike) land in one set, whose 8 ways then cannot hold
// every line until its second chunk. So at most 8 such lines per set: with a stride period
// of p rows (rows before the set repeats), rows <= p * (8 / streams). kernel_probe, Zen 3
// VM, 1 thread, medians of 15 alternating rounds: (1024, 1024) columns fp32 backward
// (2 inputs: 16 lines per set at 8 rows) 1.29 ms -> 0.71 ms at 4 rows; at (1024, 1000)
// columns, whose rows spread over the sets, 8 rows take 0.76 ms. A forward at 16 rows
// (16 lines) took 1.6-2.2x as long as at 8. The accumulators add a line to each set: from
// the caches, where the rows' lines come back fast and a conflict miss is a share of the
// time, that line counts (4 rows forward, 2 backward); from memory it does not, since
// halving the group doubles the accumulators' trips. Zen 4 VM, torch_ab, medians (us)
// with 8/4 rows -> 4/2 (two runs): (1024, 1024) columns fp32 (in the L3), 1 thread,
// forward 157 -> 155 and 158 -> 155, backward 309 -> 297 and 307 -> 297; 2 threads,
// forward 86 -> 84 and 84 -> 82, backward 147 -> 139; (4096, 4096) (64 MiB), 8/4 rows
// against 4/2: forward 5.5 vs 6.7 ms (2 threads), 10.5 vs 11.1 (1 thread), backward 8.7
// vs 8.9 and 15.3 vs 15.5; bf16 alike.
// A backward in the caches whose loads do not widen (fp32, fp64) takes one row per pass
// where a row of each input and the sums fit the L1 together, as torch's loop does. Two
// rows per pass issue fewer loads and stores and still ran slower there; the cause is
// not isolated (the sums stay in the L1 either way). Zen 4 VM, fp32, 2 rows -> 1 (8 ->
// 1 for (1000, 1000)): torch_ab (kernels, pooled, both builds in one process, three
// runs, torch's time over fastwn's) faster in 22 of 26 pairs, (1024, 1024) 1 thread
// 1.01 -> 1.02, 1.00 -> 1.02, 1.01 -> 1.01, (512, 2048) 0.98 -> 1.03, 0.98 -> 1.02, 0.98 ->
// 1.02, (2048, 512) 0.94 -> 1.00, 0.96 -> 1.01, 0.95 -> 0.99, 2 threads 1.02 -> 1.03, 1.08
// -> 1.05, 1.07 -> 1.09, (512, 2048) 1.09 -> 1.03, 1.11 -> 1.15, 1.12 -> 1.16; in Python's
// forward + backward (one process, shuffled rounds, both rules switched per call),
// (1024, 1024) 0.975 -> 1.021 and 0.973 -> 1.005 at 1 thread, 1.038 -> 1.067 and 1.009 ->
// 1.040 at 2. Rows of 16 KiB lost with one row ((256, 4096) 1.065 -> 1.034, 1.203 ->
// 1.170; (64, 4096) 1.144 -> 1.112), and so did bf16 and fp16 (8 of 12 pairs slower:
// their widening loads are the bound, as above). The forward gained nothing at (1024,
// 1024) with one row (torch_ab 1.05 -> 1.03 and 1.05 -> 1.02 at 1 thread).
int64_t plan_columns(int64_t row_bytes, int64_t stride_bytes, int streams, int64_t input_bytes, bool widens) {
  const int64_t group_bytes = widens ? 1024 : 512;
  constexpr int64_t kL1SetSpan = 4096, kL1Ways = 8, kMaxRows = 8;
  const int64_t period = kL1SetSpan / std::gcd(stride_bytes, kL1SetSpan);
  const bool in_cache = input_bytes <= kCacheResident;
  // In the caches the accumulators' line counts too: one way fewer (see above). The
  // count is rounded down to a power of two, the group sizes reduce_column_block unrolls.
  const int64_t ways = in_cache ? kL1Ways - 1 : kL1Ways;
  const int64_t fit = std::clamp<int64_t>(std::bit_floor(uint64_t(period * (ways / streams))), 1, kMaxRows);
  if (in_cache && !widens && streams > 1 && (streams + 1) * row_bytes <= kL1Bytes) return 1;
  if (row_bytes >= kPage || in_cache) return fit;
  return std::clamp(group_bytes / (row_bytes * streams), int64_t(1), fit);
}

// f(NoNaN{}) when the outputs cannot be NaN (finish() said so), else f(). Outputs so
// marked are stored without the NaN fix-up of the bf16 rounding, bit for bit the same:
// on AVX2 that is 4 of the 23 vector operations per 16 bf16 elements of the forward.
// kernel_probe, (1024, 1024) rows bf16 forward, 1 thread, Zen 3 VM: callgrind 15.4 ->
// 13.1 instructions per 8 elements; 8 alternating rounds in a quiet minute 185-188 ->
// 154-157 us, (128, 1024) (in the L2) 22.9-23.4 -> 19.1-19.5 us. Cached rows decide per
// row, the other paths once for the tensor. The loops in f are compiled both ways, so the
// choice costs a branch per row or segment: one per chunk, tried first, doubled the
// (128, 1024) forward's time.
template <class F>
inline void with_nan_tag(bool no_nan, F f) {
  if (no_nan) f(NoNaN{});
  else f();
}

template <class Op, class... Tag>
void apply(Op op, int64_t off, int64_t n, int64_t d, Tag... tag) {
  const auto k = op.coef(d);
  for_chunks<typename Op::V>(n, [&](int64_t j, int64_t c) { op.put(off + j, c, k, tag...); });
}

template <class Op, class... Tag>
void apply_columns(Op op, int64_t off, int64_t n, int64_t d0, Tag... tag) {
  for_chunks<typename Op::V>(n, [&](int64_t j, int64_t c) { op.put(off + j, c, op.coef_columns(d0 + j, c), tag...); });
}

// Rows [b, e) of length n, each reduced and then rescaled while it is in cache (one read
// from memory). The output is prepared `block` elements (or a row) ahead of the stores.
// Two schedules (plan_rows picks one):
// - in turn: row d is reduced, then rescaled, then row d + 1: the reduction's loop only
//   loads, one stream the prefetcher follows, and the rescale reads the row from the L1;
// - overlapped: row d + 1 is reduced in the loop that rescales row d.
// Flattened, as reduce: finish, coef and the loops stay inline.
template <class Op>
FASTWN_FLATTEN void cached_rows(Op op, int64_t b, int64_t e, int64_t n, bool overlap, int64_t block) {
  if (b >= e) return;
  PrepareAhead<Op> out{op, b * n, e * n, block};
  auto prepare_rows = [&](int64_t row_end) { out.upto(row_end * n); };
  if (!overlap) {
    for (int64_t d = b; d < e; ++d) {
      const bool no_nan = op.finish(d, reduce(op, d * n, n));
      prepare_rows(d + 1);
      with_nan_tag(no_nan, [&](auto... tag) { apply(op, d * n, n, d, tag...); });
    }
    return;
  }
  bool no_nan = op.finish(b, reduce(op, b * n, n));  // for the row the loop rescales next
  for (int64_t d = b; d + 1 < e; ++d) {
    const auto k = op.coef(d);
    const int64_t cur = d * n;
    prepare_rows(d + 1);
    with_nan_tag(no_nan, [&](auto... tag) {
      no_nan = op.finish(d + 1, reduce(op, cur + n, n, [&](int64_t j, int64_t c) { op.put(cur + j, c, k, tag...); }));
    });
  }
  prepare_rows(e);
  with_nan_tag(no_nan, [&](auto... tag) { apply(op, (e - 1) * n, n, e - 1, tag...); });
}

// Whether cached_rows overlaps the rows (see there). Overlapping pays where the kernel is
// compute-bound: bf16/fp16 (the loads widen, the stores narrow) in the caches, whose
// conversions then run beside the other row's loads. From memory the plain order wins:
// the reduction alone keeps more loads in flight. So does it for fp32 rows that fit the
// L1 with their output, but not for longer ones: their rescale reads the L2 anyway, and
// overlapped, those reads hide behind the next row's. Zen 4 VM, 1 thread, libtorch and both
// schedules in one process (benchmarks/cpp/torch_ab.cpp; in turn vs overlapped, medians, us):
//   fp32 in cache: fwd (1024, 1024) 98 vs 111, (256, 2304) 52 vs 64, (4096, 256) 117 vs
//     108; bwd (1024, 1024) 171 vs 193, (256, 2304) 95 vs 132, (4096, 256) 161 vs 186;
//   fp32 from memory (64 MiB; outputs resident): fwd (4096, 4096) 6339 vs 7929, (16384,
//     1024) 5001 vs 7449, (2048, 8192) a tie; bwd (4096, 4096) 11639 vs 10533, (2048,
//     8192) 11813 vs 10338, (16384, 1024) 9514 vs 10134;
//   fp16 in cache: fwd (1024, 1024) 103 vs 85, (256, 4096) 89 vs 71, bwd (1024, 1024) 121
//     vs 115; bf16 within 2 % either way;
//   fp16 from memory (32 MiB): fwd (4096, 4096) 2459 vs 3674, (8192, 2048) 1929 vs 3473,
//     bwd 4701 vs 6531, 3438 vs 6090; bf16 alike (fwd 2391 vs 3732, bwd 4471 vs 7422).
// (The overlapped schedule came from the Zen 3 VM, where it had been the faster one.)
bool plan_rows(int64_t row_bytes, int streams, int64_t input_bytes, bool widens) {
  const bool in_cache = input_bytes <= kCacheResident;
  if (widens) return in_cache;
  return !in_cache && (streams + 1) * row_bytes > kL1Bytes;
}

// Whether run() takes a shape row by row (cached_rows): the first axis, rows short enough
// to stay in cache between their reduction and their rescale.
bool rows_in_cache(const Shape3& s, int64_t elem_bytes) {
  return s.outer == 1 && (s.inner <= kPiece || (s.D >= 16 && s.inner * elem_bytes <= kRowCacheBytes));
}

// plan_rows for Op's rows of shape s, elements of elem_bytes (run() and own() ask it).
template <class Op>
bool overlap_rows(const Shape3& s, int64_t elem_bytes) {
  return plan_rows(s.inner * elem_bytes, Op::kStreams, s.numel() * elem_bytes, Op::kWidens);
}

// How the reduction is split: C chunks of outer x P pieces of inner x NB blocks of D.
// Task (c, p, b) writes partial[c][p][d] for the d of block b, so every partial sum
// has exactly one writer and the final sum over (c, p) runs in a fixed order.
struct ReducePlan {
  int64_t C, P, NB;
  int64_t chunk_rows, piece_len, block_len;
};

ReducePlan plan_reduction(const Shape3& s) {
  ReducePlan r;
  const int64_t tasks =
      s.inner == 1 ? std::clamp(ceil_div(s.numel(), kReduceGrain), int64_t(1), kTargetTasks) : kTargetTasks;
  r.P = ceil_div(s.inner, kPiece);
  r.C = std::clamp(ceil_div(tasks, r.P), int64_t(1), std::max(int64_t(1), s.outer / kMinChunkRows));
  r.NB = std::clamp(ceil_div(tasks, r.C * r.P), int64_t(1), s.D);
  if (s.inner == 1) {
    // Column blocks: wide enough to vectorise well, narrow enough to stay in cache.
    r.NB = std::clamp(r.NB, ceil_div(s.D, kColumnBlock), std::max(int64_t(1), s.D / 64));
  }
  r.chunk_rows = ceil_div(s.outer, r.C);
  r.piece_len = ceil_div(s.inner, r.P);
  r.block_len = ceil_div(s.D, r.NB);
  return r;
}

template <class Op>
void run(const Op& op, const Shape3& s, int64_t elem_bytes, ParallelFor par) {
  using A = typename Op::A;
  const int64_t D = s.D, inner = s.inner, N = s.numel();
  if (D == 0) return;
  if (N == 0) {  // every slice is empty: norm 0
    for (int64_t d = 0; d < D; ++d) op.finish(d, A(0));
    return;
  }

  if (rows_in_cache(s, elem_bytes)) {
    const bool overlap = overlap_rows<Op>(s, elem_bytes);
    auto rows = [&](int64_t b, int64_t e) {
      cached_rows(op, b, e, inner, overlap, kPopulateBytes / elem_bytes);
      fence();
    };
    parallel(par, D, std::max<int64_t>(1, kApplyGrain / inner), rows);
    return;
  }

  const ReducePlan r = plan_reduction(s);
  std::unique_ptr<A[]> partial(new A[r.C * r.P * D]);
  auto reduce_tasks = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t blk = t % r.NB, p = (t / r.NB) % r.P, c = t / (r.NB * r.P);
      const int64_t o0 = c * r.chunk_rows, o1 = std::min(s.outer, o0 + r.chunk_rows);
      const int64_t i0 = p * r.piece_len, i1 = std::min(inner, i0 + r.piece_len);
      const int64_t d0 = blk * r.block_len, d1 = std::min(D, d0 + r.block_len);
      A* acc = partial.get() + (c * r.P + p) * D;
      for (int64_t d = d0; d < d1; ++d) acc[d] = A(0);
      if (inner == 1) {
        const int64_t group = plan_columns((d1 - d0) * elem_bytes, D * elem_bytes, Op::kStreams, N * elem_bytes,
                                            Op::kWidens);
        A block[kColumnBlock];  // a block's sums (plan_reduction: d1 - d0 <= kColumnBlock)
        for (int64_t ob = o0; ob < o1; ob += kSumRows)
          reduce_column_block(op, ob * D + d0, D, std::min(o1, ob + kSumRows) - ob, group, d1 - d0, block, acc + d0);
      } else {
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t d = d0; d < d1; ++d) acc[d] += reduce(op, (o * D + d) * inner + i0, i1 - i0);
      }
    }
  };
  parallel(par, r.C * r.P * r.NB, 1, reduce_tasks);

  // Whether some slice's outputs may be NaN: a column segment's coefficients span many
  // slices, so past the cached rows the choice is made once for the whole tensor.
  std::atomic<bool> may_be_nan{false};
  // Each d's partial sums added in k order, as a scalar loop would, W columns at a time:
  // a scalar loop walks partial with a D-element stride and chains one add per load
  // ((1024, 1024) columns: 64 strided adds for each of 1024 columns). Then finish_slices,
  // the square roots and divisions W slices at a time: one slice at a time they queue on
  // the one divider a core has, a lane per operation. torch_ab, Zen 4 VM, both builds in
  // one process, per slice -> finish_slices (us, 1 thread then 2): (4, 4096) columns fp32
  // forward 13.4 -> 9.2 and 13.5 -> 9.4 (torch 10.0 and 13.0), backward 19.7 -> 13.8 and
  // 19.8 -> 14.1; (16, 1024) forward 5.3 -> 4.2 and 5.4 -> 4.4. The per-lane rest (the
  // divisor's rounding, the stores, the finite tests) was most of what was left; for
  // fp32/fp64 both directions do it in vectors too (FwdOp's and BwdOp's finish_slices).
  // torch_ab's process, AVX2 kernels, per lane -> in vectors, two runs (us, 1 thread then
  // 2): forward (4, 4096) columns 12.9 -> 8.5 and 8.8 -> 5.5, 8.8 -> 5.4 and 8.8 -> 5.4;
  // (16, 1024) 6.2 -> 5.1 and 4.2 -> 3.4, 4.2 -> 3.3 and 4.2 -> 3.4; (1024, 1024) 181.3 ->
  // 175.9 and 148.3 -> 146.2 at 1 thread; backward (4, 4096) 20.4 -> 11.4 and 20.1 ->
  // 11.5, 21.2 -> 12.0 and 13.8 -> 8.4; (16, 1024) 8.0 -> 5.6 and 6.6 -> 5.0, 8.0 -> 5.7
  // and 9.9 -> 7.4; (64, 1024) 16.6 -> 15.1 and 16.4 -> 15.1, 20.0 -> 17.5 and 30.7 ->
  // 27.9; (1024, 1024) within 1.5 % either way.
  auto finish = [&](int64_t b, int64_t e) {
    using V = typename Op::V;
    bool no_nan = true;
    for (int64_t d = b; d < e; d += V::W) {
      const int64_t c = std::min<int64_t>(V::W, e - d);
      V t = V::zero();
      for (int64_t k = 0; k < r.C * r.P; ++k) t = t + ld<V>(partial.get() + k * D + d, c);
      no_nan &= op.finish_slices(d, c, t);
    }
    if (!no_nan) may_be_nan.store(true, std::memory_order_relaxed);
  };
  parallel(par, D, std::max<int64_t>(1, 4096 / (r.C * r.P)), finish);
  const bool no_nan = !may_be_nan.load(std::memory_order_relaxed);

  // Elementwise pass over the flat range; each run stops at a segment's end. Each thread
  // walks its range from the top down, kPopulateBytes at a time (tasks ascending within a
  // block, each block's output prepared before it): the reduction read the tensor upward,
  // so its last megabytes are the ones the L3 still holds, and read first they are hits
  // before this pass's own traffic evicts them. Zen 4 VM, 2 threads, one Python process,
  // shuffled rounds, upward -> downward, two runs: huge pages (THP_MEM_ALLOC_ENABLE=1),
  // (4096, 4096) dim=1 forward at 78 -> 91 and 71 -> 79 % of a clone's time, bf16 75 -> 85
  // and 63 -> 66, fp16 77 -> 86 and 68 -> 71; forward + backward fp32 25.8 -> 22.4 and
  // 25.7 -> 23.3 ms; (768, 48, 128) dim=2 fp32 forward 84 -> 96 and 76 -> 81 %; resident
  // outputs within 3 % either way; fresh 4 KiB pages lost some (bf16 forward + backward
  // 23.9 -> 24.9 and 32.2 -> 33.7 ms, fp32 forward 105 -> 96 and 105 -> 102 %), tied
  // the rest. Block by block, not task by task: downward 128 KiB tasks started a stream
  // each and lost up to 7 % with resident outputs ((768, 48, 128) bf16 forward + backward
  // 1.18 -> 1.27 ms). A C probe (64 MiB, 1 thread): a second read right after an upward
  // one took 2.3-3.0 ms downward against 2.7-3.3 upward; 16 MiB read again at 4x the
  // speed of 32 MiB, so the L3 keeps about 16 MiB of the first read.
  auto elementwise = [&](int64_t b, int64_t e, auto... tag) {
    const int64_t block_tasks = std::max<int64_t>(1, kPopulateBytes / elem_bytes / kApplyGrain);
    for (int64_t top = e; top > b; top -= block_tasks) {
      const int64_t first = std::max(b, top - block_tasks);
      op.prepare(first * kApplyGrain, std::min(N, top * kApplyGrain) - first * kApplyGrain);
      for (int64_t t = first; t < top; ++t) {
        int64_t idx = t * kApplyGrain;
        const int64_t end = std::min(N, idx + kApplyGrain);
        if (inner == 1) {
          // Segments are rows of D: after the first, each starts at d = 0 (one division
          // per task, not one per row).
          for (int64_t d = idx % D; idx < end; idx += D - d, d = 0)
            apply_columns(op, idx, std::min(end - idx, D - d), d, tag...);
        } else {
          while (idx < end) {
            const int64_t d = (idx / inner) % D, i = idx % inner, n = std::min(end - idx, inner - i);
            apply(op, idx, n, d, tag...);
            idx += n;
          }
        }
      }
    }
    fence();
  };
  auto elementwise_tagged = [&](int64_t b, int64_t e) {
    with_nan_tag(no_nan, [&](auto... tag) { elementwise(b, e, tag...); });
  };
  parallel(par, ceil_div(N, kApplyGrain), 1, elementwise_tagged);
}

template <class T>
void forward_t(const FwdParams& p, ParallelFor par) {
  using A = acc_t<T>;
  std::unique_ptr<A[]> scale(new A[std::max<int64_t>(p.shape.D, 1)]);
  const FwdOp<T> op{static_cast<const T*>(p.v), static_cast<const T*>(p.g), {static_cast<T*>(p.w), p.write_w},
                    static_cast<A*>(p.norm), A(p.eps), scale.get(), p.round_scale};
  run(op, p.shape, sizeof(T), par);
}

template <class T>
void backward_t(const BwdParams& p, ParallelFor par) {
  using A = acc_t<T>;
  std::unique_ptr<A[]> coef(new A[2 * std::max<int64_t>(p.shape.D, 1)]);
  const BwdOp<T> op{static_cast<const T*>(p.grad_w), static_cast<const T*>(p.v),
                    static_cast<const T*>(p.g),      static_cast<const A*>(p.norm),
                    {static_cast<T*>(p.grad_v), p.write_grad_v}, static_cast<T*>(p.grad_g),
                    A(p.eps),                        coef.get(),
                    coef.get() + p.shape.D};
  run(op, p.shape, sizeof(T), par);
}

// Whether this kernel set runs a call itself; the AVX-512 set hands some to the AVX2
// kernels (PyTorch's weight-norm kernels are AVX2 on AVX-512 CPUs too: its AVX-512 slot is
// empty). Measured on the Zen 4 VM only, whose 512-bit loads, stores and conversions issue
// as two 256-bit halves; not on an Intel CPU.
// - fp32, both directions, except column reductions of rows shorter than a page. Such a
//   call streams its tensors with one or two multiplies per load, so the width buys no
//   compute, and the 256-bit loop was as fast or faster; short-row columns, though, spend
//   their time on the per-row loads and stores of the accumulators and the coefficients,
//   which 512 bits halve. torch_ab, both kernel sets built with 64-byte loop alignment
//   (see cmake/cpu_kernels.cmake; without it each comparison was one of two placements)
//   and linked into one process, medians over torch's time (x), AVX2 vs AVX-512, 1 thread
//   then 2, two links: rows in the caches, forward (1024, 1024) 1.61 vs 1.52, 1.86 vs 1.79,
//   and 1.51 vs 1.50, 2.01 vs 1.91; (512, 1536) 1.63 vs 1.48, 1.82 vs 1.81, 1.60 vs 1.62,
//   2.05 vs 1.97; backward (1024, 1024) 1.05 vs 1.02, 1.18 vs 1.11, 1.11 vs 1.05, 1.33 vs
//   1.31; from memory, forward (4096, 4096) 1.00 vs 0.87, 0.99 vs 0.93, backward (64,
//   262144) 1.14 vs 1.07, 1.03 vs 0.99, (4096, 4096) columns 1.09 vs 1.04, 1.06 vs 1.03;
//   (1024, 1024) columns within 2 % but one backward (0.96 vs 1.01); but (36864, 128)
//   columns forward 0.85 vs 1.03, 0.82 vs 1.01, backward 0.88 vs 1.00. (Before, the fp32
//   backward kept 512 bits, on comparisons made across processes and placements.)
//   AVX-512's rescale also lost 30 % with w 64 B past v modulo 4 KiB, AVX2's nothing.
// - fp16 rows overlapped (plan_rows: in the caches), both directions: their loop is bound
//   by the conversions, and AVX-512's took longer than twice AVX2's. torch_ab, 1 thread,
//   AVX-512 vs AVX2, medians (us): (1024, 1024) forward 109 vs 85, backward 163 vs 118;
//   (256, 2304) backward 90 vs 62; (4096, 256) forward 148 vs 140, backward 179 vs 154.
//   Elsewhere fp16 stays: (4096, 4096) rows forward 2307 vs 2665 (in turn, from memory),
//   (36864, 128) columns forward 561 vs 611, backward 1327 vs 1473.
// Op: the op template of the call (FwdOp or BwdOp).
template <template <class> class Op, class P>
bool own(const P& p) {
#ifdef __AVX512F__
  if (p.dtype == DType::f32) return p.shape.inner == 1 && p.shape.D * int64_t(sizeof(float)) < kPage;
  constexpr int64_t f16_bytes = sizeof(f16_t);
  if (p.dtype == DType::f16 && rows_in_cache(p.shape, f16_bytes)) return !overlap_rows<Op<f16_t>>(p.shape, f16_bytes);
#endif
  (void)p;
  return true;
}

}  // namespace

void forward(const FwdParams& p, ParallelFor par) {
  if (!own<FwdOp>(p)) return avx2::forward(p, par);
  visit_dtype(p.dtype, [&](auto t) { forward_t<decltype(t)>(p, par); });
}
void backward(const BwdParams& p, ParallelFor par) {
  if (!own<BwdOp>(p)) return avx2::backward(p, par);
  visit_dtype(p.dtype, [&](auto t) { backward_t<decltype(t)>(p, par); });
}

}  // namespace fastwn::cpu::FASTWN_ISA
