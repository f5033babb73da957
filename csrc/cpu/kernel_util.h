// Small pieces every CPU kernel file shares (each is compiled once per ISA, FASTWN_ISA):
// the thread-pool adapter, vector loads/stores of n <= W lanes, the accumulation type
// and the switch from DType to a storage type.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../kernels.h"
#include "vec.h"

namespace fastwn::cpu::FASTWN_ISA {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class F>
void parallel(ParallelFor par, int64_t n, int64_t grain, F& body) {
  par(n, grain, &body, [](void* ctx, int64_t b, int64_t e) { (*static_cast<F*>(ctx))(b, e); });
}

template <class V, class T>
inline V ld(const T* p, int64_t n) { return n == V::W ? V::load(p) : V::load(p, n); }
template <class V, class T>
inline void st(const V& v, T* p, int64_t n) { n == V::W ? v.store(p) : v.store(p, n); }
// A full vector's store (stream = false) or non-temporal stream, passing vec.h's NoNaN
// tag on to the vector types that take it.
template <bool stream, class V, class T, class... Tag>
inline void st_full(const V& v, T* p, Tag... tag) {
  if constexpr (stream) {
    if constexpr (requires { v.stream(p, tag...); }) v.stream(p, tag...);
    else v.stream(p);
  } else {
    if constexpr (requires { v.store(p, tag...); }) v.store(p, tag...);
    else v.store(p);
  }
}

// Whether every lane of every vector is finite: x - x is 0 for a finite x and NaN for inf
// or NaN, so the horizontal sum of those differences is finite only when all lanes are.
template <class... Vs>
inline bool all_finite(const Vs&... v) { return std::isfinite((... + (v - v)).hsum()); }

// The accumulation type: fp64 for fp64, fp32 for everything else.
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// The vector a kernel over storage type T computes with: Vec<acc_t<T>>, except bf16
// where vec.h has a wider one (VecBf16, AVX2).
template <class T> struct VecOf { using type = Vec<acc_t<T>>; };
#ifdef FASTWN_VEC_BF16
template <> struct VecOf<bf16_t> { using type = VecBf16; };
#endif
template <class T> using vec_t = typename VecOf<T>::type;

// f(T{}) with T the storage type of `dtype`.
template <class F>
void visit_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16_t{});
    case DType::f16: return f(f16_t{});
  }
}

}  // namespace fastwn::cpu::FASTWN_ISA
