// Vec<A>: a SIMD register of A (float or double) lanes, loaded from and stored to the
// storage types (float, double, bf16, fp16) with conversion; on AVX2, bf16 is written
// through VecBf16, two registers wide (kernel_util.h's vec_t picks it). The implementation is
// picked by the flags of the translation unit that includes this header (see
// CMakeLists.txt: kernels.cpp is compiled once per ISA); everything lives in the
// namespace FASTWN_ISA so that inline code built with AVX-512 flags can never be the
// copy the linker keeps for the scalar path (an ODR trap with per-file ISA flags).
//
// max(a, b) is x86's max: a where a > b, else b, so b when either is NaN (max(eps, n)
// keeps a NaN n, as std::max(n, eps) does). -a flips the sign bit, as the scalar -a does
// (0 - a would give +0 for +0). keep_ge(a, b, x) is x where a >= b, else +0, also where
// a or b is NaN (as the scalar a >= b ? x : 0).
//
// Loads and stores are unaligned: a view may start anywhere. load(p, n) / store(p, n)
// touch only the first n < W lanes' memory (masked on AVX-512, via a stack buffer on
// AVX2), so loops need no separate scalar tail code. stream(p) is a full-width
// non-temporal store (no read-for-ownership of the line); p must be aligned to the
// store's width (stream_align<T>() bytes), and the writer must fence (fence()) before
// others read the data.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef FASTWN_ISA
#error "FASTWN_ISA must name the ISA namespace (scalar, avx2, avx512)"
#endif

namespace fastwn {
// Storage types with the bit layout of c10::BFloat16 / c10::Half.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };
}  // namespace fastwn

namespace fastwn::cpu::FASTWN_ISA {

// ---- scalar conversions (round to nearest even, as PyTorch) ----
inline float to_acc(float x) { return x; }
inline double to_acc(double x) { return x; }
inline float to_acc(bf16_t x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_acc(f16_t x) {
  _Float16 h;
  std::memcpy(&h, &x.bits, 2);
  return float(h);
}

template <class T> T from_acc(float a);
template <class T> T from_acc(double a);
template <> inline float from_acc<float>(float a) { return a; }
template <> inline double from_acc<double>(double a) { return a; }
template <> inline bf16_t from_acc<bf16_t>(float a) {
  uint32_t u;
  std::memcpy(&u, &a, 4);
  if (std::isnan(a)) return bf16_t{uint16_t(0x7FC0)};  // c10's canonical bf16 NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}
template <> inline f16_t from_acc<f16_t>(float a) {
  _Float16 h = _Float16(a);
  f16_t r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}

template <class A> struct Vec;

// Tag for a full-width store or stream of values known not to be NaN: a vector type
// whose conversion has a NaN fix-up (bf16, AVX2 and AVX-512) may leave it out; every
// other type ignores the tag (kernel_util.h's st_full).
struct NoNaN {};

// Orders this thread's non-temporal stores before whatever it does next.
inline void fence() {
#if defined(__AVX2__) || defined(__AVX512F__)
  _mm_sfence();
#endif
}

#if defined(__AVX512F__)

inline __mmask16 mask16(int64_t n) { return __mmask16((1u << n) - 1u); }

// float -> bf16 bits, round to nearest even; NaN becomes c10's 0x7FC0. kMayBeNaN = false
// (the NoNaN stores) leaves out that fix-up, a compare and a masked move per 16 lanes,
// for values the caller knows are not NaN: the result is then the same, bit for bit.
// Both directions move the 16-bit halves with one word permute (vpermw) per 16 values,
// where a shift and vpmovdw, and vpmovzxwd and a shift, had made the AVX-512 bf16
// kernels slower than the AVX2 ones on the Zen 4 VM. kernel_probe, 1 thread, medians of
// 5 alternating rounds, us: (1024, 1024) rows forward 149 -> 122, backward 198 -> 151;
// (32, 1024) rows (in the L2) forward 4.7 -> 3.7; (1024, 1024) columns forward 146 -> 120;
// AVX2 there: 119-146 forward, 149-151 backward.
template <bool kMayBeNaN = true>
inline __m256i cvt_bf16(__m512 x) {
  __m512i b = _mm512_castps_si512(x);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  if constexpr (kMayBeNaN)
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC00000));
  // The rounded bf16 is the high word of each 32-bit lane; one word permute gathers
  // the 16 high words into the low 256 bits (word k <- word 2k + 1).
  const __m512i high_words = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                              31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_castsi512_si256(_mm512_permutexvar_epi16(high_words, r));
}
// bf16 -> float: word k to the high word of lane k (word 2k + 1), zeros below it.
inline __m512 widen_bf16(__m256i h) {
  const __m512i to_high = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
                                           7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
  return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, to_high, _mm512_castsi256_si512(h)));
}
constexpr int kRoundNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

template <> struct Vec<float> {
  using A = float;
  static constexpr int64_t W = 16;
  __m512 x;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float a) { return {_mm512_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(mask16(n), p)}; }
  static Vec load(const bf16_t* p) { return {widen_bf16(_mm256_loadu_si256((const __m256i*)p))}; }
  static Vec load(const bf16_t* p, int64_t n) { return {widen_bf16(_mm256_maskz_loadu_epi16(mask16(n), p))}; }
  static Vec load(const f16_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p))}; }
  static Vec load(const f16_t* p, int64_t n) { return {_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(n), p))}; }
  void store(float* p) const { _mm512_storeu_ps(p, x); }
  void store(float* p, int64_t n) const { _mm512_mask_storeu_ps(p, mask16(n), x); }
  void stream(float* p) const { _mm512_stream_ps(p, x); }
  void stream(bf16_t* p) const { _mm256_stream_si256((__m256i*)p, cvt_bf16(x)); }
  void stream(bf16_t* p, NoNaN) const { _mm256_stream_si256((__m256i*)p, cvt_bf16<false>(x)); }
  void stream(f16_t* p) const { _mm256_stream_si256((__m256i*)p, _mm512_cvtps_ph(x, kRoundNearest)); }
  void store(bf16_t* p) const { _mm256_storeu_si256((__m256i*)p, cvt_bf16(x)); }
  void store(bf16_t* p, NoNaN) const { _mm256_storeu_si256((__m256i*)p, cvt_bf16<false>(x)); }
  void store(bf16_t* p, int64_t n) const { _mm256_mask_storeu_epi16(p, mask16(n), cvt_bf16(x)); }
  void store(f16_t* p) const { _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(x, kRoundNearest)); }
  void store(f16_t* p, int64_t n) const { _mm256_mask_storeu_epi16(p, mask16(n), _mm512_cvtps_ph(x, kRoundNearest)); }
  float hsum() const { return _mm512_reduce_add_ps(x); }
  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.x, b.x)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.x, b.x)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.x, b.x)}; }
  friend Vec sqrt(Vec a) { return {_mm512_sqrt_ps(a.x)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.x, b.x)}; }
  friend Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.x, b.x)}; }
  friend Vec operator-(Vec a) {
    return {_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.x), _mm512_set1_epi32(INT32_MIN)))};
  }
  friend Vec keep_ge(Vec a, Vec b, Vec x) { return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a.x, b.x, _CMP_GE_OQ), x.x)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.x, b.x, c.x)}; }
};

template <> struct Vec<double> {
  using A = double;
  static constexpr int64_t W = 8;
  __m512d x;
  static __mmask8 mask(int64_t n) { return __mmask8((1u << n) - 1u); }
  static Vec zero() { return {_mm512_setzero_pd()}; }
  static Vec set1(double a) { return {_mm512_set1_pd(a)}; }
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Vec load(const double* p, int64_t n) { return {_mm512_maskz_loadu_pd(mask(n), p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, x); }
  void store(double* p, int64_t n) const { _mm512_mask_storeu_pd(p, mask(n), x); }
  void stream(double* p) const { _mm512_stream_pd(p, x); }
  double hsum() const { return _mm512_reduce_add_pd(x); }
  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_pd(a.x, b.x)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_pd(a.x, b.x)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_pd(a.x, b.x)}; }
  friend Vec sqrt(Vec a) { return {_mm512_sqrt_pd(a.x)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_pd(a.x, b.x)}; }
  friend Vec max(Vec a, Vec b) { return {_mm512_max_pd(a.x, b.x)}; }
  friend Vec operator-(Vec a) {
    return {_mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a.x), _mm512_set1_epi64(INT64_MIN)))};
  }
  friend Vec keep_ge(Vec a, Vec b, Vec x) { return {_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(a.x, b.x, _CMP_GE_OQ), x.x)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_pd(a.x, b.x, c.x)}; }
};

#elif defined(__AVX2__)

// Partial loads/stores go through a W-lane stack buffer: AVX2 has no 16-bit masked
// moves, and a tail is at most one vector per row.
template <class V, class T> inline V load_partial(const T* p, int64_t n) {
  T buf[V::W];
  std::memset(buf, 0, sizeof(buf));
  std::memcpy(buf, p, size_t(n) * sizeof(T));
  return V::load(buf);
}
template <class V, class T> inline void store_partial(const V& v, T* p, int64_t n) {
  T buf[V::W];
  v.store(buf);
  std::memcpy(p, buf, size_t(n) * sizeof(T));
}

// float -> bf16 bits in the low half of each 32-bit lane, round to nearest even; NaN
// becomes c10's 0x7FC0. kMayBeNaN = false (the NoNaN stores) leaves out that fix-up, a
// compare and a blend per 8 lanes, for values the caller knows are not NaN: the result
// is then the same, bit for bit.
template <bool kMayBeNaN = true>
inline __m256i round_bf16(__m256 x) {
  __m256i b = _mm256_castps_si256(x);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  if constexpr (!kMayBeNaN) return r;
  __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
}
constexpr int kRoundNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// On AVX2, Vec<float> reads bf16 (low_rank_norm's W0) but does not write it: kernels
// that write bf16 compute in VecBf16 (below), the one AVX2 bf16 rounding.
template <> struct Vec<float> {
  using A = float;
  static constexpr int64_t W = 8;
  __m256 x;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float a) { return {_mm256_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const bf16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  static Vec load(const f16_t* p) { return {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p))}; }
  template <class T> static Vec load(const T* p, int64_t n) { return load_partial<Vec>(p, n); }
  void store(float* p) const { _mm256_storeu_ps(p, x); }
  void store(f16_t* p) const { _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(x, kRoundNearest)); }
  template <class T> void store(T* p, int64_t n) const { store_partial(*this, p, n); }
  void stream(float* p) const { _mm256_stream_ps(p, x); }
  void stream(f16_t* p) const { _mm_stream_si128((__m128i*)p, _mm256_cvtps_ph(x, kRoundNearest)); }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.x, b.x)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.x, b.x)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.x, b.x)}; }
  friend Vec sqrt(Vec a) { return {_mm256_sqrt_ps(a.x)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.x, b.x)}; }
  friend Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.x, b.x)}; }
  friend Vec operator-(Vec a) { return {_mm256_xor_ps(a.x, _mm256_set1_ps(-0.0f))}; }
  friend Vec keep_ge(Vec a, Vec b, Vec x) { return {_mm256_and_ps(_mm256_cmp_ps(a.x, b.x, _CMP_GE_OQ), x.x)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.x, b.x, c.x)}; }
};

template <> struct Vec<double> {
  using A = double;
  static constexpr int64_t W = 4;
  __m256d x;
  static Vec zero() { return {_mm256_setzero_pd()}; }
  static Vec set1(double a) { return {_mm256_set1_pd(a)}; }
  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Vec load(const double* p, int64_t n) { return load_partial<Vec>(p, n); }
  void store(double* p) const { _mm256_storeu_pd(p, x); }
  void store(double* p, int64_t n) const { store_partial(*this, p, n); }
  void stream(double* p) const { _mm256_stream_pd(p, x); }
  double hsum() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_pd(a.x, b.x)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_pd(a.x, b.x)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_pd(a.x, b.x)}; }
  friend Vec sqrt(Vec a) { return {_mm256_sqrt_pd(a.x)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_pd(a.x, b.x)}; }
  friend Vec max(Vec a, Vec b) { return {_mm256_max_pd(a.x, b.x)}; }
  friend Vec operator-(Vec a) { return {_mm256_xor_pd(a.x, _mm256_set1_pd(-0.0))}; }
  friend Vec keep_ge(Vec a, Vec b, Vec x) { return {_mm256_and_pd(_mm256_cmp_pd(a.x, b.x, _CMP_GE_OQ), x.x)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_pd(a.x, b.x, c.x)}; }
};

#define FASTWN_VEC_BF16 1  // kernel_util.h: kernels over bf16 use VecBf16
// bf16 storage on AVX2: 16 lanes in two fp32 registers. bf16 is the top half of an
// fp32, so widening is one unpack with zeros per 8 values (instead of a zero-extending
// load and a shift), and packing back is one packus per 16 (instead of a packus and a
// lane permute per 8). The unpacks interleave the 128-bit lanes: lo holds elements 0-3
// and 8-11, hi 4-7 and 12-15, and packus restores the order. fp32 loads and stores
// (coefficients, partial sums) permute to the same lane order, so lane k of every
// operand is the same element. (1024, 1024) bf16 forward, rows, kernel_probe on the Zen 3
// VM: 21.4 -> 15.1 instructions per 8 elements (callgrind), 330-400 -> 223-238 us at 1
// thread; the backward 375-385 -> 268-272 us.
struct VecBf16 {
  using A = float;
  static constexpr int64_t W = 16;
  __m256 lo, hi;
  static VecBf16 zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static VecBf16 set1(float a) { return {_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
  static VecBf16 load(const bf16_t* p) {
    const __m256i x = _mm256_loadu_si256((const __m256i*)p), z = _mm256_setzero_si256();
    return {_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, x)), _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, x))};
  }
  static VecBf16 load(const float* p) {
    const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    return {_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31)};
  }
  template <class T> static VecBf16 load(const T* p, int64_t n) { return load_partial<VecBf16>(p, n); }
  void store(float* p) const {
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(p + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  void store(bf16_t* p) const { _mm256_storeu_si256((__m256i*)p, packed()); }
  void store(bf16_t* p, NoNaN) const { _mm256_storeu_si256((__m256i*)p, packed<false>()); }
  template <class T> void store(T* p, int64_t n) const { store_partial(*this, p, n); }
  void stream(bf16_t* p) const { _mm256_stream_si256((__m256i*)p, packed()); }
  void stream(bf16_t* p, NoNaN) const { _mm256_stream_si256((__m256i*)p, packed<false>()); }
  float hsum() const { return Vec<float>{_mm256_add_ps(lo, hi)}.hsum(); }
  friend VecBf16 operator+(VecBf16 a, VecBf16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  friend VecBf16 operator*(VecBf16 a, VecBf16 b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
  friend VecBf16 operator/(VecBf16 a, VecBf16 b) { return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
  friend VecBf16 sqrt(VecBf16 a) { return {_mm256_sqrt_ps(a.lo), _mm256_sqrt_ps(a.hi)}; }
  friend VecBf16 fma(VecBf16 a, VecBf16 b, VecBf16 c) {
    return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
  }

 private:
  template <bool kMayBeNaN = true>
  __m256i packed() const { return _mm256_packus_epi32(round_bf16<kMayBeNaN>(lo), round_bf16<kMayBeNaN>(hi)); }
};

#else  // portable path: plain C++ over 8 lanes

// Eight independent lanes, like AVX2's fp32 vector: the same summation accuracy on
// long rows as the vector paths, and code the compiler may vectorise for any CPU.
template <class Acc> struct Vec {
  using A = Acc;
  static constexpr int64_t W = 8;
  Acc x[W];
  static Vec zero() { return set1(Acc(0)); }
  static Vec set1(Acc a) {
    Vec r;
    for (int64_t i = 0; i < W; ++i) r.x[i] = a;
    return r;
  }
  template <class T> static Vec load(const T* p) { return load(p, W); }
  template <class T> static Vec load(const T* p, int64_t n) {
    Vec r = zero();
    for (int64_t i = 0; i < n; ++i) r.x[i] = to_acc(p[i]);
    return r;
  }
  template <class T> void store(T* p) const { store(p, W); }
  template <class T> void stream(T* p) const { store(p, W); }  // plain C++ has no non-temporal store
  template <class T> void store(T* p, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) p[i] = from_acc<T>(x[i]);
  }
  Acc hsum() const { return ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7])); }
  template <class F> friend Vec map(const Vec& a, const Vec& b, F f) {
    Vec r;
    for (int64_t i = 0; i < W; ++i) r.x[i] = f(a.x[i], b.x[i]);
    return r;
  }
  friend Vec operator+(const Vec& a, const Vec& b) { return map(a, b, [](Acc u, Acc w) { return u + w; }); }
  friend Vec operator*(const Vec& a, const Vec& b) { return map(a, b, [](Acc u, Acc w) { return u * w; }); }
  friend Vec operator/(const Vec& a, const Vec& b) { return map(a, b, [](Acc u, Acc w) { return u / w; }); }
  friend Vec sqrt(const Vec& a) { return map(a, a, [](Acc u, Acc) { return std::sqrt(u); }); }
  friend Vec operator-(const Vec& a, const Vec& b) { return map(a, b, [](Acc u, Acc w) { return u - w; }); }
  friend Vec max(const Vec& a, const Vec& b) { return map(a, b, [](Acc u, Acc w) { return u > w ? u : w; }); }
  friend Vec operator-(const Vec& a) { return map(a, a, [](Acc u, Acc) { return -u; }); }
  friend Vec keep_ge(const Vec& a, const Vec& b, const Vec& x) {
    Vec r;
    for (int64_t i = 0; i < W; ++i) r.x[i] = a.x[i] >= b.x[i] ? x.x[i] : Acc(0);
    return r;
  }
  // Plain multiply-add: without -mfma, std::fma is a slow software routine.
  friend Vec fma(const Vec& a, const Vec& b, const Vec& c) {
    Vec r;
    for (int64_t i = 0; i < W; ++i) r.x[i] = a.x[i] * b.x[i] + c.x[i];
    return r;
  }
};

#endif

}  // namespace fastwn::cpu::FASTWN_ISA
